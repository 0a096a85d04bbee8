#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use knit_proxy::identity::{IdentityOptions, TrustDomain};
use knit_proxy::{DataPathSettings, NodeIdentity, ProxyOptions};

/// Whether the proxy gets a workload certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IdentityMode {
    /// Obtain and renew a certificate; ready only once one is held.
    On,
    /// No certificate: plaintext mesh only (tests, migration).
    Off,
}

/// The Knit sidecar proxy. Runs as uid 1337 next to the app; knit-init's
/// iptables rules send the pod's traffic through it.
#[derive(Debug, Parser)]
// The last occurrence of a flag wins, so a wrapper's defaults can be
// overridden by appending.
#[command(name = "knit-proxy", version, args_override_self = true)]
struct Args {
    /// knitd's address: https://knitd.knit-system.svc:15012 (TLS, with
    /// --control-plane-ca), or http://...:15010 for development.
    #[arg(long, env = "KNIT_CONTROL_PLANE")]
    control_plane: String,
    /// PEM root that signs knitd's certificate (the mesh root), for
    /// https:// control-plane and CA URLs; read at every connection.
    #[arg(long, env = "KNIT_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long = "namespace", env = "POD_NAMESPACE")]
    namespace: String,
    /// This pod's IPs, comma separated.
    #[arg(long, env = "POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<String>,
    /// The workload's service account; its certificate is for
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Workload identity: `on` gets a certificate from the mesh CA (needs
    /// --token-file), `off` runs with a plaintext mesh only.
    #[arg(long, value_enum, default_value = "on")]
    identity: IdentityMode,
    /// File holding the bearer token for the mesh CA; re-read at every
    /// renewal, so it can be rotated in place.
    #[arg(long, env = "KNIT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The mesh CA's URL; --control-plane unless given.
    #[arg(long, env = "KNIT_CA_URL")]
    ca_url: Option<String>,
    /// SPIFFE trust domain of the mesh (must match knitd's).
    #[arg(long, default_value = "cluster.local", value_parser = parse_trust_domain)]
    trust_domain: TrustDomain,
    /// Certificate lifetime to ask for; the CA may grant less.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    cert_ttl_secs: u64,
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

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| format!("the trust domain {e}"))
}

/// The identity options, or why the flags do not make sense together.
fn identity_options(args: &Args) -> anyhow::Result<Option<IdentityOptions>> {
    if args.identity == IdentityMode::Off {
        return Ok(None);
    }
    let Some(token_file) = args.token_file.clone() else {
        anyhow::bail!(
            "--identity on needs --token-file (or KNIT_TOKEN_FILE): the mesh CA signs a \
             certificate only for a caller it can authenticate; use --identity off for a \
             proxy without one"
        );
    };
    let ca_url = args
        .ca_url
        .clone()
        .unwrap_or_else(|| args.control_plane.clone());
    // The CA is knitd too: over TLS it is verified with the same root.
    let ca_root_file = args
        .control_plane_ca
        .clone()
        .filter(|_| ca_url.starts_with("https://"));
    Ok(Some(IdentityOptions {
        ca_url,
        ca_root_file,
        token_file: Some(token_file),
        trust_domain: args.trust_domain.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        requested_ttl: Duration::from_secs(args.cert_ttl_secs),
    }))
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
    let identity = identity_options(&args)?;
    let opts = ProxyOptions {
        control_plane: args.control_plane,
        control_plane_ca: args.control_plane_ca,
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
        identity,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let base = [
            "knit-proxy",
            "--control-plane",
            "http://198.18.0.1:15010",
            "--pod-name",
            "web-0",
            "--namespace",
            "shop",
            "--service-account",
            "web",
        ];
        Args::try_parse_from(base.iter().chain(extra)).expect("valid flags")
    }

    #[test]
    fn identity_flags() {
        let on = identity_options(&args(&["--token-file", "/var/run/knit/token"]))
            .expect("valid")
            .expect("identity on by default");
        assert_eq!(
            on.ca_url, "http://198.18.0.1:15010",
            "the control plane by default"
        );
        assert_eq!(on.trust_domain.as_str(), "cluster.local");
        assert_eq!(on.requested_ttl, Duration::from_secs(86_400));
        assert_eq!(
            (on.namespace.as_str(), on.service_account.as_str()),
            ("shop", "web")
        );

        let custom = identity_options(&args(&[
            "--token-file=/t",
            "--ca-url=http://ca:15010",
            "--trust-domain=example.org",
            "--cert-ttl-secs=600",
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!(custom.ca_url, "http://ca:15010");
        assert_eq!(custom.trust_domain.as_str(), "example.org");
        assert_eq!(custom.requested_ttl, Duration::from_secs(600));

        assert!(
            identity_options(&args(&["--identity", "off"]))
                .expect("valid")
                .is_none()
        );
        let err = identity_options(&args(&[])).expect_err("no token file");
        assert!(err.to_string().contains("--token-file"), "{err}");

        for bad in [
            &["--trust-domain", "Example.org"][..],
            &["--cert-ttl-secs", "0"],
            &["--identity", "maybe"],
        ] {
            let base = [
                "knit-proxy",
                "--control-plane",
                "x",
                "--pod-name",
                "p",
                "--namespace",
                "n",
            ];
            assert!(
                Args::try_parse_from(base.iter().chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
