//! Peer identity for mesh mTLS: SPIFFE workload IDs, the trust bundle, and
//! the rustls verifiers and configs that accept a peer only when its
//! certificate is an X.509-SVID of the mesh for the right identity.
//!
//! - [`SpiffeId`] / [`TrustDomain`]: strict parsing, exact comparison.
//! - [`TrustBundle`]: the roots of one trust domain, an immutable value.
//! - [`SpiffeServerVerifier`]: the client side of a mesh connection; accepts
//!   the server only if its SVID names exactly the expected workload.
//! - [`SpiffeClientVerifier`]: the server side; requires a client SVID of
//!   the trust domain and leaves "who may call" to authorization, which
//!   reads the identity with [`peer_identity`] after the handshake.
//! - [`client_config`] / [`server_config`]: TLS 1.3-only rustls configs.
//!   They are immutable: when the workload certificate or the bundle
//!   changes, the owner builds new ones and swaps them in (`ArcSwap`), as
//!   the rest of the proxy does with snapshots.
//!
//! Chain validation is webpki's (the validator rustls itself uses), with the
//! ring provider's signature algorithms; the SVID rules on top of it are in
//! `verify.rs`.

mod bundle;
mod config;
pub mod csr;
pub mod manager;
pub mod sign;
mod spiffe;
mod verify;

#[cfg(test)]
mod rotation_tests;

pub use bundle::{TrustBundle, fingerprint};
pub use config::{client_config, server_config};
pub use manager::{IdentityManager, IdentityOptions, WorkloadIdentity};
pub use sign::IssueError;
pub use spiffe::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain};
pub use verify::{SpiffeClientVerifier, SpiffeServerVerifier, peer_identity};

use rustls::CertificateError;

/// The ALPN protocol of Knit's mesh transport: HTTP/2 between Knit proxies,
/// carrying `x-knit-*` headers and CONNECT tunnels, inside mTLS.
///
/// Every mesh client offers it and every mesh server selects it, so a
/// ClientHello that lists it identifies mesh mTLS before any byte is
/// decrypted. The inbound side uses that to tell mesh traffic from an app's
/// own TLS on the same port (PERMISSIVE mode). The name includes the inner
/// protocol (`h2`) so a future transport gets a new token rather than
/// changing what this one means.
pub const MESH_ALPN: &[u8] = b"knit/h2";

/// Why an identity could not be established or a config not built.
///
/// Peer rejections reach rustls as `CertificateError`s: chain failures that
/// TLS has a precise alert for (expired, unknown CA, bad signature...) use
/// rustls' own variants, so the peer sees that alert; everything else is
/// `CertificateError::Other` holding this error, so the typed reason
/// survives. [`rejection_reason`] maps either back to a reason token.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("trust bundle for {0} has no root certificates")]
    EmptyBundle(TrustDomain),

    #[error("trust bundle root #{index} is unusable: {reason}")]
    BadRoot { index: usize, reason: String },

    #[error("the peer presented no certificate")]
    NoPeerCertificate,

    #[error("the TLS handshake has not completed; the peer is not verified yet")]
    HandshakeIncomplete,

    #[error("the peer certificate cannot be parsed: {0}")]
    MalformedCertificate(String),

    #[error("the peer certificate chain does not verify to the trust bundle: {0}")]
    Chain(#[source] webpki::Error),

    #[error("intermediate certificate #{index} may not sign certificates: {reason}")]
    IntermediateNotSigner { index: usize, reason: &'static str },

    #[error("the peer certificate is not an SVID leaf: {0}")]
    NotLeaf(&'static str),

    #[error("the peer certificate's subjectAltName is not one SPIFFE URI: {0}")]
    BadSan(String),

    #[error("the peer certificate's URI SAN {uri:?} is not a workload SPIFFE ID: {source}")]
    SanNotSpiffeId {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },

    #[error("peer identity {presented} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        presented: SpiffeId,
        trust_domain: TrustDomain,
    },

    #[error("peer identity is {presented}, expected {expected}")]
    IdentityMismatch {
        expected: SpiffeId,
        presented: SpiffeId,
    },

    #[error("expected identity {expected} is not in the bundle's trust domain {trust_domain}")]
    ExpectedOutsideTrustDomain {
        expected: SpiffeId,
        trust_domain: TrustDomain,
    },

    #[error("own certificate chain is empty")]
    EmptyOwnChain,

    #[error("own certificate is not a usable SVID: {0}")]
    OwnCertificate(#[source] Box<IdentityError>),

    #[error("ALPN list is invalid: {0}")]
    Alpn(&'static str),

    #[error("TLS config: {0}")]
    Tls(#[source] rustls::Error),

    #[error("cannot read PEM: {0}")]
    Pem(String),
}

impl IdentityError {
    /// The reason token for logs, counters and `x-knit-error`.
    pub fn reason(&self) -> &'static str {
        use IdentityError::*;
        match self {
            EmptyBundle(_) | BadRoot { .. } | Pem(_) => "invalid_trust_bundle",
            NoPeerCertificate => "peer_cert_missing",
            HandshakeIncomplete => "handshake_incomplete",
            MalformedCertificate(_) => "peer_cert_malformed",
            Chain(e) => chain_reason(e),
            IntermediateNotSigner { .. } => "peer_chain_invalid",
            NotLeaf(_) => "peer_cert_usage",
            BadSan(_) => "peer_san_invalid",
            SanNotSpiffeId { .. } => "peer_spiffe_id_invalid",
            ForeignTrustDomain { .. } => "peer_trust_domain_mismatch",
            IdentityMismatch { .. } => "peer_identity_mismatch",
            ExpectedOutsideTrustDomain { .. }
            | EmptyOwnChain
            | OwnCertificate(_)
            | Alpn(_)
            | Tls(_) => "tls_config_invalid",
        }
    }

    /// Converts a verification failure into what a rustls verifier returns
    /// (see the type docs for the split between rustls' variants and
    /// `Other`).
    pub(crate) fn into_tls(self) -> rustls::Error {
        use webpki::Error as W;
        let cert_error = match &self {
            IdentityError::NoPeerCertificate => return rustls::Error::NoCertificatesPresented,
            IdentityError::MalformedCertificate(_) => CertificateError::BadEncoding,
            IdentityError::Chain(e) => match e {
                W::CertExpired { time, not_after } => CertificateError::ExpiredContext {
                    time: *time,
                    not_after: *not_after,
                },
                W::CertNotValidYet { time, not_before } => CertificateError::NotValidYetContext {
                    time: *time,
                    not_before: *not_before,
                },
                W::UnknownIssuer => CertificateError::UnknownIssuer,
                W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
                W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
                _ => other(self),
            },
            _ => other(self),
        };
        rustls::Error::InvalidCertificate(cert_error)
    }
}

fn other(e: IdentityError) -> CertificateError {
    CertificateError::Other(rustls::OtherError(std::sync::Arc::new(e)))
}

fn chain_reason(e: &webpki::Error) -> &'static str {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } | W::InvalidCertValidity => "peer_cert_expired",
        W::CertNotValidYet { .. } => "peer_cert_not_yet_valid",
        W::UnknownIssuer
        | W::InvalidSignatureForPublicKey
        | W::CertDistrusted
        | W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => "peer_cert_untrusted",
        W::BadDer | W::BadDerTime | W::TrailingData(_) => "peer_cert_malformed",
        #[allow(deprecated)]
        W::RequiredEkuNotFound => "peer_cert_usage",
        W::CaUsedAsEndEntity
        | W::RequiredEkuNotFoundContext(_)
        | W::EmptyEkuExtension
        | W::UnsupportedCriticalExtension => "peer_cert_usage",
        _ => "peer_chain_invalid",
    }
}

/// The typed identity failure inside a rustls error, when there is one.
/// Log this rather than the rustls error: rustls formats
/// `CertificateError::Other` with `Debug`.
pub fn identity_error(err: &rustls::Error) -> Option<&IdentityError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityError>()
        }
        _ => None,
    }
}

