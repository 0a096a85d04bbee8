//! Peer authentication: which mutual TLS mode applies to a workload's
//! inbound traffic, from the PeerAuthentication policies of the config.
//! Pure functions only.
//!
//! Precedence, broadest first; each narrower scope overrides the broader
//! one, and a scope whose mode is `UNSET` (or absent) inherits from the next
//! broader one:
//!
//! 1. **mesh**: a policy in the root namespace without a selector;
//! 2. **namespace**: a policy in the workload's namespace without a selector;
//! 3. **workload**: a policy in the workload's namespace whose
//!    `selector.matchLabels` the workload's labels contain;
//! 4. **port**: that workload policy's `portLevelMtls` entry for the port.
//!
//! Nothing set anywhere is `PERMISSIVE`. A selector with no labels counts
//! as no selector.
//!
//! A policy **with a selector in the root namespace is ignored**, for
//! workloads in every namespace including the root namespace itself. That is
//! what Istio does (`ComposePeerAuthentication`: "workload-level policy, aka
//! the one with selector and not in root namespace"); its docs describe such
//! a policy as applying to root-namespace workloads, but the code never
//! selects it, and Knit follows the code so the same YAML behaves the same.
//!
//! When several policies compete for one scope (two mesh-wide policies, or
//! two workload policies selecting the same workload), the oldest wins:
//! - policies that carry `metadata.creationTimestamp` (Kubernetes) are
//!   ordered by it, and equal timestamps by name;
//! - any policy with a timestamp is older than one without;
//! - policies without one (file mode: the loader's documents have none
//!   unless the YAML sets it) are ordered by load order, i.e. file name,
//!   then document index: the first one in the config directory wins.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{MtlsMode, PeerAuthenticationDef, Workload};
use crate::translate::selects;

/// What applies when no policy sets a mode.
pub const DEFAULT_MTLS_MODE: MtlsMode = MtlsMode::Permissive;

/// The effective modes of one workload: `ports` lists the ports with a
/// port-level setting, `default` applies to every other port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct WorkloadMtls {
    pub default: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl WorkloadMtls {
    /// The mode on `port`.
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

/// The policy chosen for each scope, for one workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectedPolicies<'a> {
    pub mesh: Option<&'a PeerAuthenticationDef>,
    pub namespace: Option<&'a PeerAuthenticationDef>,
    pub workload: Option<&'a PeerAuthenticationDef>,
}

/// Tie-break between two policies of one scope: `Less` when `a` (at load
/// position `ia`) wins over `b` (at `ib`). See the module docs.
fn older(
    (ia, a): (usize, &PeerAuthenticationDef),
    (ib, b): (usize, &PeerAuthenticationDef),
) -> Ordering {
    match (&a.created, &b.created) {
        (Some(ta), Some(tb)) => ta
            .cmp(tb)
            .then_with(|| a.name.cmp(&b.name))
            .then(ia.cmp(&ib)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => ia.cmp(&ib),
    }
}

fn keep_oldest<'a>(
    slot: &mut Option<(usize, &'a PeerAuthenticationDef)>,
    candidate: (usize, &'a PeerAuthenticationDef),
) {
    match slot {
        Some(current) if older(*current, candidate) != Ordering::Greater => {}
        _ => *slot = Some(candidate),
    }
}

/// The mesh, namespace and workload policy that apply to `workload`.
/// `policies` is in load order (as `MeshConfig::peer_authentications`).
pub fn select_policies<'a>(
    policies: &'a [PeerAuthenticationDef],
    root_ns: &str,
    workload: &Workload,
) -> SelectedPolicies<'a> {
    let mut mesh = None;
    let mut namespace = None;
    let mut selected = None;
    for (index, policy) in policies.iter().enumerate() {
        let candidate = (index, policy);
        if policy.selector.is_empty() {
            if policy.namespace == root_ns {
                keep_oldest(&mut mesh, candidate);
            } else if policy.namespace == workload.namespace {
                keep_oldest(&mut namespace, candidate);
            }
        } else if policy.namespace != root_ns
            && policy.namespace == workload.namespace
            && selects(&policy.selector, &workload.labels)
        {
            keep_oldest(&mut selected, candidate);
        }
    }
    SelectedPolicies {
        mesh: mesh.map(|(_, p)| p),
        namespace: namespace.map(|(_, p)| p),
        workload: selected.map(|(_, p)| p),
    }
}

