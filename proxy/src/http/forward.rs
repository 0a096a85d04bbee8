//! One request to one chosen upstream, with header hygiene on the way out
//! and on the way back. An upstream is an address reached directly (in
//! plaintext, or over TLS this proxy originates) or a peer proxy's mesh
//! port, where the request rides the shared HTTP/2 connection and says
//! which app port it is for.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::Body;
use super::headers::{prepare_for_upstream, strip_hop_by_hop, strip_knit_headers};
use super::upstream::UpstreamPool;
use crate::config::snapshot::Upstream;
use crate::error::Error;
use crate::identity::{SpiffeId, WorkloadIdentity};
use crate::mesh::pool::MeshPool;
use crate::mesh::{ORIG_PROTO_HEADER, TARGET_PORT_HEADER};

/// Where requests go and how: the pool for direct upstreams and the
/// HTTP version to use there, the peer-proxy pool, and this proxy's
/// certificate for mutual TLS with peers.
pub struct Route<'a> {
    pub direct: &'a Arc<UpstreamPool>,
    pub direct_version: Version,
    pub mesh: &'a MeshPool,
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// Stands in for a missing Host header (HTTP/1.0 clients).
    pub fallback_authority: SocketAddr,
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

/// The (certificate, expected peer) pair for a mesh hop, or `None` for a
/// plaintext one. An expected identity without our own certificate is an
/// error, never a silent downgrade to plaintext.
pub fn mesh_tls<'a>(
    identity: &'a Option<Arc<WorkloadIdentity>>,
    expected: &'a Option<SpiffeId>,
) -> Result<Option<(&'a WorkloadIdentity, &'a SpiffeId)>, Error> {
    match (identity, expected) {
        (_, None) => Ok(None),
        (Some(own), Some(expected)) => Ok(Some((own.as_ref(), expected))),
        (None, Some(_)) => Err(Error::NoIdentity),
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
        shape(route, &mut req, &upstream, downstream_version)?;
        let sent = match &upstream {
            Upstream::Direct(addr) => route
                .direct
                .send(*addr, req)
                .await
                .map_err(|e| (e.error, e.unsent)),
            // Boxed: originated TLS holds its handshake state in the
            // future, which would otherwise weigh on every request's.
            Upstream::Tls { addr, tls } => Box::pin(route.direct.send_tls(*addr, tls, req))
                .await
                .map_err(|e| (e.error, e.unsent)),
            Upstream::Mesh { peer, identity, .. } => {
                let tls = mesh_tls(&route.identity, identity)?;
                route
                    .mesh
                    .send(*peer, tls, req)
                    .await
                    .map_err(|e| (e.error, e.unsent))
            }
        };
        match sent {
            Ok(resp) => break resp,
            Err((error, Some(unsent))) if attempt < route.attempts && error.is_retryable() => {
                debug!(%upstream, attempt, error = %error, "retrying on another endpoint");
                req = unsent;
                attempt += 1;
            }
            Err((error, _)) => return Err(error),
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = downstream_version;
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Puts the request in the form `upstream` needs.
fn shape(
    route: &Route<'_>,
    req: &mut Request<Body>,
    upstream: &Upstream,
    downstream_version: Version,
) -> Result<(), Error> {
    match upstream {
        // Over originated TLS the pool settles the version once it knows
        // what the server chose.
        Upstream::Direct(_) | Upstream::Tls { .. } => {
            prepare_for_upstream(req, route.direct_version, Some(route.fallback_authority))?;
            // Mesh metadata is for proxies; an app never sees it.
            strip_knit_headers(req.headers_mut());
        }
        Upstream::Mesh { target_port, .. } => {
            prepare_for_upstream(req, Version::HTTP_2, Some(route.fallback_authority))?;
            let headers = req.headers_mut();
            headers.insert(TARGET_PORT_HEADER, HeaderValue::from(*target_port));
            if downstream_version == Version::HTTP_2 {
                headers.remove(ORIG_PROTO_HEADER);
            } else {
                // The peer delivers HTTP/1.1 to its app, as our app spoke it.
                headers.insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
            }
        }
    }
    Ok(())
}
