//! A port's client TLS settings from the wire into a [`ClientTlsPolicy`]:
//! checked, files read and parsed, rustls configs built. Runs when a config
//! arrives, off the data path. Settings that are wrong on the wire reject
//! the whole config; files this proxy cannot use make only that port
//! [`ClientTlsPolicy::Unusable`] (it fails closed), since they are local to
//! each proxy.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use knit_proto::v1;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::verify::OriginServerVerifier;
use super::{ClientTlsPolicy, HTTP_ALPN, TlsOrigination};
use crate::error::Error;

/// Largest PEM file read; certificates and keys are a few KiB, so anything
/// near this is not one.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Files read while compiling one config, so a CA file named by many ports
/// is read once, and every port sees the same content.
#[derive(Default)]
pub struct FileCache {
    files: HashMap<PathBuf, Result<Arc<Vec<u8>>, String>>,
}

impl FileCache {
    fn read(&mut self, path: &Path) -> Result<Arc<Vec<u8>>, String> {
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| read_limited(path).map(Arc::new))
            .clone()
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "is larger than {MAX_PEM_BYTES} bytes; not a PEM file"
        ));
    }
    Ok(bytes)
}

/// Where a problem is: the service port and the rule, for the message.
struct Place<'a> {
    service: &'a str,
    port: u16,
    destination_rule: &'a str,
}

/// Why settings cannot be used.
enum Problem {
    /// Wrong as sent: the whole config is rejected (NACK).
    Wire(Error),
    /// A file this proxy cannot use: the port fails closed.
    File(String),
}

impl Place<'_> {
    fn describe(&self, what: impl std::fmt::Display) -> String {
        format!(
            "service {} port {}: DestinationRule {}: {what}",
            self.service, self.port, self.destination_rule
        )
    }

    fn error(&self, what: impl std::fmt::Display) -> Problem {
        Problem::Wire(Error::InvalidConfig(self.describe(what)))
    }

    fn file_error(&self, field: &str, path: &Path, reason: impl std::fmt::Display) -> Problem {
        Problem::File(self.describe(format_args!("{field} {}: {reason}", path.display())))
    }
}

