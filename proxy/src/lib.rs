//! knit-proxy: the Knit sidecar. Each listener is a struct with `run()`;
//! each accepted connection is one task that flows one way:
//! accept → original dst → detect → route → balance → connect.
#![forbid(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod authz;
pub mod config;
pub mod context;
pub mod control_plane;
pub mod detect;
pub mod dualstack;
pub mod error;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod outbound;
pub mod sockopt;
pub mod stats;
pub mod tcp;
pub mod upstream_tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use knit_proto::v1;
use tracing::info;

pub use context::DataPathSettings;
pub use error::Error;

use crate::admin::{AdminServer, Role};
use crate::config::discovery::ControlPlaneClient;
use crate::context::ProxyContext;
use crate::inbound::InboundListener;
use crate::mesh::server::MeshListener;
use crate::outbound::OutboundListener;

/// Who this proxy is, as told to the control plane.
#[derive(Debug, Clone, Default)]
pub struct NodeIdentity {
    pub pod_name: String,
    pub namespace: String,
    pub pod_ips: Vec<String>,
    pub service_account: String,
}

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub control_plane: String,
    /// For an `https://` control plane: the root that signs knitd's
    /// certificate.
    pub control_plane_ca: Option<std::path::PathBuf>,
    pub node: NodeIdentity,
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    /// Where peer proxies connect (HTTP/2, never captured).
    pub mesh_addr: SocketAddr,
    /// Also capture IPv6: listen on `[::]` at the outbound and inbound
    /// ports. Where the kernel has no IPv6 this is skipped with a warning.
    pub ipv6: bool,
    pub admin_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    /// Prometheus `/metrics`.
    pub metrics_addr: SocketAddr,
    pub settings: DataPathSettings,
    /// How to obtain this workload's certificate from the mesh CA. `None`
    /// (identity off): no certificate, plaintext mesh only.
    pub identity: Option<identity::IdentityOptions>,
}

/// Binds every listener (failing fast if one cannot be bound), then serves
/// until `shutdown` resolves.
pub async fn run(opts: ProxyOptions, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut ctx = ProxyContext::new(opts.settings.clone());
    ctx.node = context::NodeMeta {
        workload: opts.node.pod_name.as_str().into(),
        namespace: opts.node.namespace.as_str().into(),
    };
    for ip in &opts.node.pod_ips {
        let parsed = ip
            .parse::<std::net::IpAddr>()
            .map_err(|_| Error::InvalidConfig(format!("--pod-ips: {ip:?} is not an IP address")))?;
        ctx.pod_ips.push(parsed.to_canonical());
    }
    if let Some(identity) = &opts.identity {
        // A bad CA URL or an identity that is no SPIFFE ID can never work:
        // fail now instead of retrying forever.
        let id = identity
            .validate()
            .map_err(|e| Error::InvalidConfig(format!("workload identity: {e}")))?;
        info!(%id, ca = %identity.ca_url, "workload identity on; requesting a certificate");
        ctx.identity = Some(identity::IdentityManager::with_metrics(
            identity.clone(),
            ctx.metrics.identity_metrics(),
        ));
    }
    let ctx = Arc::new(ctx);
    let outbound = listener::bind("outbound listener", opts.outbound_addr).await?;
    let inbound = listener::bind("inbound listener", opts.inbound_addr).await?;
    let mesh = listener::bind("mesh listener", opts.mesh_addr).await?;
    let admin = listener::bind("admin server", opts.admin_addr).await?;
    let readiness = listener::bind("readiness server", opts.readiness_addr).await?;
    let metrics = listener::bind("metrics server", opts.metrics_addr).await?;
    ctx.listeners_bound.store(true, Ordering::Release);
    info!(
        outbound = %opts.outbound_addr,
        inbound = %opts.inbound_addr,
        mesh = %opts.mesh_addr,
        admin = %opts.admin_addr,
        readiness = %opts.readiness_addr,
        pod = %opts.node.pod_name,
        namespace = %opts.node.namespace,
        "knit-proxy listening"
    );

    let node = v1::Node {
        pod_name: opts.node.pod_name.clone(),
        namespace: opts.node.namespace.clone(),
        ips: opts.node.pod_ips.clone(),
        service_account: opts.node.service_account.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let target = control_plane::ControlPlaneTarget::new(
        &opts.control_plane,
        opts.control_plane_ca.as_deref(),
    )
    .map_err(|e| Error::ControlPlaneAddress(opts.control_plane.clone(), e))?;
    if !target.is_tls() {
        info!(control_plane = %target.url(), "control plane over plaintext (development only: tokens and config travel unencrypted)");
    }
    let control_plane = ControlPlaneClient::new(target, node, ctx.clone());

    // Each part is its own task, so config compilation never stalls an
    // accept loop.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(OutboundListener::new(outbound, ctx.clone()).run());
    tasks.spawn(InboundListener::new(inbound, ctx.clone()).run());
    tasks.spawn(MeshListener::new(mesh, ctx.clone()).run());
    if opts.ipv6 {
        for (what, port) in [
            ("outbound", opts.outbound_addr.port()),
            ("inbound", opts.inbound_addr.port()),
        ] {
            match dualstack::bind_v6_only(port) {
                Ok(listener) if what == "outbound" => {
                    tasks.spawn(OutboundListener::new(listener, ctx.clone()).run());
                }
                Ok(listener) => {
                    tasks.spawn(InboundListener::new(listener, ctx.clone()).run());
                }
                Err(e) => {
                    tracing::warn!(listener = what, port, error = %e, "no IPv6 listener; IPv6 traffic is not proxied")
                }
            }
        }
    }
    tasks.spawn(AdminServer::new(admin, ctx.clone(), Role::Admin).run());
    tasks.spawn(AdminServer::new(readiness, ctx.clone(), Role::Readiness).run());
    tasks.spawn(AdminServer::new(metrics, ctx.clone(), Role::Metrics).run());
    tasks.spawn(control_plane.run());
    if let Some(manager) = &ctx.identity {
        tasks.spawn(Arc::clone(manager).run());
    }
    tokio::select! {
        _ = tasks.join_next() => tracing::error!("a proxy component stopped unexpectedly"),
        _ = shutdown => info!("shutting down"),
    }
    tasks.shutdown().await;
    Ok(())
}