/// The reason token for a failed mesh handshake, as seen by the side that
/// verified: an [`IdentityError`] inside the rustls error gives its own
/// reason; rustls' certificate variants and other TLS failures are mapped
/// here. The verifying side's error is the informative one; the other side
/// only sees the alert.
pub fn rejection_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Other(_) => {
                identity_error(err).map_or("peer_cert_invalid", IdentityError::reason)
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "peer_cert_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "peer_cert_not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "peer_cert_untrusted"
            }
            CertificateError::BadEncoding => "peer_cert_malformed",
            _ => "peer_cert_invalid",
        },
        rustls::Error::NoCertificatesPresented => "peer_cert_missing",
        rustls::Error::AlertReceived(_) => "peer_rejected_us",
        _ => "tls_handshake_failed",
    }
}

/// [`rejection_reason`] for the `io::Error` a tokio-rustls handshake
/// fails with (the rustls error travels inside it).
pub fn io_rejection_reason(err: &std::io::Error) -> &'static str {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or("tls_handshake_failed", rejection_reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(sa: &str) -> SpiffeId {
        let td = TrustDomain::new("cluster.local").expect("valid");
        SpiffeId::workload(&td, "default", sa).expect("valid")
    }

    #[test]
    fn chain_failures_keep_precise_alerts_and_identity_failures_stay_typed() {
        // Unknown CA: rustls' own variant, so the peer gets unknown_ca.
        let untrusted = IdentityError::Chain(webpki::Error::UnknownIssuer).into_tls();
        assert_eq!(
            untrusted,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert_eq!(rejection_reason(&untrusted), "peer_cert_untrusted");

        // A chain failure without a precise alert keeps its typed error.
        let not_ca = IdentityError::Chain(webpki::Error::EndEntityUsedAsCa).into_tls();
        assert_eq!(rejection_reason(&not_ca), "peer_chain_invalid");

        // Identity failures travel as Other(IdentityError).
        let mismatch = IdentityError::IdentityMismatch {
            expected: workload("backend"),
            presented: workload("frontend"),
        }
        .into_tls();
        let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = &mismatch else {
            panic!("identity failures are CertificateError::Other: {mismatch:?}");
        };
        assert!(matches!(
            other.0.downcast_ref::<IdentityError>(),
            Some(IdentityError::IdentityMismatch { .. })
        ));
        assert_eq!(rejection_reason(&mismatch), "peer_identity_mismatch");
        // rustls prints `Other` with Debug; the readable message comes
        // from the typed error.
        assert_eq!(
            identity_error(&mismatch)
                .map(ToString::to_string)
                .as_deref(),
            Some(
                "peer identity is spiffe://cluster.local/ns/default/sa/frontend, \
                 expected spiffe://cluster.local/ns/default/sa/backend"
            )
        );
        assert!(identity_error(&untrusted).is_none());

        assert_eq!(
            IdentityError::NoPeerCertificate.into_tls(),
            rustls::Error::NoCertificatesPresented
        );
        assert_eq!(
            rejection_reason(&rustls::Error::NoCertificatesPresented),
            "peer_cert_missing"
        );
    }
}
