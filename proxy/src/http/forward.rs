//! One request to one chosen upstream address, with header hygiene on the
//! way out and on the way back.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::Body;
use super::headers::{prepare_for_upstream, strip_hop_by_hop};
use super::upstream::{SendError, UpstreamPool};
use crate::error::Error;

/// Sends `req` to the address `pick` chooses. When a connection attempt
/// fails before the request left the proxy, `pick` is asked again, up to
/// `attempts` times in all: a restarting pod costs a retry, not a 503.
pub async fn forward(
    pool: &Arc<UpstreamPool>,
    req: Request<Incoming>,
    fallback_authority: &str,
    attempts: usize,
    mut pick: impl FnMut() -> Result<SocketAddr, Error>,
) -> Result<Response<Body>, Error> {
    let downstream_version = req.version();
    // HTTP/2 stays HTTP/2 (gRPC needs its trailers); everything else goes
    // upstream as HTTP/1.1.
    let upstream_version = if downstream_version == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let mut req = req.map(|body| body.boxed());
    prepare_for_upstream(&mut req, upstream_version, fallback_authority)?;
    let mut attempt = 1;
    let resp = loop {
        let addr = pick()?;
        match pool.send(addr, req).await {
            Ok(resp) => break resp,
            Err(SendError {
                error,
                unsent: Some(unsent),
            }) if attempt < attempts && error.is_retryable() => {
                debug!(%addr, attempt, error = %error, "retrying on another endpoint");
                req = unsent;
                attempt += 1;
            }
            Err(SendError { error, .. }) => return Err(error),
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = downstream_version;
    Ok(Response::from_parts(parts, body.boxed()))
}
