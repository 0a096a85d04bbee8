//! Connections to upstream endpoints. The connect address is chosen by the
//! balancer and is independent of the request's authority, which travels
//! unchanged. HTTP/1.1 connections are pooled per endpoint and reused once
//! idle; HTTP/2 connections are shared, one per endpoint, multiplexed.
//! Connections over TLS this proxy originates (`tls.rs`) are pooled apart,
//! per endpoint and TLS settings.

mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

use super::Body;
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections older than this are not reused.
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    /// Source addresses for new connections (e.g. 127.0.0.6 and ::6 for
    /// delivery to the local app, which the capture rules recognise); the
    /// one of the destination's family is used.
    pub local_bind: Vec<IpAddr>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            connect_timeout: Duration::from_secs(5),
            // Below the 30 s idle limit peer proxies and most app servers
            // apply, so we stop reusing a connection before they close it.
            idle_timeout: Duration::from_secs(20),
            max_idle_per_endpoint: 64,
            local_bind: Vec::new(),
        }
    }
}

struct IdleH1 {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// A failed send. `unsent` holds the request when it certainly never left
/// the proxy, so the caller may send it elsewhere.
pub struct SendError {
    pub error: Error,
    pub unsent: Option<Request<Body>>,
}

impl SendError {
    fn sent(error: Error) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// Which pooled connections a request may use: those to the same
/// endpoint, over the same TLS settings (`None`: plain TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    tls: Option<u64>,
}

impl PoolKey {
    fn plain(addr: SocketAddr) -> PoolKey {
        PoolKey { addr, tls: None }
    }
}

pub struct UpstreamPool {
    settings: PoolSettings,
    connections_opened: AtomicU64,
    tls_connections_opened: AtomicU64,
    idle_h1: Mutex<HashMap<PoolKey, Vec<IdleH1>>>,
    /// One slot per endpoint. Connecting happens while holding the slot's
    /// async lock, so a burst of first requests shares one handshake.
    h2: Mutex<HashMap<SocketAddr, Arc<H2Slot>>>,
    /// One slot per (endpoint, TLS settings), remembering what the server
    /// chose by ALPN; see `tls.rs`.
    tls: Mutex<HashMap<PoolKey, Arc<tls::TlsSlot>>>,
}

type H2Slot = tokio::sync::Mutex<Option<http2::SendRequest<Body>>>;

impl UpstreamPool {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(UpstreamPool {
            settings,
            connections_opened: AtomicU64::new(0),
            tls_connections_opened: AtomicU64::new(0),
            idle_h1: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `req` (already in upstream form, see `headers::prepare_for_upstream`)
    /// to `addr` with the request's HTTP version.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        if req.version() == Version::HTTP_2 {
            self.send_h2(addr, req).await
        } else {
            self.send_h1(addr, req).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        self.send_h1_keyed(PoolKey::plain(addr), req, || self.connect(addr))
            .await
    }

    /// Sends on an idle connection of `key`, or on a new one from
    /// `connect`.
    async fn send_h1_keyed<C, F, IO>(
        self: &Arc<Self>,
        key: PoolKey,
        mut req: Request<Body>,
        connect: C,
    ) -> Result<Response<Incoming>, SendError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<IO, Error>>,
        IO: Read + Write + Unpin + Send + 'static,
    {
        let addr = key.addr;
        // Reuse idle connections; one that turns out to be closed hands the
        // request back unsent, so trying the next one is safe.
        while let Some(mut sender) = self.checkout_h1(key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin_h1_when_idle(key, sender);
                    return Ok(resp);
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        debug!(%addr, "pooled connection was closed; trying another");
                        req = unsent;
                    }
                    None => {
                        return Err(SendError::sent(Error::UpstreamRequest {
                            addr,
                            source: err.into_error(),
                        }));
                    }
                },
            }
        }
        // Boxed: a warm pool rarely connects, and the connect and
        // handshake state would otherwise be part of every request's
        // future (copied each time hyper or tokio moves it); the
        // connection's own state goes straight to its driver task.
        let connected = Box::pin(async move { h1_handshake(addr, connect().await?).await }).await;
        let mut sender = match connected {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                });
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| SendError::sent(Error::UpstreamRequest { addr, source }))?;
        self.checkin_h1_when_idle(key, sender);
        Ok(resp)
    }

    fn checkout_h1(&self, key: PoolKey) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle_h1.lock().expect("pool lock poisoned");
        let list = idle.get_mut(&key)?;
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < self.settings.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Returns the connection to the pool once its response body is done.
    fn checkin_h1_when_idle(self: &Arc<Self>, key: PoolKey, mut sender: http1::SendRequest<Body>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle_h1.lock().expect("pool lock poisoned");
            let list = idle.entry(key).or_default();
            list.retain(|e| !e.sender.is_closed());
            if list.len() < pool.settings.max_idle_per_endpoint {
                list.push(IdleH1 {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut req = req;
        // At most two rounds: the shared connection, then (if it turned out
        // dead before our request left) a fresh one.
        for _ in 0..2 {
            let mut sender = match self.h2_sender(addr).await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendError {
                        error,
                        unsent: Some(req),
                    });
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        debug!(%addr, "HTTP/2 connection is gone; reconnecting");
                        req = unsent;
                    }
                    None => {
                        let error = Error::UpstreamRequest {
                            addr,
                            source: err.into_error(),
                        };
                        return Err(SendError::sent(error));
                    }
                },
            }
        }
        let error = Error::UpstreamConnect {
            addr,
            source: std::io::Error::other("HTTP/2 connection closed twice in a row"),
        };
        Err(SendError {
            error,
            unsent: Some(req),
        })
    }

    /// The live shared connection to `addr`, made if there is none.
    async fn h2_sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, Error> {
        let slot = self
            .h2
            .lock()
            .expect("pool lock poisoned")
            .entry(addr)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| s.is_ready() && !s.is_closed()) {
            return Ok(sender.clone());
        }
        // Boxed, as in `send_h1_keyed`.
        let sender = Box::pin(async {
            let io = self.connect(addr).await?;
            h2_handshake(addr, io).await
        })
        .await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// TCP connections this pool has opened (HTTP/1.1 and HTTP/2).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Of those, the ones this proxy originated TLS on.
    pub fn tls_connections_opened(&self) -> u64 {
        self.tls_connections_opened.load(Ordering::Relaxed)
    }

    /// A TCP connection with this pool's timeout and source address, e.g.
    /// for a tunnel or an upgrade that must not share a pooled connection.
    pub async fn connect_stream(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        let source = self
            .settings
            .local_bind
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == addr.is_ipv4());
        let stream = connect_tcp_from(addr, source, self.settings.connect_timeout).await?;
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, Error> {
        self.connect_stream(addr).await.map(TokioIo::new)
    }
}

