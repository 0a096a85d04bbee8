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
    /// Where peer proxies connect; must be excluded from inbound capture.
    #[arg(long, default_value = "0.0.0.0:15008")]
    mesh_addr: SocketAddr,
    /// Listen on [::] too, for IPv6 capture (skipped if the kernel lacks IPv6).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ipv6: bool,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15090")]
    metrics_addr: SocketAddr,
    /// How long outbound detection waits for the app's first bytes.
    #[arg(long, default_value_t = 300)]
    detect_timeout_ms: u64,
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,
    /// Close opaque TCP connections idle (no byte either way) this long.
    #[arg(long, default_value_t = 3600)]
    tcp_idle_timeout_secs: u64,
    /// A request head must be complete this long after its first byte.
    #[arg(long, default_value_t = millis(DataPathSettings::default().http_header_read_timeout))]
    http_header_read_timeout_ms: u64,
    /// An HTTP/1.1 connection waiting for its next request is closed after this.
    #[arg(long, default_value_t = millis(DataPathSettings::default().http_idle_timeout))]
    http_idle_timeout_ms: u64,
    /// Largest request head (HTTP/1.1) or decoded header list (HTTP/2); beyond: 431.
    #[arg(long, default_value_t = DataPathSettings::default().http_max_header_bytes)]
    http_max_header_bytes: usize,
    /// Most header fields in a request; beyond: 431.
    #[arg(long, default_value_t = DataPathSettings::default().http_max_headers)]
    http_max_headers: usize,
    /// Longest request target; beyond: 414.
    #[arg(long, default_value_t = DataPathSettings::default().http_max_uri_bytes)]
    http_max_uri_bytes: usize,
    /// Streams one HTTP/2 connection may have open at once.
    #[arg(long, default_value_t = DataPathSettings::default().http2_max_concurrent_streams)]
    http2_max_concurrent_streams: u32,
    /// HTTP/2 receive window per stream, bytes.
    #[arg(long, default_value_t = DataPathSettings::default().http2_stream_window)]
    http2_stream_window: u32,
    /// HTTP/2 receive window per connection, bytes.
    #[arg(long, default_value_t = DataPathSettings::default().http2_connection_window)]
    http2_connection_window: u32,
    /// Streams reset before they were accepted; one more and GOAWAY.
    #[arg(long, default_value_t = DataPathSettings::default().http2_max_pending_accept_resets)]
    http2_max_pending_accept_resets: usize,
    /// Streams the proxy may reset for protocol errors per connection.
    #[arg(long, default_value_t = DataPathSettings::default().http2_max_local_error_resets)]
    http2_max_local_error_resets: usize,
    /// Requests reset before their response (rapid reset) before GOAWAY.
    #[arg(long, default_value_t = DataPathSettings::default().http2_max_premature_resets)]
    http2_max_premature_resets: usize,
    /// Connections each listener holds at once; more are closed at accept.
    #[arg(long, default_value_t = DataPathSettings::default().max_connections_per_listener)]
    max_connections_per_listener: usize,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        mesh_addr: args.mesh_addr,
        ipv6: args.ipv6,
        admin_addr: args.admin_addr,
        readiness_addr: args.readiness_addr,
        metrics_addr: args.metrics_addr,
        settings: DataPathSettings {
            outbound_detect_timeout: Duration::from_millis(args.detect_timeout_ms),
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            tcp_idle_timeout: Duration::from_secs(args.tcp_idle_timeout_secs),
            http_header_read_timeout: Duration::from_millis(args.http_header_read_timeout_ms),
            http_idle_timeout: Duration::from_millis(args.http_idle_timeout_ms),
            http_max_header_bytes: args.http_max_header_bytes,
            http_max_headers: args.http_max_headers,
            http_max_uri_bytes: args.http_max_uri_bytes,
            http2_max_concurrent_streams: args.http2_max_concurrent_streams,
            http2_stream_window: args.http2_stream_window,
            http2_connection_window: args.http2_connection_window,
            http2_max_pending_accept_resets: args.http2_max_pending_accept_resets,
            http2_max_local_error_resets: args.http2_max_local_error_resets,
            http2_max_premature_resets: args.http2_max_premature_resets,
            max_connections_per_listener: args.max_connections_per_listener,
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
