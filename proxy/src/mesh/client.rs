//! Opening tunnels to a peer proxy over the shared HTTP/2 connection.

use std::net::SocketAddr;

use http::{Method, Request, Version};
use hyper::upgrade::Upgraded;

use crate::error::Error;
use crate::http::full_body;
use crate::identity::{SpiffeId, WorkloadIdentity};
use crate::mesh::pool::MeshPool;

/// A byte stream to `target_port` on the peer's pod, as a CONNECT stream on
/// the (shared) connection to `peer`, mutual TLS when `tls` is given.
pub async fn open_tunnel(
    pool: &MeshPool,
    peer: SocketAddr,
    tls: Option<(&WorkloadIdentity, &SpiffeId)>,
    target_port: u16,
    metadata: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Upgraded, Error> {
    let target = SocketAddr::new(peer.ip(), target_port);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .version(Version::HTTP_2)
        .body(full_body(""))
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    for (name, value) in metadata {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let mut resp = pool.send(peer, tls, req).await.map_err(|e| e.error)?;
    if !resp.status().is_success() {
        let reason = resp
            .headers()
            .get(crate::http::KNIT_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        return Err(Error::TunnelRefused {
            peer,
            target_port,
            status: resp.status().as_u16(),
            reason,
        });
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(|source| Error::UpstreamRequest { addr: peer, source })
}
