//! Where the CA's signing material comes from, before it is checked: a
//! root generated in memory or into `--state-dir`, one loaded from there,
//! or the operator's plug-in CA; and the extra trust bundle.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::authority::{CaOrigin, CaSource};
use super::pki;
use super::store;
use crate::error::Error;

/// Lifetime of a root knitd generates.
pub const ROOT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// The signing material before it is checked.
pub(super) struct Material {
    pub(super) cert: CertificateDer<'static>,
    pub(super) cert_path: PathBuf,
    pub(super) key: KeyPair,
    pub(super) key_path: PathBuf,
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) chain_path: Option<PathBuf>,
}

pub(super) fn ca_error(reason: impl Into<String>) -> Error {
    Error::Ca {
        reason: reason.into(),
    }
}

pub(super) fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::CaFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses a PKCS#8 private key; other encodings get a conversion hint,
/// because the ring backend signs only from PKCS#8.
fn parse_key(path: &Path, text: &str) -> Result<KeyPair, Error> {
    let der = PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|err| file_error(path, format!("holds no PEM private key: {err}")))?;
    match &der {
        PrivateKeyDer::Pkcs8(_) => KeyPair::try_from(&der).map_err(|err| {
            file_error(
                path,
                format!("is not a usable ECDSA P-256/P-384, Ed25519 or RSA key: {err}"),
            )
        }),
        _ => Err(file_error(
            path,
            format!(
                "is a SEC1 or PKCS#1 key; knitd reads PKCS#8 (\"BEGIN PRIVATE KEY\"): convert it \
                 with `openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.p8`",
                path.display()
            ),
        )),
    }
}

fn read_single_cert(
    path: &Path,
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), Error> {
    let mut certs = pki::read_certs(path)?;
    let first = certs.remove(0);
    Ok((first, certs))
}

/// A new self-signed root: ECDSA P-256, CA without a path length limit
/// (so the operator may later put intermediates under it), 10 years.
fn generate_root() -> Result<(CertificateDer<'static>, KeyPair), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|err| ca_error(format!("cannot generate the root key: {err}")))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Knit");
    // A random suffix keeps roots apart by name during a rotation, when the
    // old and the new one sit in the same bundle.
    let id = pki::hex(&pki::random_bytes::<4>()?);
    name.push(DnType::CommonName, format!("Knit mesh root CA {id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(pki::random_serial()?);
    let now = pki::now_unix();
    params.not_before = pki::datetime(now - 3600);
    params.not_after = pki::datetime(now + ROOT_LIFETIME.as_secs() as i64);
    let cert = params
        .self_signed(&key)
        .map_err(|err| ca_error(format!("cannot self-sign the root: {err}")))?;
    Ok((cert.der().clone(), key))
}

/// Reads or makes the signing material `source` names; also says how it
/// was obtained and where it lives.
pub(super) fn load(source: &CaSource) -> Result<(Material, CaOrigin, Option<PathBuf>), Error> {
    let loaded = match source {
        CaSource::Ephemeral => {
            let (cert, key) = generate_root()?;
            let material = Material {
                cert,
                cert_path: PathBuf::from("(in memory)"),
                key,
                key_path: PathBuf::from("(in memory)"),
                chain: Vec::new(),
                chain_path: None,
            };
            (material, CaOrigin::Ephemeral, None)
        }
        CaSource::StateDir(dir) => {
            let cert_path = store::cert_path(dir);
            let key_path = store::key_path(dir);
            let (cert, key, origin) = match store::load_root(dir)? {
                store::StoredRoot::Found { cert_pem, key_pem } => {
                    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                        .map_err(|err| file_error(&cert_path, format!("is not PEM: {err}")))?;
                    (cert, parse_key(&key_path, &key_pem)?, CaOrigin::Loaded)
                }
                store::StoredRoot::Empty => {
                    let (cert, key) = generate_root()?;
                    store::save_root(dir, &pki::cert_pem(&cert), &key.serialize_pem())?;
                    (cert, key, CaOrigin::Generated)
                }
            };
            let material = Material {
                cert,
                cert_path,
                key,
                key_path,
                chain: Vec::new(),
                chain_path: None,
            };
            (material, origin, Some(dir.clone()))
        }
        CaSource::PlugIn { cert, key, chain } => {
            let (ca_cert, mut rest) = read_single_cert(cert)?;
            let key_pair = parse_key(key, &store::read_private_key(key)?)?;
            if let Some(chain) = chain {
                rest.extend(pki::read_certs(chain)?);
            }
            let material = Material {
                cert: ca_cert,
                cert_path: cert.clone(),
                key: key_pair,
                key_path: key.clone(),
                chain: rest,
                chain_path: chain.clone().or_else(|| Some(cert.clone())),
            };
            (material, CaOrigin::PlugIn, Some(cert.clone()))
        }
    };
    Ok(loaded)
}

/// `--extra-trust-bundle`: every certificate must at least be a CA; expired
/// ones are kept (an operator may be mid-rotation) but reported.
pub(super) fn read_extra_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = pki::read_certs(path)?;
    let now = pki::now_unix();
    for (index, der) in certs.iter().enumerate() {
        let cert = pki::parse(der)
            .map_err(|r| file_error(path, format!("certificate {}: {r}", index + 1)))?;
        if !cert.is_ca() {
            return Err(file_error(
                path,
                format!(
                    "certificate {} ({}) is not a CA certificate; the trust bundle holds roots",
                    index + 1,
                    cert.subject()
                ),
            ));
        }
        if cert.validity().not_after.timestamp() <= now {
            tracing::warn!(
                file = %path.display(),
                subject = %cert.subject(),
                "an extra trust bundle root has expired; remove it"
            );
        }
    }
    Ok(certs)
}
