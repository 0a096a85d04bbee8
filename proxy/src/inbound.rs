//! The inbound listener (15006): connections to this pod, redirected here
//! by iptables. accept → original dst (this pod's IP and the app's port) →
//! detect → HTTP per request | TCP → the local app.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::context::ProxyContext;
use crate::detect::{Detected, detect};
use crate::http::server::{HttpHandler, serve};
use crate::http::{Body, error_response, forward::forward};
use crate::listener::{accept_loop, record_detection};
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
        accept_loop("inbound", self.listener, move |stream, client, orig_dst| {
            handle_connection(stream, client, orig_dst, ctx.clone())
        })
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
    let detected = match detect(&stream, ctx.settings.inbound_detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            debug!(%client, error = %e, "inbound detection failed");
            return;
        }
    };
    record_detection(stats, detected);
    match detected {
        Detected::Http1 | Detected::Http2 => {
            serve(
                stream,
                Arc::new(InboundHttp {
                    ctx: ctx.clone(),
                    client,
                    orig_dst,
                }),
            )
            .await;
        }
        Detected::Tls | Detected::Opaque | Detected::Timeout => {
            inc(&stats.tcp_connections);
            if let Err(e) = tcp::forward(stream, orig_dst.0, ctx.settings.connect_timeout).await {
                stats.errors.record(e.reason());
                info!(%client, %orig_dst, reason = e.reason(), error = %e, "inbound TCP failed");
            }
        }
        Detected::Closed => {}
    }
}

/// Delivers each request to the local app at the original destination.
struct InboundHttp {
    ctx: Arc<ProxyContext>,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
}

impl HttpHandler for InboundHttp {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let stats = &self.ctx.stats.inbound;
        inc(&stats.http_requests);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let app = self.orig_dst.0;
        // One attempt: there is only one local app to try.
        match forward(&self.ctx.pool, req, &app.to_string(), 1, || Ok(app)).await {
            Ok(resp) => resp,
            Err(e) => {
                stats.errors.record(e.reason());
                warn!(client = %self.client, orig_dst = %self.orig_dst, %method, %path, reason = e.reason(), error = %e, "inbound request failed");
                error_response(&e)
            }
        }
    }
}
