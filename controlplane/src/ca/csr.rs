//! Checking a certificate signing request before anything is signed.
//!
//! Only the CSR's public key is carried into the certificate; every other
//! field of the leaf is decided by the CA. The subjectAltName is still
//! checked, so a proxy that asks for the wrong identity learns so instead of
//! silently getting another one: it must hold exactly one URI SAN, the
//! caller's SPIFFE ID, and nothing else (SPIFFE X509-SVID: one URI SAN).

use rcgen::{KeyUsagePurpose, PublicKeyData, SignatureAlgorithm};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::identity::SpiffeId;
use crate::error::Error;

/// A CSR larger than this is not a workload's: refused before parsing.
pub const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

/// RSA keys shorter than this are refused (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// The key types a workload certificate may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: usize },
}

impl KeyKind {
    /// The rcgen algorithm whose SubjectPublicKeyInfo header matches this
    /// key (the signature half of it does not matter for a public key).
    fn spki_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// RFC 5280 key usages for a TLS leaf with this key: signatures always;
    /// RSA may also transport keys (TLS 1.2 RSA key exchange), EC keys may
    /// agree on keys (static ECDH). Ed25519 can only sign.
    pub fn key_usages(self) -> Vec<KeyUsagePurpose> {
        match self {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyAgreement,
            ],
            KeyKind::Rsa { .. } => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            KeyKind::Ed25519 => vec![KeyUsagePurpose::DigitalSignature],
        }
    }
}

/// The public key of a checked CSR, ready to be put in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrKey {
    pub kind: KeyKind,
    /// The subjectPublicKey bits, as in the CSR.
    raw: Vec<u8>,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.kind.spki_algorithm()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidRequest {
        reason: reason.into(),
    }
}

/// A SAN as `openssl x509 -text` would show it, for messages.
fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::RFC822Name(email) => format!("email:{email}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
            ),
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                format!("IP:{}", std::net::Ipv6Addr::from(octets))
            }
            _ => "IP:<malformed>".to_owned(),
        },
        GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
        GeneralName::OtherName(oid, _) => format!("othername:{oid}"),
        GeneralName::RegisteredID(oid) => format!("RID:{oid}"),
        GeneralName::X400Address(_) => "X400Address".to_owned(),
        GeneralName::EDIPartyName(_) => "EdiPartyName".to_owned(),
        GeneralName::Invalid(_, _) => "<malformed name>".to_owned(),
    }
}

fn key_kind(request: &X509CertificationRequest<'_>) -> Result<KeyKind, Error> {
    let spki = &request.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|params| params.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(curve) if curve == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            Some(curve) => Err(invalid(format!(
                "the CSR's EC key is on curve {curve}; only P-256 and P-384 are accepted"
            ))),
            None => Err(invalid("the CSR's EC key names no curve")),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(invalid("the CSR's RSA key cannot be read")),
        };
        if bits < MIN_RSA_BITS {
            return Err(invalid(format!(
                "the CSR's RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            )));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    Err(invalid(format!(
        "the CSR's key type {algorithm} is not accepted (ECDSA P-256/P-384, Ed25519 or RSA)"
    )))
}

