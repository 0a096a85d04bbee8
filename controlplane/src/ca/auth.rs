//! Who is calling the CA. The proxy sends a token as
//! `authorization: Bearer <token>`; an authenticator turns it into the
//! caller's workload identity, and the CA signs only that identity.
//!
//! File mode ([`FileTokenAuthenticator`]): each WorkloadEntry carries the
//! SHA-256 of its token in the `mesh.knit.dev/token-sha256` annotation, so
//! the config never holds a usable secret. The lookup runs against the
//! current validated config, so editing the annotation rotates a token and
//! removing it (or the entry) revokes it at the next config poll.
//!
//! Kubernetes mode (later) implements the same trait with a projected
//! service-account token (audience `knit-ca`) checked by TokenReview; the
//! proxy's side does not change.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::error::Error;
use crate::model::{MeshConfig, TOKEN_ANNOTATION, TokenDigest};
use crate::state::ConfigState;

/// The workload a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CallerIdentity {
    pub namespace: String,
    pub service_account: String,
    /// The pod (file mode: the WorkloadEntry) name, for logs.
    pub workload: String,
}

/// Checks a caller's bearer token.
///
/// Errors: [`Error::Unauthenticated`] when the token is not valid (the
/// caller gets UNAUTHENTICATED), [`Error::AuthUnavailable`] when it cannot
/// be checked now (UNAVAILABLE, worth retrying).
pub trait CallerAuthenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        bearer_token: &str,
    ) -> impl Future<Output = Result<CallerIdentity, Error>> + Send;
}

/// The token of `authorization: Bearer <token>`. The scheme is matched
/// case-insensitively (RFC 7235); the token is used as sent.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Error> {
    let unauthenticated = |reason: &str| Error::Unauthenticated {
        reason: reason.to_owned(),
    };
    let value = metadata.get("authorization").ok_or_else(|| {
        unauthenticated("no authorization metadata; send `authorization: Bearer <token>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("the authorization metadata is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthenticated("the authorization metadata is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated(
            "the authorization metadata is not `Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(unauthenticated("the bearer token is empty"));
    }
    Ok(token)
}

/// Token digests of the workloads in one validated config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadTokens {
    entries: Vec<(TokenDigest, CallerIdentity)>,
}

impl WorkloadTokens {
    /// Every workload of `config` that carries a token digest. Validation
    /// already refused duplicate digests, so a token names one workload.
    pub fn from_config(config: &MeshConfig) -> WorkloadTokens {
        let entries = config
            .workloads
            .iter()
            .filter_map(|w| {
                w.token_sha256.map(|digest| {
                    let identity = CallerIdentity {
                        namespace: w.namespace.clone(),
                        service_account: w.service_account.clone(),
                        workload: w.name.clone(),
                    };
                    (digest, identity)
                })
            })
            .collect();
        WorkloadTokens { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The workload whose digest is the SHA-256 of `token`. Every entry is
    /// compared in constant time and the scan never stops early, so timing
    /// tells nothing about how close a guess came or which entry matched.
    pub fn lookup(&self, token: &str) -> Option<&CallerIdentity> {
        let presented = TokenDigest::of_token(token);
        let mut found = None;
        for (digest, identity) in &self.entries {
            if bool::from(digest.0.ct_eq(&presented.0)) {
                found = Some(identity);
            }
        }
        found
    }
}

/// File mode: tokens are checked against the digests in the current
/// config.
#[derive(Debug, Clone)]
pub struct FileTokenAuthenticator {
    state: Arc<ConfigState>,
}

impl FileTokenAuthenticator {
    pub fn new(state: Arc<ConfigState>) -> FileTokenAuthenticator {
        FileTokenAuthenticator { state }
    }
}

impl CallerAuthenticator for FileTokenAuthenticator {
    fn authenticate(
        &self,
        bearer_token: &str,
    ) -> impl Future<Output = Result<CallerIdentity, Error>> + Send {
        let tokens = self.state.tokens();
        let result = tokens
            .lookup(bearer_token)
            .cloned()
            .ok_or_else(|| Error::Unauthenticated {
                reason: format!(
                    "the bearer token belongs to no workload (no WorkloadEntry carries its \
                     SHA-256 in {TOKEN_ANNOTATION})"
                ),
            });
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = value {
            match MetadataValue::try_from(value) {
                Ok(value) => {
                    map.insert("authorization", value);
                }
                Err(err) => panic!("{err}"),
            }
        }
        map
    }

    #[test]
    fn bearer_tokens() {
        let ok = [
            ("Bearer abc", "abc"),
            ("bearer abc", "abc"),
            ("BEARER  abc ", "abc"),
        ];
        for (header, token) in ok {
            let map = metadata(Some(header));
            assert_eq!(bearer_token(&map).ok(), Some(token), "{header}");
        }
        for bad in [
            None,
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer   "),
            Some("abc"),
        ] {
            let map = metadata(bad);
            assert!(
                matches!(bearer_token(&map), Err(Error::Unauthenticated { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lookup_finds_the_owner_of_a_token_only() {
        let identity = |name: &str| CallerIdentity {
            namespace: "shop".to_owned(),
            service_account: name.to_owned(),
            workload: format!("{name}-0"),
        };
        let tokens = WorkloadTokens {
            entries: vec![
                (TokenDigest::of_token("t-web"), identity("web")),
                (TokenDigest::of_token("t-db"), identity("db")),
            ],
        };
        assert_eq!(tokens.lookup("t-web"), Some(&identity("web")));
        assert_eq!(tokens.lookup("t-db"), Some(&identity("db")));
        assert_eq!(tokens.lookup("t-webx"), None);
        assert_eq!(tokens.lookup(""), None);
    }
}
