//! What both capture listeners share: binding, the accept loop (one task
//! per connection, at most `max_connections_per_listener` at once),
//! reading the original destination, refusing loops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::context::ProxyContext;
use crate::detect::Detected;
use crate::error::Error;
use crate::sockopt::original_dst;
use crate::stats::{ListenerStats, Stats, inc};

pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Accepts until the task is dropped. `stats` picks this listener's
/// counters out of `ctx.stats`.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    stats: fn(&Stats) -> &ListenerStats,
    handle: F,
) where
    F: Fn(TcpStream, ClientAddr, OrigDstAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = ConnectionLimit::new(ctx.settings.max_connections_per_listener);
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
        let Some(slot) = limit.admit(name, &stats(&ctx.stats).connections_refused) else {
            drop(stream);
            continue;
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
        spawn_in_slot(slot, handle(stream, client, orig_dst));
    }
}

tokio::task_local! {
    /// The slot of the connection a task serves, for the code deeper down
    /// that hands the socket on to a task of its own (an upgrade does).
    static CONNECTION_SLOT: ConnectionSlot;
}

/// One connection's place under its listener's limit; the place is given
/// back when the last clone is dropped, i.e. when the socket is closed.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The slot of the connection the current task serves, if it came through
/// a limited accept loop.
pub fn current_connection_slot() -> Option<ConnectionSlot> {
    CONNECTION_SLOT.try_with(ConnectionSlot::clone).ok()
}

/// Spawns the task serving a connection; it holds `slot` until it ends,
/// and code in it can find the slot with `current_connection_slot`.
pub fn spawn_in_slot(slot: ConnectionSlot, serve: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(CONNECTION_SLOT.scope(slot, serve));
}

/// At most `max` connections at once. A connection over the limit is
/// closed at accept, before anything is read from it: cheaper for the
/// proxy than serving it, and a clear signal to the client, while the
/// connections already held go on unaffected.
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new connection, or `None` (counted in `refused`) when
    /// all are taken.
    pub fn admit(&self, listener: &'static str, refused: &AtomicU64) -> Option<ConnectionSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(ConnectionSlot(Arc::new(permit))),
            Err(_) => {
                inc(refused);
                let total = refused.load(Ordering::Relaxed);
                // Every refusal is counted; the log says so at 1, 2, 4, 8…
                // so a flood of them cannot flood the log too.
                if total.is_power_of_two() {
                    warn!(
                        listener,
                        limit = self.max,
                        refused_total = total,
                        "connection limit reached; closing new connections"
                    );
                }
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_refuses_past_max_counts_refusals_and_frees_with_the_last_clone() {
        let limit = ConnectionLimit::new(2);
        let refused = AtomicU64::new(0);
        let first = limit.admit("test", &refused).expect("first");
        let second = limit.admit("test", &refused).expect("second");
        assert!(limit.admit("test", &refused).is_none());
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        // A clone (an upgraded socket) keeps the place taken.
        let handed_on = second.clone();
        drop(second);
        assert!(limit.admit("test", &refused).is_none());
        drop(handed_on);
        let third = limit.admit("test", &refused).expect("freed place");
        assert_eq!(refused.load(Ordering::Relaxed), 2);
        drop((first, third));
    }

    #[tokio::test]
    async fn the_slot_is_found_inside_the_connection_task() {
        let limit = ConnectionLimit::new(1);
        let refused = AtomicU64::new(0);
        let slot = limit.admit("test", &refused).expect("slot");
        assert!(current_connection_slot().is_none());
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn_in_slot(slot, async move {
            let _ = tx.send(current_connection_slot().is_some());
        });
        assert!(rx.await.expect("task ran"));
    }
}
