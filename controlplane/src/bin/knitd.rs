//! `knitd`: the Knit control plane.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use knit_controlplane::ca::{CaOptions, CaSource, TrustDomain, parse_duration};
use knit_controlplane::{
    DEFAULT_GRPC_ADDR, DEFAULT_GRPC_TLS_ADDR, DEFAULT_HTTP_ADDR, DEFAULT_POLL_INTERVAL,
    KnitdOptions, compile_dir_in,
};
use tracing_subscriber::EnvFilter;

/// The Knit control plane: serves the config in a directory of YAML to the
/// mesh's proxies over Discovery.Stream, and signs their workload
/// certificates (Certificates.Sign) as the mesh CA.
#[derive(Debug, Parser)]
#[command(name = "knitd", version)]
struct Cli {
    /// Directory of Service, WorkloadEntry and PeerAuthentication YAML
    /// (*.yaml, *.yml); watched for changes.
    #[arg(long, value_name = "DIR", env = "KNITD_CONFIG_DIR")]
    config_dir: PathBuf,
    /// Address of the discovery + CA gRPC server in plaintext: for the lab
    /// and development only (tokens cross it in the clear).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_GRPC_ADDR)]
    grpc_addr: SocketAddr,
    /// Address of the discovery + CA gRPC server over TLS.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_GRPC_TLS_ADDR)]
    grpc_tls_addr: SocketAddr,
    /// Extra DNS name or IP address in knitd's TLS certificate (repeatable),
    /// besides knitd.knit-system.svc and friends.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
    /// Directory holding the CA root (generated there on first start, kept
    /// across restarts). Without it and without --ca-cert, the root lives in
    /// memory and certificates stop verifying when knitd restarts.
    #[arg(long, value_name = "DIR", env = "KNITD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Plug-in CA: the operator's root or intermediate certificate (PEM)
    /// that signs workload certificates, instead of a generated root.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Private key of --ca-cert (PKCS#8 PEM, mode 0600 or stricter).
    #[arg(long, value_name = "FILE")]
    ca_key: Option<PathBuf>,
    /// Certificates from --ca-cert's issuer up to and including the root
    /// (PEM); needed when --ca-cert is an intermediate.
    #[arg(long, value_name = "FILE")]
    ca_chain: Option<PathBuf>,
    /// More roots to trust (PEM), served beside the active one; used to
    /// rotate a root.
    #[arg(long, value_name = "FILE")]
    extra_trust_bundle: Option<PathBuf>,
    /// SPIFFE trust domain of the mesh's identities.
    #[arg(long, value_name = "DOMAIN", default_value = knit_controlplane::ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of a workload certificate whose request asks for none
    /// (s, m, h or d).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    default_cert_ttl: String,
    /// Longest lifetime of a workload certificate, whatever it asks.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    max_cert_ttl: String,
    /// The mesh root namespace: a PeerAuthentication there without a
    /// selector is mesh-wide.
    #[arg(long, value_name = "NAMESPACE", default_value = knit_controlplane::model::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// How often the config directory is checked for changes, in
    /// milliseconds (10 to 60000).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_POLL_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    poll_interval_ms: u64,
    /// Proxies that may hold a config they have not answered yet, at once;
    /// the others are sent theirs as answers come in
    #[arg(long, value_name = "N", default_value_t = knit_controlplane::push_throttle::DEFAULT_MAX_CONCURRENT_PUSHES as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_concurrent_pushes: u64,
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
    let compiled = compile_dir_in(&cli.config_dir, &cli.root_namespace)?;
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
    let options = options(cli)?;
    knit_controlplane::run(options, shutdown).await?;
    Ok(())
}

/// Where the CA's key comes from, as the flags say. Checked here rather
/// than by clap so each mistake is one line naming the flag.
fn ca_source(cli: &Cli) -> Result<CaSource, knit_controlplane::Error> {
    let invalid = |flag: &'static str, reason: &str| knit_controlplane::Error::InvalidOption {
        flag,
        reason: reason.to_owned(),
    };
    match (&cli.ca_cert, &cli.ca_key) {
        (Some(cert), Some(key)) => {
            if cli.state_dir.is_some() {
                return Err(invalid(
                    "--state-dir",
                    "cannot be combined with --ca-cert: the plug-in CA replaces the generated root",
                ));
            }
            Ok(CaSource::PlugIn {
                cert: cert.clone(),
                key: key.clone(),
                chain: cli.ca_chain.clone(),
            })
        }
        (Some(_), None) => Err(invalid("--ca-cert", "needs --ca-key")),
        (None, Some(_)) => Err(invalid("--ca-key", "needs --ca-cert")),
        (None, None) if cli.ca_chain.is_some() => {
            Err(invalid("--ca-chain", "needs --ca-cert and --ca-key"))
        }
        (None, None) => Ok(match &cli.state_dir {
            Some(dir) => CaSource::StateDir(dir.clone()),
            None => CaSource::Ephemeral,
        }),
    }
}

fn options(cli: Cli) -> Result<KnitdOptions, knit_controlplane::Error> {
    let ca = CaOptions {
        source: ca_source(&cli)?,
        extra_trust_bundle: cli.extra_trust_bundle,
        trust_domain: TrustDomain::new(&cli.trust_domain)?,
        default_cert_ttl: parse_duration("--default-cert-ttl", &cli.default_cert_ttl)?,
        max_cert_ttl: parse_duration("--max-cert-ttl", &cli.max_cert_ttl)?,
    };
    knit_controlplane::config::names::check_dns1123_label(&cli.root_namespace).map_err(
        |reason| knit_controlplane::Error::InvalidOption {
            flag: "--root-namespace",
            reason,
        },
    )?;
    Ok(KnitdOptions {
        config_dir: cli.config_dir,
        grpc_addr: cli.grpc_addr,
        grpc_tls_addr: Some(cli.grpc_tls_addr),
        tls_sans: cli.tls_sans,
        http_addr: cli.http_addr,
        poll_interval: std::time::Duration::from_millis(cli.poll_interval_ms),
        max_concurrent_pushes: usize::try_from(cli.max_concurrent_pushes).unwrap_or(usize::MAX),
        push_answer_timeout: knit_controlplane::push_throttle::DEFAULT_ANSWER_TIMEOUT,
        ca,
        root_namespace: cli.root_namespace,
    })
}

/// Errors end knitd with one line on stderr (the causes joined with ": "),
/// never a backtrace: an operator reads it in a pod's last log line.
fn main() -> ExitCode {
    match run_cli() {
        Ok(code) => code,
        Err(err) => {
            // Causes a message already quotes (knitd's errors embed their
            // source) are not repeated.
            let mut line = err.to_string();
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("Error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if cli.once {
        return run_once(&cli);
    }
    init_logging();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(cli))?;
    Ok(ExitCode::SUCCESS)
}
