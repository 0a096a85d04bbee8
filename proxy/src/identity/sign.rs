//! One `Certificates.Sign` round trip and the checks on its answer.
//!
//! Nothing the CA returns is trusted blindly: the chain must be for the
//! key this proxy just made, must verify against the bundle that came with
//! it, and must name exactly this workload's SPIFFE ID. A certificate that
//! every peer would reject is refused here, and the previous identity keeps
//! serving, rather than being installed and failing every handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use knit_proto::v1::{SignRequest, SignResponse, certificates_client::CertificatesClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::csr::WorkloadKey;
use super::verify::chain_root;
use super::{IdentityError, SpiffeId, SpiffeIdError, SpiffeServerVerifier, TrustBundle};
use crate::control_plane::ControlPlaneTarget;
use crate::error::error_chain;

/// How long to wait for the TCP (and HTTP/2) connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one `Sign` may take; the CA answers in milliseconds, so a
/// longer wait means it is stuck, and the backoff should take over.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A token file larger than this is not a token (Kubernetes' projected
/// tokens are about 1 KiB); refusing it keeps a wrong path from being read
/// into memory and sent as a header.
pub const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Why a workload certificate could not be obtained.
///
/// Every failure is retried with backoff — a token file or a WorkloadEntry
/// may appear later — but the class says who has to act:
/// [`IssueErrorClass::Config`] the proxy's flags or files,
/// [`IssueErrorClass::Unavailable`] nobody (the CA is down or restarting),
/// [`IssueErrorClass::Refused`] the operator (the CA does not accept this
/// workload as it asks), [`IssueErrorClass::BadAnswer`] the CA itself.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(
        "namespace {namespace:?} and service account {service_account:?} do not form a workload SPIFFE ID: it {source}"
    )]
    BadIdentity {
        namespace: String,
        service_account: String,
        #[source]
        source: SpiffeIdError,
    },

    #[error("the CA address {url:?} is not a usable URL: {reason}")]
    CaAddress { url: String, reason: String },

    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the token file {} is {size} bytes; a token is at most {MAX_TOKEN_BYTES}", path.display())]
    TokenTooLarge { path: PathBuf, size: u64 },

    #[error("the token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },

    #[error("the token in {} cannot be sent in a header: it must be visible ASCII", path.display())]
    TokenNotAscii { path: PathBuf },

    #[error("cannot generate the workload key and CSR: {0}")]
    Csr(#[source] rcgen::Error),

    #[error("cannot connect to the CA at {url}: {detail}")]
    Connect { url: String, detail: String },

    // Boxed, like the identity errors below: the error travels through
    // every `Result` of an issuance, and these are large.
    #[error("the CA refused: {:?}: {}", .0.code(), .0.message())]
    Refused(Box<tonic::Status>),

    #[error("the CA's answer is malformed: {0}")]
    BadResponse(String),

    #[error("the CA's trust bundle is unusable: {0}")]
    Bundle(#[source] Box<IdentityError>),

    #[error("the issued certificate does not verify as {id} against the CA's own bundle: {source}")]
    Untrusted {
        id: SpiffeId,
        #[source]
        source: Box<IdentityError>,
    },

    #[error("cannot build TLS configs from the issued certificate: {0}")]
    Tls(#[source] Box<IdentityError>),
}

/// Who has to act on an [`IssueError`]; see its docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueErrorClass {
    Config,
    Unavailable,
    Refused,
    BadAnswer,
}

impl IssueError {
    pub fn class(&self) -> IssueErrorClass {
        use IssueError::*;
        match self {
            BadIdentity { .. }
            | CaAddress { .. }
            | TokenFile { .. }
            | TokenTooLarge { .. }
            | EmptyToken { .. }
            | TokenNotAscii { .. }
            | Csr(_) => IssueErrorClass::Config,
            Connect { .. } => IssueErrorClass::Unavailable,
            Refused(status) => match status.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unimplemented => IssueErrorClass::Refused,
                _ => IssueErrorClass::Unavailable,
            },
            BadResponse(_) | Bundle(_) | Untrusted { .. } | Tls(_) => IssueErrorClass::BadAnswer,
        }
    }

    /// Whether trying again unchanged may succeed. The manager retries
    /// everything anyway (someone may fix the cause meanwhile); this says
    /// whether a failure is expected to clear by itself.
    pub fn is_retryable(&self) -> bool {
        self.class() == IssueErrorClass::Unavailable
    }

    /// The gRPC status the CA answered with, if it answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            IssueError::Refused(status) => Some(status.as_ref()),
            _ => None,
        }
    }

    /// The reason token for logs and readiness messages.
    pub fn reason(&self) -> &'static str {
        use IssueError::*;
        match self {
            BadIdentity { .. } => "identity_invalid",
            CaAddress { .. } => "ca_address_invalid",
            TokenFile { .. } => "token_unreadable",
            TokenTooLarge { .. } | EmptyToken { .. } | TokenNotAscii { .. } => "token_invalid",
            Csr(_) => "csr_failed",
            Connect { .. } => "ca_unreachable",
            Refused(status) => match status.code() {
                tonic::Code::Unauthenticated => "ca_unauthenticated",
                tonic::Code::PermissionDenied => "ca_permission_denied",
                tonic::Code::InvalidArgument => "ca_invalid_argument",
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => "ca_unavailable",
                _ => "ca_error",
            },
            BadResponse(_) => "ca_response_malformed",
            Bundle(_) => "ca_bundle_invalid",
            Untrusted { .. } => "issued_cert_untrusted",
            Tls(_) => "tls_config_invalid",
        }
    }
}