/// An HTTP/1.1 client connection on `io`, its driver (upgrades included)
/// spawned; only the sender is handed back.
pub(crate) async fn h1_handshake<IO>(
    addr: SocketAddr,
    io: IO,
) -> Result<http1::SendRequest<Body>, Error>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| Error::UpstreamHandshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}

/// An HTTP/2 client connection on `io`, its driver spawned.
pub(crate) async fn h2_handshake<IO>(
    addr: SocketAddr,
    io: IO,
) -> Result<http2::SendRequest<Body>, Error>
where
    IO: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(io)
        .await
        .map_err(|source| Error::UpstreamHandshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// A TCP connection with a deadline and Nagle off (the proxy writes whole
/// frames; delaying them only adds latency).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    connect_tcp_from(addr, None, timeout).await
}

/// As `connect_tcp`, from `local_bind` when it is of the same family.
pub async fn connect_tcp_from(
    addr: SocketAddr,
    local_bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, Error> {
    let io_err = |source| Error::UpstreamConnect { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io_err)?;
    if let Some(ip) = local_bind.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0)).map_err(io_err)?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => {
            return Err(Error::UpstreamConnectTimeout {
                addr,
                timeout_ms: timeout.as_millis() as u64,
            });
        }
        Ok(Err(source)) => return Err(Error::UpstreamConnect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
