//! The validated config model: what the loader hands to translation. Every
//! value here has passed validation, so translation never fails.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Which resource a document declares, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: String,
    /// `None` when the document has no `metadata.name`.
    pub name: Option<String>,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} {}/{}", self.kind, self.namespace, name),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Where a resource came from: file name within the config dir, 1-based
/// document index within the file, and the resource if it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocumentRef {
    pub file: String,
    pub index: usize,
    pub resource: Option<ResourceRef>,
}

impl DocumentRef {
    /// The same document, now known to declare `resource`.
    pub fn with_resource(&self, resource: ResourceRef) -> DocumentRef {
        DocumentRef {
            resource: Some(resource),
            ..self.clone()
        }
    }

    /// `file doc N`, without the resource: used to point at another document.
    pub fn position(&self) -> String {
        format!("{} doc {}", self.file, self.index)
    }
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.file, self.index)?;
        if let Some(resource) = &self.resource {
            write!(f, " ({resource})")?;
        }
        Ok(())
    }
}

/// The L4 protocol of a Service port, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Sctp => "SCTP",
        })
    }
}

/// Where a Service port is delivered on a workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    /// A port name looked up in each workload's `spec.ports`.
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(port) => write!(f, "{port}"),
            TargetPort::Named(name) => write!(f, "{name:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortDef {
    /// Position in `spec.ports`, to name the field in warnings.
    pub index: usize,
    pub name: Option<String>,
    pub port: u16,
    pub transport: Transport,
    pub target: TargetPort,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub namespace: String,
    /// Empty for a headless Service.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortDef>,
    /// Empty means "endpoints not managed from workloads" (Kubernetes).
    pub selector: BTreeMap<String, String>,
    pub origin: DocumentRef,
}

/// A workload (a pod, in file mode declared by a WorkloadEntry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Port name → number, for named targetPorts.
    pub ports: BTreeMap<String, u16>,
    /// Where the workload's Knit proxy takes mesh traffic; `None` when it
    /// runs without one.
    pub mesh_port: Option<u16>,
    /// SHA-256 of the token this workload presents to the CA (file mode);
    /// `None`: it cannot get certificates.
    pub token_sha256: Option<TokenDigest>,
    pub origin: DocumentRef,
}

/// The annotation holding the hex SHA-256 of a WorkloadEntry's CA token.
/// Only the digest is in the config, so reading the config does not let
/// anyone impersonate the workload.
pub const TOKEN_ANNOTATION: &str = "mesh.knit.dev/token-sha256";

/// A SHA-256 digest of a workload token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// The digest of `token` exactly as presented (no trimming).
    pub fn of_token(token: &str) -> TokenDigest {
        use sha2::{Digest, Sha256};
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits, either case.
    pub fn from_hex(text: &str) -> Option<TokenDigest> {
        // from_str_radix would also take a '+' sign: check digits first.
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            digest[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(TokenDigest(digest))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

/// The annotation that says whether a WorkloadEntry runs a Knit proxy:
/// `knit` (the default) or `none`.
pub const PROXY_ANNOTATION: &str = "mesh.knit.dev/proxy";

/// The port a Knit proxy accepts mesh HTTP/2 on.
pub const MESH_PORT: u16 = 15008;

/// The mesh root namespace unless `--root-namespace` says otherwise: a
/// PeerAuthentication or AuthorizationPolicy there without a selector is
/// mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "knit-system";

/// An effective mutual TLS mode (Istio's, without `UNSET`: that only exists
/// in config and always resolves to one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum MtlsMode {
    /// Plain text only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// Mutual TLS or plain text (also what applies when nothing is set).
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// Mutual TLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        })
    }
}

/// A validated PeerAuthentication. `None` as a mode is `UNSET`: inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthenticationDef {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`; empty: no selector (namespace- or
    /// mesh-wide).
    pub selector: BTreeMap<String, String>,
    pub mode: Option<MtlsMode>,
    /// `spec.portLevelMtls`; only ever non-empty with a selector.
    pub port_modes: BTreeMap<u16, Option<MtlsMode>>,
    /// `metadata.creationTimestamp`, when the document has one (file mode
    /// usually does not; then load order breaks ties).
    pub created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    pub origin: DocumentRef,
}

