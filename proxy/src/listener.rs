//! What both capture listeners share: binding, the accept loop (one task
//! per connection), reading the original destination, refusing loops.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::detect::Detected;
use crate::error::Error;
use crate::sockopt::original_dst;
use crate::stats::{ListenerStats, inc};

pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

pub async fn accept_loop<F, Fut>(name: &'static str, listener: TcpListener, handle: F)
where
    F: Fn(TcpStream, ClientAddr, OrigDstAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let client = ClientAddr(peer);
        let orig_dst = match resolve_orig_dst(&stream) {
            Ok(dst) => dst,
            Err(e) => {
                warn!(listener = name, %client, reason = e.reason(), error = %e, "dropping connection");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        debug!(listener = name, %client, %orig_dst, "accepted");
        tokio::spawn(handle(stream, client, orig_dst));
    }
}

/// The original destination; a connection made straight to the listener
/// (not redirected) would make the proxy connect to itself forever.
fn resolve_orig_dst(stream: &TcpStream) -> Result<OrigDstAddr, Error> {
    let dst = original_dst(stream).map_err(Error::OriginalDst)?;
    let local = stream.local_addr().map_err(Error::OriginalDst)?;
    if dst.0 == SocketAddr::new(local.ip().to_canonical(), local.port()) {
        return Err(Error::SelfLoop(dst.0));
    }
    Ok(dst)
}

pub fn record_detection(stats: &ListenerStats, detected: Detected) {
    match detected {
        Detected::Http1 => inc(&stats.detected_http1),
        Detected::Http2 => inc(&stats.detected_http2),
        Detected::Tls => inc(&stats.detected_tls),
        Detected::Opaque => inc(&stats.detected_opaque),
        Detected::Timeout => inc(&stats.detect_timeouts),
        Detected::Closed => {}
    }
}
