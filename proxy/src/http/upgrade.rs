//! Connection upgrades (WebSocket and friends) and CONNECT: the request goes
//! out on a connection of its own; once the upstream agrees (101, or 2xx to
//! CONNECT) both sides are joined as a byte stream.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::Body;
use super::headers::strip_hop_by_hop;
use super::upstream::h1_handshake;
use crate::error::Error;

/// An HTTP/1.1 upgrade request (not `h2c`, which we decline by serving the
/// request without upgrading), or a CONNECT.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return true;
    }
    let names_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    req.version() == Version::HTTP_11
        && names_upgrade
        && protocol.is_some_and(|p| !p.trim().eq_ignore_ascii_case("h2c"))
}

/// Sends an upgrade or CONNECT request over `io` as HTTP/1.1 and, when the
/// upstream switches protocols, joins the two upgraded streams in a task.
/// `addr` names the upstream for errors and logs.
pub async fn forward_upgrade<T>(
    io: T,
    mut req: Request<Incoming>,
    addr: std::net::SocketAddr,
) -> Result<Response<Body>, Error>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let downstream = hyper::upgrade::on(&mut req);
    let is_connect = req.method() == Method::CONNECT;
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(req.headers_mut());
    if let Some(protocol) = upgrade {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, protocol);
    }
    if !is_connect {
        // Origin-form on the wire, the authority in Host (set by the client).
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = path
            .parse()
            .map_err(|_| Error::BadRequest(format!("invalid path {path:?}")))?;
    }
    let mut sender = h1_handshake(addr, io).await?;
    let mut resp = sender
        .send_request(req.map(|b| b.boxed()))
        .await
        .map_err(|source| Error::UpstreamRequest { addr, source })?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && resp.status().is_success());
    if switched {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(join(downstream, upstream, addr));
    }
    Ok(resp.map(|b| b.boxed()))
}

async fn join(downstream: OnUpgrade, upstream: OnUpgrade, addr: std::net::SocketAddr) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%addr, error = %e, "upgrade was not completed");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((to_up, to_down)) => debug!(%addr, to_up, to_down, "upgraded stream closed"),
        Err(e) => debug!(%addr, error = %e, "upgraded stream broke"),
    }
}
