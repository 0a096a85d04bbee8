//! `knit-lab`: the demo, the apps and clients the lab runs in pods, and
//! cleanup of crashed labs.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use knit_lab::client::{self, ClientSpec, parse_header_arg};
use knit_lab::{BannerClientSpec, GrpcClientSpec, TcpClientSpec, TlsClientSpec, WsClientSpec};

#[derive(Parser)]
#[command(
    name = "knit-lab",
    version,
    about = "A Knit mesh on one machine, in network namespaces",
    long_about = "A Knit mesh on one machine: network-namespace pods running the real knitd, \
                  knit-init and knit-proxy. Start with `knit-lab demo` (as root)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a three-pod mesh, send traffic through it and show every hop (needs root)
    Demo,
    /// HTTP/1.1 + h2c echo server answering with what it received (the lab's
    /// pod app); also /status/<code>, /bytes/<n>, POST /sha256 and /ws
    Echo {
        /// Name reported in every response's "pod" field
        #[arg(long)]
        pod_name: String,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// gRPC server (knit.lab.v1.Echo: Unary, BidiStream, Slow) adding the trailer x-echo-trailer
    GrpcEcho(ServerArgs<50051>),
    /// TLS server greeting with `hello from <pod> sni=<sni>` and echoing bytes
    TlsEcho {
        #[command(flatten)]
        server: ServerArgs<8443>,
        /// Directory with tls-echo.pem and tls-echo.key (the lab writes them to its tls/ dir)
        #[arg(long)]
        cert_dir: PathBuf,
    },
    /// Server-speaks-first TCP: greets `220 <pod> ready`, echoes lines until QUIT
    Banner(ServerArgs<2525>),
    /// TCP echo answering after the client's FIN with what it read plus `|<pod>`
    TcpEcho(ServerArgs<9000>),
    /// Send bounded HTTP load and print one JSON report on stdout
    Client(ClientArgs),
    /// Call the grpc-echo and print one JSON report
    GrpcClient(GrpcClientSpec),
    /// Exchange WebSocket messages with the echo's /ws and print one JSON report
    WsClient(WsClientSpec),
    /// Check the tls-echo (certificate, SNI, echo) and print one JSON report
    TlsClient(TlsClientSpec),
    /// Check the banner app (greeting and its delay, echo, QUIT) and print one JSON report
    BannerClient(BannerClientSpec),
    /// Send bytes to the tcp-echo, half-close, check the answer; print one JSON report
    TcpClient(TcpClientSpec),
    /// Remove namespaces and processes left behind by crashed labs (needs root)
    Cleanup,
}

/// Options every app server has; `PORT` is its default port.
#[derive(Args)]
struct ServerArgs<const PORT: u16> {
    /// Name the app reports as its pod
    #[arg(long, env = "POD_NAME", default_value = "knit-lab")]
    pod_name: String,
    /// Address to listen on (default 0.0.0.0 and the app's usual port)
    #[arg(long)]
    listen: Option<SocketAddr>,
}

impl<const PORT: u16> ServerArgs<PORT> {
    fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], PORT)))
    }
}

#[derive(Args)]
struct ClientArgs {
    /// http:// URL; host names resolve through the system resolver (/etc/hosts)
    #[arg(long)]
    url: String,
    /// Number of requests
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Parallel keep-alive connections
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Per-request timeout, including connecting
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Hard cap on the whole run; requests not started by then are not sent
    #[arg(long, default_value_t = 60_000)]
    duration_ms: u64,
    /// Pause between requests on one connection
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Requests per second on a fixed schedule (open loop), spread over
    /// --concurrency connections
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<u64>,
    /// Extra request header, `name: value` (repeatable)
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body size in bytes
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// One line per request on stderr
    #[arg(long)]
    verbose: bool,
    /// GET /bytes/N on the URL's host and verify length and SHA-256 of the pattern
    #[arg(long, value_name = "N", conflicts_with = "upload")]
    download: Option<u64>,
    /// POST N pattern bytes (chunked) to /sha256 on the URL's host and verify the answer
    #[arg(long, value_name = "N")]
    upload: Option<u64>,
    /// HTTP/2 with prior knowledge (h2c)
    #[arg(long)]
    http2: bool,
    /// Call the grpc-echo's unary method (h2c) with an N-byte message and
    /// verify grpc-status 0 and the echo
    #[arg(long, value_name = "N", conflicts_with_all = ["download", "upload"])]
    grpc_unary: Option<u64>,
}

