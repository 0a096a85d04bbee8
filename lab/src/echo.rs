//! The app every pod runs (`knit-lab echo`): HTTP/1.1 and h2c (prior
//! knowledge) on one port, answering with what it received so tests can see
//! which pod answered and what the mesh did to the request. Besides the
//! JSON echo it serves `/status/<code>`, `/bytes/<n>` (n pattern bytes,
//! streamed), `POST /sha256` (the body's length and digest, streamed) and
//! `/ws` (a WebSocket echo). Every response names the pod in `x-echo-pod`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::LabBody;
use crate::error::{LabError, Result};
use crate::pattern::Sha256Stream;
use crate::report::header_map;

/// Header naming the answering pod on every echo response (bodies of
/// `/bytes/<n>` cannot carry it).
pub const POD_HEADER: &str = "x-echo-pod";
/// Largest `/bytes/<n>`: big enough for any test, small enough that a typo
/// cannot keep a connection busy for hours.
pub const MAX_DOWNLOAD: u64 = 64 * 1024 * 1024 * 1024;

/// Binds `listen` and serves until the process is stopped.
pub async fn run(pod_name: &str, listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::io(format!("echo binding {listen}"), e))?;
    tracing::info!(pod = pod_name, %listen, "echo listening");
    serve(listener, pod_name).await
}

/// Serves on an already bound listener until the process is stopped.
pub async fn serve(listener: TcpListener, pod_name: &str) -> Result<()> {
    let pod: Arc<str> = Arc::from(pod_name);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::warn!("echo accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let pod = pod.clone();
        let peer = canonical(peer);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, pod.clone(), peer));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, "echo connection ended: {e}");
            }
        });
    }
}

/// A peer as the client knows itself: an IPv4 client of a dual-stack
/// (`[::]`) listener shows up as `::ffff:a.b.c.d`, which no test expects.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn handle(
    req: Request<Incoming>,
    pod: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<LabBody>, Infallible> {
    let mut resp = route(req, &pod, peer).await;
    if let Ok(v) = HeaderValue::from_str(&pod) {
        resp.headers_mut().insert(POD_HEADER, v);
    }
    Ok(resp)
}

async fn route(req: Request<Incoming>, pod: &str, peer: SocketAddr) -> Response<LabBody> {
    match req.uri().path() {
        "/ws" => return crate::ws::accept(req, pod),
        "/sha256" => return sha256(req, pod).await,
        _ => {}
    }
    let (parts, mut body) = req.into_parts();
    // Stream the body, counting bytes, so large uploads cost no memory.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("reading request body: {e}"),
                );
            }
        }
    }
    if let Some(n) = parts.uri.path().strip_prefix("/bytes/") {
        return match parse_download(n) {
            Ok(n) => {
                let mut resp = Response::new(LabBody::pattern(n, true));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            Err(reason) => plain(StatusCode::BAD_REQUEST, reason),
        };
    }
    let status = match status_for(parts.uri.path()) {
        Ok(s) => s,
        Err(reason) => return plain(StatusCode::BAD_REQUEST, reason),
    };
    let host = parts
        .headers
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let body = json!({
        "pod": pod,
        "method": parts.method.as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": header_map(&parts.headers),
        "peer": peer.to_string(),
        "body_bytes": body_bytes,
    });
    json_response(status, &body)
}

/// `POST /sha256`: the body streamed through SHA-256, answered with its
/// length and digest.
async fn sha256(req: Request<Incoming>, pod: &str) -> Response<LabBody> {
    if req.method() != Method::POST && req.method() != Method::PUT {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "/sha256 takes POST or PUT".to_string(),
        );
    }
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut hash = Sha256Stream::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hash.update(data);
                }
            }
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("reading request body after {} bytes: {e}", hash.bytes()),
                );
            }
        }
    }
    let (bytes, digest) = hash.finish();
    json_response(
        StatusCode::OK,
        &json!({"pod": pod, "bytes": bytes, "sha256": digest, "version": version}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<LabBody> {
    let mut resp = Response::new(LabBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn plain(status: StatusCode, text: String) -> Response<LabBody> {
    let mut resp = Response::new(LabBody::full(text + "\n"));
    *resp.status_mut() = status;
    resp
}

/// The `<n>` of `/bytes/<n>`.
fn parse_download(n: &str) -> std::result::Result<u64, String> {
    match n.trim_end_matches('/').parse::<u64>() {
        Ok(n) if n <= MAX_DOWNLOAD => Ok(n),
        _ => Err(format!(
            "/bytes/{n}: expected a byte count 0-{MAX_DOWNLOAD}"
        )),
    }
}

/// `/status/<code>` asks for that status (200-599); every other path gets 200.
fn status_for(path: &str) -> std::result::Result<StatusCode, String> {
    let Some(code) = path.strip_prefix("/status/") else {
        return Ok(StatusCode::OK);
    };
    let code = code.trim_end_matches('/');
    match code.parse::<u16>() {
        Ok(n) if (200..=599).contains(&n) => {
            StatusCode::from_u16(n).map_err(|e| format!("status {n}: {e}"))
        }
        _ => Err(format!("/status/{code}: expected a status code 200-599")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths() {
        assert_eq!(status_for("/"), Ok(StatusCode::OK));
        assert_eq!(status_for("/statusx/500"), Ok(StatusCode::OK));
        assert_eq!(
            status_for("/status/503"),
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(status_for("/status/204/"), Ok(StatusCode::NO_CONTENT));
        assert!(status_for("/status/100").is_err());
        assert!(status_for("/status/abc").is_err());
        assert!(status_for("/status/").is_err());
    }

    #[test]
    fn download_sizes() {
        assert_eq!(parse_download("0"), Ok(0));
        assert_eq!(parse_download("1048576/"), Ok(1 << 20));
        assert!(parse_download("-1").is_err());
        assert!(parse_download("1k").is_err());
        assert!(parse_download(&(MAX_DOWNLOAD + 1).to_string()).is_err());
    }

    #[test]
    fn peers_are_canonical() {
        let mapped: SocketAddr = "[::ffff:198.18.0.11]:4000".parse().unwrap();
        assert_eq!(canonical(mapped).to_string(), "198.18.0.11:4000");
        let v6: SocketAddr = "[2001:2::11]:4000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
