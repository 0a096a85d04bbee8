//! The trust bundle: the roots that certify workloads of one trust domain.

use rustls::DistinguishedName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, TrustDomain};

/// The root certificates of a trust domain, parsed once into the form path
/// validation needs.
///
/// A bundle is an immutable value. During a CA rotation the control plane
/// sends old and new roots together; the owner builds a new `TrustBundle`
/// from them, builds new configs with it, and swaps those in. Connections
/// keep the bundle they were verified with, and nothing is ever mutated
/// under a handshake in progress.
#[derive(Debug)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    fingerprints: Vec<String>,
}

impl TrustBundle {
    /// Builds a bundle from DER roots. Each root must be a CA certificate
    /// (basicConstraints cA = true): a leaf put into the bundle by mistake
    /// would otherwise let its key holder mint any identity.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        if roots.is_empty() {
            return Err(IdentityError::EmptyBundle(trust_domain));
        }
        let mut anchors = Vec::with_capacity(roots.len());
        let mut subjects = Vec::with_capacity(roots.len());
        let mut fingerprints = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            let bad = |reason: String| IdentityError::BadRoot { index, reason };
            let (rest, x509) =
                X509Certificate::from_der(root.as_ref()).map_err(|e| bad(e.to_string()))?;
            if !rest.is_empty() {
                return Err(bad("trailing bytes after the certificate".into()));
            }
            let is_ca = x509
                .basic_constraints()
                .map_err(|e| bad(e.to_string()))?
                .is_some_and(|bc| bc.value.ca);
            if !is_ca {
                return Err(bad(
                    "not a CA certificate (basicConstraints cA is not true)".into(),
                ));
            }
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| bad(e.to_string()))?
                .to_owned();
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            anchors.push(anchor);
            fingerprints.push(fingerprint(root.as_ref()));
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            subjects,
            fingerprints,
        })
    }

    /// Builds a bundle from PEM text, as `Certificates.Sign` returns it
    /// (`trust_bundle_pem`: one or more `CERTIFICATE` blocks per string).
    pub fn from_pem<S: AsRef<str>>(
        trust_domain: TrustDomain,
        pems: impl IntoIterator<Item = S>,
    ) -> Result<Self, IdentityError> {
        let mut roots = Vec::new();
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_ref().as_bytes()) {
                roots.push(cert.map_err(|e| IdentityError::Pem(e.to_string()))?);
            }
        }
        Self::new(trust_domain, roots)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots as given, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Each root's `sha256:<hex>` fingerprint, in bundle order: the form
    /// knitd's `/debug/ca` and its logs use, so an operator can tell which
    /// roots a proxy trusts during a rotation.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Whether the bundle holds exactly the roots with these fingerprints,
    /// in any order.
    pub fn has_exactly(&self, fingerprints: &[&str]) -> bool {
        self.fingerprints.len() == fingerprints.len()
            && fingerprints
                .iter()
                .all(|want| self.fingerprints.iter().any(|have| have == want))
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The roots' subjects, sent as acceptable CAs in the server's
    /// CertificateRequest (encrypted in TLS 1.3).
    pub(crate) fn subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }
}

/// `sha256:<lowercase hex>` of a certificate's DER, as knitd prints it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_of_the_der() {
        // SHA-256 of the empty input and of "abc" (FIPS 180-2 test vectors).
        assert_eq!(
            fingerprint(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
