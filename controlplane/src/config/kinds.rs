//! The config kinds knitd understands, defined once as Rust types so the
//! file source and a Kubernetes source read the same shapes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Defined in `destination_rule.rs`; named here with the other kinds.
pub use super::destination_rule::{
    DESTINATION_RULE_API_VERSIONS, DestinationRule, DestinationRuleSpec,
};
use crate::error::Error;

/// Core Kubernetes `v1` `Service`.
pub use k8s_openapi::api::core::v1::Service;

/// API group of Knit's own kinds.
pub const MESH_GROUP: &str = "mesh.knit.dev";

/// apiVersion of core `Service`.
pub const SERVICE_API_VERSION: &str = "v1";

/// Every apiVersion accepted for `WorkloadEntry`: ours first, then Istio's,
/// so existing Istio YAML loads unchanged.
pub const WORKLOAD_ENTRY_API_VERSIONS: [&str; 4] = [
    "mesh.knit.dev/v1alpha1",
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];

/// A workload outside Kubernetes' pod machinery; in file mode it stands in for
/// a pod, and `metadata.name` is the pod's name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "mesh.knit.dev",
    version = "v1alpha1",
    kind = "WorkloadEntry",
    plural = "workloadentries",
    doc = "A workload outside Kubernetes' pod machinery (in file mode, a pod).",
    namespaced,
    derive = "PartialEq",
    category = "knit",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Service Account","type":"string","jsonPath":".spec.serviceAccount"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// IP address (IPv4 or IPv6) the workload is reached at.
    pub address: String,
    /// Labels of the workload; Services select workloads by these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Service account the workload runs as (`default` when unset); its
    /// identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Named ports of the workload (port name → port number), used to resolve
    /// a Service's named `targetPort`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
}

/// Every apiVersion accepted for `PeerAuthentication`: ours first, then
/// Istio's, so existing Istio YAML loads unchanged.
pub const PEER_AUTHENTICATION_API_VERSIONS: [&str; 3] = [
    "mesh.knit.dev/v1alpha1",
    "security.istio.io/v1beta1",
    "security.istio.io/v1",
];

/// Which workloads' inbound traffic must (or may) be mutual TLS, in Istio's
/// shape. Scope follows from where it lives: in the mesh root namespace
/// without a selector it is mesh-wide; in another namespace without a
/// selector it is namespace-wide; with a selector it applies to the selected
/// workloads of its own namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "mesh.knit.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    doc = "Mutual TLS requirements for a workload's inbound traffic (Istio's PeerAuthentication).",
    namespaced,
    derive = "PartialEq",
    category = "knit",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to; absent (or no labels): every workload
    /// of the namespace (of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PeerWorkloadSelector>,
    /// The mode for the selected workloads; absent means `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Per-port modes (port number → mode), overriding `mtls` on that port.
    /// Only allowed with a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

/// Istio's `WorkloadSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerWorkloadSelector {
    /// Labels a workload must all carry to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A mutual TLS setting.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PeerMtls {
    /// Absent means `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PeerMtlsMode>,
}

/// Istio's mTLS modes as written in YAML.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PeerMtlsMode {
    /// Inherit from the next broader scope.
    #[serde(rename = "UNSET")]
    Unset,
    /// Plain text only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// Mutual TLS or plain text.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// Mutual TLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

/// Every apiVersion accepted for `AuthorizationPolicy`: ours first, then
/// Istio's, so existing Istio YAML loads unchanged.
pub const AUTHORIZATION_POLICY_API_VERSIONS: [&str; 3] = [
    "mesh.knit.dev/v1alpha1",
    "security.istio.io/v1beta1",
    "security.istio.io/v1",
];

