//! The app every pod runs (`knit-lab echo`): HTTP/1.1 and h2c (prior
//! knowledge) on one port, answering with what it received so tests can see
//! which pod answered and what the mesh did to the request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::{LabError, Result};
use crate::report::header_map;

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
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, pod.clone(), peer));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, "echo connection ended: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    pod: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    format!("reading request body: {e}"),
                ));
            }
        }
    }
    let status = match status_for(parts.uri.path()) {
        Ok(s) => s,
        Err(reason) => return Ok(plain(StatusCode::BAD_REQUEST, reason)),
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
        "pod": &*pod,
        "method": parts.method.as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": header_map(&parts.headers),
        "peer": peer.to_string(),
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text + "\n")));
    *resp.status_mut() = status;
    resp
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
}
