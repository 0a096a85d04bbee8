//! `knit-bench`: runs a load scenario in the lab and writes
//! `<out-dir>/<scenario>.json`, `.md` and `.svg`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use knit_bench::load::Generator;
use knit_bench::run::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "knit-bench",
    version,
    about = "Knit's benchmarks: open-loop load through the direct path and Knit's sidecar pairs (needs root)",
    long_about = "Builds a lab with a client/server pod pair per contender (direct, knit-plain, \
                  knit-mtls), sends open-loop constant-rate load through each in turns, and \
                  writes latency percentiles, proxy CPU and memory as JSON, Markdown and SVG. \
                  Without options it runs scenario (a): 1000 rps, 16 connections, 1 KiB, 30 s, \
                  3 repetitions."
)]
struct Cli {
    /// A quick run: 25 rps, 2 connections, 2 s per contender, 1 repetition
    #[arg(long)]
    smoke: bool,
    /// Name of the scenario (names the output files)
    #[arg(long)]
    scenario: Option<String>,
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
    /// TOKIO_WORKER_THREADS of every knit-proxy
    #[arg(long)]
    proxy_workers: Option<u32>,
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
            eprintln!("knit-bench: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn main_result() -> Result<()> {
    let cli = Cli::parse();
    let mut sc = if cli.smoke {
        Scenario::smoke()
    } else {
        Scenario::standard()
    };
    if let Some(name) = cli.scenario {
        sc.name = name;
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
    let report = run::run(&sc, &mut |line| eprintln!("knit-bench: {line}"))?;
    let out_dir = cli
        .out_dir
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")));
    let files = knit_bench::results::write(&report, &out_dir)?;
    print!("{}", knit_bench::results::markdown(&report));
    for f in files {
        eprintln!("knit-bench: wrote {}", f.display());
    }
    Ok(())
}
