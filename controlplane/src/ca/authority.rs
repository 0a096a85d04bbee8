//! The certificate authority itself: the checks its signing material must
//! pass (CA, key match, a chain up to a root), the trust bundle it hands out,
//! and the certificates it issues. Where the material comes from is
//! [`super::material`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::csr::{self, KeyKind};
use super::identity::{SpiffeId, TrustDomain, format_duration};
use super::material::{self, Material, ca_error, file_error, read_extra_roots};
use super::pki::{self, CertSummary};
use crate::error::Error;

/// Lifetime of a workload certificate when the request says 0.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a workload certificate gets, whatever it asks.
/// Short-lived certificates are the mesh's revocation: a week bounds how
/// long a leaked key stays useful and how long a root rotation waits.
pub const DEFAULT_MAX_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far notBefore is set in the past, so a peer whose clock runs a
/// little behind still accepts a fresh certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Where the CA's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A root generated in memory at each start (no `--state-dir`):
    /// certificates stop verifying when knitd restarts. Tests and demos.
    Ephemeral,
    /// `--state-dir DIR`: the root in DIR, generated there on first start.
    StateDir(PathBuf),
    /// `--ca-cert/--ca-key [--ca-chain]`: the operator's root or
    /// intermediate signs; `chain` leads from it up to and including the root.
    PlugIn {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    pub source: CaSource,
    /// More roots to trust (PEM), served beside the active one: how a root
    /// is rotated without failed handshakes (see the `ca` module docs).
    pub extra_trust_bundle: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub default_cert_ttl: Duration,
    pub max_cert_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> CaOptions {
        CaOptions {
            source: CaSource::Ephemeral,
            extra_trust_bundle: None,
            trust_domain: TrustDomain::default(),
            default_cert_ttl: DEFAULT_CERT_TTL,
            max_cert_ttl: DEFAULT_MAX_CERT_TTL,
        }
    }
}

/// How the active CA was obtained at this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaOrigin {
    Generated,
    Loaded,
    PlugIn,
    Ephemeral,
}

impl std::fmt::Display for CaOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaOrigin::Generated => "generated",
            CaOrigin::Loaded => "loaded",
            CaOrigin::PlugIn => "plug-in",
            CaOrigin::Ephemeral => "ephemeral",
        })
    }
}

/// Why a root is in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootRole {
    /// The root the active issuer chains to.
    Active,
    /// From `--extra-trust-bundle`.
    Extra,
}

#[derive(Debug, Clone)]
struct BundleRoot {
    pem: String,
    summary: CertSummary,
    role: RootRole,
}

/// A certificate the CA issued: the chain to send (leaf first, then the
/// intermediates, never the root).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_after_unix: i64,
}

impl IssuedCert {
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|der| pki::cert_pem(der)).collect()
    }
}

