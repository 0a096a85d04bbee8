//! Authorization policy: which AuthorizationPolicies apply to a workload,
//! and their wire form. Pure functions only.
//!
//! Scope follows from where a policy lives and whether it has a selector
//! (`selector.matchLabels`; a selector without labels counts as none):
//!
//! | namespace            | selector | applies to                                  |
//! |----------------------|----------|---------------------------------------------|
//! | the root namespace   | none     | every workload of the mesh                  |
//! | the root namespace   | labels   | the selected workloads of every namespace   |
//! | another namespace    | none     | every workload of that namespace            |
//! | another namespace    | labels   | the selected workloads of that namespace    |
//!
//! Every policy that applies is sent; the proxy combines them as Istio
//! does: a matching DENY refuses, and once any ALLOW policy applies a
//! request must match one of them; AUDIT only records. Unlike
//! PeerAuthentication there is no precedence between scopes, so a
//! root-namespace policy with a selector is not ignored here: Istio applies
//! it to the selected workloads of every namespace.
//!
//! A proxy whose WorkloadEntry is unknown has no labels, so it gets the
//! mesh-wide policies and its namespace's policies without a selector.

use std::collections::BTreeMap;

use knit_proto::v1 as pb;
use serde::Serialize;

use crate::model::{
    AuthorizationAction, AuthorizationConditionDef, AuthorizationOperationDef,
    AuthorizationPolicyDef, AuthorizationRuleDef, AuthorizationSourceDef,
};
use crate::snapshot::Snapshot;
use crate::translate::selects;

/// Why a policy applies to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum AuthorizationScope {
    /// Root namespace, no selector.
    #[serde(rename = "mesh")]
    Mesh,
    /// Root namespace, a selector the workload matches.
    #[serde(rename = "mesh-selected")]
    MeshSelected,
    /// The workload's namespace, no selector.
    #[serde(rename = "namespace")]
    Namespace,
    /// The workload's namespace, a selector the workload matches.
    #[serde(rename = "workload")]
    Workload,
}

/// Whether `policy` applies to a workload of `namespace` with `labels`, and
/// by which scope.
pub fn scope_of(
    policy: &AuthorizationPolicyDef,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<AuthorizationScope> {
    let unselected = policy.selector.is_empty();
    let selected = || selects(&policy.selector, labels);
    if policy.namespace == root_namespace {
        if unselected {
            return Some(AuthorizationScope::Mesh);
        }
        if selected() {
            return Some(AuthorizationScope::MeshSelected);
        }
        return None;
    }
    if policy.namespace != namespace {
        return None;
    }
    if unselected {
        Some(AuthorizationScope::Namespace)
    } else if selected() {
        Some(AuthorizationScope::Workload)
    } else {
        None
    }
}

/// The policies that apply to a workload of `namespace` with `labels`,
/// ordered by (namespace, name), each with its scope.
pub fn policies_for<'a>(
    policies: &'a [AuthorizationPolicyDef],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a AuthorizationPolicyDef, AuthorizationScope)> {
    let mut applying: Vec<_> = policies
        .iter()
        .filter_map(|policy| {
            scope_of(policy, root_namespace, namespace, labels).map(|scope| (policy, scope))
        })
        .collect();
    applying.sort_by(|(a, _), (b, _)| {
        (a.namespace.as_str(), a.name.as_str()).cmp(&(b.namespace.as_str(), b.name.as_str()))
    });
    applying
}

/// The labels knitd knows for the proxy `node`: those of the WorkloadEntry
/// named (pod_name, namespace); none for an unknown node. The node's own
/// labels are not used, so a proxy cannot pick its policies.
fn node_labels<'a>(
    node: &pb::Node,
    snapshot: &'a Snapshot,
) -> Option<&'a BTreeMap<String, String>> {
    snapshot
        .mtls
        .workloads
        .iter()
        .find(|w| w.name == node.pod_name && w.namespace == node.namespace)
        .map(|w| &w.labels)
}

