//! Certificate plumbing for the CA: PEM in and out, fingerprints, summaries
//! for logs and `/debug/ca`, and the checks a CA certificate must pass
//! (RFC 5280: basicConstraints cA, keyUsage keyCertSign, validity, and
//! signatures that link a chain).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::Error;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `sha256:<hex>` of a certificate's DER, the fingerprint operators compare
/// with `openssl x509 -fingerprint -sha256` (modulo colons and case).
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(der)))
}

/// One certificate as PEM, `\n` line endings.
pub fn cert_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// Every `CERTIFICATE` block of a PEM file; other blocks are ignored.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = std::fs::read(path).map_err(|err| Error::CaFile {
        path: path.to_path_buf(),
        reason: format!("cannot read: {err}"),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|err| Error::CaFile {
            path: path.to_path_buf(),
            reason: format!("is not valid PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(Error::CaFile {
            path: path.to_path_buf(),
            reason: "holds no PEM CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
        // A clock before 1970 is broken; 0 makes every check fail loudly.
        Err(_) => 0,
    }
}

pub fn datetime(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 in UTC, for logs and JSON.
pub fn rfc3339(unix: i64) -> String {
    let t = datetime(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("has trailing bytes after the certificate".to_owned()),
        Err(err) => Err(format!("is not an X.509 certificate: {err}")),
    }
}

/// What an operator wants to know about a certificate; no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl CertSummary {
    pub fn of(der: &[u8]) -> Result<CertSummary, String> {
        let cert = parse(der)?;
        Ok(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: hex(cert.raw_serial()),
            fingerprint: fingerprint(der),
            not_before: rfc3339(cert.validity().not_before.timestamp()),
            not_after: rfc3339(cert.validity().not_after.timestamp()),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }
}

/// Why `cert` cannot issue certificates, if it cannot: RFC 5280 requires
/// basicConstraints cA=TRUE and, when keyUsage is present (it must be on
/// CA certificates), keyCertSign; and it must be valid now.
pub fn check_ca_cert(cert: &X509Certificate<'_>) -> Result<(), String> {
    let constraints = cert
        .basic_constraints()
        .map_err(|err| format!("has an unreadable basicConstraints extension: {err}"))?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err(format!(
            "{} is not a CA certificate (basicConstraints CA:TRUE is missing)",
            cert.subject()
        ));
    }
    let usage = cert
        .key_usage()
        .map_err(|err| format!("has an unreadable keyUsage extension: {err}"))?;
    match usage {
        Some(usage) if usage.value.key_cert_sign() => {}
        Some(_) => {
            return Err(format!(
                "{} may not sign certificates (keyUsage lacks keyCertSign)",
                cert.subject()
            ));
        }
        None => {
            return Err(format!(
                "{} has no keyUsage extension; a CA certificate needs keyCertSign",
                cert.subject()
            ));
        }
    }
    let now = now_unix();
    let validity = cert.validity();
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "{} is not valid before {}",
            cert.subject(),
            rfc3339(validity.not_before.timestamp())
        ));
    }
    if validity.not_after.timestamp() <= now {
        return Err(format!(
            "{} expired at {}",
            cert.subject(),
            rfc3339(validity.not_after.timestamp())
        ));
    }
    Ok(())
}

/// Whether `child` names `parent` as its issuer and carries its signature.
pub fn check_issued_by(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
) -> Result<(), String> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(format!(
            "{} is issued by {}, not by {}",
            child.subject(),
            child.issuer(),
            parent.subject()
        ));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|err| {
            format!(
                "the signature on {} does not verify with the key of {}: {err}",
                child.subject(),
                parent.subject()
            )
        })
}

/// A root: its own issuer, with a signature its own key verifies.
pub fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok()
}

/// Fresh random bytes from the same CSPRNG rustls uses.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| Error::Issue {
            reason: "the system random number generator failed".to_owned(),
        })?;
    Ok(bytes)
}

/// A positive, non-zero 128-bit serial: RFC 5280 allows up to 20 octets and
/// CA practice wants at least 64 random bits, so serials never collide.
pub fn random_serial() -> Result<rcgen::SerialNumber, Error> {
    let mut bytes = random_bytes::<16>()?;
    // Clear the sign bit so the DER INTEGER stays 16 octets and positive;
    // set the next one so it is never zero or shortened.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(hex(&[0, 1, 0xab]), "0001ab");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fingerprint(b"").len(), "sha256:".len() + 64);
        let pem = cert_pem(&[1, 2, 3]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(!pem.contains('\r'));
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap_or_else(|err| panic!("{err}"));
        let b = random_serial().unwrap_or_else(|err| panic!("{err}"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.to_bytes()[0] & 0x80 == 0);
    }
}
