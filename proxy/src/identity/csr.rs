//! The workload's key pair and its certificate signing request.
//!
//! A new key is made for every issuance, in memory, and is never written
//! anywhere: the proxy's only copy lives in the rustls configs built from
//! it, which are dropped with the identity they belong to. A fresh key per
//! certificate means a renewal also rotates the key, so a key that leaked
//! stops being useful when its certificate expires. P-256: the CA accepts
//! it, ring verifies it fast, and its signatures keep handshakes small.

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SpiffeId;

/// A fresh private key, its public half and a CSR for one SPIFFE ID.
pub(crate) struct WorkloadKey {
    pub(crate) key: PrivateKeyDer<'static>,
    /// The subjectPublicKey bits (the uncompressed EC point), to check
    /// that the certificate the CA returns is for this key.
    pub(crate) public_key: Vec<u8>,
    pub(crate) csr_pem: String,
}

impl std::fmt::Debug for WorkloadKey {
    // By hand, so the private key can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl WorkloadKey {
    /// Generates a P-256 key and a PKCS#10 CSR, signed with it, whose only
    /// subjectAltName is the URI `id`.
    ///
    /// The subject is empty: a SPIFFE identity lives in the SAN alone, and
    /// the CA decides every other field of the certificate anyway (it only
    /// copies the public key and checks the SAN).
    pub(crate) fn generate(id: &SpiffeId) -> Result<WorkloadKey, rcgen::Error> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.as_str())?)];
        let csr_pem = params.serialize_request(&pair)?.pem()?;
        Ok(WorkloadKey {
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der())),
            public_key: pair.der_bytes().to_vec(),
            csr_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustDomain;
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_asks_for_exactly_the_workload_uri_with_a_fresh_p256_key() {
        let td = TrustDomain::new("cluster.local").expect("valid");
        let id = SpiffeId::workload(&td, "shop", "web").expect("valid");
        let first = WorkloadKey::generate(&id).expect("generated");
        let second = WorkloadKey::generate(&id).expect("generated");
        assert_ne!(first.public_key, second.public_key, "a new key every time");

        let der = CertificateSigningRequestDer::from_pem_slice(first.csr_pem.as_bytes())
            .expect("a PEM CERTIFICATE REQUEST");
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).expect("PKCS#10");
        assert!(rest.is_empty());
        csr.verify_signature().expect("self-signed with the key");
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "empty subject");
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            first.public_key.as_slice()
        );
        assert_eq!(
            info.subject_pki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok()),
            Some(x509_parser::oid_registry::OID_EC_P256)
        );
        let mut sans = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().map(|n| match n {
                    GeneralName::URI(uri) => format!("URI:{uri}"),
                    other => format!("other:{other:?}"),
                }));
            }
        }
        assert_eq!(sans, ["URI:spiffe://cluster.local/ns/shop/sa/web"]);
        assert!(
            !format!("{first:?}").contains("PRIVATE"),
            "Debug shows no key material"
        );
    }
}