/// Which requests may reach the selected workloads, in Istio's shape. Scope
/// follows from where it lives: in the mesh root namespace it applies to
/// every workload of the mesh (with a selector: the selected workloads of
/// every namespace); in another namespace, to every workload of that
/// namespace (with a selector: the selected ones).
///
/// Unknown fields are rejected rather than ignored: a misspelt field of an
/// authorization policy would silently widen or narrow what it matches.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "mesh.knit.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    doc = "Access control for a workload's inbound requests (Istio's AuthorizationPolicy).",
    namespaced,
    derive = "PartialEq",
    category = "knit",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; absent (or no labels): every workload
    /// of the namespace (of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PeerWorkloadSelector>,
    /// What a matching request gets; absent means `ALLOW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PolicyAction>,
    /// A request matches the policy when it matches any rule. An ALLOW
    /// policy without rules allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// Not supported by Knit (external authorizers); a policy setting it is
    /// rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<PolicyProvider>,
    /// Not supported by Knit (policies attached to gateways or services); a
    /// policy setting it is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Not supported by Knit; a policy setting it is rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
}

/// Istio's authorization actions as written in YAML.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PolicyAction {
    /// Requests matching a rule are allowed; once any ALLOW policy applies
    /// to a workload, requests matching none are denied.
    #[serde(rename = "ALLOW")]
    Allow,
    /// Requests matching a rule are denied; checked before ALLOW.
    #[serde(rename = "DENY")]
    Deny,
    /// Requests matching a rule are recorded, never refused.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Not supported by Knit (external authorizers); rejected.
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// One rule: it matches when some `from` matches (or there is none), some
/// `to` matches (or there is none) and every `when` holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Where the request comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// What the request asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Further conditions on the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<RuleCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// Required, with at least one field set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RuleSource>,
}

/// Where a request comes from. Every field set must match. Strings match
/// exactly, by prefix (`abc*`), by suffix (`*abc`) or by presence (`*`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSource {
    /// Peer identities from mutual TLS, written without `spiffe://`
    /// (`cluster.local/ns/shop/sa/web`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Namespaces of the peer's identity (mutual TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Addresses or CIDR blocks of the connection's source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Not supported by Knit (request authentication); rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Not supported by Knit (request authentication); rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Not supported by Knit (addresses from forwarding headers); rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Not supported by Knit (addresses from forwarding headers); rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// Required, with at least one field set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<RuleOperation>,
}

/// What a request asks for. Every field set must match; strings match as
/// in `source`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleOperation {
    /// Host (authority) of the request, matched case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Ports of the workload (the target port), as numbers or strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<IntOrString>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths, without the query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// Holds when the attribute `key` matches one of `values` (if any) and none
/// of `notValues`. Keys: `source.ip`, `source.namespace`, `source.principal`,
/// `destination.ip`, `destination.port`, `request.headers[<name>]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleCondition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Istio's external authorizer reference (CUSTOM action); only read to be
/// rejected.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Istio's policy attachment to a gateway or service; only read to be
/// rejected.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A kind the loader dispatches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KnownKind {
    Service,
    WorkloadEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    DestinationRule,
}

impl KnownKind {
    pub fn name(self) -> &'static str {
        match self {
            KnownKind::Service => "Service",
            KnownKind::WorkloadEntry => "WorkloadEntry",
            KnownKind::PeerAuthentication => "PeerAuthentication",
            KnownKind::AuthorizationPolicy => "AuthorizationPolicy",
            KnownKind::DestinationRule => "DestinationRule",
        }
    }
}

/// Which known kind a document's `apiVersion` + `kind` declare, if any.
pub fn classify(api_version: &str, kind: &str) -> Option<KnownKind> {
    match kind {
        "Service" if api_version == SERVICE_API_VERSION => Some(KnownKind::Service),
        "WorkloadEntry" if WORKLOAD_ENTRY_API_VERSIONS.contains(&api_version) => {
            Some(KnownKind::WorkloadEntry)
        }
        "PeerAuthentication" if PEER_AUTHENTICATION_API_VERSIONS.contains(&api_version) => {
            Some(KnownKind::PeerAuthentication)
        }
        "AuthorizationPolicy" if AUTHORIZATION_POLICY_API_VERSIONS.contains(&api_version) => {
            Some(KnownKind::AuthorizationPolicy)
        }
        "DestinationRule" if DESTINATION_RULE_API_VERSIONS.contains(&api_version) => {
            Some(KnownKind::DestinationRule)
        }
        _ => None,
    }
}

