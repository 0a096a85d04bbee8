//! The proxy's error type. Every error knows where it arose, whether the
//! request may be retried, and the short reason that goes into the
//! `x-knit-error` header, the log line and the stats counter.

use std::net::SocketAddr;

use http::StatusCode;

/// Where an error arose: the party at fault, as an operator would ask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// The client (the app or a peer proxy) sent something we cannot serve.
    Downstream,
    /// The endpoint we forwarded to failed.
    Upstream,
    /// The mesh config says no (no endpoints, not allowed).
    Policy,
    /// A fault of the proxy itself.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {service} port {port} has no endpoints")]
    NoEndpoints { service: String, port: u16 },

    #[error("connect to {addr} failed: {source}")]
    UpstreamConnect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("connect to {addr} timed out after {timeout_ms} ms")]
    UpstreamConnectTimeout { addr: SocketAddr, timeout_ms: u64 },

    #[error("HTTP handshake with {addr} failed: {source}")]
    UpstreamHandshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },

    #[error("request to {addr} failed: {source}")]
    UpstreamRequest {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },

    #[error("stream to {addr} broke: {source}")]
    Transfer {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("port {port} requires mutual TLS (PeerAuthentication STRICT); plaintext refused")]
    MtlsRequired { port: u16 },

    #[error("denied by authorization policy {policy}")]
    RbacDenied { policy: String },

    #[error("mutual TLS with peer proxy {peer} failed ({reason}): {detail}")]
    MeshTls {
        peer: SocketAddr,
        reason: &'static str,
        detail: String,
    },

    #[error("this proxy has no workload certificate yet")]
    NoIdentity,

    /// TLS this proxy originates (DestinationRule SIMPLE or MUTUAL) failed
    /// before anything of the client's was sent; `cause` names why
    /// (`unknown_ca`, `san_mismatch`, ...).
    #[error("TLS to {addr} (sni {sni}) failed ({cause}): {detail}")]
    UpstreamTls {
        addr: SocketAddr,
        sni: String,
        cause: &'static str,
        detail: String,
    },

    /// The server certificate carries none of the DestinationRule's
    /// subjectAltNames. Raised inside the TLS handshake; it reaches callers
    /// as the detail of an `UpstreamTls`.
    #[error(
        "the server certificate carries none of the subjectAltNames {expected:?} (it has {presented:?})"
    )]
    SubjectAltNameMismatch {
        expected: Vec<String>,
        presented: Vec<String>,
    },

    /// A DestinationRule asks for mesh mutual TLS (ISTIO_MUTUAL) where it
    /// cannot be had; the request is refused rather than sent in plaintext.
    #[error(
        "service {service} port {port} requires mesh mutual TLS (ISTIO_MUTUAL, DestinationRule {destination_rule}), but {detail}; not sent in plaintext"
    )]
    MeshTlsUnavailable {
        service: String,
        port: u16,
        destination_rule: String,
        detail: String,
    },

    #[error("endpoint {workload} has no valid SPIFFE identity: {detail}")]
    EndpointIdentity { workload: String, detail: String },

    /// The port's DestinationRule names TLS files this proxy cannot use;
    /// the port fails closed (never plaintext) until they are fixed.
    #[error("client TLS of this port cannot be used: {reason}")]
    UpstreamTlsUnusable { reason: String },

    #[error("connection to {addr} idle for {idle_secs} s; closed")]
    IdleTimeout { addr: SocketAddr, idle_secs: u64 },

    #[error(
        "peer proxy {peer} refused a tunnel to port {target_port}: status {status}, reason {reason}"
    )]
    TunnelRefused {
        peer: SocketAddr,
        target_port: u16,
        status: u16,
        reason: String,
    },

    #[error("bad request: {0}")]
    BadRequest(String),

    #[error("request header fields too large: {0}")]
    HeadersTooLarge(String),

    #[error("request URI too long: {0}")]
    UriTooLong(String),

    #[error("cannot read the original destination: {0}")]
    OriginalDst(#[source] std::io::Error),

    #[error("connection addressed the proxy's own port {0} directly; refusing to loop")]
    SelfLoop(SocketAddr),

    #[error(
        "{0} is a port of the proxy itself, never an app's; is the capture missing an exclusion?"
    )]
    ProxyPort(SocketAddr),

    #[error("invalid config: {0}")]
    InvalidConfig(String),

    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid control plane address {0:?}: {1}")]
    ControlPlaneAddress(String, String),
}