/// A checked endpoint for the CA; fails on a URL tonic cannot dial.
///
/// `https://` (knitd's TLS port, 15012) verifies knitd against `ca_root`,
/// the bootstrap root the pod is given; `http://` (15010) is for
/// development and the lab.
pub(crate) fn ca_endpoint(url: &str, ca_root: Option<&Path>) -> Result<Endpoint, IssueError> {
    let bad = |reason: String| IssueError::CaAddress {
        url: url.to_owned(),
        reason,
    };
    let endpoint = ControlPlaneTarget::new(url, ca_root)
        .and_then(|target| target.endpoint())
        .map_err(bad)?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true))
}

/// `authorization: Bearer <token>`, ready to send. Its Debug output hides
/// the token.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(MetadataValue<Ascii>);

/// The bearer token from `path`: the file's content without surrounding
/// whitespace (a trailing newline from `echo` or a Secret volume is not part
/// of it). Read on every issuance, so a rotated file is used at the next
/// renewal.
pub(crate) async fn read_token(path: &Path) -> Result<Bearer, IssueError> {
    let file_error = |source| IssueError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let not_ascii = || IssueError::TokenNotAscii {
        path: path.to_path_buf(),
    };
    let size = tokio::fs::metadata(path).await.map_err(file_error)?.len();
    if size > MAX_TOKEN_BYTES {
        return Err(IssueError::TokenTooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(file_error)?;
    let token = std::str::from_utf8(&bytes).map_err(|_| not_ascii())?.trim();
    if token.is_empty() {
        return Err(IssueError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    // Visible ASCII only: a space or control character inside would make
    // the header mean something else, or be refused by HTTP/2.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(not_ascii());
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| not_ascii())?;
    // Sensitive: HPACK never indexes it, and Debug output hides it.
    value.set_sensitive(true);
    Ok(Bearer(value))
}

/// Sends the CSR (with the bearer token, when there is one) and returns
/// the CA's answer. One connection per call: issuance happens about twice
/// per certificate lifetime, and a fresh connection always reaches the
/// knitd running now.
pub(crate) async fn request(
    url: &str,
    ca_root: Option<&Path>,
    csr_pem: &str,
    ttl: Duration,
    bearer: Option<Bearer>,
) -> Result<SignResponse, IssueError> {
    let endpoint = ca_endpoint(url, ca_root)?;
    let channel = endpoint.connect().await.map_err(|e| IssueError::Connect {
        url: url.to_owned(),
        detail: error_chain(&e),
    })?;
    let mut client = CertificatesClient::new(channel);
    let mut request = tonic::Request::new(SignRequest {
        csr_pem: csr_pem.to_owned(),
        ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
    });
    if let Some(Bearer(value)) = bearer {
        request.metadata_mut().insert("authorization", value);
    }
    match client.sign(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(IssueError::Refused(Box::new(status))),
    }
}

/// What a `Sign` answer holds once checked.
pub(crate) struct Checked {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) serial: String,
    pub(crate) not_after: SystemTime,
    /// The earliest notAfter among the bundle's roots.
    pub(crate) bundle_not_after: SystemTime,
    /// The fingerprint of the bundle root the chain leads to.
    pub(crate) root_fingerprint: String,
}

/// Checks the CA's answer against the key that asked and the identity it
/// asked for (see the module docs).
pub(crate) fn check_response(
    response: &SignResponse,
    id: &SpiffeId,
    trust_domain: &super::TrustDomain,
    key: &WorkloadKey,
) -> Result<Checked, IssueError> {
    let mut chain = Vec::new();
    for pem in &response.cert_chain_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(
                cert.map_err(|e| {
                    IssueError::BadResponse(format!("cert_chain_pem is not PEM: {e}"))
                })?,
            );
        }
    }
    let leaf = chain
        .first()
        .ok_or_else(|| IssueError::BadResponse("cert_chain_pem holds no certificate".into()))?;
    let bundle = Arc::new(
        TrustBundle::from_pem(trust_domain.clone(), &response.trust_bundle_pem)
            .map_err(|e| IssueError::Bundle(Box::new(e)))?,
    );

    let (serial, not_after) = {
        let x509 = parse(leaf, "the leaf certificate")?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key.as_slice() {
            return Err(IssueError::BadResponse(
                "the certificate is not for the key of the CSR".into(),
            ));
        }
        (hex(x509.raw_serial()), not_after_of(&x509))
    };
    let untrusted = |source| IssueError::Untrusted {
        id: id.clone(),
        source: Box::new(source),
    };
    let now = UnixTime::now();
    SpiffeServerVerifier::new(Arc::clone(&bundle), id.clone())
        .verify(leaf, &chain[1..], now)
        .map_err(untrusted)?;
    let root_fingerprint = chain_root(&bundle, leaf, &chain[1..], now)
        .and_then(|index| {
            bundle
                .fingerprints()
                .get(index)
                .cloned()
                .ok_or(IdentityError::Chain(webpki::Error::UnknownIssuer))
        })
        .map_err(untrusted)?;

    let mut bundle_not_after = None::<SystemTime>;
    for (index, root) in bundle.roots().iter().enumerate() {
        let at = not_after_of(&parse(root, &format!("trust bundle root #{index}"))?);
        bundle_not_after = Some(bundle_not_after.map_or(at, |t| t.min(at)));
    }
    Ok(Checked {
        chain,
        // `TrustBundle::from_pem` refuses an empty bundle.
        bundle_not_after: bundle_not_after.unwrap_or(UNIX_EPOCH),
        bundle,
        root_fingerprint,
        serial,
        not_after,
    })
}

