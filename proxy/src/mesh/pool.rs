//! Connections to peer proxies: HTTP/2 only, one per (peer, identity the
//! peer must prove), opened single-flight. With a workload identity the
//! connection is mutual TLS that accepts only the expected SPIFFE ID;
//! without one (identity off) it is plaintext.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tracing::info;

use crate::error::Error;
use crate::http::Body;
use crate::http::upstream::{connect_tcp, h2_handshake};
use crate::identity::{SpiffeId, WorkloadIdentity, io_rejection_reason};

/// The identity a peer must prove, or `None` for plaintext.
pub type Expected = Option<SpiffeId>;

type Slot = tokio::sync::Mutex<Option<http2::SendRequest<Body>>>;

pub struct MeshPool {
    connect_timeout: Duration,
    slots: Mutex<HashMap<(SocketAddr, Expected), Arc<Slot>>>,
    opened: AtomicU64,
    opened_tls: AtomicU64,
}

/// A request the pool could not send; `unsent` when it never left.
pub struct MeshSendError {
    pub error: Error,
    pub unsent: Option<Request<Body>>,
}

impl MeshPool {
    pub fn new(connect_timeout: Duration) -> Self {
        MeshPool {
            connect_timeout,
            slots: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            opened_tls: AtomicU64::new(0),
        }
    }

    /// Connections opened to peers, and how many of them were mutual TLS.
    pub fn connections_opened(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.opened_tls.load(Ordering::Relaxed),
        )
    }

    /// Sends `req` (HTTP/2 form) on the shared connection to `peer`,
    /// proving `identity` when the peer must be `expected`.
    pub async fn send(
        &self,
        peer: SocketAddr,
        tls: Option<(&WorkloadIdentity, &SpiffeId)>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, MeshSendError> {
        let mut req = req;
        // The shared connection, then (if it was gone before our request
        // left) one fresh one.
        for _ in 0..2 {
            let mut sender = match self.sender(peer, tls).await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(MeshSendError {
                        error,
                        unsent: Some(req),
                    });
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        let error = Error::UpstreamRequest {
                            addr: peer,
                            source: err.into_error(),
                        };
                        return Err(MeshSendError {
                            error,
                            unsent: None,
                        });
                    }
                },
            }
        }
        let source = std::io::Error::other("connection to the peer proxy closed twice in a row");
        Err(MeshSendError {
            error: Error::UpstreamConnect { addr: peer, source },
            unsent: Some(req),
        })
    }

    async fn sender(
        &self,
        peer: SocketAddr,
        tls: Option<(&WorkloadIdentity, &SpiffeId)>,
    ) -> Result<http2::SendRequest<Body>, Error> {
        let key = (peer, tls.map(|(_, expected)| expected.clone()));
        let slot = self
            .slots
            .lock()
            .expect("mesh pool lock poisoned")
            .entry(key)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| s.is_ready() && !s.is_closed()) {
            return Ok(sender.clone());
        }
        // Boxed: connecting is rare, and its TLS handshake state would
        // otherwise be part of every request's future.
        let sender = Box::pin(self.connect(peer, tls)).await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// A new connection to `peer`, mutual TLS when `tls` says so.
    async fn connect(
        &self,
        peer: SocketAddr,
        tls: Option<(&WorkloadIdentity, &SpiffeId)>,
    ) -> Result<http2::SendRequest<Body>, Error> {
        let tcp = connect_tcp(peer, self.connect_timeout).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        match tls {
            None => h2_handshake(peer, TokioIo::new(tcp)).await,
            Some((identity, expected)) => {
                let config = identity
                    .client_config(expected)
                    .map_err(|e| Error::MeshTls {
                        peer,
                        reason: e.reason(),
                        detail: e.to_string(),
                    })?;
                // The name is not sent (no SNI) and not used for identity:
                // the verifier checks the SPIFFE ID.
                let name = ServerName::IpAddress(peer.ip().into());
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| mesh_tls_error(peer, &e))?;
                self.opened_tls.fetch_add(1, Ordering::Relaxed);
                info!(%peer, expected = %expected, "mutual TLS to peer proxy established");
                h2_handshake(peer, TokioIo::new(stream)).await
            }
        }
    }
}

/// A TLS failure toward a peer, with the verifier's reason when it was one.
fn mesh_tls_error(peer: SocketAddr, err: &std::io::Error) -> Error {
    let reason = io_rejection_reason(err);
    Error::MeshTls {
        peer,
        reason,
        detail: err.to_string(),
    }
}
