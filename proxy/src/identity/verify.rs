//! X.509-SVID verification and the two rustls verifiers built on it.
//!
//! A peer certificate is accepted when all of these hold:
//! 1. Path validation (webpki, RFC 5280 semantics): leaf → the presented
//!    intermediates → a root of the bundle, every signature checked with
//!    the ring provider's algorithms, every certificate valid now, every
//!    issuer a CA (basicConstraints cA = true, pathLenConstraint honoured),
//!    no unknown critical extension, and the leaf's extendedKeyUsage (when
//!    present) allowing serverAuth or clientAuth for the role it plays.
//! 2. Every intermediate may sign certificates: keyUsage present with
//!    keyCertSign. webpki deliberately ignores keyUsage on CAs, and RFC 5280
//!    §6.1.4 (n) requires the check; the SVID standard makes the extension
//!    mandatory on signing certificates.
//! 3. The leaf is an SVID leaf (SVID standard §4.3, §5.2): keyUsage present,
//!    digitalSignature set (TLS 1.3 signs with it), keyCertSign and cRLSign
//!    not set; webpki already refuses a CA certificate as the leaf.
//! 4. The leaf's subjectAltName holds exactly one name, and it is a URI that
//!    is a Knit workload SPIFFE ID of the bundle's trust domain. The SVID
//!    standard allows extra non-URI SANs; Knit does not: its CA never issues
//!    them, so a certificate carrying a DNS, IP, e-mail or any other name was
//!    not made for a mesh workload, and accepting it would let one
//!    certificate act both as a workload identity and as something else.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, SpiffeId, TrustBundle};

/// The signature algorithms of the ring provider: used for certificate
/// signatures in path validation and for the handshake signature, so both
/// accept exactly the same algorithms.
pub(crate) fn ring_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Which extendedKeyUsage the leaf must allow (when it has the extension).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerRole {
    /// The peer is the TLS server: serverAuth.
    Server,
    /// The peer is the TLS client: clientAuth.
    Client,
}

/// Runs checks 1-4 of the module docs and returns the leaf's identity,
/// already known to be in the bundle's trust domain.
pub(crate) fn verify_svid(
    bundle: &TrustBundle,
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<SpiffeId, IdentityError> {
    let leaf = EndEntityCert::try_from(end_entity).map_err(IdentityError::Chain)?;
    let usage = match role {
        PeerRole::Server => KeyUsage::server_auth(),
        PeerRole::Client => KeyUsage::client_auth(),
    };
    let path = leaf
        .verify_for_usage(
            algorithms.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            // No revocation: mesh certificates live hours, and rotation
            // (not CRLs) is how the mesh retires them.
            None,
            None,
        )
        .map_err(IdentityError::Chain)?;
    // Only the intermediates on the verified path matter: a peer may send
    // extra certificates that took no part in it.
    for (index, intermediate) in path.intermediate_certificates().enumerate() {
        check_signer(index, intermediate.der().as_ref())?;
    }
    let id = svid_identity(end_entity)?;
    if !id.is_in(bundle.trust_domain()) {
        return Err(IdentityError::ForeignTrustDomain {
            presented: id,
            trust_domain: bundle.trust_domain().clone(),
        });
    }
    Ok(id)
}

/// The position in `bundle` of the root that `end_entity` chains to
/// through `intermediates`, found by the same path validation as check 1.
/// During a root rotation the bundle holds two roots; this says which one
/// a certificate belongs to.
pub(crate) fn chain_root(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<usize, IdentityError> {
    let leaf = EndEntityCert::try_from(end_entity).map_err(IdentityError::Chain)?;
    let path = leaf
        .verify_for_usage(
            ring_algorithms().all,
            bundle.anchors(),
            intermediates,
            now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(IdentityError::Chain)?;
    let anchor = path.anchor();
    bundle
        .anchors()
        .iter()
        .position(|root| {
            root.subject == anchor.subject
                && root.subject_public_key_info == anchor.subject_public_key_info
        })
        .ok_or(IdentityError::Chain(webpki::Error::UnknownIssuer))
}

/// Check 2: an intermediate must assert keyCertSign.
fn check_signer(index: usize, der: &[u8]) -> Result<(), IdentityError> {
    let bad = |reason| IdentityError::IntermediateNotSigner { index, reason };
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("cannot be parsed"))?;
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => Ok(()),
        Ok(Some(_)) => Err(bad("keyUsage lacks keyCertSign")),
        Ok(None) => Err(bad("no keyUsage extension")),
        Err(_) => Err(bad("invalid keyUsage extension")),
    }
}

/// Checks 3 and 4 on a leaf whose chain is already verified (or that is our
/// own certificate): the SVID leaf rules and the one URI SAN, parsed.
pub(crate) fn svid_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let malformed = |e: &dyn std::fmt::Display| IdentityError::MalformedCertificate(e.to_string());
    let (rest, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| malformed(&e))?;
    if !rest.is_empty() {
        return Err(malformed(&"trailing bytes after the certificate"));
    }

    // Defence in depth: webpki refuses a CA as the end entity, but this
    // function also checks our own certificate, which webpki never saw.
    if cert
        .basic_constraints()
        .map_err(|e| malformed(&e))?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(IdentityError::NotLeaf("basicConstraints cA is true"));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| malformed(&e))?
        .ok_or(IdentityError::NotLeaf("no keyUsage extension"))?
        .value;
    if !ku.digital_signature() {
        return Err(IdentityError::NotLeaf("keyUsage lacks digitalSignature"));
    }
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(IdentityError::NotLeaf(
            "keyUsage has keyCertSign or cRLSign",
        ));
    }

    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(&e))?
        .ok_or_else(|| IdentityError::BadSan("no subjectAltName extension".into()))?
        .value;
    let uri = match san.general_names.as_slice() {
        [GeneralName::URI(uri)] => *uri,
        [] => return Err(IdentityError::BadSan("subjectAltName is empty".into())),
        [other] => {
            return Err(IdentityError::BadSan(format!(
                "the only name is {}",
                kind(other)
            )));
        }
        many => {
            let uris = many
                .iter()
                .filter(|n| matches!(n, GeneralName::URI(_)))
                .count();
            let others: Vec<&str> = many
                .iter()
                .filter(|n| !matches!(n, GeneralName::URI(_)))
                .map(kind)
                .collect();
            return Err(IdentityError::BadSan(format!(
                "{} names: {uris} URI, others: [{}]",
                many.len(),
                others.join(", ")
            )));
        }
    };
    SpiffeId::parse(uri).map_err(|source| IdentityError::SanNotSpiffeId {
        uri: uri.to_owned(),
        source,
    })
}