/// Parses `csr_pem`, verifies its self-signature and checks that it asks
/// for exactly `allowed`. Unreadable input is `InvalidRequest`; a request
/// for anything but the caller's identity is `NotAllowed`.
pub fn check_csr(csr_pem: &str, allowed: &SpiffeId) -> Result<CsrKey, Error> {
    if csr_pem.trim().is_empty() {
        return Err(invalid("csr_pem is empty"));
    }
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(invalid(format!(
            "csr_pem is {} bytes; at most {MAX_CSR_PEM_BYTES} are accepted",
            csr_pem.len()
        )));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|err| {
        invalid(format!(
            "csr_pem holds no PEM CERTIFICATE REQUEST block: {err}"
        ))
    })?;
    let request = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok(([], request)) => request,
        Ok(_) => return Err(invalid("the CSR has trailing bytes")),
        Err(err) => return Err(invalid(format!("the CSR is not PKCS#10: {err}"))),
    };
    request.verify_signature().map_err(|err| {
        invalid(format!(
            "the CSR's signature does not verify with its own public key ({err})"
        ))
    })?;
    let kind = key_kind(&request)?;

    let mut names = Vec::new();
    if let Some(extensions) = request.requested_extensions() {
        for extension in extensions {
            match extension {
                ParsedExtension::SubjectAlternativeName(san) => {
                    names.extend(san.general_names.iter().map(describe));
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(Error::NotAllowed {
                        reason: "the CSR asks for a CA certificate; the mesh CA issues only \
                                 workload (non-CA) certificates"
                            .to_owned(),
                    });
                }
                ParsedExtension::ParseError { error } => {
                    return Err(invalid(format!(
                        "a requested extension of the CSR cannot be parsed: {error}"
                    )));
                }
                // Key usages and the like are the CA's to decide; asking
                // for them is harmless and they are not copied.
                _ => {}
            }
        }
    }
    let expected = format!("URI:{allowed}");
    if names.len() != 1 || names[0] != expected {
        let asked = if names.is_empty() {
            "no subjectAltName".to_owned()
        } else {
            format!("subjectAltName [{}]", names.join(", "))
        };
        return Err(Error::NotAllowed {
            reason: format!(
                "the CSR asks for {asked}; this caller may only get exactly one URI SAN, \
                 {allowed}"
            ),
        });
    }
    Ok(CsrKey {
        kind,
        raw: request
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::identity::TrustDomain;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    fn identity() -> SpiffeId {
        SpiffeId::new(&TrustDomain::default(), "shop", "web")
    }

    fn csr(sans: Vec<SanType>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        match params.serialize_request(key).and_then(|csr| csr.pem()) {
            Ok(pem) => pem,
            Err(err) => panic!("{err}"),
        }
    }

    fn uri(value: &str) -> SanType {
        match value.to_owned().try_into() {
            Ok(ia5) => SanType::URI(ia5),
            Err(err) => panic!("{err}"),
        }
    }

    fn dns(value: &str) -> SanType {
        match value.to_owned().try_into() {
            Ok(ia5) => SanType::DnsName(ia5),
            Err(err) => panic!("{err}"),
        }
    }

    fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
        KeyPair::generate_for(alg).unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn the_callers_identity_alone_is_accepted_with_each_key_type() {
        let me = identity();
        for (alg, kind) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ] {
            let key = key(alg);
            let checked = check_csr(&csr(vec![uri(&me.uri())], &key), &me)
                .unwrap_or_else(|err| panic!("{kind:?}: {err}"));
            assert_eq!(checked.kind, kind);
            assert_eq!(checked.der_bytes(), key.public_key_raw());
        }
    }

    #[test]
    fn anything_else_is_not_allowed_and_says_what_was_asked() {
        let me = identity();
        let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let table = [
            (vec![], "no subjectAltName"),
            (
                vec![uri("spiffe://cluster.local/ns/other/sa/web")],
                "[URI:spiffe://cluster.local/ns/other/sa/web]",
            ),
            (
                vec![uri(&me.uri()), dns("web.shop.svc")],
                "[URI:spiffe://cluster.local/ns/shop/sa/web, DNS:web.shop.svc]",
            ),
            (
                vec![uri(&me.uri()), uri(&me.uri())],
                "[URI:spiffe://cluster.local/ns/shop/sa/web, URI:spiffe://cluster.local/ns/shop/sa/web]",
            ),
            (
                vec![SanType::IpAddress([10, 0, 0, 1].into())],
                "[IP:10.0.0.1]",
            ),
        ];
        for (sans, asked) in table {
            match check_csr(&csr(sans, &key), &me) {
                Err(Error::NotAllowed { reason }) => {
                    assert!(reason.contains(asked), "{reason}");
                    assert!(
                        reason.ends_with(
                            "exactly one URI SAN, spiffe://cluster.local/ns/shop/sa/web"
                        ),
                        "{reason}"
                    );
                }
                other => panic!("{asked}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_request_for_a_ca_is_not_allowed() {
        let me = identity();
        let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(&me.uri())];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = match params.serialize_request(&key).and_then(|c| c.pem()) {
            Ok(pem) => pem,
            Err(err) => panic!("{err}"),
        };
        assert!(matches!(
            check_csr(&pem, &me),
            Err(Error::NotAllowed { .. })
        ));
    }

    #[test]
    fn unreadable_requests_are_invalid() {
        let me = identity();
        let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let good = csr(vec![uri(&me.uri())], &key);
        let huge = "A".repeat(MAX_CSR_PEM_BYTES + 1);
        let not_der =
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        for bad in ["", "   ", "hello", huge.as_str(), not_der] {
            match check_csr(bad, &me) {
                Err(Error::InvalidRequest { .. }) => {}
                other => panic!("{:.40}: {other:?}", bad),
            }
        }
        assert!(check_csr(&good, &me).is_ok());
    }
}