/// The mesh CA. Immutable once opened; rotating a root means restarting
/// knitd with other files (see the `ca` module docs).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    issuer_summary: CertSummary,
    origin: CaOrigin,
    location: Option<PathBuf>,
    intermediates: Vec<CertificateDer<'static>>,
    bundle: Vec<BundleRoot>,
    trust_domain: TrustDomain,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    // By hand, so the signing key can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("origin", &self.origin)
            .field("issuer", &self.issuer_summary.subject)
            .field("fingerprint", &self.issuer_summary.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Opens the CA as `options` say: generates, loads or plugs in the
    /// signing key, checks it, and builds the trust bundle. Every problem is
    /// one error naming the file and what to do.
    pub fn open(options: &CaOptions) -> Result<CertificateAuthority, Error> {
        if options.default_cert_ttl > options.max_cert_ttl {
            return Err(Error::InvalidOption {
                flag: "--default-cert-ttl",
                reason: format!(
                    "{} is longer than --max-cert-ttl {}",
                    format_duration(options.default_cert_ttl),
                    format_duration(options.max_cert_ttl)
                ),
            });
        }
        let (material, origin, location) = material::load(&options.source)?;
        let extra = match &options.extra_trust_bundle {
            Some(path) => read_extra_roots(path)?,
            None => Vec::new(),
        };
        CertificateAuthority::assemble(material, origin, location, extra, options)
    }

    fn assemble(
        material: Material,
        origin: CaOrigin,
        location: Option<PathBuf>,
        extra: Vec<CertificateDer<'static>>,
        options: &CaOptions,
    ) -> Result<CertificateAuthority, Error> {
        let Material {
            cert,
            cert_path,
            key,
            key_path,
            chain,
            chain_path,
        } = material;
        let parsed = pki::parse(&cert).map_err(|reason| file_error(&cert_path, reason))?;
        pki::check_ca_cert(&parsed).map_err(|reason| file_error(&cert_path, reason))?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(file_error(
                &key_path,
                format!(
                    "is not the key of the CA certificate {} (their public keys differ)",
                    cert_path.display()
                ),
            ));
        }

        // The chain from the signing certificate up to its root. A chain
        // file may start with the signing certificate itself; it is skipped.
        let mut path: Vec<CertificateDer<'static>> = vec![cert.clone()];
        path.extend(chain.into_iter().filter(|c| *c != cert));
        let chain_file = chain_path.unwrap_or_else(|| cert_path.clone());
        for pair in path.windows(2) {
            let child = pki::parse(&pair[0]).map_err(|r| file_error(&chain_file, r))?;
            let parent = pki::parse(&pair[1]).map_err(|r| file_error(&chain_file, r))?;
            pki::check_issued_by(&child, &parent).map_err(|r| file_error(&chain_file, r))?;
            pki::check_ca_cert(&parent).map_err(|r| file_error(&chain_file, r))?;
        }
        let root_der = path.pop().ok_or_else(|| ca_error("empty CA chain"))?;
        let root = pki::parse(&root_der).map_err(|r| file_error(&chain_file, r))?;
        if !pki::is_self_signed(&root) {
            let reason = if path.is_empty() {
                format!(
                    "{} is not self-signed (its issuer is {}); give its chain up to the root \
                     with --ca-chain",
                    root.subject(),
                    root.issuer()
                )
            } else {
                format!(
                    "the chain ends at {}, which is not self-signed; it must end with the root",
                    root.subject()
                )
            };
            return Err(file_error(&chain_file, reason));
        }
        let intermediates = path;

        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|err| file_error(&cert_path, format!("cannot be used as an issuer: {err}")))?;
        let issuer_summary = CertSummary::of(&cert).map_err(|r| file_error(&cert_path, r))?;
        let root_summary = CertSummary::of(&root_der).map_err(|r| file_error(&chain_file, r))?;
        let mut bundle = vec![BundleRoot {
            pem: pki::cert_pem(&root_der),
            summary: root_summary,
            role: RootRole::Active,
        }];
        for der in extra {
            let summary = CertSummary::of(&der).map_err(ca_error)?;
            if bundle
                .iter()
                .any(|r| r.summary.fingerprint == summary.fingerprint)
            {
                continue;
            }
            bundle.push(BundleRoot {
                pem: pki::cert_pem(&der),
                summary,
                role: RootRole::Extra,
            });
        }
        let ca = CertificateAuthority {
            issuer,
            issuer_summary,
            origin,
            location,
            intermediates,
            bundle,
            trust_domain: options.trust_domain.clone(),
            default_ttl: options.default_cert_ttl,
            max_ttl: options.max_cert_ttl,
        };
        ca.check_issuance(&cert, &cert_path)?;
        Ok(ca)
    }

    /// Issues a throwaway certificate and checks it chains to the CA
    /// certificate byte for byte: the issuer name is re-encoded from the
    /// parsed subject, and an unusual encoding would otherwise produce
    /// certificates no peer can chain.
    fn check_issuance(&self, ca_der: &CertificateDer<'_>, cert_path: &Path) -> Result<(), Error> {
        let probe_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|err| ca_error(format!("cannot generate a probe key: {err}")))?;
        let probe_id = SpiffeId::new(&self.trust_domain, "knit-system", "ca-probe");
        let issued = self.issue(
            &probe_key,
            KeyKind::EcdsaP256.key_usages(),
            vec![uri_san(&probe_id)?],
            Duration::from_secs(60),
        )?;
        let ca = pki::parse(ca_der).map_err(|r| file_error(cert_path, r))?;
        let leaf = pki::parse(&issued.chain[0]).map_err(ca_error)?;
        pki::check_issued_by(&leaf, &ca).map_err(|reason| {
            file_error(
                cert_path,
                format!("certificates signed with it would not chain to it: {reason}"),
            )
        })
    }

    /// Signs `csr_pem` for `identity`, the authenticated caller. The
    /// lifetime is `ttl_seconds` (0: the default), capped by the maximum and
    /// by the issuer's own expiry.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        ttl_seconds: i64,
        identity: &SpiffeId,
    ) -> Result<IssuedCert, Error> {
        let requested = match ttl_seconds {
            0 => None,
            seconds if seconds < 0 => {
                return Err(Error::InvalidRequest {
                    reason: format!(
                        "ttl_seconds is negative ({seconds}); send 0 for the default ({})",
                        format_duration(self.default_ttl)
                    ),
                });
            }
            seconds => Some(Duration::from_secs(seconds.unsigned_abs())),
        };
        let key = csr::check_csr(csr_pem, identity)?;
        self.issue(
            &key,
            key.kind.key_usages(),
            vec![uri_san(identity)?],
            self.lifetime(requested),
        )
    }

    /// A certificate for knitd's own TLS server: its SPIFFE ID plus the
    /// DNS names and addresses clients dial.
    pub fn issue_serving(&self, key: &KeyPair, names: &[SanType]) -> Result<IssuedCert, Error> {
        let mut sans = vec![uri_san(&self.knitd_identity())?];
        sans.extend(names.iter().cloned());
        self.issue(
            key,
            KeyKind::EcdsaP256.key_usages(),
            sans,
            self.lifetime(None),
        )
    }

    /// knitd's own SPIFFE ID.
    pub fn knitd_identity(&self) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, KNITD_NAMESPACE, KNITD_SERVICE_ACCOUNT)
    }

    /// The lifetime a request for `requested` (None: the default) gets.
    pub fn lifetime(&self, requested: Option<Duration>) -> Duration {
        requested.unwrap_or(self.default_ttl).min(self.max_ttl)
    }

    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        key_usages: Vec<KeyUsagePurpose>,
        sans: Vec<SanType>,
        lifetime: Duration,
    ) -> Result<IssuedCert, Error> {
        let now = pki::now_unix();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        // A leaf never outlives its issuer: peers would reject the chain.
        let not_after = now
            .saturating_add(lifetime)
            .min(self.issuer_summary.not_after_unix);
        let mut params = CertificateParams::default();
        // SPIFFE identities live in the SAN alone; an empty subject makes
        // rcgen mark the SAN critical, as RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = key_usages;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = pki::random_serial()?;
        let serial_hex = pki::hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = pki::datetime(now - CLOCK_SKEW.as_secs() as i64);
        params.not_after = pki::datetime(not_after);
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|err| Error::Issue {
                reason: err.to_string(),
            })?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(IssuedCert {
            chain,
            serial: serial_hex,
            not_after_unix: not_after,
        })
    }

    /// The roots peers should trust now, active first, PEM.
    pub fn trust_bundle_pem(&self) -> Vec<String> {
        self.bundle.iter().map(|root| root.pem.clone()).collect()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn origin(&self) -> CaOrigin {
        self.origin
    }

    /// What `/debug/ca` shows and the start-up log says. No key material.
    pub fn view(&self) -> CaView {
        CaView {
            source: self.origin,
            location: self.location.as_ref().map(|p| p.display().to_string()),
            trust_domain: self.trust_domain.to_string(),
            active_issuer: self.issuer_summary.clone(),
            intermediates: self
                .intermediates
                .iter()
                .filter_map(|der| CertSummary::of(der).ok())
                .collect(),
            trust_bundle: self
                .bundle
                .iter()
                .map(|root| BundleView {
                    role: root.role,
                    cert: root.summary.clone(),
                })
                .collect(),
            default_cert_ttl: format_duration(self.default_ttl),
            max_cert_ttl: format_duration(self.max_ttl),
        }
    }

    /// One info line for the CA and one per root, at start.
    pub fn log_start(&self) {
        let location = self
            .location
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(memory)".to_owned());
        if self.origin == CaOrigin::Ephemeral {
            tracing::warn!(
                "no --state-dir or --ca-cert: the mesh CA's root lives in memory only, and \
                 certificates it issued stop verifying when knitd restarts"
            );
        }
        tracing::info!(
            source = %self.origin,
            location = %location,
            issuer = %self.issuer_summary.subject,
            fingerprint = %self.issuer_summary.fingerprint,
            not_after = %self.issuer_summary.not_after,
            trust_domain = %self.trust_domain,
            "mesh CA ready"
        );
        for root in &self.bundle {
            tracing::info!(
                role = ?root.role,
                subject = %root.summary.subject,
                fingerprint = %root.summary.fingerprint,
                not_after = %root.summary.not_after,
                "trust bundle root"
            );
        }
    }
}

/// Namespace and service account of knitd's own identity.
pub const KNITD_NAMESPACE: &str = "knit-system";
pub const KNITD_SERVICE_ACCOUNT: &str = "knitd";

fn uri_san(identity: &SpiffeId) -> Result<SanType, Error> {
    let uri = identity.uri().try_into().map_err(|err| Error::Issue {
        reason: format!("{identity} cannot be a URI SAN: {err}"),
    })?;
    Ok(SanType::URI(uri))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleView {
    pub role: RootRole,
    #[serde(flatten)]
    pub cert: CertSummary,
}

/// The CA as `/debug/ca` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaView {
    pub source: CaOrigin,
    pub location: Option<String>,
    pub trust_domain: String,
    pub active_issuer: CertSummary,
    pub intermediates: Vec<CertSummary>,
    pub trust_bundle: Vec<BundleView>,
    pub default_cert_ttl: String,
    pub max_cert_ttl: String,
}