/// The effective modes of `workload`: its default, and each port its
/// workload policy sets (an `UNSET` port inherits the workload's default).
pub fn effective_mtls_by_port(
    policies: &[PeerAuthenticationDef],
    root_ns: &str,
    workload: &Workload,
) -> WorkloadMtls {
    let selected = select_policies(policies, root_ns, workload);
    let default = [selected.mesh, selected.namespace, selected.workload]
        .into_iter()
        .flatten()
        .fold(DEFAULT_MTLS_MODE, |inherited, policy| {
            policy.mode.unwrap_or(inherited)
        });
    let ports = selected
        .workload
        .map(|policy| {
            policy
                .port_modes
                .iter()
                .map(|(port, mode)| (*port, mode.unwrap_or(default)))
                .collect()
        })
        .unwrap_or_default();
    WorkloadMtls { default, ports }
}

/// The effective mode of `workload`'s inbound traffic on `port`.
pub fn effective_mtls(
    policies: &[PeerAuthenticationDef],
    root_ns: &str,
    workload: &Workload,
    port: u16,
) -> MtlsMode {
    effective_mtls_by_port(policies, root_ns, workload).mode(port)
}

/// What knitd needs to compute the modes: the config's workloads and
/// policies (kept apart from the snapshot, which does not carry them yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MtlsInputs {
    pub workloads: Vec<Workload>,
    pub policies: Vec<PeerAuthenticationDef>,
}

/// One declared port of a workload and its mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMtlsView {
    pub name: String,
    pub port: u16,
    pub mode: MtlsMode,
}

/// `/debug/mtls`: one workload's effective modes and the policies they come
/// from (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadMtlsView {
    pub namespace: String,
    pub name: String,
    /// The mode on every port not listed in `port_overrides`.
    pub default: MtlsMode,
    /// The WorkloadEntry's declared ports (`spec.ports`), each with its mode.
    pub ports: Vec<PortMtlsView>,
    /// The ports the workload policy's `portLevelMtls` sets (declared or not).
    pub port_overrides: BTreeMap<u16, MtlsMode>,
    pub mesh_policy: Option<String>,
    pub namespace_policy: Option<String>,
    pub workload_policy: Option<String>,
}

/// The `/debug/mtls` page: every workload in load order.
pub fn view(inputs: &MtlsInputs, root_ns: &str) -> Vec<WorkloadMtlsView> {
    let id = |p: &PeerAuthenticationDef| format!("{}/{}", p.namespace, p.name);
    inputs
        .workloads
        .iter()
        .map(|workload| {
            let selected = select_policies(&inputs.policies, root_ns, workload);
            let modes = effective_mtls_by_port(&inputs.policies, root_ns, workload);
            let mut ports: Vec<PortMtlsView> = workload
                .ports
                .iter()
                .map(|(name, port)| PortMtlsView {
                    name: name.clone(),
                    port: *port,
                    mode: modes.mode(*port),
                })
                .collect();
            ports.sort_by(|a, b| a.port.cmp(&b.port).then_with(|| a.name.cmp(&b.name)));
            WorkloadMtlsView {
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                default: modes.default,
                ports,
                port_overrides: modes.ports,
                mesh_policy: selected.mesh.map(id),
                namespace_policy: selected.namespace.map(id),
                workload_policy: selected.workload.map(id),
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "mtls_tests.rs"]
mod tests;