fn kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::OtherName(..) => "otherName",
        GeneralName::RFC822Name(_) => "e-mail",
        GeneralName::DNSName(_) => "DNS",
        GeneralName::X400Address(_) => "x400Address",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EDIPartyName(_) => "ediPartyName",
        GeneralName::URI(_) => "URI",
        GeneralName::IPAddress(_) => "IP",
        GeneralName::RegisteredID(_) => "registeredID",
        GeneralName::Invalid(..) => "invalid",
    }
}

/// The verified identity of the peer of a finished handshake.
///
/// It re-reads the identity from the peer's leaf; it does not verify
/// anything. Call it only on a connection whose config used
/// [`SpiffeClientVerifier`] (server side) or [`SpiffeServerVerifier`]
/// (client side), after the handshake completed: rustls finishes a
/// handshake only once the verifier accepted the chain, so the leaf is then
/// a verified SVID of the trust domain. Works on `ServerConnection` and
/// `ClientConnection` alike (both deref to `CommonState`).
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, IdentityError> {
    if conn.is_handshaking() {
        return Err(IdentityError::HandshakeIncomplete);
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(IdentityError::NoPeerCertificate)?;
    svid_identity(leaf)
}

/// The client side of a mesh connection: accepts the server only if it
/// presents an SVID for exactly the expected identity.
///
/// One verifier (and so one `ClientConfig`) per expected identity: the
/// control plane says which workload runs behind an endpoint, and that is
/// the only identity this connection accepts.
///
/// The TLS server name is ignored. The mesh dials endpoints by pod IP, and
/// the name a caller used (a service host, a VIP) says which service it
/// wanted, not which workload may answer; a DNS SAN proves control of a
/// name, not a workload identity. The only identity check is the SPIFFE ID
/// against what the control plane expects for the endpoint.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: Arc<TrustBundle>, expected: SpiffeId) -> Self {
        Self {
            bundle,
            expected,
            algorithms: ring_algorithms(),
        }
    }

    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// The verification itself, with a typed error (the trait method wraps
    /// it for rustls).
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), IdentityError> {
        let presented = verify_svid(
            &self.bundle,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
        )?;
        // Byte-for-byte: SpiffeId equality is exact, never case-folded.
        if presented != self.expected {
            return Err(IdentityError::IdentityMismatch {
                expected: self.expected.clone(),
                presented,
            });
        }
        Ok(())
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        // Stapled OCSP is not used in the mesh; see the revocation note in
        // `verify_svid`.
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(IdentityError::into_tls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server side of a mesh connection: requires a client certificate
/// that is an SVID of the bundle's trust domain.
///
/// Any workload of the trust domain passes; which of them may call what is
/// authorization's decision, made after the handshake on the identity
/// [`peer_identity`] returns.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        Self {
            bundle,
            algorithms: ring_algorithms(),
        }
    }

    /// The verification itself, with a typed error; returns the client's
    /// identity.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, IdentityError> {
        verify_svid(
            &self.bundle,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
        )
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Mesh mTLS without a client certificate is not mesh mTLS: the
    /// handshake fails rather than yield an anonymous peer.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.bundle.subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(IdentityError::into_tls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