/// What a matching request gets from an AuthorizationPolicy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum AuthorizationAction {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    /// Recorded, never refused.
    #[serde(rename = "AUDIT")]
    Audit,
}

impl fmt::Display for AuthorizationAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
        })
    }
}

/// A validated `from[].source`. Strings are patterns (exact, `prefix*`,
/// `*suffix`, `*`); principals carry no `spiffe://`; IP blocks are written
/// canonically (`10.0.0.0/8`, `fd00::1`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuthorizationSourceDef {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// A validated `to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuthorizationOperationDef {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A validated `when[]`: `key` is one of the supported keys, with a header
/// name in lowercase (`request.headers[x-tenant]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuthorizationConditionDef {
    pub key: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// A validated rule; an empty rule matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuthorizationRuleDef {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthorizationSourceDef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthorizationOperationDef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthorizationConditionDef>,
}

/// A validated AuthorizationPolicy, or the fail-closed stand-in of an
/// invalid one (`fail_closed`): an ALLOW policy without rules, or a DENY
/// policy with one empty rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicyDef {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`; empty: no selector.
    pub selector: BTreeMap<String, String>,
    pub action: AuthorizationAction,
    pub rules: Vec<AuthorizationRuleDef>,
    /// The document was invalid; this is what applies until it is fixed.
    pub fail_closed: bool,
    pub origin: DocumentRef,
}

/// How a client proxy secures connections to a service port (Istio's
/// client TLS modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ClientTlsMode {
    /// No TLS from the proxy.
    #[serde(rename = "DISABLE")]
    Disable,
    /// TLS originated by the proxy to the endpoint, server verified.
    #[serde(rename = "SIMPLE")]
    Simple,
    /// SIMPLE plus a client certificate.
    #[serde(rename = "MUTUAL")]
    Mutual,
    /// Mesh mutual TLS with the workload identity.
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

impl fmt::Display for ClientTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        })
    }
}

/// Validated client TLS settings. The file fields are only ever set in the
/// modes that use them (SIMPLE, MUTUAL); paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientTlsDef {
    pub mode: ClientTlsMode,
    /// Required for SIMPLE and MUTUAL.
    pub ca_certificates: Option<String>,
    /// Set exactly for MUTUAL.
    pub client_certificate: Option<String>,
    /// Set exactly for MUTUAL.
    pub private_key: Option<String>,
    /// `None`: the service hostname.
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
}

/// The Service a DestinationRule's `spec.host` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub name: String,
    pub namespace: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One `portLevelSettings` entry that sets `tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTlsDef {
    /// Position in `portLevelSettings`, to name the field in warnings.
    pub index: usize,
    pub tls: ClientTlsDef,
}

/// A validated DestinationRule: the client TLS settings of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRuleDef {
    pub name: String,
    pub namespace: String,
    /// `spec.host` as written.
    pub host: String,
    /// The Service `host` names.
    pub service: ServiceName,
    /// `trafficPolicy.tls`: every port without its own entry.
    pub tls: Option<ClientTlsDef>,
    /// `portLevelSettings[].tls` by service port; wins over `tls`.
    pub port_tls: BTreeMap<u16, PortTlsDef>,
    /// Fields accepted without effect, as paths (`spec.subsets`), reported
    /// as warnings each time the config is compiled.
    pub not_implemented: Vec<String>,
    /// `metadata.creationTimestamp`, when the document has one; the tie-break
    /// between two rules for one Service (as for PeerAuthentication).
    pub created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    pub origin: DocumentRef,
}

/// The whole validated config, in load order (files by name, then document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub services: Vec<ServiceDef>,
    pub workloads: Vec<Workload>,
    pub peer_authentications: Vec<PeerAuthenticationDef>,
    pub authorization_policies: Vec<AuthorizationPolicyDef>,
    pub destination_rules: Vec<DestinationRuleDef>,
}
