//! Pooled HTTP over TLS this proxy originates (DestinationRule SIMPLE or
//! MUTUAL), per endpoint and TLS settings.
//!
//! The first connection of a slot offers `h2` and `http/1.1` and is opened
//! under the slot's lock, so a burst of first requests shares one
//! handshake. What the server chose is remembered: with `h2`, that one
//! connection is shared and multiplexed, as for plaintext HTTP/2; otherwise
//! requests use HTTP/1.1 connections, pooled and reused once idle, opened
//! offering `http/1.1` only so they never end up speaking a protocol the
//! request was not shaped for.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use super::{Body, PoolKey, SendError, UpstreamPool, h2_handshake};
use crate::error::Error;
use crate::http::headers::prepare_for_tls_upstream;
use crate::upstream_tls::{TlsOrigination, TlsUse, handshake_error};

/// What the server of a slot chose by ALPN.
#[derive(Default)]
pub(super) enum Negotiated {
    /// No connection yet, or the shared HTTP/2 one is gone.
    #[default]
    Unknown,
    Http2(http2::SendRequest<Body>),
    Http1,
}

pub(super) type TlsSlot = tokio::sync::Mutex<Negotiated>;

impl UpstreamPool {
    /// Sends `req`, already shaped for an upstream (`prepare_for_upstream`),
    /// to `addr` over `tls`, in the HTTP version the server chose.
    pub async fn send_tls(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: &Arc<TlsOrigination>,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = PoolKey {
            addr,
            tls: Some(tls.pool_key()),
        };
        let slot = self.tls_slot(key);
        // The shared connection, then (if it was gone before our request
        // left) one fresh one.
        for _ in 0..2 {
            let mut negotiated = slot.lock().await;
            let mut sender = match &*negotiated {
                Negotiated::Http1 => {
                    drop(negotiated);
                    return self.send_tls_h1(key, tls, req, None).await;
                }
                Negotiated::Http2(sender) if sender.is_ready() && !sender.is_closed() => {
                    sender.clone()
                }
                Negotiated::Http2(_) | Negotiated::Unknown => {
                    let stream = match self.connect_tls(addr, tls, TlsUse::Http).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            return Err(SendError {
                                error,
                                unsent: Some(req),
                            });
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                        *negotiated = Negotiated::Http1;
                        drop(negotiated);
                        return self.send_tls_h1(key, tls, req, Some(stream)).await;
                    }
                    match h2_handshake(addr, TokioIo::new(stream)).await {
                        Ok(sender) => {
                            *negotiated = Negotiated::Http2(sender.clone());
                            sender
                        }
                        Err(error) => {
                            *negotiated = Negotiated::Unknown;
                            return Err(SendError {
                                error,
                                unsent: Some(req),
                            });
                        }
                    }
                }
            };
            drop(negotiated);
            if let Err(error) = prepare_for_tls_upstream(&mut req, Version::HTTP_2) {
                return Err(SendError::sent(error));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        debug!(%addr, "TLS HTTP/2 connection is gone; reconnecting");
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
            source: std::io::Error::other("TLS HTTP/2 connection closed twice in a row"),
        };
        Err(SendError {
            error,
            unsent: Some(req),
        })
    }

    /// HTTP/1.1 over TLS: an idle pooled connection, `fresh` (just opened,
    /// the server chose HTTP/1.1 on it), or a new one offering only
    /// `http/1.1`.
    async fn send_tls_h1(
        self: &Arc<Self>,
        key: PoolKey,
        tls: &Arc<TlsOrigination>,
        mut req: Request<Body>,
        fresh: Option<TlsStream<TcpStream>>,
    ) -> Result<Response<Incoming>, SendError> {
        if let Err(error) = prepare_for_tls_upstream(&mut req, Version::HTTP_11) {
            return Err(SendError::sent(error));
        }
        let addr = key.addr;
        self.send_h1_keyed(key, req, || async move {
            let stream = match fresh {
                Some(stream) => stream,
                None => self.connect_tls(addr, tls, TlsUse::Http1).await?,
            };
            Ok(TokioIo::new(stream))
        })
        .await
    }

    /// A TLS connection to `addr` with the settings of `tls` for `usage`,
    /// handshake included (within the connect timeout). Nothing of the
    /// client's has been sent yet, so a failure may be retried elsewhere.
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
        tls: &TlsOrigination,
        usage: TlsUse,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let tcp = self.connect_stream(addr).await?;
        let connector = TlsConnector::from(Arc::clone(tls.config(usage)));
        let timeout = self.settings.connect_timeout;
        let handshake = connector.connect(tls.server_name().clone(), tcp);
        let stream = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => {
                return Err(Error::UpstreamTls {
                    addr,
                    sni: tls.sni.clone(),
                    cause: "handshake_timeout",
                    detail: format!("no TLS handshake within {} ms", timeout.as_millis()),
                });
            }
            Ok(Err(err)) => return Err(handshake_error(addr, tls, &err)),
            Ok(Ok(stream)) => stream,
        };
        self.tls_connections_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (_, session) = stream.get_ref();
        debug!(
            %addr,
            sni = %tls.sni,
            version = ?session.protocol_version(),
            alpn = ?session.alpn_protocol().map(String::from_utf8_lossy),
            "TLS to endpoint established"
        );
        Ok(stream)
    }

    fn tls_slot(&self, key: PoolKey) -> Arc<TlsSlot> {
        self.tls
            .lock()
            .expect("pool lock poisoned")
            .entry(key)
            .or_default()
            .clone()
    }
}