/// The policy of one service port; `wire` absent is auto mutual TLS.
/// `hostname` is the SNI when the settings name none.
pub fn compile_client_tls(
    service: &str,
    port: u16,
    hostname: &str,
    wire: Option<&v1::ClientTls>,
    files: &mut FileCache,
) -> Result<ClientTlsPolicy, Error> {
    let Some(wire) = wire else {
        return Ok(ClientTlsPolicy::Auto);
    };
    let place = Place {
        service,
        port,
        destination_rule: &wire.destination_rule,
    };
    let wire_error = |problem: Problem| match problem {
        Problem::Wire(e) => e,
        Problem::File(reason) => Error::InvalidConfig(reason),
    };
    let mode = v1::ClientTlsMode::try_from(wire.mode).map_err(|_| {
        wire_error(place.error(format_args!("unknown client TLS mode {}", wire.mode)))
    })?;
    let destination_rule = wire.destination_rule.clone();
    let originates = matches!(mode, v1::ClientTlsMode::Simple | v1::ClientTlsMode::Mutual);
    if !originates {
        let stray = [
            ("ca_certificates", !wire.ca_certificates.is_empty()),
            ("client_certificate", !wire.client_certificate.is_empty()),
            ("private_key", !wire.private_key.is_empty()),
            ("sni", !wire.sni.is_empty()),
            ("subject_alt_names", !wire.subject_alt_names.is_empty()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(wire_error(
                place.error(format_args!("{field} is only used with SIMPLE or MUTUAL")),
            ));
        }
    }
    let mutual = match mode {
        v1::ClientTlsMode::Unspecified => {
            return Err(wire_error(place.error("client TLS mode is not set")));
        }
        v1::ClientTlsMode::Disable => return Ok(ClientTlsPolicy::Disable { destination_rule }),
        v1::ClientTlsMode::IstioMutual => {
            return Ok(ClientTlsPolicy::IstioMutual { destination_rule });
        }
        v1::ClientTlsMode::Simple => false,
        v1::ClientTlsMode::Mutual => true,
    };
    match origination(&place, hostname, wire, mutual, files) {
        Ok(tls) if mutual => Ok(ClientTlsPolicy::Mutual(Arc::new(tls))),
        Ok(tls) => Ok(ClientTlsPolicy::Simple(Arc::new(tls))),
        Err(Problem::Wire(e)) => Err(e),
        Err(Problem::File(reason)) => {
            tracing::warn!(%reason, "client TLS files unusable; this port fails closed until they are fixed");
            Ok(ClientTlsPolicy::Unusable {
                destination_rule,
                reason,
            })
        }
    }
}

fn origination(
    place: &Place<'_>,
    hostname: &str,
    wire: &v1::ClientTls,
    mutual: bool,
    files: &mut FileCache,
) -> Result<TlsOrigination, Problem> {
    let sni = if wire.sni.is_empty() {
        hostname.to_owned()
    } else {
        wire.sni.clone()
    };
    let server_name = match ServerName::try_from(sni.as_str()) {
        Ok(name @ ServerName::DnsName(_)) => name.to_owned(),
        _ => return Err(place.error(format_args!("sni {sni:?} is not a DNS name"))),
    };
    if let Some(empty) = wire.subject_alt_names.iter().position(String::is_empty) {
        return Err(place.error(format_args!("subject_alt_names[{empty}] is empty")));
    }
    if wire.ca_certificates.is_empty() {
        return Err(place.error(
            "ca_certificates is not set; a server is only verified against the CAs the rule \
             names (Knit has no system roots policy yet)",
        ));
    }
    let mut key = std::hash::DefaultHasher::new();
    (mutual, &sni, &wire.subject_alt_names).hash(&mut key);

    let ca_path = PathBuf::from(&wire.ca_certificates);
    let ca_pem = files
        .read(&ca_path)
        .map_err(|reason| place.file_error("caCertificates", &ca_path, reason))?;
    ca_pem.hash(&mut key);
    let cas = certificates(&ca_pem)
        .map_err(|reason| place.file_error("caCertificates", &ca_path, reason))?;
    let mut roots = RootCertStore::empty();
    for (index, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|e| {
            place.file_error(
                "caCertificates",
                &ca_path,
                format_args!("certificate #{index} is not a usable CA: {e}"),
            )
        })?;
    }
    let verifier = Arc::new(OriginServerVerifier::new(
        Arc::new(roots),
        &wire.subject_alt_names,
    ));
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| place.error(format_args!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);

    let (base, client_certificate, private_key) = if mutual {
        let cert_path = required_path(place, "client_certificate", &wire.client_certificate)?;
        let key_path = required_path(place, "private_key", &wire.private_key)?;
        let cert_pem = files
            .read(&cert_path)
            .map_err(|reason| place.file_error("clientCertificate", &cert_path, reason))?;
        cert_pem.hash(&mut key);
        key_path.hash(&mut key);
        let chain = certificates(&cert_pem)
            .map_err(|reason| place.file_error("clientCertificate", &cert_path, reason))?;
        let key_pem = files
            .read(&key_path)
            .map_err(|reason| place.file_error("privateKey", &key_path, reason))?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            place.file_error(
                "privateKey",
                &key_path,
                format_args!("no usable PEM private key: {e}"),
            )
        })?;
        let config = builder.with_client_auth_cert(chain, private).map_err(|e| {
            place.file_error(
                "clientCertificate",
                &cert_path,
                format_args!("cannot be used with privateKey {}: {e}", key_path.display()),
            )
        })?;
        (config, Some(cert_path), Some(key_path))
    } else {
        if !wire.client_certificate.is_empty() || !wire.private_key.is_empty() {
            return Err(place.error("client_certificate and private_key are only used with MUTUAL"));
        }
        (builder.with_no_client_auth(), None, None)
    };
    let with_alpn = |alpn: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(TlsOrigination {
        destination_rule: wire.destination_rule.clone(),
        sni,
        subject_alt_names: wire.subject_alt_names.clone(),
        ca_certificates: ca_path,
        client_certificate,
        private_key,
        server_name,
        http: with_alpn(&HTTP_ALPN),
        http1: with_alpn(&[b"http/1.1"]),
        opaque: with_alpn(&[]),
        pool_key: key.finish(),
    })
}

fn required_path(place: &Place<'_>, field: &str, value: &str) -> Result<PathBuf, Problem> {
    if value.is_empty() {
        return Err(place.error(format_args!("{field} must be set with MUTUAL")));
    }
    Ok(PathBuf::from(value))
}

/// Every certificate of a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certs)
}
