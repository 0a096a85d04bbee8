//! knitd's mesh CA in the lab: which flags knitd runs with (the lab's
//! persisted root by default, or a plug-in CA, with extra roots to trust),
//! restarts with other flags, and roots a test makes itself, as an
//! operator rotating the mesh root would.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::lab::Lab;

/// The root knitd generates in `--state-dir` (knitd's own file name).
pub const STATE_ROOT_CERT_FILE: &str = "root-cert.pem";

/// Who signs workload certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CaSigner {
    /// `--state-dir <lab>/knitd-state`: a root knitd generates on its
    /// first start and reloads on every restart.
    #[default]
    StateDir,
    /// `--ca-cert/--ca-key [--ca-chain]`: the operator's CA.
    PlugIn {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
}

/// knitd's CA flags in the lab.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnitdCa {
    pub signer: CaSigner,
    /// `--extra-trust-bundle`: more roots served beside the signing one.
    pub extra_trust_bundle: Option<PathBuf>,
}

impl KnitdCa {
    /// The lab's default: the persisted root in `knitd-state/`.
    pub fn state_dir() -> KnitdCa {
        KnitdCa::default()
    }

    /// `root` signs, as a plug-in CA.
    pub fn plug_in(root: &RootCa) -> KnitdCa {
        KnitdCa {
            signer: CaSigner::PlugIn {
                cert: root.cert.clone(),
                key: root.key.clone(),
                chain: None,
            },
            extra_trust_bundle: None,
        }
    }

    /// Also serves the roots in the PEM file `bundle`.
    pub fn trusting(mut self, bundle: &Path) -> KnitdCa {
        self.extra_trust_bundle = Some(bundle.to_path_buf());
        self
    }

    /// knitd's arguments for these flags.
    pub(crate) fn args(&self, state_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.signer {
            CaSigner::StateDir => {
                args.push("--state-dir".into());
                args.push(state_dir.into());
            }
            CaSigner::PlugIn { cert, key, chain } => {
                args.push("--ca-cert".into());
                args.push(cert.into());
                args.push("--ca-key".into());
                args.push(key.into());
                if let Some(chain) = chain {
                    args.push("--ca-chain".into());
                    args.push(chain.into());
                }
            }
        }
        if let Some(bundle) = &self.extra_trust_bundle {
            args.push("--extra-trust-bundle".into());
            args.push(bundle.into());
        }
        args
    }
}

/// A root CA certificate on disk, with its key when the lab made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCa {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PKCS#8 PEM key, mode 0600.
    pub key: PathBuf,
    /// `sha256:<hex>` of the DER, as knitd's `/debug/ca` and the proxies'
    /// `knit_identity_*` metrics print it.
    pub fingerprint: String,
}

/// `sha256:<lowercase hex>` of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The fingerprint of the first certificate in the PEM file `path`.
pub fn pem_file_fingerprint(path: &Path) -> Result<String> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| LabError::parse(format!("certificate {}", path.display()), e))?;
    Ok(fingerprint(der.as_ref()))
}

/// Writes `content` to a new file that only its owner can read.
fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    let context = || format!("writing {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(context(), e))?;
    file.write_all(content.as_bytes())
        .map_err(|e| LabError::io(context(), e))
}

impl Lab {
    /// The CA flags knitd runs (or will run) with.
    pub fn knitd_ca(&self) -> &KnitdCa {
        &self.knitd_ca
    }

    /// Starts knitd with these CA flags (kept for later restarts).
    pub fn start_knitd_with(&mut self, ca: KnitdCa) -> Result<()> {
        self.knitd_ca = ca;
        self.start_knitd()
    }

    /// Stops knitd (if running, with SIGKILL) and starts it with these CA
    /// flags.
    pub fn restart_knitd_with(&mut self, ca: KnitdCa) -> Result<()> {
        if self.knitd.is_some() {
            self.stop_knitd()?;
        }
        self.start_knitd_with(ca)
    }

    /// The root knitd generated in `knitd-state/` (after knitd started
    /// with [`CaSigner::StateDir`] once). Its key stays knitd's: `key`
    /// points at the file but the lab never reads it.
    pub fn knitd_state_root(&self) -> Result<RootCa> {
        let dir = self.knitd_state_dir();
        let cert = dir.join(STATE_ROOT_CERT_FILE);
        Ok(RootCa {
            fingerprint: pem_file_fingerprint(&cert)?,
            cert,
            key: dir.join("root-key.pem"),
        })
    }

    /// Makes a self-signed ECDSA P-256 root CA named `name` (a DNS label)
    /// and writes `ca-<name>.pem` and `ca-<name>-key.pem` (mode 0600) into
    /// the lab's `roots/` directory, for a plug-in CA or an extra trust
    /// bundle.
    pub fn create_root_ca(&self, name: &str) -> Result<RootCa> {
        crate::spec::validate_dns_label("root CA name", name)?;
        let dir = self.dir().join("roots");
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let tls = |context: &str, e: rcgen::Error| LabError::Tls {
            context: context.to_string(),
            reason: e.to_string(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| tls("generating a root key", e))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Knit");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("knit-lab root {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls("self-signing a root", e))?;
        let cert_path = dir.join(format!("ca-{name}.pem"));
        let key_path = dir.join(format!("ca-{name}-key.pem"));
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem())
            .map_err(|e| LabError::io(format!("writing {}", cert_path.display()), e))?;
        Ok(RootCa {
            cert: cert_path,
            key: key_path,
            fingerprint: fingerprint(cert.der()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_flags_become_knitd_arguments() {
        let state = Path::new("/lab/knitd-state");
        let text = |ca: &KnitdCa| -> Vec<String> {
            ca.args(state)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            text(&KnitdCa::state_dir()),
            ["--state-dir", "/lab/knitd-state"]
        );
        let root = RootCa {
            cert: "/lab/roots/ca-b.pem".into(),
            key: "/lab/roots/ca-b-key.pem".into(),
            fingerprint: String::new(),
        };
        assert_eq!(
            text(&KnitdCa::plug_in(&root).trusting(Path::new("/lab/old.pem"))),
            [
                "--ca-cert",
                "/lab/roots/ca-b.pem",
                "--ca-key",
                "/lab/roots/ca-b-key.pem",
                "--extra-trust-bundle",
                "/lab/old.pem"
            ]
        );
    }

    #[test]
    fn fingerprints_are_sha256_of_the_der() {
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