impl Error {
    /// The reason token for `x-knit-error`, logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoEndpoints { .. } => "no_endpoints",
            Error::UpstreamConnect { .. } => "upstream_connect_failed",
            Error::UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            Error::UpstreamHandshake { .. } => "upstream_handshake_failed",
            Error::UpstreamRequest { .. } => "upstream_request_failed",
            Error::Transfer { .. } => "stream_reset",
            Error::TunnelRefused { .. } => "tunnel_refused",
            Error::IdleTimeout { .. } => "idle_timeout",
            Error::MeshTls { .. } => "mesh_tls_failed",
            Error::UpstreamTls { .. } | Error::SubjectAltNameMismatch { .. } => {
                "upstream_tls_failed"
            }
            Error::MeshTlsUnavailable { .. } => "mesh_tls_unavailable",
            Error::UpstreamTlsUnusable { .. } => "upstream_tls_unusable",
            Error::MtlsRequired { .. } => "mtls_required",
            Error::RbacDenied { .. } => "rbac_denied",
            Error::NoIdentity => "identity_unavailable",
            Error::EndpointIdentity { .. } => "invalid_endpoint_identity",
            Error::BadRequest(_) => "bad_request",
            Error::HeadersTooLarge(_) => "headers_too_large",
            Error::UriTooLong(_) => "uri_too_long",
            Error::OriginalDst(_) => "original_dst_unavailable",
            Error::SelfLoop(_) | Error::ProxyPort(_) => "self_loop",
            Error::InvalidConfig(_) => "invalid_config",
            Error::Bind { .. } => "bind_failed",
            Error::ControlPlaneAddress(..) => "invalid_control_plane",
        }
    }

    pub fn origin(&self) -> ErrorOrigin {
        match self {
            Error::NoEndpoints { .. }
            | Error::MtlsRequired { .. }
            | Error::RbacDenied { .. }
            | Error::MeshTlsUnavailable { .. }
            | Error::UpstreamTlsUnusable { .. } => ErrorOrigin::Policy,
            Error::UpstreamConnect { .. }
            | Error::UpstreamConnectTimeout { .. }
            | Error::UpstreamHandshake { .. }
            | Error::UpstreamRequest { .. }
            | Error::Transfer { .. }
            | Error::TunnelRefused { .. }
            | Error::IdleTimeout { .. }
            | Error::MeshTls { .. }
            | Error::UpstreamTls { .. }
            | Error::SubjectAltNameMismatch { .. } => ErrorOrigin::Upstream,
            Error::NoIdentity | Error::EndpointIdentity { .. } => ErrorOrigin::Internal,
            Error::BadRequest(_)
            | Error::HeadersTooLarge(_)
            | Error::UriTooLong(_)
            | Error::SelfLoop(_)
            | Error::ProxyPort(_) => ErrorOrigin::Downstream,
            Error::OriginalDst(_)
            | Error::InvalidConfig(_)
            | Error::Bind { .. }
            | Error::ControlPlaneAddress(..) => ErrorOrigin::Internal,
        }
    }

    /// Whether the request may be sent again (to another endpoint): only
    /// when it certainly never reached the upstream application.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::MeshTls { .. }
                | Error::UpstreamTls { .. }
                | Error::UpstreamConnect { .. }
                | Error::UpstreamConnectTimeout { .. }
                | Error::UpstreamHandshake { .. }
        )
    }

    /// The status of the response the proxy generates for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::SelfLoop(_) | Error::ProxyPort(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::MtlsRequired { .. } | Error::RbacDenied { .. } => StatusCode::FORBIDDEN,
            Error::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Error::UpstreamRequest { .. }
            | Error::Transfer { .. }
            | Error::TunnelRefused { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamConnectTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error and its sources, `: `-separated: tonic's transport errors say
/// only "transport error" at the top; the cause is further down.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let addr: SocketAddr = "198.18.0.11:8080".parse().expect("literal");
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<(Error, &str, ErrorOrigin, bool, u16)> = vec![
            (
                Error::NoEndpoints {
                    service: "default/backend".into(),
                    port: 80,
                },
                "no_endpoints",
                ErrorOrigin::Policy,
                false,
                503,
            ),
            (
                Error::UpstreamConnect {
                    addr,
                    source: refused(),
                },
                "upstream_connect_failed",
                ErrorOrigin::Upstream,
                true,
                503,
            ),
            (
                Error::UpstreamConnectTimeout {
                    addr,
                    timeout_ms: 10,
                },
                "upstream_connect_timeout",
                ErrorOrigin::Upstream,
                true,
                503,
            ),
            (
                Error::BadRequest("x".into()),
                "bad_request",
                ErrorOrigin::Downstream,
                false,
                400,
            ),
            (
                Error::RbacDenied {
                    policy: "shop/deny-admin".into(),
                },
                "rbac_denied",
                ErrorOrigin::Policy,
                false,
                403,
            ),
            (
                Error::SelfLoop(addr),
                "self_loop",
                ErrorOrigin::Downstream,
                false,
                400,
            ),
            // Nothing was sent yet: another endpoint may have a good
            // certificate.
            (
                Error::UpstreamTls {
                    addr,
                    sni: "api.example.com".into(),
                    cause: "unknown_ca",
                    detail: "invalid peer certificate: UnknownIssuer".into(),
                },
                "upstream_tls_failed",
                ErrorOrigin::Upstream,
                true,
                503,
            ),
            (
                Error::MeshTlsUnavailable {
                    service: "default/backend".into(),
                    port: 80,
                    destination_rule: "default/backend".into(),
                    detail: "endpoint backend-1 has no Knit proxy".into(),
                },
                "mesh_tls_unavailable",
                ErrorOrigin::Policy,
                false,
                503,
            ),
            (
                Error::UpstreamTlsUnusable {
                    reason: "caCertificates /etc/ca.pem: cannot read".into(),
                },
                "upstream_tls_unusable",
                ErrorOrigin::Policy,
                false,
                503,
            ),
        ];
        for (err, reason, origin, retry, status) in cases {
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.origin(), origin, "{err}");
            assert_eq!(err.is_retryable(), retry, "{err}");
            assert_eq!(err.status().as_u16(), status, "{err}");
            // Every reason has its own /stats counter, not "other".
            assert!(
                crate::stats::ERROR_REASONS.contains(&reason),
                "{reason} is missing from stats::ERROR_REASONS"
            );
        }
    }
}
