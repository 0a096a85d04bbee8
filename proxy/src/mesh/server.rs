//! The mesh listener (15008): HTTP/2 from peer proxies, delivered to this
//! pod's app. Requests name their app port in `x-knit-target-port`; CONNECT
//! streams become tunnels to `pod-ip:port`.
//!
//! Before anything reaches the app: the port's mTLS mode, then (requests)
//! normalization, then this workload's AuthorizationPolicies, with the
//! peer's verified SPIFFE ID as the source (none on plaintext). A tunnel is
//! authorized as a TCP connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{
    DESTINATION_SERVICE_HEADER, ORIG_PROTO_HEADER, SOURCE_NAMESPACE_HEADER, SOURCE_WORKLOAD_HEADER,
    TARGET_PORT_HEADER,
};
use crate::addr::ClientAddr;
use crate::authz::{Attributes, HttpAttributes, authorize, normalize_request, request_authority};
use crate::config::snapshot::Upstream;
use crate::context::ProxyContext;
use crate::error::Error;
use crate::http::forward::{Route, forward};
use crate::http::server::{HttpHandler, HttpLimits, serve_http2};
use crate::http::{Body, error_response, full_body};
use crate::identity::{SpiffeId, io_rejection_reason, peer_identity};
use crate::listener::{ConnectionLimit, spawn_in_slot};
use crate::metrics::{Reporter, SecurityPolicy, TrafficLabels, mesh_name, unknown};
use crate::stats::inc;
use crate::tcp;

use super::PROXY_PORTS;

pub struct MeshListener {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl MeshListener {
    pub fn new(listener: TcpListener, ctx: Arc<ProxyContext>) -> Self {
        MeshListener { listener, ctx }
    }

    pub async fn run(self) {
        let limits = HttpLimits::new(&self.ctx.settings);
        let limit = ConnectionLimit::new(self.ctx.settings.max_connections_per_listener);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(listener = "mesh", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(slot) = limit.admit("mesh", &self.ctx.stats.mesh.connections_refused) else {
                drop(stream);
                continue;
            };
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            inc(&self.ctx.stats.mesh.connections);
            let ctx = self.ctx.clone();
            // The same HTTP/2 settings and abuse limits as the downstream
            // servers: a peer proxy is trusted no more than its pod.
            spawn_in_slot(slot, async move {
                let client = ClientAddr(peer);
                let pod_ip = local.ip().to_canonical();
                if starts_with_tls(&stream).await {
                    let Some(own) = ctx.current_identity() else {
                        let e = Error::NoIdentity;
                        ctx.stats.mesh.errors.record(e.reason());
                        warn!(%client, reason = e.reason(), "mutual TLS from a peer refused: no certificate yet");
                        return;
                    };
                    match tokio_rustls::TlsAcceptor::from(own.server_config.clone())
                        .accept(stream)
                        .await
                    {
                        Ok(tls) => {
                            // The verifier already checked the chain and
                            // the SAN; this reads the proven identity.
                            let peer_id = peer_identity(tls.get_ref().1).ok();
                            let handler = Arc::new(MeshInbound {
                                ctx,
                                client,
                                pod_ip,
                                peer_id,
                                own_id: Some(own.id.clone()),
                            });
                            serve_http2(tls, handler, &limits).await;
                        }
                        Err(e) => {
                            let reason = io_rejection_reason(&e);
                            ctx.stats.mesh.errors.record("mesh_tls_failed");
                            warn!(%client, reason, error = %e, "mutual TLS from a peer failed");
                        }
                    }
                } else {
                    let handler = Arc::new(MeshInbound {
                        ctx,
                        client,
                        pod_ip,
                        peer_id: None,
                        own_id: None,
                    });
                    serve_http2(stream, handler, &limits).await;
                }
            });
        }
    }
}

impl HttpHandler for MeshInbound {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        MeshInbound::handle(self, req)
    }
}

struct MeshInbound {
    ctx: Arc<ProxyContext>,
    client: ClientAddr,
    /// The address the peer connected to: this pod's IP.
    pod_ip: IpAddr,
    /// The peer's proven identity (mutual TLS), and ours on that connection.
    peer_id: Option<SpiffeId>,
    own_id: Option<SpiffeId>,
}

/// Whether the connection opens with a TLS handshake record (mutual TLS
/// from a peer); anything else is plaintext HTTP/2.
async fn starts_with_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

