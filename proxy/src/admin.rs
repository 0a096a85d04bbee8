//! Admin (127.0.0.1:15000, for operators inside the pod) and readiness
//! (15021, for the kubelet). Plain HTTP/1.1, off the data path.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::context::ProxyContext;
use crate::http::{Body, full_body};

#[derive(Debug, Clone, Copy)]
pub enum Role {
    Admin,
    Readiness,
    /// Prometheus scrapes (15090).
    Metrics,
}

pub struct AdminServer {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    role: Role,
}

impl AdminServer {
    pub fn new(listener: TcpListener, ctx: Arc<ProxyContext>, role: Role) -> Self {
        AdminServer {
            listener,
            ctx,
            role,
        }
    }

    pub async fn run(self) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let ctx = self.ctx.clone();
            let role = self.role;
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(respond(&ctx, role, &req)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "admin connection ended");
                }
            });
        }
    }
}

fn respond(ctx: &ProxyContext, role: Role, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match (role, req.uri().path()) {
        (Role::Metrics, "/metrics") => {
            let mut resp = Response::new(full_body(ctx.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, "/healthz/ready") | (Role::Admin, "/ready") => {
            if ctx.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else if !ctx.config.has_config() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for the first config from the control plane\n".into(),
                )
            } else if !ctx.has_identity_if_required() {
                text(StatusCode::SERVICE_UNAVAILABLE, waiting_for_identity(ctx))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: listeners not bound\n".into(),
                )
            }
        }
        (Role::Admin, "/config_dump") => json(&*ctx.config.load()),
        (Role::Admin, "/stats") => json(&serde_json::json!({ "counters": ctx.stats_map() })),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Why there is no workload certificate, with the last failure when there
/// was one (the operator's first question is "why not?").
fn waiting_for_identity(ctx: &ProxyContext) -> String {
    let last = ctx
        .identity
        .as_ref()
        .and_then(|manager| manager.last_failure());
    match last {
        Some(failure) => format!(
            "not ready: waiting for a workload certificate from the CA \
             ({} failed attempt(s); last: {}: {})\n",
            failure.consecutive, failure.reason, failure.message
        ),
        None => "not ready: waiting for a workload certificate from the CA\n".into(),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut resp = Response::new(full_body(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        ),
    }
}
