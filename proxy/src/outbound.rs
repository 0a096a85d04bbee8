//! The outbound listener (15001): connections the app opened, redirected
//! here by iptables. accept → original dst → service lookup → detect →
//! HTTP: route + balance per request | TCP: balance per connection.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::config::snapshot::{DeclaredProtocol, Endpoint, ServiceTarget, Upstream};
use crate::context::ProxyContext;
use crate::detect::{Detected, detect, is_server_first};
use crate::error::Error;
use crate::http::forward::{Route, forward, mesh_tls, same_major_version};
use crate::http::server::{HttpHandler, serve};
use crate::http::upgrade::{forward_upgrade, is_upgrade};
use crate::http::{Body, error_response, headers::strip_knit_headers};
use crate::listener::{accept_loop, record_detection};
use crate::mesh::client::open_tunnel;
use crate::mesh::source_metadata;
use crate::metrics::{LabelValue, Reporter, SecurityPolicy, TrafficLabels, UNKNOWN, unknown};
use crate::stats::inc;
use crate::tcp;
use crate::upstream_tls::TlsUse;

pub struct OutboundListener {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl OutboundListener {
    pub fn new(listener: TcpListener, ctx: Arc<ProxyContext>) -> Self {
        OutboundListener { listener, ctx }
    }

