//! `knit-lab`: the demo, the echo app and load client the lab runs in pods,
//! and cleanup of crashed labs.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use knit_lab::client::{self, ClientSpec, parse_header_arg};

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
    /// HTTP/1.1 + h2c echo server answering with what it received (the lab's pod app)
    Echo {
        /// Name reported in every response's "pod" field
        #[arg(long)]
        pod_name: String,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Send bounded HTTP/1.1 load and print one JSON report on stdout
    Client(ClientArgs),
    /// Remove namespaces and processes left behind by crashed labs (needs root)
    Cleanup,
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
        spec.verbose = self.verbose;
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
        Cmd::Echo { pod_name, listen } => report(echo(&pod_name, listen)),
        Cmd::Client(args) => report(run_client(args)),
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

fn echo(pod_name: &str, listen: SocketAddr) -> Result<()> {
    init_tracing("info");
    runtime()?.block_on(knit_lab::echo::run(pod_name, listen))?;
    Ok(())
}

fn run_client(args: ClientArgs) -> Result<()> {
    init_tracing("warn");
    let spec = args.into_spec()?;
    let report = runtime()?.block_on(client::run(&spec))?;
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
