//! SPIFFE IDs as Knit uses them: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! The grammar is the SPIFFE ID standard's, applied strictly: the scheme is
//! exactly `spiffe`, the trust domain is a bare host of `[a-z0-9._-]` (no
//! userinfo, no port), the path is `/`-separated segments of
//! `[A-Za-z0-9._-]` that are neither empty nor `.`/`..`, there is no query or
//! fragment, and the whole ID is at most 2048 bytes (the trust domain at most
//! 255). Nothing is normalised — no case folding, no percent-decoding — so
//! two IDs are the same identity exactly when their bytes are equal. A
//! lenient parser here would let `ns/Default` pass for `ns/default`, or
//! `%64efault` for `default`, and authorization rules written for one
//! would silently apply, or not apply, to the other.
//!
//! On top of the standard, a Knit workload ID has exactly the path
//! `/ns/<namespace>/sa/<service-account>`: the mesh CA signs nothing else,
//! so any other path is not a Knit workload.

use std::fmt;
use std::str::FromStr;

/// The scheme and separator every SPIFFE ID starts with, byte for byte.
const PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID, in bytes (SPIFFE ID standard §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest trust domain name, in bytes (RFC 3986's limit on a host, which
/// the SPIFFE ID standard carries over in §2.3).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a (Knit workload) SPIFFE ID, or not a trust domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; a SPIFFE ID is at most {MAX_SPIFFE_ID_LEN}")]
    TooLong(usize),
    #[error("does not start with \"spiffe://\" (the scheme is lowercase and exact)")]
    WrongScheme,
    #[error("has no trust domain")]
    MissingTrustDomain,
    #[error("has a trust domain of {0} bytes; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong(usize),
    #[error("has userinfo ('@') in its authority; only a trust domain name is allowed")]
    Userinfo,
    #[error("has a port (':') in its authority; only a trust domain name is allowed")]
    Port,
    #[error("has {0:?} in its trust domain; only a-z, 0-9, '.', '-' and '_' are allowed")]
    BadTrustDomainChar(char),
    #[error("has a query or fragment ('?' or '#')")]
    QueryOrFragment,
    #[error("has no path; a workload ID has /ns/<namespace>/sa/<service-account>")]
    MissingPath,
    #[error("has an empty path segment (\"//\")")]
    EmptySegment,
    #[error("ends with '/'")]
    TrailingSlash,
    #[error("has a '.' or '..' path segment")]
    DotSegment,
    #[error("has {0:?} in its path; only A-Z, a-z, 0-9, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    #[error("is a SPIFFE ID but not a Knit workload ID (/ns/<namespace>/sa/<service-account>)")]
    NotWorkload,
}

/// A validated SPIFFE trust domain name, e.g. `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a bare trust domain name (no scheme, no path).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({:?})", self.0)
    }
}

/// A Knit workload identity: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
///
/// Equality, ordering and hashing are over the exact bytes of the ID.
#[derive(Clone)]
pub struct SpiffeId {
    /// Shared: a clone (a pool key, a metric label) is a pointer copy.
    uri: std::sync::Arc<str>,
    /// End of the trust domain in `uri` (it starts right after `spiffe://`).
    td_end: usize,
    /// Bounds of the namespace segment in `uri`.
    ns: (usize, usize),
    /// Start of the service-account segment (it runs to the end of `uri`).
    sa_start: usize,
}

impl SpiffeId {
    /// Parses and validates a workload SPIFFE ID; see the module docs for
    /// the exact rules.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(PREFIX).ok_or(SpiffeIdError::WrongScheme)?;
        // A query or fragment is reported as such even though '?' and '#'
        // would also fail the character checks below: the message should
        // name what the sender actually did.
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(authority)?;
        let segments = validate_path(path)?;

        // The ID is standard-conformant; now the Knit shape. `segments`
        // yields (start, end) offsets into `path`.
        let base = PREFIX.len() + authority.len();
        let seg = |(a, b): (usize, usize)| &path[a..b];
        match segments.as_slice() {
            [ns_kw, ns, sa_kw, sa] if seg(*ns_kw) == "ns" && seg(*sa_kw) == "sa" => Ok(Self {
                uri: s.into(),
                td_end: base,
                ns: (base + ns.0, base + ns.1),
                sa_start: base + sa.0,
            }),
            _ => Err(SpiffeIdError::NotWorkload),
        }
    }

    /// Builds the ID of the workload running as service account `sa` in
    /// namespace `ns`. Both must be valid SPIFFE path segments; nothing is
    /// escaped or case-folded.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        // Validate each part as one segment first, so a '/' inside
        // `namespace` cannot forge extra segments that happen to produce a
        // valid four-segment path.
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        // Built, not formatted and parsed again: a client proxy derives
        // its peer's ID on every request. The trust domain is valid by
        // type and the segments were just checked, so only the length is
        // left.
        let td = trust_domain.as_str();
        let len = PREFIX.len() + td.len() + "/ns/".len() + namespace.len() + "/sa/".len();
        let len = len + service_account.len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(len));
        }
        let uri = [PREFIX, td, "/ns/", namespace, "/sa/", service_account].concat();
        let td_end = PREFIX.len() + td.len();
        let ns_start = td_end + "/ns/".len();
        let ns = (ns_start, ns_start + namespace.len());
        let sa_start = ns.1 + "/sa/".len();
        Ok(Self {
            uri: uri.into(),
            td_end,
            ns,
            sa_start,
        })
    }

    /// The whole ID, e.g. `spiffe://cluster.local/ns/default/sa/backend`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The whole ID as a shared string, e.g. for a metric label.
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.uri.clone()
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[PREFIX.len()..self.td_end]
    }

    pub fn namespace(&self) -> &str {
        &self.uri[self.ns.0..self.ns.1]
    }

    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start..]
    }

    /// Whether this ID belongs to `trust_domain` (exact comparison).
    pub fn is_in(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain() == trust_domain.as_str()
    }
}

impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for SpiffeId {}

impl std::hash::Hash for SpiffeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uri.hash(state)
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uri.cmp(&other.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({:?})", self.uri)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            '@' => return Err(SpiffeIdError::Userinfo),
            ':' => return Err(SpiffeIdError::Port),
            other => return Err(SpiffeIdError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

/// Validates a path (empty, or starting with '/') and returns each
/// segment's (start, end) offsets in `path`.
fn validate_path(path: &str) -> Result<Vec<(usize, usize)>, SpiffeIdError> {
    if path.is_empty() {
        return Err(SpiffeIdError::MissingPath);
    }
    if path == "/" || path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    let mut segments = Vec::new();
    let mut start = 1; // `path` starts with '/'
    for part in path[1..].split('/') {
        validate_segment(part)?;
        segments.push((start, start + part.len()));
        start += part.len() + 1;
    }
    Ok(segments)
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." | ".." => return Err(SpiffeIdError::DotSegment),
        _ => {}
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::BadPathChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_and_their_parts() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/backend",
                "cluster.local",
                "default",
                "backend",
            ),
            ("spiffe://td/ns/a/sa/b", "td", "a", "b"),
            (
                "spiffe://my-mesh_1.example.com/ns/kube-system/sa/coredns",
                "my-mesh_1.example.com",
                "kube-system",
                "coredns",
            ),
            // Path segments keep their case; dots and underscores are fine.
            (
                "spiffe://cluster.local/ns/Default/sa/My_SA.v2",
                "cluster.local",
                "Default",
                "My_SA.v2",
            ),
            (
                "spiffe://cluster.local/ns/.../sa/-",
                "cluster.local",
                "...",
                "-",
            ),
            // "ns"/"sa" as names are just names.
            (
                "spiffe://cluster.local/ns/sa/sa/ns",
                "cluster.local",
                "sa",
                "ns",
            ),
        ];
        for (input, td, ns, sa) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.as_str(), input);
            assert_eq!(id.to_string(), input);
            assert_eq!(id.trust_domain(), td, "{input}");
            assert_eq!(id.namespace(), ns, "{input}");
            assert_eq!(id.service_account(), sa, "{input}");
            assert!(id.is_in(&TrustDomain::new(td).expect("valid td")));
        }
    }

    #[test]
    fn invalid_ids_name_their_reason() {
        use SpiffeIdError::*;
        let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        let long_id = format!("spiffe://td/ns/a/sa/{}", "b".repeat(2048));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", Empty),
            (&long_id, TooLong(long_id.len())),
            (&long_td, TrustDomainTooLong(256)),
            ("SPIFFE://cluster.local/ns/default/sa/backend", WrongScheme),
            ("Spiffe://cluster.local/ns/default/sa/backend", WrongScheme),
            ("spiffe:/cluster.local/ns/default/sa/backend", WrongScheme),
            ("https://cluster.local/ns/default/sa/backend", WrongScheme),
            ("spiffe//cluster.local/ns/default/sa/backend", WrongScheme),
            (" spiffe://cluster.local/ns/default/sa/backend", WrongScheme),
            ("spiffe:///ns/default/sa/backend", MissingTrustDomain),
            ("spiffe://", MissingTrustDomain),
            (
                "spiffe://Cluster.local/ns/default/sa/backend",
                BadTrustDomainChar('C'),
            ),
            (
                "spiffe://CLUSTER.LOCAL/ns/default/sa/backend",
                BadTrustDomainChar('C'),
            ),
            (
                "spiffe://user@cluster.local/ns/default/sa/backend",
                Userinfo,
            ),
            ("spiffe://cluster.local:443/ns/default/sa/backend", Port),
            (
                "spiffe://clus%74er.local/ns/default/sa/backend",
                BadTrustDomainChar('%'),
            ),
            (
                "spiffe://cluster local/ns/default/sa/backend",
                BadTrustDomainChar(' '),
            ),
            (
                "spiffe://clüster.local/ns/default/sa/backend",
                BadTrustDomainChar('ü'),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/backend?x=1",
                QueryOrFragment,
            ),
            (
                "spiffe://cluster.local/ns/default/sa/backend#frag",
                QueryOrFragment,
            ),
            (
                "spiffe://cluster.local?x/ns/default/sa/backend",
                QueryOrFragment,
            ),
            ("spiffe://cluster.local", MissingPath),
            ("spiffe://cluster.local/", TrailingSlash),
            (
                "spiffe://cluster.local/ns/default/sa/backend/",
                TrailingSlash,
            ),
            (
                "spiffe://cluster.local//ns/default/sa/backend",
                EmptySegment,
            ),
            ("spiffe://cluster.local/ns//sa/backend", EmptySegment),
            ("spiffe://cluster.local/ns/./sa/backend", DotSegment),
            ("spiffe://cluster.local/ns/../sa/backend", DotSegment),
            (
                "spiffe://cluster.local/ns/default/sa/back%65nd",
                BadPathChar('%'),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/back end",
                BadPathChar(' '),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/backénd",
                BadPathChar('é'),
            ),
            ("spiffe://cluster.local/ns/default/sa/a~b", BadPathChar('~')),
            ("spiffe://cluster.local/ns/default/sa/a+b", BadPathChar('+')),
            ("spiffe://cluster.local/ns/default", NotWorkload),
            ("spiffe://cluster.local/ns/default/sa", NotWorkload),
            (
                "spiffe://cluster.local/ns/default/sa/backend/extra",
                NotWorkload,
            ),
            ("spiffe://cluster.local/NS/default/sa/backend", NotWorkload),
            ("spiffe://cluster.local/ns/default/SA/backend", NotWorkload),
            ("spiffe://cluster.local/sa/backend/ns/default", NotWorkload),
            ("spiffe://cluster.local/backend", NotWorkload),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).err(), Some(want), "{input:?}");
        }
    }

    #[test]
    fn max_length_is_inclusive() {
        let prefix = "spiffe://td/ns/a/sa/";
        let exact = format!("{prefix}{}", "b".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(exact.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&exact).is_ok());
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(TrustDomain::new(&td).is_ok());
        assert!(SpiffeId::parse(&format!("spiffe://{td}/ns/a/sa/b")).is_ok());
    }

    #[test]
    fn comparison_is_exact() {
        let id = |s| SpiffeId::parse(s).expect("valid");
        let base = id("spiffe://cluster.local/ns/default/sa/x");
        assert_eq!(base, id("spiffe://cluster.local/ns/default/sa/x"));
        assert_ne!(base, id("spiffe://cluster.local/ns/Default/sa/x"));
        assert_ne!(base, id("spiffe://cluster.local/ns/default/sa/X"));
        assert_ne!(base, id("spiffe://cluster.local/ns/default/sa/x_"));
        assert!(!base.is_in(&TrustDomain::new("cluster.loca").expect("valid")));
    }

    #[test]
    fn workload_constructor() {
        let td = TrustDomain::new("cluster.local").expect("valid");
        let id = SpiffeId::workload(&td, "default", "backend").expect("valid");
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/backend");
        assert_eq!(id, SpiffeId::parse(id.as_str()).expect("round trip"));
        // Built directly, it has the parts parsing finds.
        for (td, ns, sa) in [
            ("cluster.local", "default", "backend"),
            ("td", "n", "s"),
            ("a.b-c_d", "ns.with-dots_", "sa"),
        ] {
            let td = TrustDomain::new(td).expect("valid");
            let built = SpiffeId::workload(&td, ns, sa).expect("valid");
            let parsed = SpiffeId::parse(built.as_str()).expect("valid");
            let parts = |id: &SpiffeId| {
                (
                    id.trust_domain().to_owned(),
                    id.namespace().to_owned(),
                    id.service_account().to_owned(),
                )
            };
            assert_eq!(parts(&built), parts(&parsed));
            assert_eq!(parts(&built), (td.as_str().into(), ns.into(), sa.into()));
        }
        let long = "s".repeat(MAX_SPIFFE_ID_LEN);
        assert!(matches!(
            SpiffeId::workload(&td, "default", &long),
            Err(SpiffeIdError::TooLong(_))
        ));
        // A '/' cannot smuggle in segments, even when the result would
        // otherwise be a well-formed workload ID.
        assert_eq!(
            SpiffeId::workload(&td, "a/sa/b/ns", "c").err(),
            Some(SpiffeIdError::BadPathChar('/'))
        );
        assert_eq!(
            SpiffeId::workload(&td, "", "backend").err(),
            Some(SpiffeIdError::EmptySegment)
        );
        assert_eq!(
            SpiffeId::workload(&td, "default", "..").err(),
            Some(SpiffeIdError::DotSegment)
        );
    }

    #[test]
    fn trust_domain_rules() {
        use SpiffeIdError::*;
        assert!(TrustDomain::new("cluster.local").is_ok());
        assert_eq!(TrustDomain::new("").err(), Some(MissingTrustDomain));
        assert_eq!(
            TrustDomain::new("Cluster").err(),
            Some(BadTrustDomainChar('C'))
        );
        assert_eq!(
            TrustDomain::new("td/x").err(),
            Some(BadTrustDomainChar('/'))
        );
        assert_eq!(TrustDomain::new("td:1").err(), Some(Port));
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)).err(),
            Some(TrustDomainTooLong(256))
        );
    }
}
