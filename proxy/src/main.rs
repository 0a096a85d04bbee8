#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use knit_proxy::{DataPathSettings, NodeIdentity, ProxyOptions};

/// The Knit sidecar proxy. Runs as uid 1337 next to the app; knit-init's
/// iptables rules send the pod's traffic through it.
#[derive(Debug, Parser)]
#[command(name = "knit-proxy", version)]
struct Args {
    /// knitd's discovery address, e.g. http://knitd.knit-system:15010.
    #[arg(long, env = "KNIT_CONTROL_PLANE")]
    control_plane: String,
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long = "namespace", env = "POD_NAMESPACE")]
    namespace: String,
    /// This pod's IPs, comma separated.
    #[arg(long, env = "POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<String>,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// How long outbound detection waits for the app's first bytes.
    #[arg(long, default_value_t = 300)]
    detect_timeout_ms: u64,
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let opts = ProxyOptions {
        control_plane: args.control_plane,
        node: NodeIdentity {
            pod_name: args.pod_name,
            namespace: args.namespace,
            pod_ips: args.pod_ips,
            service_account: args.service_account,
        },
        outbound_addr: args.outbound_addr,
        inbound_addr: args.inbound_addr,
        admin_addr: args.admin_addr,
        readiness_addr: args.readiness_addr,
        settings: DataPathSettings {
            outbound_detect_timeout: Duration::from_millis(args.detect_timeout_ms),
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            ..DataPathSettings::default()
        },
    };
    knit_proxy::run(opts, shutdown_signal())
        .await
        .context("knit-proxy failed")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
