//! Connections to upstream endpoints. The connect address is chosen by the
//! balancer and is independent of the request's authority, which travels
//! unchanged. HTTP/1.1 connections are pooled per endpoint and reused once
//! idle; HTTP/2 connections are shared, one per endpoint, multiplexed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::Body;
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections older than this are not reused.
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            connect_timeout: Duration::from_secs(5),
            // Below the 30 s idle limit peer proxies and most app servers
            // apply, so we stop reusing a connection before they close it.
            idle_timeout: Duration::from_secs(20),
            max_idle_per_endpoint: 64,
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

pub struct UpstreamPool {
    settings: PoolSettings,
    idle_h1: Mutex<HashMap<SocketAddr, Vec<IdleH1>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl UpstreamPool {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(UpstreamPool {
            settings,
            idle_h1: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
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
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        // Reuse idle connections; one that turns out to be closed hands the
        // request back unsent, so trying the next one is safe.
        while let Some(mut sender) = self.checkout_h1(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin_h1_when_idle(addr, sender);
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
        let io = match self.connect(addr).await {
            Ok(io) => io,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                });
            }
        };
        let (mut sender, conn) = match http1::Builder::new().handshake(io).await {
            Ok(handshake) => handshake,
            Err(source) => {
                let error = Error::UpstreamHandshake { addr, source };
                return Err(SendError {
                    error,
                    unsent: Some(req),
                });
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| SendError::sent(Error::UpstreamRequest { addr, source }))?;
        self.checkin_h1_when_idle(addr, sender);
        Ok(resp)
    }

    fn checkout_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle_h1.lock().expect("pool lock poisoned");
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < self.settings.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Returns the connection to the pool once its response body is done.
    fn checkin_h1_when_idle(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut sender: http1::SendRequest<Body>,
    ) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle_h1.lock().expect("pool lock poisoned");
            let list = idle.entry(addr).or_default();
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
        let existing = {
            let conns = self.h2.lock().expect("pool lock poisoned");
            conns
                .get(&addr)
                .filter(|s| s.is_ready() && !s.is_closed())
                .cloned()
        };
        let req = match existing {
            None => req,
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut err) => {
                    // A GOAWAY'd or dead connection: forget it; if the
                    // request never left, send it on a fresh connection.
                    self.evict_h2(addr, &sender);
                    match err.take_message() {
                        Some(unsent) => unsent,
                        None => {
                            let error = Error::UpstreamRequest {
                                addr,
                                source: err.into_error(),
                            };
                            return Err(SendError::sent(error));
                        }
                    }
                }
            },
        };
        let io = match self.connect(addr).await {
            Ok(io) => io,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                });
            }
        };
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await;
        let (mut sender, conn) = match handshake {
            Ok(handshake) => handshake,
            Err(source) => {
                let error = Error::UpstreamHandshake { addr, source };
                return Err(SendError {
                    error,
                    unsent: Some(req),
                });
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.h2
            .lock()
            .expect("pool lock poisoned")
            .insert(addr, sender.clone());
        sender
            .send_request(req)
            .await
            .map_err(|source| SendError::sent(Error::UpstreamRequest { addr, source }))
    }

    fn evict_h2(&self, addr: SocketAddr, dead: &http2::SendRequest<Body>) {
        let mut conns = self.h2.lock().expect("pool lock poisoned");
        // Only if nobody replaced it with a fresh connection meanwhile.
        if conns
            .get(&addr)
            .is_some_and(|current| current.is_closed() || dead.is_closed())
        {
            conns.remove(&addr);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, Error> {
        connect_tcp(addr, self.settings.connect_timeout)
            .await
            .map(TokioIo::new)
    }
}

/// A TCP connection with a deadline and Nagle off (the proxy writes whole
/// frames; delaying them only adds latency).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
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