    pub async fn run(self) {
        let ctx = self.ctx;
        accept_loop(
            "outbound",
            self.listener,
            ctx.clone(),
            |stats| &stats.outbound,
            move |stream, client, orig_dst| {
                handle_connection(stream, client, orig_dst, ctx.clone())
            },
        )
        .await
    }
}

pub async fn handle_connection(
    stream: TcpStream,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
    ctx: Arc<ProxyContext>,
) {
    let stats = &ctx.stats.outbound;
    inc(&stats.connections);
    let target = ctx.config.load().lookup(orig_dst.0).cloned();
    let Some(target) = target else {
        // Not a mesh service: pass it through untouched to where the app
        // was going.
        inc(&stats.passthrough_connections);
        let result = match tcp::open(&Upstream::Direct(orig_dst.0), &ctx.pools, &None, &[]).await {
            Ok(up) => tcp::splice(stream, up, ctx.settings.tcp_idle_timeout)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            stats.errors.record(e.reason());
            info!(%client, %orig_dst, reason = e.reason(), error = %e, "outbound passthrough failed");
        }
        return;
    };
    let detected = match target.protocol {
        DeclaredProtocol::Http | DeclaredProtocol::Http2 | DeclaredProtocol::Grpc => {
            inc(&stats.declared);
            Detected::Http1 // the HTTP server reads the preface itself
        }
        DeclaredProtocol::Tcp | DeclaredProtocol::Tls => {
            inc(&stats.declared);
            Detected::Opaque
        }
        DeclaredProtocol::Detect if is_server_first(orig_dst.0.port()) => {
            inc(&stats.declared);
            Detected::Opaque
        }
        DeclaredProtocol::Detect => {
            match detect(&stream, ctx.settings.outbound_detect_timeout).await {
                Ok(d) => {
                    record_detection(stats, d);
                    d
                }
                Err(e) => {
                    debug!(%client, error = %e, "outbound detection failed");
                    return;
                }
            }
        }
    };
    match detected {
        Detected::Http1 | Detected::Http2 => {
            let handler = Arc::new(OutboundHttp {
                ctx: ctx.clone(),
                client,
                orig_dst,
            });
            serve(stream, handler, &ctx.settings).await;
        }
        Detected::Tls | Detected::Opaque | Detected::Timeout => {
            forward_tcp_to_service(stream, client, &target, &ctx).await;
        }
        Detected::Closed => {}
    }
}

async fn forward_tcp_to_service(
    stream: TcpStream,
    client: ClientAddr,
    target: &ServiceTarget,
    ctx: &ProxyContext,
) {
    let stats = &ctx.stats.outbound;
    inc(&stats.tcp_connections);
    let metadata = source_metadata(&ctx.node, &target.hostname);
    let identity = ctx.current_identity();
    let result = async {
        let mut attempt = 1;
        let (connected, ep, upstream) = loop {
            let ep = target.pick().ok_or_else(|| Error::NoEndpoints {
                service: target.service.clone(),
                port: target.port,
            })?;
            let upstream = ctx.upstream_for(target, ep)?;
            match tcp::open(&upstream, &ctx.pools, &identity, &metadata).await {
                Ok(up) => break (up, ep, upstream),
                Err(e) if e.is_retryable() && attempt < UPSTREAM_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        ctx.metrics.tcp_opened(source_labels(
            ctx,
            Some(&target.hostname),
            Some(ep),
            Some(&upstream),
        ));
        tcp::splice(stream, connected, ctx.settings.tcp_idle_timeout)
            .await
            .map(|_| ())
    }
    .await;
    if let Err(e) = result {
        stats.errors.record(e.reason());
        warn!(%client, service = %target.service, port = target.port, reason = e.reason(), error = %e, "outbound TCP failed");
    }
}

/// Labels of traffic this proxy sends (reporter=source). Principals are
/// known only when the hop is mutual TLS: ours, and the one the peer had
/// to prove.
fn source_labels(
    ctx: &ProxyContext,
    service: Option<&LabelValue>,
    ep: Option<&Endpoint>,
    upstream: Option<&Upstream>,
) -> TrafficLabels {
    let peer_id = match upstream {
        Some(Upstream::Mesh {
            identity: Some(id), ..
        }) => Some(id),
        _ => None,
    };
    let own_id = peer_id
        .and(ctx.current_identity())
        .map(|own| own.id.shared());
    TrafficLabels {
        reporter: Reporter::source,
        source_workload: ctx.node.workload.clone(),
        source_namespace: ctx.node.namespace.clone(),
        source_principal: own_id.unwrap_or_else(unknown),
        destination_service: service.cloned().unwrap_or_else(unknown),
        destination_workload: ep.map_or_else(unknown, |ep| ep.workload.clone()),
        destination_namespace: ep.map_or_else(unknown, |ep| ep.namespace.clone()),
        destination_principal: peer_id.map_or_else(unknown, |id| id.shared()),
        connection_security_policy: if peer_id.is_some() {
            SecurityPolicy::mutual_tls
        } else {
            SecurityPolicy::none
        },
    }
}

/// Routes each request of one app connection. The service is looked up
/// again per request, so a config change reaches keep-alive connections.
struct OutboundHttp {
    ctx: Arc<ProxyContext>,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
}

impl OutboundHttp {
    /// Picks where the next attempt goes; remembers the endpoint for metrics.
    fn pick<'t>(
        &self,
        target: Option<&'t ServiceTarget>,
        picked: &mut Option<(&'t Endpoint, Upstream)>,
    ) -> Result<Upstream, Error> {
        match target {
            // The service disappeared under a live connection: go where the
            // app was going, as for any unknown destination.
            None => Ok(Upstream::Direct(self.orig_dst.0)),
            Some(target) => {
                let ep = target.pick().ok_or_else(|| Error::NoEndpoints {
                    service: target.service.clone(),
                    port: target.port,
                })?;
                let upstream = self.ctx.upstream_for(target, ep)?;
                *picked = Some((ep, upstream.clone()));
                Ok(upstream)
            }
        }
    }

    async fn route_and_forward<'t>(
        &self,
        mut req: Request<Incoming>,
        target: Option<&'t ServiceTarget>,
        picked: &mut Option<(&'t Endpoint, Upstream)>,
    ) -> Result<Response<Body>, Error> {
        strip_knit_headers(req.headers_mut());
        let service = target.map_or(UNKNOWN, |t| &*t.hostname);
        let metadata = source_metadata(&self.ctx.node, service);
        if is_upgrade(&req) {
            return match self.pick(target, picked)? {
                Upstream::Direct(addr) => {
                    let io = TokioIo::new(self.ctx.pools.direct.connect_stream(addr).await?);
                    forward_upgrade(io, req, addr).await
                }
                Upstream::Tls { addr, tls } => {
                    let stream = self
                        .ctx
                        .pools
                        .direct
                        .connect_tls(addr, &tls, TlsUse::Http1)
                        .await?;
                    forward_upgrade(TokioIo::new(stream), req, addr).await
                }
                Upstream::Mesh {
                    peer,
                    target_port,
                    identity,
                } => {
                    let own = self.ctx.current_identity();
                    let tls = mesh_tls(&own, &identity)?;
                    let tunnel =
                        open_tunnel(&self.ctx.pools.mesh, peer, tls, target_port, &metadata)
                            .await?;
                    forward_upgrade(tunnel, req, peer).await
                }
            };
        }
        // Stripped again for a direct upstream; kept on the mesh hop.
        for (name, value) in metadata {
            req.headers_mut().insert(name, value);
        }
        let route = Route {
            direct: &self.ctx.pools.direct,
            direct_version: same_major_version(req.version()),
            mesh: &self.ctx.pools.mesh,
            identity: self.ctx.current_identity(),
            fallback_authority: self.orig_dst.0,
            attempts: UPSTREAM_ATTEMPTS,
        };
        forward(&route, req, || self.pick(target, picked)).await
    }
}

/// Connection attempts per request (first try included) before giving up.
const UPSTREAM_ATTEMPTS: usize = 3;

impl HttpHandler for OutboundHttp {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let stats = &self.ctx.stats.outbound;
        inc(&stats.http_requests);
        // For the log line of a failure; cloning shares the bytes.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let target = self.ctx.config.load().lookup(self.orig_dst.0).cloned();
        let mut picked = None;
        let resp = match self
            .route_and_forward(req, target.as_deref(), &mut picked)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                stats.errors.record(e.reason());
                warn!(client = %self.client, orig_dst = %self.orig_dst, %method, path = uri.path(), reason = e.reason(), error = %e, "outbound request failed");
                error_response(&e)
            }
        };
        let (ep, upstream) = match &picked {
            Some((ep, upstream)) => (Some(*ep), Some(upstream)),
            None => (None, None),
        };
        self.ctx.metrics.request(
            source_labels(
                &self.ctx,
                target.as_deref().map(|t| &t.hostname),
                ep,
                upstream,
            ),
            resp.status().as_u16(),
        );
        resp
    }
}
