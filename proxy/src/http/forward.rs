//! One request to one chosen upstream, with header hygiene on the way out
//! and on the way back. An upstream is either an address reached directly
//! or a peer proxy's mesh port, where the request rides the shared HTTP/2
//! connection and says which app port it is for.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::Body;
use super::headers::{prepare_for_upstream, strip_hop_by_hop, strip_knit_headers};
use super::upstream::{SendError, UpstreamPool};
use crate::config::snapshot::Upstream;
use crate::error::Error;
use crate::mesh::{ORIG_PROTO_HEADER, TARGET_PORT_HEADER};

/// Where requests go and how: the pool for direct upstreams and the
/// HTTP version to use there, and the pool for peer proxies.
pub struct Route<'a> {
    pub direct: &'a Arc<UpstreamPool>,
    pub direct_version: Version,
    pub mesh: &'a Arc<UpstreamPool>,
    /// Stands in for a missing Host header (HTTP/1.0 clients).
    pub fallback_authority: String,
    /// Connection attempts per request, the first included.
    pub attempts: usize,
}

/// The version to use toward a direct upstream for a downstream request:
/// HTTP/2 stays HTTP/2 (gRPC needs its trailers), the rest is HTTP/1.1.
pub fn same_major_version(downstream: Version) -> Version {
    if downstream == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// Sends `req` to the upstream `pick` chooses. When a connection attempt
/// fails before the request left the proxy, `pick` is asked again, up to
/// `route.attempts` times in all: a restarting pod costs a retry, not a 503.
pub async fn forward(
    route: &Route<'_>,
    req: Request<Incoming>,
    mut pick: impl FnMut() -> Result<Upstream, Error>,
) -> Result<Response<Body>, Error> {
    let downstream_version = req.version();
    let mut req = req.map(|body| body.boxed());
    let mut attempt = 1;
    let resp = loop {
        let upstream = pick()?;
        let (pool, addr) = shape(route, &mut req, upstream, downstream_version)?;
        match pool.send(addr, req).await {
            Ok(resp) => break resp,
            Err(SendError {
                error,
                unsent: Some(unsent),
            }) if attempt < route.attempts && error.is_retryable() => {
                debug!(%upstream, attempt, error = %error, "retrying on another endpoint");
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

/// Puts the request in the form `upstream` needs; returns the pool and the
/// address to send it to.
fn shape<'a>(
    route: &Route<'a>,
    req: &mut Request<Body>,
    upstream: Upstream,
    downstream_version: Version,
) -> Result<(&'a Arc<UpstreamPool>, SocketAddr), Error> {
    match upstream {
        Upstream::Direct(addr) => {
            prepare_for_upstream(req, route.direct_version, &route.fallback_authority)?;
            // Mesh metadata is for proxies; an app never sees it.
            strip_knit_headers(req.headers_mut());
            Ok((route.direct, addr))
        }
        Upstream::Mesh { peer, target_port } => {
            prepare_for_upstream(req, Version::HTTP_2, &route.fallback_authority)?;
            let headers = req.headers_mut();
            headers.insert(TARGET_PORT_HEADER, HeaderValue::from(target_port));
            if downstream_version == Version::HTTP_2 {
                headers.remove(ORIG_PROTO_HEADER);
            } else {
                // The peer delivers HTTP/1.1 to its app, as our app spoke it.
                headers.insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
            }
            Ok((route.mesh, peer))
        }
    }
}
