//! The inbound listener (15006): connections to this pod, redirected here
//! by iptables. accept → original dst (this pod's IP and the app's port) →
//! detect → HTTP per request | TCP → the local app.
//!
//! Clients here have no Knit proxy, hence no identity: the
//! AuthorizationPolicies see them as plaintext sources. HTTP requests are
//! normalized and authorized one by one; a TCP connection is authorized
//! once, before the app is connected.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::authz::{Attributes, HttpAttributes, authorize, normalize_request, request_authority};
use crate::config::snapshot::Upstream;
use crate::context::ProxyContext;
use crate::detect::{Detected, detect, is_server_first};
use crate::error::Error;
use crate::http::forward::{Route, forward, same_major_version};
use crate::http::headers::strip_knit_headers;
use crate::http::server::{HttpHandler, serve};
use crate::http::upgrade::{forward_upgrade, is_upgrade};
use crate::http::{Body, error_response};
use crate::listener::{accept_loop, record_detection};
use crate::mesh::PROXY_PORTS;
use crate::mesh::server::destination_labels;
use crate::stats::inc;
use crate::tcp;

pub struct InboundListener {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl InboundListener {
    pub fn new(listener: TcpListener, ctx: Arc<ProxyContext>) -> Self {
        InboundListener { listener, ctx }
    }

    pub async fn run(self) {
        let ctx = self.ctx;
        accept_loop(
            "inbound",
            self.listener,
            ctx.clone(),
            |stats| &stats.inbound,
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
    let stats = &ctx.stats.inbound;
    inc(&stats.connections);
    if PROXY_PORTS.contains(&orig_dst.0.port()) {
        // Only a capture rule that forgot to exclude a proxy port gets us
        // here; delivering would loop through the proxy.
        let e = Error::ProxyPort(orig_dst.0);
        stats.errors.record(e.reason());
        warn!(%client, reason = e.reason(), error = %e, "inbound connection refused");
        return;
    }
    // Everything on this listener is plaintext (peers use the mesh port).
    // Under STRICT it is refused before a byte reaches the app — except a
    // call this pod made to itself, which came through its own proxy.
    let mode = ctx.config.load().inbound.mode_for(orig_dst.0.port());
    if !mode.allows_plaintext() && !ctx.pod_ips.contains(&client.0.ip().to_canonical()) {
        let e = Error::MtlsRequired {
            port: orig_dst.0.port(),
        };
        stats.errors.record(e.reason());
        info!(%client, %orig_dst, reason = e.reason(), error = %e, "inbound plaintext refused");
        return;
    }
    let detected = if is_server_first(orig_dst.0.port()) {
        inc(&stats.declared);
        Detected::Opaque
    } else {
        match detect(&stream, ctx.settings.inbound_detect_timeout).await {
            Ok(d) => {
                record_detection(stats, d);
                d
            }
            Err(e) => {
                debug!(%client, error = %e, "inbound detection failed");
                return;
            }
        }
    };
    match detected {
        Detected::Http1 | Detected::Http2 => {
            serve(
                stream,
                Arc::new(InboundHttp {
                    ctx: ctx.clone(),
                    client,
                    orig_dst,
                }),
                &ctx.settings,
            )
            .await;
        }
        Detected::Tls | Detected::Opaque | Detected::Timeout => {
            if let Err(e) = authorize_connection(&ctx, client, orig_dst) {
                // Logged where it was decided; closed before the app is
                // connected.
                stats.errors.record(e.reason());
                return;
            }
            inc(&stats.tcp_connections);
            ctx.metrics
                .tcp_opened(destination_labels(&ctx, &http::HeaderMap::new()));
            if let Err(e) = tcp::deliver(
                stream,
                orig_dst.0,
                &ctx.pools,
                ctx.settings.tcp_idle_timeout,
            )
            .await
            {
                stats.errors.record(e.reason());
                info!(%client, %orig_dst, reason = e.reason(), error = %e, "inbound TCP failed");
            }
        }
        Detected::Closed => {}
    }
}

/// Checks the AuthorizationPolicies for a TCP connection.
fn authorize_connection(
    ctx: &ProxyContext,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
) -> Result<(), Error> {
    let config = ctx.config.load();
    let request = Attributes {
        source: None,
        source_ip: client.0.ip(),
        destination_ip: orig_dst.0.ip(),
        destination_port: orig_dst.0.port(),
        http: None,
    };
    authorize(&config.authorization, &request, "inbound", client)
}

/// Delivers each request to the local app at the original destination.
struct InboundHttp {
    ctx: Arc<ProxyContext>,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
}

impl InboundHttp {
    /// Normalizes the request (the app gets exactly what was decided on)
    /// and checks the AuthorizationPolicies.
    fn admit<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        normalize_request(req)?;
        let config = self.ctx.config.load();
        if config.authorization.is_empty() {
            return Ok(());
        }
        let request = Attributes {
            source: None,
            source_ip: self.client.0.ip(),
            destination_ip: self.orig_dst.0.ip(),
            destination_port: self.orig_dst.0.port(),
            http: Some(HttpAttributes::new(
                req.method().as_str(),
                request_authority(req),
                req.uri().path(),
                req.headers(),
            )),
        };
        authorize(&config.authorization, &request, "inbound", self.client)
    }
}

impl HttpHandler for InboundHttp {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let stats = &self.ctx.stats.inbound;
        inc(&stats.http_requests);
        // A client without a Knit proxy cannot speak for the mesh.
        strip_knit_headers(req.headers_mut());
        let labels = destination_labels(&self.ctx, req.headers());
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let app = self.orig_dst.0;
        let result = if let Err(e) = self.admit(&mut req) {
            Err(e)
        } else if is_upgrade(&req) {
            match self.ctx.pools.app.connect_stream(app).await {
                Ok(stream) => forward_upgrade(TokioIo::new(stream), req, app).await,
                Err(e) => Err(e),
            }
        } else {
            let route = Route {
                direct: &self.ctx.pools.app,
                direct_version: same_major_version(req.version()),
                mesh: &self.ctx.pools.mesh,
                identity: None,
                fallback_authority: app,
                // One attempt: there is only one local app to try.
                attempts: 1,
            };
            forward(&route, req, || Ok(Upstream::Direct(app))).await
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                stats.errors.record(e.reason());
                // A denial was logged where it was decided.
                if !matches!(e, Error::RbacDenied { .. }) {
                    warn!(client = %self.client, orig_dst = %self.orig_dst, %method, %path, reason = e.reason(), error = %e, "inbound request failed");
                }
                error_response(&e)
            }
        };
        self.ctx.metrics.request(labels, resp.status().as_u16());
        resp
    }
}