/// The AuthorizationPolicies `node` is sent, in (namespace, name) order.
pub fn authorization_for(node: &pb::Node, snapshot: &Snapshot) -> Vec<pb::AuthorizationPolicy> {
    let no_labels = BTreeMap::new();
    let labels = node_labels(node, snapshot).unwrap_or(&no_labels);
    policies_for(
        &snapshot.authorization,
        &snapshot.root_namespace,
        &node.namespace,
        labels,
    )
    .into_iter()
    .map(|(policy, _)| to_wire(policy))
    .collect()
}

/// Sorts policies into the order proxies receive them: (namespace, name).
pub fn sort_policies(policies: &mut [AuthorizationPolicyDef]) {
    policies.sort_by(|a, b| {
        (a.namespace.as_str(), a.name.as_str()).cmp(&(b.namespace.as_str(), b.name.as_str()))
    });
}

fn wire_action(action: AuthorizationAction) -> pb::AuthorizationAction {
    match action {
        AuthorizationAction::Allow => pb::AuthorizationAction::Allow,
        AuthorizationAction::Deny => pb::AuthorizationAction::Deny,
        AuthorizationAction::Audit => pb::AuthorizationAction::Audit,
    }
}

fn wire_source(source: &AuthorizationSourceDef) -> pb::AuthorizationSource {
    pb::AuthorizationSource {
        principals: source.principals.clone(),
        not_principals: source.not_principals.clone(),
        namespaces: source.namespaces.clone(),
        not_namespaces: source.not_namespaces.clone(),
        ip_blocks: source.ip_blocks.clone(),
        not_ip_blocks: source.not_ip_blocks.clone(),
    }
}

fn wire_operation(operation: &AuthorizationOperationDef) -> pb::AuthorizationOperation {
    let ports = |ports: &[u16]| ports.iter().copied().map(u32::from).collect();
    pb::AuthorizationOperation {
        hosts: operation.hosts.clone(),
        not_hosts: operation.not_hosts.clone(),
        ports: ports(&operation.ports),
        not_ports: ports(&operation.not_ports),
        methods: operation.methods.clone(),
        not_methods: operation.not_methods.clone(),
        paths: operation.paths.clone(),
        not_paths: operation.not_paths.clone(),
    }
}

fn wire_condition(condition: &AuthorizationConditionDef) -> pb::AuthorizationCondition {
    pb::AuthorizationCondition {
        key: condition.key.clone(),
        values: condition.values.clone(),
        not_values: condition.not_values.clone(),
    }
}

fn wire_rule(rule: &AuthorizationRuleDef) -> pb::AuthorizationRule {
    pb::AuthorizationRule {
        from: rule.from.iter().map(wire_source).collect(),
        to: rule.to.iter().map(wire_operation).collect(),
        when: rule.when.iter().map(wire_condition).collect(),
    }
}

/// A policy as proxies receive it.
pub fn to_wire(policy: &AuthorizationPolicyDef) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        action: wire_action(policy.action) as i32,
        rules: policy.rules.iter().map(wire_rule).collect(),
    }
}

/// One policy applying to a workload, on `/debug/authz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedPolicyView {
    pub namespace: String,
    pub name: String,
    pub action: AuthorizationAction,
    pub scope: AuthorizationScope,
    /// The policy is invalid and applies in its fail-closed form.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail_closed: bool,
}

/// `/debug/authz`: one known workload and the policies that apply to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadAuthorizationView {
    pub namespace: String,
    pub name: String,
    pub policies: Vec<AppliedPolicyView>,
}

/// The `/debug/authz` page: every known workload in load order.
pub fn view(snapshot: &Snapshot) -> Vec<WorkloadAuthorizationView> {
    snapshot
        .mtls
        .workloads
        .iter()
        .map(|workload| WorkloadAuthorizationView {
            namespace: workload.namespace.clone(),
            name: workload.name.clone(),
            policies: policies_for(
                &snapshot.authorization,
                &snapshot.root_namespace,
                &workload.namespace,
                &workload.labels,
            )
            .into_iter()
            .map(|(policy, scope)| AppliedPolicyView {
                namespace: policy.namespace.clone(),
                name: policy.name.clone(),
                action: policy.action,
                scope,
                fail_closed: policy.fail_closed,
            })
            .collect(),
        })
        .collect()
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
