//! rustls configs for mesh mTLS.
//!
//! Both are TLS 1.3 only. Both ends are Knit proxies, so nothing older has
//! to be spoken, and 1.3 brings what the mesh wants: certificates travel
//! encrypted (a passive observer does not learn workload identities), one
//! round trip, only forward-secret key exchange, no renegotiation, and a
//! much smaller protocol surface to get wrong.
//!
//! Session resumption is off on both sides. A resumed session skips
//! certificate verification, so it would outlive a trust-bundle rotation or
//! a peer certificate's expiry; and mesh connections are long-lived HTTP/2
//! connections (one per peer pod), so a full handshake per connection
//! costs next to nothing.
//!
//! The configs are built once per (credentials, bundle) — the client one
//! per expected peer identity as well — and never changed: on rotation the
//! owner builds new ones and swaps them in.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::verify::{SpiffeClientVerifier, SpiffeServerVerifier, svid_identity};
use super::{IdentityError, SpiffeId, TrustBundle};

/// The provider every mesh config uses: ring, explicitly, so the configs
/// never depend on a process-wide default being installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The config for dialling a peer proxy that must be `expected`.
///
/// `own_cert_chain` is this workload's SVID, leaf first, then
/// intermediates; `own_key` its private key. `alpn` is what the client
/// offers; mesh connections pass `&[MESH_ALPN]` so the peer's inbound side
/// recognises them. SNI is not sent: the server verifier ignores names (see
/// [`SpiffeServerVerifier`]), and not sending one leaks nothing about what
/// was dialled.
///
/// [`SpiffeServerVerifier`]: super::SpiffeServerVerifier
pub fn client_config(
    bundle: Arc<TrustBundle>,
    own_cert_chain: Vec<CertificateDer<'static>>,
    own_key: PrivateKeyDer<'static>,
    expected: SpiffeId,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, IdentityError> {
    // An expected identity outside the bundle's trust domain could never
    // verify; say so now instead of failing every handshake later.
    if !expected.is_in(bundle.trust_domain()) {
        return Err(IdentityError::ExpectedOutsideTrustDomain {
            expected,
            trust_domain: bundle.trust_domain().clone(),
        });
    }
    check_own(&own_cert_chain)?;
    let alpn = alpn_list(alpn)?;
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, expected));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(own_cert_chain, own_key)
        .map_err(IdentityError::Tls)?;
    config.alpn_protocols = alpn;
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The config for accepting mesh connections from peer proxies.
///
/// Requires a client certificate that is an SVID of the bundle's trust
/// domain (see [`SpiffeClientVerifier`]); read the caller's identity with
/// [`peer_identity`] once the handshake is done. `alpn` is what the server
/// will select from; with `&[MESH_ALPN]`, a client that offers ALPN without
/// the mesh protocol is refused (`no_application_protocol`).
///
/// [`SpiffeClientVerifier`]: super::SpiffeClientVerifier
/// [`peer_identity`]: super::peer_identity
pub fn server_config(
    bundle: Arc<TrustBundle>,
    own_cert_chain: Vec<CertificateDer<'static>>,
    own_key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, IdentityError> {
    check_own(&own_cert_chain)?;
    let alpn = alpn_list(alpn)?;
    let verifier = Arc::new(SpiffeClientVerifier::new(bundle));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own_cert_chain, own_key)
        .map_err(IdentityError::Tls)?;
    config.alpn_protocols = alpn;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Refuses to present a certificate that every peer would reject: it is
/// cheaper to fail when the config is built (and keep serving with the
/// previous one) than on every handshake.
fn check_own(chain: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
    let leaf = chain.first().ok_or(IdentityError::EmptyOwnChain)?;
    svid_identity(leaf)
        .map(|_| ())
        .map_err(|e| IdentityError::OwnCertificate(Box::new(e)))
}

fn alpn_list(alpn: &[&[u8]]) -> Result<Vec<Vec<u8>>, IdentityError> {
    if alpn.is_empty() {
        return Err(IdentityError::Alpn(
            "empty: mesh connections are recognised by their ALPN",
        ));
    }
    // RFC 7301: each protocol name is 1..=255 bytes.
    if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
        return Err(IdentityError::Alpn(
            "a protocol name must be 1 to 255 bytes",
        ));
    }
    Ok(alpn.iter().map(|p| p.to_vec()).collect())
}