impl MeshInbound {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let stats = &self.ctx.stats.mesh;
        let mut labels = destination_labels(&self.ctx, req.headers());
        if let (Some(peer), Some(own)) = (&self.peer_id, &self.own_id) {
            labels.source_principal = peer.shared();
            labels.destination_principal = own.shared();
            labels.connection_security_policy = SecurityPolicy::mutual_tls;
        }
        let is_tunnel = req.method() == Method::CONNECT;
        let result = if is_tunnel {
            inc(&stats.tunnels);
            self.tunnel(req).await
        } else {
            inc(&stats.requests);
            self.deliver(req).await
        };
        let resp = result.unwrap_or_else(|e| {
            stats.errors.record(e.reason());
            // A denial was logged where it was decided, with what was asked.
            if !matches!(e, Error::RbacDenied { .. }) {
                warn!(client = %self.client, reason = e.reason(), error = %e, "mesh request failed");
            }
            error_response(&e)
        });
        if is_tunnel {
            if resp.status().is_success() {
                self.ctx.metrics.tcp_opened(labels);
            }
        } else {
            self.ctx.metrics.request(labels, resp.status().as_u16());
        }
        resp
    }

    fn app_addr(&self, port: u16) -> Result<SocketAddr, Error> {
        let app = SocketAddr::new(self.pod_ip, port);
        if PROXY_PORTS.contains(&port) {
            return Err(Error::ProxyPort(app));
        }
        // A plaintext peer connection may only reach ports that accept
        // plaintext (PERMISSIVE, DISABLE); STRICT ports need mutual TLS.
        if self.peer_id.is_none()
            && !self
                .ctx
                .config
                .load()
                .inbound
                .mode_for(port)
                .allows_plaintext()
        {
            return Err(Error::MtlsRequired { port });
        }
        Ok(app)
    }

    /// Checks the AuthorizationPolicies for a request to app port `port`
    /// (normalized already), or for a tunnel (`req` is `None`).
    fn authorize<B>(&self, port: u16, req: Option<&Request<B>>) -> Result<(), Error> {
        let config = self.ctx.config.load();
        let policies = &config.authorization;
        if policies.is_empty() {
            return Ok(());
        }
        let http = req.map(|req| {
            HttpAttributes::new(
                req.method().as_str(),
                request_authority(req),
                req.uri().path(),
                req.headers(),
            )
        });
        let request = Attributes {
            source: self.peer_id.as_ref(),
            source_ip: self.client.0.ip(),
            destination_ip: self.pod_ip,
            destination_port: port,
            http,
        };
        authorize(policies, &request, "mesh", self.client)
    }

    async fn deliver(&self, mut req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let port = req
            .headers()
            .get(TARGET_PORT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| Error::BadRequest(format!("missing or invalid {TARGET_PORT_HEADER}")))?;
        let app = self.app_addr(port)?;
        let app_version = match req.headers().get(ORIG_PROTO_HEADER).map(|v| v.as_bytes()) {
            Some(b"HTTP/1.1") | Some(b"HTTP/1.0") => Version::HTTP_11,
            _ => Version::HTTP_2,
        };
        req.headers_mut().remove(TARGET_PORT_HEADER);
        req.headers_mut().remove(ORIG_PROTO_HEADER);
        // The app gets exactly the request the decision was made on.
        normalize_request(&mut req)?;
        self.authorize(port, Some(&req))?;
        let route = Route {
            direct: &self.ctx.pools.app,
            direct_version: app_version,
            mesh: &self.ctx.pools.mesh,
            identity: None,
            fallback_authority: app,
            attempts: 1,
        };
        forward(&route, req, || Ok(Upstream::Direct(app))).await
    }

    async fn tunnel(&self, req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let port = req.uri().port_u16().ok_or_else(|| {
            Error::BadRequest(format!("CONNECT target {} has no port", req.uri()))
        })?;
        let app = self.app_addr(port)?;
        self.authorize(port, None::<&Request<Incoming>>)?;
        let mut app_stream = self.ctx.pools.app.connect_stream(app).await?;
        let client = self.client;
        let idle = self.ctx.settings.tcp_idle_timeout;
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut tunnel = TokioIo::new(upgraded);
                    if let Err(e) =
                        tcp::copy_with_idle_timeout(&mut tunnel, &mut app_stream, idle, app).await
                    {
                        debug!(%client, %app, error = %e, "mesh tunnel ended");
                    }
                }
                Err(e) => debug!(%client, %app, error = %e, "mesh tunnel was not established"),
            }
        });
        let mut resp = Response::new(full_body(""));
        *resp.status_mut() = StatusCode::OK;
        Ok(resp)
    }
}

/// Labels of traffic this proxy receives from a peer (reporter=destination):
/// the peer's metadata, validated; this pod as the destination.
pub fn destination_labels(ctx: &ProxyContext, headers: &http::HeaderMap) -> TrafficLabels {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TrafficLabels {
        reporter: Reporter::destination,
        source_workload: mesh_name(header(SOURCE_WORKLOAD_HEADER)),
        source_namespace: mesh_name(header(SOURCE_NAMESPACE_HEADER)),
        source_principal: unknown(),
        destination_service: mesh_name(header(DESTINATION_SERVICE_HEADER)),
        destination_workload: ctx.node.workload.clone(),
        destination_namespace: ctx.node.namespace.clone(),
        destination_principal: unknown(),
        connection_security_policy: SecurityPolicy::none,
    }
}
