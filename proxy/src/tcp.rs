//! Opaque TCP: connect, then copy both ways. `copy_bidirectional` forwards
//! a FIN in one direction while the other keeps flowing (half-close).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::config::snapshot::Upstream;
use crate::context::Pools;
use crate::error::Error;
use crate::http::forward::mesh_tls;
use crate::identity::WorkloadIdentity;
use crate::mesh::client::open_tunnel;
use crate::upstream_tls::TlsUse;

/// An established upstream byte stream.
pub enum Connected {
    Direct(TcpStream, SocketAddr),
    /// TLS this proxy originated to the endpoint (DestinationRule SIMPLE or
    /// MUTUAL); the client's bytes travel inside it.
    Tls(Box<TlsStream<TcpStream>>, SocketAddr),
    /// A CONNECT stream on the shared connection to a peer proxy.
    Tunnel(TokioIo<Upgraded>, SocketAddr),
}

/// Connects to `upstream`: straight to the address (in plaintext or over
/// TLS this proxy originates), or through a tunnel to the peer proxy. Nothing of the client's has been sent yet, so a failure
/// here may be retried elsewhere.
pub async fn open(
    upstream: &Upstream,
    pools: &Pools,
    identity: &Option<Arc<WorkloadIdentity>>,
    metadata: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Connected, Error> {
    match upstream {
        Upstream::Direct(addr) => Ok(Connected::Direct(
            pools.direct.connect_stream(*addr).await?,
            *addr,
        )),
        Upstream::Mesh {
            peer,
            target_port,
            identity: expected,
        } => {
            let tls = mesh_tls(identity, expected)?;
            let tunnel = open_tunnel(&pools.mesh, *peer, tls, *target_port, metadata).await?;
            Ok(Connected::Tunnel(TokioIo::new(tunnel), *peer))
        }
        Upstream::Tls { addr, tls } => {
            let stream = pools.direct.connect_tls(*addr, tls, TlsUse::Opaque).await?;
            Ok(Connected::Tls(Box::new(stream), *addr))
        }
    }
}

/// Copies until both directions are closed (or idle too long); bytes (to
/// upstream, to client).
pub async fn splice(
    mut downstream: TcpStream,
    upstream: Connected,
    idle: Duration,
) -> Result<(u64, u64), Error> {
    match upstream {
        Connected::Direct(mut up, addr) => {
            copy_with_idle_timeout(&mut downstream, &mut up, idle, addr).await
        }
        Connected::Tunnel(mut up, peer) => {
            copy_with_idle_timeout(&mut downstream, &mut up, idle, peer).await
        }
        // Closing the client's side sends close_notify, then FIN.
        Connected::Tls(mut up, addr) => {
            copy_with_idle_timeout(&mut downstream, &mut *up, idle, addr).await
        }
    }
}

/// To this pod's app (inbound), from the delivery source address.
pub async fn deliver(
    mut downstream: TcpStream,
    app: SocketAddr,
    pools: &Pools,
    idle: Duration,
) -> Result<(u64, u64), Error> {
    let mut up = pools.app.connect_stream(app).await?;
    copy_with_idle_timeout(&mut downstream, &mut up, idle, app).await
}

/// Copies both ways until both directions are closed, or until no byte
/// moved in either direction for `idle`.
pub async fn copy_with_idle_timeout<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    addr: SocketAddr,
) -> Result<(u64, u64), Error>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut a, mut b) = (
        Tracked {
            inner: a,
            activity: &activity,
        },
        Tracked {
            inner: b,
            activity: &activity,
        },
    );
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            result = &mut copy => return result.map_err(|source| Error::Transfer { addr, source }),
            _ = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return Err(Error::IdleTimeout { addr, idle_secs: idle.as_secs() });
                }
            }
        }
    }
}

/// When bytes last moved, shared by both directions of one connection.
struct Activity {
    start: Instant,
    /// Nanoseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records activity on every read and write that moved bytes.
struct Tracked<'a, T> {
    inner: &'a mut T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