fn parse<'a>(der: &'a CertificateDer<'_>, what: &str) -> Result<X509Certificate<'a>, IssueError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, x509)) => Ok(x509),
        Err(e) => Err(IssueError::BadResponse(format!(
            "{what} cannot be parsed: {e}"
        ))),
    }
}

fn not_after_of(x509: &X509Certificate<'_>) -> SystemTime {
    let secs = x509.validity().not_after.timestamp();
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        // Before 1970: treat as long expired.
        Err(_) => UNIX_EPOCH,
    }
}

/// Lowercase hex without separators, as knitd logs serials.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_is_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("knit-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("t");
        std::fs::write(&file, "  abc123\n").expect("write");
        let bearer = read_token(&file).await.expect("read");
        assert_eq!(bearer.0.to_str().ok(), Some("Bearer abc123"));
        assert!(
            !format!("{bearer:?}").contains("abc123"),
            "Debug hides the token"
        );

        std::fs::write(&file, "\n\n").expect("write");
        assert_eq!(
            read_token(&file).await.unwrap_err().reason(),
            "token_invalid"
        );
        std::fs::write(&file, "a b").expect("write");
        assert!(matches!(
            read_token(&file).await,
            Err(IssueError::TokenNotAscii { .. })
        ));
        std::fs::write(&file, vec![b'a'; MAX_TOKEN_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            read_token(&file).await,
            Err(IssueError::TokenTooLarge { .. })
        ));
        let missing = read_token(&dir.join("missing")).await.unwrap_err();
        assert_eq!(missing.reason(), "token_unreadable");
        assert_eq!(missing.class(), IssueErrorClass::Config);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refusals_are_classified_by_status() {
        let cases = [
            (
                tonic::Status::unauthenticated("no"),
                "ca_unauthenticated",
                IssueErrorClass::Refused,
            ),
            (
                tonic::Status::permission_denied("no"),
                "ca_permission_denied",
                IssueErrorClass::Refused,
            ),
            (
                tonic::Status::unavailable("later"),
                "ca_unavailable",
                IssueErrorClass::Unavailable,
            ),
            (
                tonic::Status::internal("oops"),
                "ca_error",
                IssueErrorClass::Unavailable,
            ),
        ];
        for (status, reason, class) in cases {
            let err = IssueError::Refused(Box::new(status));
            assert_eq!((err.reason(), err.class()), (reason, class), "{err}");
            assert!(err.status().is_some());
        }
        assert_eq!(
            IssueError::Refused(Box::new(tonic::Status::unauthenticated("bad token"))).to_string(),
            "the CA refused: Unauthenticated: bad token"
        );
    }

    #[test]
    fn bad_ca_urls_are_config_errors() {
        for bad in ["not a url", "https://knitd:15012", "knitd:15010"] {
            let err = ca_endpoint(bad, None).unwrap_err();
            assert_eq!(err.reason(), "ca_address_invalid", "{bad}");
            assert_eq!(err.class(), IssueErrorClass::Config);
        }
        ca_endpoint("http://127.0.0.1:15010", None).expect("a plain URL works");
    }
}
