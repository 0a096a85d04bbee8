//! `knit-bench-control-plane`: knitd with a large mesh and many simulated
//! proxies; writes `<out-dir>/<name>.json` and `.md`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use knit_bench::control_plane::{self, Spec, mesh_config::FileLayout};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Layout {
    /// One file per Service with its WorkloadEntries
    PerService,
    /// One file per object, as the lab writes them
    PerObject,
}

#[derive(Parser)]
#[command(
    name = "knit-bench-control-plane",
    version,
    about = "Knit's control-plane benchmark: knitd serving a large mesh to many simulated proxies",
    long_about = "Starts the real knitd binary as its own process on 127.0.0.1 with a config \
                  directory of Services and WorkloadEntries, connects simulated proxies (one \
                  HTTP/2 connection and Discovery.Stream each, decoding and ACKing every \
                  response), and measures change-to-last-ACK times, the full push to a new \
                  proxy, and knitd's CPU and RSS at rest and under endpoint churn. Without \
                  options: 1000 services, 10 000 endpoints, 500 then 2000 proxies, 20 changes/s \
                  for 30 s. Build knitd first (cargo build --release -p knit-controlplane --bin \
                  knitd); it is looked for next to this binary, or in $KNIT_BIN_DIR."
)]
struct Cli {
    /// A quick run: 20 services, 100 endpoints, 20 proxies, 3 changes
    #[arg(long)]
    smoke: bool,
    /// Name of the run (names the output files)
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    services: Option<u32>,
    #[arg(long)]
    endpoints: Option<u32>,
    /// Numbers of proxies to measure at, ascending (comma-separated)
    #[arg(long, value_delimiter = ',')]
    proxies: Option<Vec<u32>>,
    /// Endpoint changes made one at a time per number of proxies
    #[arg(long)]
    latency_changes: Option<u32>,
    /// Endpoint changes per second during churn
    #[arg(long)]
    churn_rate: Option<f64>,
    /// Seconds of churn
    #[arg(long)]
    churn_s: Option<f64>,
    /// Seconds at rest
    #[arg(long)]
    rest_s: Option<f64>,
    /// New proxies whose full push is timed, per number of proxies
    #[arg(long)]
    full_push_samples: Option<u32>,
    /// How the config objects are spread over files
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// Longest wait, in seconds, for all proxies to have their first config
    #[arg(long)]
    connect_deadline_s: Option<f64>,
    /// Longest wait, in seconds, for one change to reach every proxy
    #[arg(long)]
    change_deadline_s: Option<f64>,
    /// knitd's --poll-interval-ms (default 250)
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// The knitd binary (default: next to this binary, or $KNIT_BIN_DIR)
    #[arg(long)]
    knitd: Option<PathBuf>,
    /// Keep the config directory and knitd's log here (default: a
    /// temporary directory, removed afterwards)
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the results go (default: benches/results in the source tree)
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} {s}: not a duration"))
}

fn main() {
    let code = match main_result() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("knit-bench-control-plane: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn main_result() -> Result<()> {
    let cli = Cli::parse();
    let mut spec = if cli.smoke {
        Spec::smoke()
    } else {
        Spec::standard()
    };
    if let Some(name) = cli.name {
        spec.name = name;
    }
    if let Some(n) = cli.services {
        spec.services = n;
    }
    if let Some(n) = cli.endpoints {
        spec.endpoints = n;
    }
    if let Some(scales) = cli.proxies {
        spec.proxy_scales = scales;
    }
    if let Some(n) = cli.latency_changes {
        spec.latency_changes = n;
    }
    if let Some(rate) = cli.churn_rate {
        spec.churn_rate_per_s = rate;
    }
    if let Some(s) = cli.churn_s {
        spec.churn = seconds("churn-s", s)?;
    }
    if let Some(s) = cli.rest_s {
        spec.rest = seconds("rest-s", s)?;
    }
    if let Some(n) = cli.full_push_samples {
        spec.full_push_samples = n;
    }
    if let Some(layout) = cli.layout {
        spec.layout = match layout {
            Layout::PerService => FileLayout::PerService,
            Layout::PerObject => FileLayout::PerObject,
        };
    }
    if let Some(s) = cli.connect_deadline_s {
        spec.connect_deadline = seconds("connect-deadline-s", s)?;
    }
    if let Some(s) = cli.change_deadline_s {
        spec.change_deadline = seconds("change-deadline-s", s)?;
    }
    if let Some(ms) = cli.poll_interval_ms {
        spec.poll_interval = Duration::from_millis(ms);
    }
    spec.knitd = cli.knitd;
    spec.work_dir = cli.work_dir;
    let report = control_plane::run(&spec, &mut |line| {
        eprintln!("knit-bench-control-plane: {line}")
    })?;
    let out_dir = cli
        .out_dir
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")));
    let files = control_plane::report::write(&report, &out_dir)?;
    print!("{}", control_plane::report::markdown(&report));
    for f in files {
        eprintln!("knit-bench-control-plane: wrote {}", f.display());
    }
    Ok(())
}