/// Path of the checked-in WorkloadEntry CRD, relative to the repository root.
pub const WORKLOAD_ENTRY_CRD_PATH: &str = "manifests/crds/workloadentry.yaml";

/// Path of the checked-in PeerAuthentication CRD, relative to the repository root.
pub const PEER_AUTHENTICATION_CRD_PATH: &str = "manifests/crds/peerauthentication.yaml";

/// Path of the checked-in AuthorizationPolicy CRD, relative to the repository root.
pub const AUTHORIZATION_POLICY_CRD_PATH: &str = "manifests/crds/authorizationpolicy.yaml";

/// Path of the checked-in DestinationRule CRD, relative to the repository root.
pub const DESTINATION_RULE_CRD_PATH: &str = "manifests/crds/destinationrule.yaml";

/// The WorkloadEntry CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn workload_entry_crd_yaml() -> Result<String, Error> {
    crd_yaml::<WorkloadEntry>("WorkloadEntry")
}

/// The PeerAuthentication CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn peer_authentication_crd_yaml() -> Result<String, Error> {
    crd_yaml::<PeerAuthentication>("PeerAuthentication")
}

/// The AuthorizationPolicy CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn authorization_policy_crd_yaml() -> Result<String, Error> {
    crd_yaml::<AuthorizationPolicy>("AuthorizationPolicy")
}

/// The DestinationRule CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn destination_rule_crd_yaml() -> Result<String, Error> {
    crd_yaml::<DestinationRule>("DestinationRule")
}

