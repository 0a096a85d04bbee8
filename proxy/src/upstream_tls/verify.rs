//! The server verifier of originated TLS: the chain must lead to one of the
//! DestinationRule's CAs (webpki path validation with ring's algorithms,
//! serverAuth usage, validity dates), then the name check:
//! - without `subjectAltNames`, the certificate must be valid for the SNI
//!   name (RFC 6125 rules as webpki applies them, wildcards included);
//! - with them, it must carry one: DNS names and IP addresses are checked as
//!   above, anything else (a URI such as a SPIFFE ID) must equal one of the
//!   certificate's URI or DNS SANs exactly.
//!
//! No revocation: the rule cannot name a CRL yet (`caCrl` is rejected).

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;

/// One name from `subjectAltNames`.
#[derive(Debug, Clone)]
pub(super) enum ExpectedName {
    /// A DNS name or IP address, checked as webpki checks a server name.
    Server(ServerName<'static>),
    /// Compared exactly with the certificate's URI and DNS SANs.
    Exact(String),
}

impl ExpectedName {
    pub(super) fn parse(name: &str) -> ExpectedName {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ExpectedName::Server(ServerName::IpAddress(ip.into()));
        }
        match ServerName::try_from(name) {
            Ok(server) if !name.contains(':') => ExpectedName::Server(server.to_owned()),
            _ => ExpectedName::Exact(name.to_owned()),
        }
    }
}

#[derive(Debug)]
pub(super) struct OriginServerVerifier {
    roots: Arc<RootCertStore>,
    /// Empty: the SNI name is checked instead.
    subject_alt_names: Vec<ExpectedName>,
    /// As written, for the mismatch error.
    written: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl OriginServerVerifier {
    pub(super) fn new(roots: Arc<RootCertStore>, subject_alt_names: &[String]) -> Self {
        OriginServerVerifier {
            roots,
            subject_alt_names: subject_alt_names
                .iter()
                .map(|name| ExpectedName::parse(name))
                .collect(),
            written: subject_alt_names.to_vec(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn check_subject_alt_names(
        &self,
        cert: &ParsedCertificate<'_>,
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        let mut presented: Option<Vec<String>> = None;
        for expected in &self.subject_alt_names {
            let matched = match expected {
                ExpectedName::Server(name) => verify_server_name(cert, name).is_ok(),
                ExpectedName::Exact(name) => presented
                    .get_or_insert_with(|| presented_names(end_entity))
                    .iter()
                    .any(|p| p == name),
            };
            if matched {
                return Ok(());
            }
        }
        let presented = presented.unwrap_or_else(|| presented_names(end_entity));
        Err(
            CertificateError::Other(OtherError(Arc::new(Error::SubjectAltNameMismatch {
                expected: self.written.clone(),
                presented,
            })))
            .into(),
        )
    }
}

/// The certificate's DNS, URI and IP subjectAltNames, as text.
fn presented_names(end_entity: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(end_entity.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for OriginServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        // No OCSP: see the module docs on revocation.
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.subject_alt_names.is_empty() {
            verify_server_name(&cert, server_name)?;
        } else {
            self.check_subject_alt_names(&cert, end_entity)?;
        }
        Ok(ServerCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_names_are_server_names_or_exact() {
        let table = [
            ("api.example.com", true),
            ("10.0.0.1", true),
            ("fd00::1", true),
            ("spiffe://example.org/ns/a/sa/b", false),
            ("*.example.com", false),
        ];
        for (name, server) in table {
            let parsed = ExpectedName::parse(name);
            assert_eq!(
                matches!(parsed, ExpectedName::Server(_)),
                server,
                "{name}: {parsed:?}"
            );
        }
    }
}
