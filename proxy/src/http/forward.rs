//! One request to one chosen upstream address, with header hygiene on the
//! way out and on the way back.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Body;
use super::headers::{prepare_for_upstream, strip_hop_by_hop};
use super::upstream::UpstreamPool;
use crate::error::Error;

pub async fn forward(
    pool: &Arc<UpstreamPool>,
    req: Request<Incoming>,
    addr: SocketAddr,
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
    prepare_for_upstream(&mut req, upstream_version)?;
    let resp = pool.send(addr, req).await?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = downstream_version;
    Ok(Response::from_parts(parts, body.boxed()))
}