fn crd_yaml<K: CustomResourceExt>(kind: &'static str) -> Result<String, Error> {
    let crd = K::crd();
    let body = serde_saphyr::to_string(&crd).map_err(|err| Error::CrdRender {
        kind,
        reason: err.to_string(),
    })?;
    Ok(format!(
        "# Generated from the Rust type knit_controlplane::config::kinds::{kind}.\n\
         # Do not edit; regenerate with: KNIT_UPDATE_GOLDEN=1 cargo test -p knit-controlplane crd\n\
         {body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_dispatches_on_api_version_and_kind() {
        let table = [
            ("v1", "Service", Some(KnownKind::Service)),
            ("apps/v1", "Service", None),
            (
                "mesh.knit.dev/v1alpha1",
                "WorkloadEntry",
                Some(KnownKind::WorkloadEntry),
            ),
            (
                "networking.istio.io/v1alpha3",
                "WorkloadEntry",
                Some(KnownKind::WorkloadEntry),
            ),
            (
                "networking.istio.io/v1beta1",
                "WorkloadEntry",
                Some(KnownKind::WorkloadEntry),
            ),
            (
                "networking.istio.io/v1",
                "WorkloadEntry",
                Some(KnownKind::WorkloadEntry),
            ),
            ("networking.istio.io/v2", "WorkloadEntry", None),
            (
                "mesh.knit.dev/v1alpha1",
                "PeerAuthentication",
                Some(KnownKind::PeerAuthentication),
            ),
            (
                "security.istio.io/v1beta1",
                "PeerAuthentication",
                Some(KnownKind::PeerAuthentication),
            ),
            (
                "security.istio.io/v1",
                "PeerAuthentication",
                Some(KnownKind::PeerAuthentication),
            ),
            ("security.istio.io/v1alpha1", "PeerAuthentication", None),
            (
                "mesh.knit.dev/v1alpha1",
                "AuthorizationPolicy",
                Some(KnownKind::AuthorizationPolicy),
            ),
            (
                "security.istio.io/v1beta1",
                "AuthorizationPolicy",
                Some(KnownKind::AuthorizationPolicy),
            ),
            (
                "security.istio.io/v1",
                "AuthorizationPolicy",
                Some(KnownKind::AuthorizationPolicy),
            ),
            ("security.istio.io/v1alpha1", "AuthorizationPolicy", None),
            (
                "mesh.knit.dev/v1alpha1",
                "DestinationRule",
                Some(KnownKind::DestinationRule),
            ),
            (
                "networking.istio.io/v1",
                "DestinationRule",
                Some(KnownKind::DestinationRule),
            ),
            (
                "networking.istio.io/v1beta1",
                "DestinationRule",
                Some(KnownKind::DestinationRule),
            ),
            (
                "networking.istio.io/v1alpha3",
                "DestinationRule",
                Some(KnownKind::DestinationRule),
            ),
            ("security.istio.io/v1", "DestinationRule", None),
            ("networking.istio.io/v1", "AuthorizationPolicy", None),
            ("networking.istio.io/v1", "PeerAuthentication", None),
            ("v1", "WorkloadEntry", None),
            ("v1", "ConfigMap", None),
        ];
        for (api_version, kind, expected) in table {
            assert_eq!(
                classify(api_version, kind),
                expected,
                "{api_version} {kind}"
            );
        }
    }

    #[test]
    fn crd_names_the_group_kind_and_scope() {
        let crd = WorkloadEntry::crd();
        assert_eq!(crd.spec.group, MESH_GROUP);
        assert_eq!(crd.spec.names.kind, "WorkloadEntry");
        assert_eq!(crd.spec.names.plural, "workloadentries");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");

        let crd = PeerAuthentication::crd();
        assert_eq!(crd.spec.group, MESH_GROUP);
        assert_eq!(crd.spec.names.kind, "PeerAuthentication");
        assert_eq!(crd.spec.names.plural, "peerauthentications");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");

        let crd = AuthorizationPolicy::crd();
        assert_eq!(crd.spec.group, MESH_GROUP);
        assert_eq!(crd.spec.names.kind, "AuthorizationPolicy");
        assert_eq!(crd.spec.names.plural, "authorizationpolicies");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");

        let crd = DestinationRule::crd();
        assert_eq!(crd.spec.group, MESH_GROUP);
        assert_eq!(crd.spec.names.kind, "DestinationRule");
        assert_eq!(crd.spec.names.plural, "destinationrules");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    }

    /// The checked-in CRDs must match the Rust types; set KNIT_UPDATE_GOLDEN=1
    /// to rewrite them after changing a type.
    #[test]
    fn crd_golden_files_match_the_types() {
        type Render = fn() -> Result<String, Error>;
        let crds: [(&str, &str, Render); 4] = [
            (
                "WorkloadEntry",
                WORKLOAD_ENTRY_CRD_PATH,
                workload_entry_crd_yaml,
            ),
            (
                "PeerAuthentication",
                PEER_AUTHENTICATION_CRD_PATH,
                peer_authentication_crd_yaml,
            ),
            (
                "AuthorizationPolicy",
                AUTHORIZATION_POLICY_CRD_PATH,
                authorization_policy_crd_yaml,
            ),
            (
                "DestinationRule",
                DESTINATION_RULE_CRD_PATH,
                destination_rule_crd_yaml,
            ),
        ];
        for (kind, relative, render) in crds {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(relative);
            let generated = match render() {
                Ok(yaml) => yaml,
                Err(err) => panic!("{err}"),
            };
            if std::env::var_os("KNIT_UPDATE_GOLDEN").is_some_and(|v| v == "1")
                && let Err(err) = std::fs::write(&path, &generated)
            {
                panic!("cannot write {}: {err}", path.display());
            }
            let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|err| {
                panic!(
                    "cannot read {}: {err}; run KNIT_UPDATE_GOLDEN=1 cargo test -p knit-controlplane crd",
                    path.display()
                )
            });
            assert!(
                checked_in == generated,
                "{} is out of date with the {kind} type; run \
                 KNIT_UPDATE_GOLDEN=1 cargo test -p knit-controlplane crd",
                path.display()
            );
        }
    }
}
