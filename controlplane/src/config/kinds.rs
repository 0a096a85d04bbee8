//! The config kinds knitd understands, defined once as Rust types so the
//! file source and a Kubernetes source read the same shapes.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// A kind the loader dispatches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KnownKind {
    Service,
    WorkloadEntry,
    PeerAuthentication,
}

impl KnownKind {
    pub fn name(self) -> &'static str {
        match self {
            KnownKind::Service => "Service",
            KnownKind::WorkloadEntry => "WorkloadEntry",
            KnownKind::PeerAuthentication => "PeerAuthentication",
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
        _ => None,
    }
}

/// Path of the checked-in WorkloadEntry CRD, relative to the repository root.
pub const WORKLOAD_ENTRY_CRD_PATH: &str = "manifests/crds/workloadentry.yaml";

/// Path of the checked-in PeerAuthentication CRD, relative to the repository root.
pub const PEER_AUTHENTICATION_CRD_PATH: &str = "manifests/crds/peerauthentication.yaml";

/// The WorkloadEntry CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn workload_entry_crd_yaml() -> Result<String, Error> {
    crd_yaml::<WorkloadEntry>("WorkloadEntry")
}

/// The PeerAuthentication CRD as YAML, exactly as checked in under `manifests/crds/`.
pub fn peer_authentication_crd_yaml() -> Result<String, Error> {
    crd_yaml::<PeerAuthentication>("PeerAuthentication")
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
    }

    /// The checked-in CRDs must match the Rust types; set KNIT_UPDATE_GOLDEN=1
    /// to rewrite them after changing a type.
    #[test]
    fn crd_golden_files_match_the_types() {
        type Render = fn() -> Result<String, Error>;
        let crds: [(&str, &str, Render); 2] = [
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