impl ClientArgs {
    fn into_spec(self) -> Result<ClientSpec> {
        let mut spec = ClientSpec::new(&self.url)
            .count(self.count)
            .concurrency(self.concurrency)
            .timeout(Duration::from_millis(self.timeout_ms))
            .duration(Duration::from_millis(self.duration_ms))
            .interval(Duration::from_millis(self.interval_ms))
            .method(&self.method)
            .body_bytes(self.body_bytes);
        for h in &self.headers {
            let (k, v) = parse_header_arg(h)?;
            spec = spec.header(&k, &v);
        }
        spec.rate = self.rate;
        spec.verbose = self.verbose;
        spec.download = self.download;
        spec.upload = self.upload;
        spec.http2 = self.http2;
        spec.grpc_unary = self.grpc_unary;
        Ok(spec)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: pods are many and the machine small.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Demo => knit_lab::demo::run(),
        Cmd::Echo { pod_name, listen } => report(serve(knit_lab::echo::run(&pod_name, listen))),
        Cmd::GrpcEcho(a) => report(serve(knit_lab::grpc::run(&a.pod_name, a.listen()))),
        Cmd::TlsEcho { server, cert_dir } => report(serve(knit_lab::tls::run_echo(
            &server.pod_name,
            server.listen(),
            &cert_dir,
        ))),
        Cmd::Banner(a) => report(serve(knit_lab::tcp_apps::run_banner(
            &a.pod_name,
            a.listen(),
        ))),
        Cmd::TcpEcho(a) => report(serve(knit_lab::tcp_apps::run_tcp_echo(
            &a.pod_name,
            a.listen(),
        ))),
        Cmd::Client(args) => report(
            args.into_spec()
                .and_then(|spec| print_json(async move { client::run(&spec).await })),
        ),
        Cmd::GrpcClient(spec) => report(print_json(knit_lab::grpc_client::run_client(&spec))),
        Cmd::WsClient(spec) => report(print_json(knit_lab::ws::run_client(&spec))),
        Cmd::TlsClient(spec) => report(print_json(knit_lab::tls_client::run_client(&spec))),
        Cmd::BannerClient(spec) => {
            report(print_json(knit_lab::tcp_clients::run_banner_client(&spec)))
        }
        Cmd::TcpClient(spec) => report(print_json(knit_lab::tcp_clients::run_tcp_client(&spec))),
        Cmd::Cleanup => report(cleanup()),
    };
    std::process::exit(code);
}

fn report(result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let text = format!("{e:#}");
            if text.starts_with("knit-lab") {
                eprintln!("{text}");
            } else {
                eprintln!("knit-lab: {text}");
            }
            1
        }
    }
}

/// Runs an app server until the process is stopped.
fn serve(app: impl Future<Output = knit_lab::Result<()>>) -> Result<()> {
    init_tracing("info");
    runtime()?.block_on(app)?;
    Ok(())
}

/// Runs a client and prints its report as one line of JSON.
fn print_json<R: serde::Serialize>(
    client: impl Future<Output = knit_lab::Result<R>>,
) -> Result<()> {
    init_tracing("warn");
    let report = runtime()?.block_on(client)?;
    println!(
        "{}",
        serde_json::to_string(&report).context("encoding the report")?
    );
    Ok(())
}

fn cleanup() -> Result<()> {
    let found = knit_lab::remove_leftovers()?;
    if found.is_empty() {
        println!("no leftovers of crashed labs");
    }
    for ns in &found.namespaces {
        println!("deleted namespace {ns}");
    }
    if !found.killed.is_empty() {
        println!(
            "killed {} process(es): {:?}",
            found.killed.len(),
            found.killed
        );
    }
    for p in &found.etc_entries {
        println!("removed {}", p.display());
    }
    Ok(())
}
