//! Client TLS from DestinationRules: how this proxy connects to a service
//! port's endpoints when a rule overrides auto mutual TLS.
//!
//! - `DISABLE`: no TLS from the proxy. An endpoint with a Knit proxy gets a
//!   plaintext mesh hop (HTTP/2 to its mesh port, as for a DISABLE port), one
//!   without gets a plaintext connection straight to its address.
//! - `ISTIO_MUTUAL`: mesh mutual TLS with this workload's identity, even to
//!   an endpoint whose mode is DISABLE. An endpoint without a Knit proxy, or
//!   a proxy running without an identity, fails the request or connection
//!   (`mesh_tls_unavailable`); nothing is sent in plaintext instead.
//! - `SIMPLE` / `MUTUAL`: the proxy originates TLS to the endpoint's own
//!   address (for servers that terminate TLS themselves, usually outside the
//!   mesh). See [`TlsOrigination`] for how the server is verified.
//!
//! A call to this pod's own address is delivered inside the pod as before,
//! except under SIMPLE/MUTUAL, which the app's own TLS server answers.
//!
//! Everything that can be prepared is prepared when a config is accepted
//! ([`compile`]): files are read and parsed then, and a bad one rejects the
//! config (NACK) with a message naming the service, port and file; the
//! rustls configs are built then, once per port, never per connection.

pub mod compile;
mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use serde::Serialize;

use crate::error::Error;

pub use compile::{FileCache, compile_client_tls};

/// ALPN offered on HTTP connections: HTTP/2 first, so a server that speaks
/// it gets one multiplexed connection.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How this proxy reaches one service port's endpoints.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ClientTlsPolicy {
    /// No DestinationRule: mutual TLS to an endpoint with a Knit proxy unless
    /// the endpoint's mode for the port is DISABLE, plaintext straight to an
    /// endpoint without one.
    #[default]
    Auto,
    Disable {
        destination_rule: String,
    },
    IstioMutual {
        destination_rule: String,
    },
    Simple(Arc<TlsOrigination>),
    Mutual(Arc<TlsOrigination>),
    /// SIMPLE or MUTUAL whose files this proxy cannot use (unreadable, not
    /// PEM, key and certificate that do not match): this port fails closed
    /// and the rest of the config applies. The files are local to each
    /// proxy, so one bad path must not freeze every proxy's config.
    Unusable {
        destination_rule: String,
        reason: String,
    },
}

impl ClientTlsPolicy {
    /// The TLS the proxy originates itself, under SIMPLE and MUTUAL.
    pub fn origination(&self) -> Option<&Arc<TlsOrigination>> {
        match self {
            ClientTlsPolicy::Simple(tls) | ClientTlsPolicy::Mutual(tls) => Some(tls),
            _ => None,
        }
    }
}

/// What a connection over originated TLS carries; it decides the ALPN
/// offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUse {
    /// HTTP requests: `h2` and `http/1.1`.
    Http,
    /// HTTP/1.1 only: upgrades (WebSocket, CONNECT), and servers known to
    /// choose it.
    Http1,
    /// Opaque TCP: no ALPN.
    Opaque,
}

/// TLS this proxy originates to an endpoint (SIMPLE, or MUTUAL with a
/// client certificate), compiled once per config.
///
/// The server's chain must lead to one of `ca_certificates` (TLS 1.2 or
/// 1.3, ring's algorithms, no system roots). Its name is then checked
/// against `subject_alt_names` when there are any (one must be on the
/// certificate), and otherwise against `sni`, the name sent in the SNI
/// extension (by default the service hostname).
#[derive(Serialize)]
pub struct TlsOrigination {
    /// `namespace/name` of the DestinationRule.
    pub destination_rule: String,
    pub sni: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    pub ca_certificates: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    #[serde(skip)]
    server_name: ServerName<'static>,
    #[serde(skip)]
    http: Arc<ClientConfig>,
    #[serde(skip)]
    http1: Arc<ClientConfig>,
    #[serde(skip)]
    opaque: Arc<ClientConfig>,
    /// Equal for equal settings and file contents, so pooled connections
    /// survive a config change that leaves them alone, and are never shared
    /// between different settings.
    #[serde(skip)]
    pool_key: u64,
}

impl TlsOrigination {
    /// The name sent as SNI (and verified, without subjectAltNames).
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    pub fn config(&self, usage: TlsUse) -> &Arc<ClientConfig> {
        match usage {
            TlsUse::Http => &self.http,
            TlsUse::Http1 => &self.http1,
            TlsUse::Opaque => &self.opaque,
        }
    }

    /// Tells pooled connections of different settings apart.
    pub fn pool_key(&self) -> u64 {
        self.pool_key
    }

    pub fn is_mutual(&self) -> bool {
        self.client_certificate.is_some()
    }
}

impl fmt::Debug for TlsOrigination {
    // By hand: the configs hold the client key, which has no place in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOrigination")
            .field("destination_rule", &self.destination_rule)
            .field("sni", &self.sni)
            .field("subject_alt_names", &self.subject_alt_names)
            .field("ca_certificates", &self.ca_certificates)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsOrigination {
    fn eq(&self, other: &Self) -> bool {
        self.pool_key == other.pool_key
    }
}

impl Eq for TlsOrigination {}

/// The typed error for a TLS handshake with an endpoint that failed; the
/// reason names the cause (`unknown_ca`, `san_mismatch`, ...) and the
/// detail is rustls' own words.
pub fn handshake_error(addr: SocketAddr, tls: &TlsOrigination, err: &std::io::Error) -> Error {
    let cause = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    // rustls shows a verifier's own error in Debug form; ours reads better
    // in its own words.
    let detail = match cause {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            match other.0.downcast_ref::<Error>() {
                Some(own) => format!("invalid peer certificate: {own}"),
                None => err.to_string(),
            }
        }
        _ => err.to_string(),
    };
    Error::UpstreamTls {
        addr,
        sni: tls.sni.clone(),
        cause: cause.map_or("handshake_failed", tls_failure_cause),
        detail,
    }
}

/// A short token for why a handshake failed, for logs and messages.
pub fn tls_failure_cause(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "server_name_mismatch"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::Other(other)
                if matches!(
                    other.0.downcast_ref::<Error>(),
                    Some(Error::SubjectAltNameMismatch { .. })
                ) =>
            {
                "san_mismatch"
            }
            _ => "bad_certificate",
        },
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::PeerIncompatible(_) => "incompatible_peer",
        _ => "handshake_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_causes() {
        let table: [(rustls::Error, &str); 6] = [
            (CertificateError::UnknownIssuer.into(), "unknown_ca"),
            (
                CertificateError::NotValidForName.into(),
                "server_name_mismatch",
            ),
            (CertificateError::Expired.into(), "certificate_expired"),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "alert_received",
            ),
            (
                CertificateError::Other(rustls::OtherError(Arc::new(
                    Error::SubjectAltNameMismatch {
                        expected: vec!["a".into()],
                        presented: vec!["b".into()],
                    },
                )))
                .into(),
                "san_mismatch",
            ),
            (rustls::Error::HandshakeNotComplete, "handshake_failed"),
        ];
        for (err, cause) in table {
            assert_eq!(tls_failure_cause(&err), cause, "{err}");
        }
    }
}
