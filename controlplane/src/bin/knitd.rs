//! `knitd`: the Knit control plane.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use knit_controlplane::{
    DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, DEFAULT_POLL_INTERVAL, KnitdOptions, compile_dir,
};
use tracing_subscriber::EnvFilter;

/// The Knit control plane: serves the config in a directory of YAML to the
/// mesh's proxies over Discovery.Stream.
#[derive(Debug, Parser)]
#[command(name = "knitd", version)]
struct Cli {
    /// Directory of Service and WorkloadEntry YAML (*.yaml, *.yml); watched
    /// for changes.
    #[arg(long, value_name = "DIR", env = "KNITD_CONFIG_DIR")]
    config_dir: PathBuf,
    /// Address of the discovery gRPC server (plaintext).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_GRPC_ADDR)]
    grpc_addr: SocketAddr,
    /// Address of the health and debug HTTP server.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HTTP_ADDR)]
    http_addr: SocketAddr,
    /// Load and check the directory once, report problems on stderr, and
    /// exit: 0 without errors, 1 with.
    #[arg(long)]
    once: bool,
    /// With --once: print the compiled state as JSON on stdout.
    #[arg(long, requires = "once")]
    print: bool,
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `--once`: problems go to stderr one per line, the state to stdout.
fn run_once(cli: &Cli) -> anyhow::Result<ExitCode> {
    let compiled = compile_dir(&cli.config_dir)?;
    for warning in &compiled.warnings {
        eprintln!("{warning}");
    }
    for error in &compiled.errors {
        eprintln!("{error}");
    }
    if cli.print {
        let json = serde_json::to_string_pretty(&compiled.snapshot.view())?;
        println!("{json}");
    }
    Ok(if compiled.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            result = tokio::signal::ctrl_c() => {
                if let Err(err) = result {
                    tracing::error!("cannot listen for ctrl-c: {err}");
                    // Without ctrl-c, SIGTERM still stops knitd.
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let options = KnitdOptions {
        config_dir: cli.config_dir,
        grpc_addr: cli.grpc_addr,
        http_addr: cli.http_addr,
        poll_interval: DEFAULT_POLL_INTERVAL,
    };
    knit_controlplane::run(options, shutdown).await?;
    Ok(())
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if cli.once {
        return run_once(&cli);
    }
    init_logging();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(cli))?;
    Ok(ExitCode::SUCCESS)
}
