//! The compiled state every proxy is sent, its content-derived version, and
//! its JSON view for the debug endpoints and `--once --print`.

use std::collections::BTreeMap;

use knit_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::authz::{sort_policies, to_wire};
use crate::model::{
    AuthorizationAction, AuthorizationPolicyDef, AuthorizationRuleDef, DEFAULT_ROOT_NAMESPACE,
    MtlsMode,
};
use crate::mtls::MtlsInputs;

/// What every proxy needs, compiled from the config. Immutable once built;
/// a new config builds a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Content hash, so the same config has the same version across restarts.
    pub version: String,
    pub services: Vec<pb::Service>,
    pub endpoints: Vec<pb::ServiceEndpoints>,
    /// The workloads and PeerAuthentications each proxy's inbound policy is
    /// computed from (`discovery::snapshot_for`); part of the version.
    pub mtls: MtlsInputs,
    /// The mesh root namespace the inbound and authorization policies are
    /// selected with.
    pub root_namespace: String,
    /// Every AuthorizationPolicy (an invalid one in its fail-closed form),
    /// in (namespace, name) order; `authz::authorization_for` picks each
    /// proxy's. Part of the version.
    pub authorization: Vec<AuthorizationPolicyDef>,
}

impl Snapshot {
    /// A snapshot without mTLS inputs (every proxy gets the mesh default),
    /// with the default root namespace.
    pub fn new(services: Vec<pb::Service>, endpoints: Vec<pb::ServiceEndpoints>) -> Snapshot {
        Snapshot::with_mtls(
            services,
            endpoints,
            MtlsInputs::default(),
            DEFAULT_ROOT_NAMESPACE,
        )
    }

    /// A snapshot whose proxies get inbound policies computed from `mtls`
    /// with `root_namespace`, and no authorization policies; the version
    /// covers both.
    pub fn with_mtls(
        services: Vec<pb::Service>,
        endpoints: Vec<pb::ServiceEndpoints>,
        mtls: MtlsInputs,
        root_namespace: &str,
    ) -> Snapshot {
        Snapshot::with_policies(services, endpoints, mtls, Vec::new(), root_namespace)
    }

    /// [`Snapshot::with_mtls`] plus the AuthorizationPolicies proxies are
    /// sent their share of; the version covers them too.
    pub fn with_policies(
        services: Vec<pb::Service>,
        endpoints: Vec<pb::ServiceEndpoints>,
        mtls: MtlsInputs,
        mut authorization: Vec<AuthorizationPolicyDef>,
        root_namespace: &str,
    ) -> Snapshot {
        sort_policies(&mut authorization);
        let mut hash = Fnv1a::new();
        hash_content(&mut hash, &services, &endpoints);
        hash_mtls(&mut hash, &mtls, root_namespace);
        hash_authorization(&mut hash, &authorization);
        Snapshot {
            version: format!("{:016x}", hash.0),
            services,
            endpoints,
            mtls,
            root_namespace: root_namespace.to_owned(),
            authorization,
        }
    }

    /// The snapshot of an empty config.
    pub fn empty() -> Snapshot {
        Snapshot::new(Vec::new(), Vec::new())
    }

    /// Total number of endpoints over all services.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.iter().map(|set| set.endpoints.len()).sum()
    }

    pub fn view(&self) -> SnapshotView {
        SnapshotView::from(self)
    }
}

/// 64-bit FNV-1a: tiny, stable across platforms and releases (unlike std's
/// hasher), and good enough to tell config versions apart.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Length-prefixed, so concatenations cannot collide.
    fn write_chunk(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

/// A hex hash of the encoded content. Endpoint port maps are hashed as sorted
/// pairs because prost encodes proto maps from a `HashMap`, whose order varies.
pub fn content_version(services: &[pb::Service], endpoints: &[pb::ServiceEndpoints]) -> String {
    let mut hash = Fnv1a::new();
    hash_content(&mut hash, services, endpoints);
    format!("{:016x}", hash.0)
}

fn hash_content(hash: &mut Fnv1a, services: &[pb::Service], endpoints: &[pb::ServiceEndpoints]) {
    hash.write_chunk(b"services");
    for service in services {
        hash.write_chunk(&service.encode_to_vec());
    }
    hash.write_chunk(b"endpoints");
    for set in endpoints {
        let header = pb::ServiceEndpoints {
            endpoints: Vec::new(),
            ..set.clone()
        };
        hash.write_chunk(&header.encode_to_vec());
        for endpoint in &set.endpoints {
            let without_ports = pb::Endpoint {
                ports: Default::default(),
                ..endpoint.clone()
            };
            hash.write_chunk(&without_ports.encode_to_vec());
            let ports: BTreeMap<u32, u32> = endpoint.ports.iter().map(|(k, v)| (*k, *v)).collect();
            hash.write(&(ports.len() as u64).to_le_bytes());
            for (service_port, target_port) in ports {
                hash.write(&service_port.to_le_bytes());
                hash.write(&target_port.to_le_bytes());
            }
        }
    }
}

fn mode_tag(mode: Option<MtlsMode>) -> u8 {
    match mode {
        None => 0,
        Some(MtlsMode::Disable) => 1,
        Some(MtlsMode::Permissive) => 2,
        Some(MtlsMode::Strict) => 3,
    }
}

fn hash_map(hash: &mut Fnv1a, map: &BTreeMap<String, String>) {
    hash.write(&(map.len() as u64).to_le_bytes());
    for (key, value) in map {
        hash.write_chunk(key.as_bytes());
        hash.write_chunk(value.as_bytes());
    }
}

/// Everything the inbound policies depend on: the root namespace, each
/// workload's identity, labels (selectors) and declared ports, and each
/// policy in load order (the tie-break) with its creation time.
fn hash_mtls(hash: &mut Fnv1a, mtls: &MtlsInputs, root_namespace: &str) {
    hash.write_chunk(b"mtls");
    hash.write_chunk(root_namespace.as_bytes());
    hash.write(&(mtls.workloads.len() as u64).to_le_bytes());
    for workload in &mtls.workloads {
        hash.write_chunk(workload.namespace.as_bytes());
        hash.write_chunk(workload.name.as_bytes());
        hash_map(hash, &workload.labels);
        let ports: std::collections::BTreeSet<u16> = workload.ports.values().copied().collect();
        hash.write(&(ports.len() as u64).to_le_bytes());
        for port in ports {
            hash.write(&port.to_le_bytes());
        }
    }
    hash.write(&(mtls.policies.len() as u64).to_le_bytes());
    for policy in &mtls.policies {
        hash.write_chunk(policy.namespace.as_bytes());
        hash.write_chunk(policy.name.as_bytes());
        hash_map(hash, &policy.selector);
        hash.write(&[mode_tag(policy.mode)]);
        hash.write(&(policy.port_modes.len() as u64).to_le_bytes());
        for (port, mode) in &policy.port_modes {
            hash.write(&port.to_le_bytes());
            hash.write(&[mode_tag(*mode)]);
        }
        let created = policy
            .created
            .as_ref()
            .map(|time| format!("{:?}", time.0))
            .unwrap_or_default();
        hash.write_chunk(created.as_bytes());
    }
}

/// Everything proxies are sent of each policy (its wire form) and what
/// selects it; the workloads and root namespace are in `hash_mtls`.
fn hash_authorization(hash: &mut Fnv1a, policies: &[AuthorizationPolicyDef]) {
    hash.write_chunk(b"authorization");
    hash.write(&(policies.len() as u64).to_le_bytes());
    for policy in policies {
        hash_map(hash, &policy.selector);
        hash.write(&[u8::from(policy.fail_closed)]);
        hash.write_chunk(&to_wire(policy).encode_to_vec());
    }
}

/// Protocol as shown to people: `HTTP`, `GRPC`, ..., `UNSPECIFIED` (detect).
pub fn protocol_label(protocol: i32) -> String {
    match pb::Protocol::try_from(protocol) {
        Ok(known) => known
            .as_str_name()
            .trim_start_matches("PROTOCOL_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({protocol})"),
    }
}

/// JSON shape of a snapshot (`/debug/snapshot`, `knitd --once --print`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub version: String,
    pub services: Vec<ServiceView>,
    pub endpoints: Vec<ServiceEndpointsView>,
    /// Every AuthorizationPolicy, in (namespace, name) order.
    #[serde(default)]
    pub authorization: Vec<AuthorizationPolicyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationPolicyView {
    pub namespace: String,
    pub name: String,
    /// `spec.selector.matchLabels`; absent: no selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    pub action: AuthorizationAction,
    #[serde(default)]
    pub rules: Vec<AuthorizationRuleDef>,
    /// The policy is invalid and applies in its fail-closed form.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<ServicePortView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortView {
    pub name: String,
    pub port: u32,
    pub protocol: String,
    /// How clients connect to the port (a DestinationRule); absent: auto
    /// mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTlsView>,
}

/// A port's client TLS settings as sent to proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTlsView {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: String,
    /// `namespace/name` of the DestinationRule.
    pub destination_rule: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

impl From<&pb::ClientTls> for ClientTlsView {
    fn from(tls: &pb::ClientTls) -> Self {
        let mode = match pb::ClientTlsMode::try_from(tls.mode) {
            Ok(known) => known
                .as_str_name()
                .trim_start_matches("CLIENT_TLS_MODE_")
                .to_owned(),
            Err(_) => format!("UNKNOWN({})", tls.mode),
        };
        ClientTlsView {
            mode,
            destination_rule: tls.destination_rule.clone(),
            sni: tls.sni.clone(),
            ca_certificates: tls.ca_certificates.clone(),
            client_certificate: tls.client_certificate.clone(),
            private_key: tls.private_key.clone(),
            subject_alt_names: tls.subject_alt_names.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpointsView {
    pub service_name: String,
    pub service_namespace: String,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub address: String,
    pub workload_name: String,
    pub workload_namespace: String,
    pub service_account: String,
    /// Service port → target port on this workload.
    pub ports: BTreeMap<u32, u32>,
    /// Where the workload's Knit proxy takes mesh traffic; 0 = no proxy.
    pub mesh_port: u32,
}

impl From<&Snapshot> for SnapshotView {
    fn from(snapshot: &Snapshot) -> Self {
        SnapshotView {
            version: snapshot.version.clone(),
            services: snapshot
                .services
                .iter()
                .map(|s| ServiceView {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    hostname: s.hostname.clone(),
                    vips: s.vips.clone(),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| ServicePortView {
                            name: p.name.clone(),
                            port: p.port,
                            protocol: protocol_label(p.protocol),
                            client_tls: p.client_tls.as_ref().map(ClientTlsView::from),
                        })
                        .collect(),
                })
                .collect(),
            endpoints: snapshot
                .endpoints
                .iter()
                .map(|set| ServiceEndpointsView {
                    service_name: set.service_name.clone(),
                    service_namespace: set.service_namespace.clone(),
                    endpoints: set
                        .endpoints
                        .iter()
                        .map(|e| EndpointView {
                            address: e.address.clone(),
                            workload_name: e.workload_name.clone(),
                            workload_namespace: e.workload_namespace.clone(),
                            service_account: e.service_account.clone(),
                            ports: e.ports.iter().map(|(k, v)| (*k, *v)).collect(),
                            mesh_port: e.mesh_port,
                        })
                        .collect(),
                })
                .collect(),
            authorization: snapshot
                .authorization
                .iter()
                .map(|policy| AuthorizationPolicyView {
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                    selector: policy.selector.clone(),
                    action: policy.action,
                    rules: policy.rules.clone(),
                    fail_closed: policy.fail_closed,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, ports: &[(u32, u32)]) -> pb::Endpoint {
        pb::Endpoint {
            address: address.to_owned(),
            workload_name: "pod".to_owned(),
            workload_namespace: "default".to_owned(),
            service_account: "default".to_owned(),
            ports: ports.iter().copied().collect(),
            mesh_port: 15008,
            mtls: None,
        }
    }

    fn set(endpoints: Vec<pb::Endpoint>) -> Vec<pb::ServiceEndpoints> {
        vec![pb::ServiceEndpoints {
            service_name: "web".to_owned(),
            service_namespace: "default".to_owned(),
            endpoints,
        }]
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let table: [(&[u8], u64); 3] = [
            (b"", 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ];
        for (input, expected) in table {
            let mut hash = Fnv1a::new();
            hash.write(input);
            assert_eq!(hash.0, expected, "{input:?}");
        }
    }

    #[test]
    fn version_ignores_map_order_but_not_content() {
        // Many entries, so two HashMaps almost surely iterate differently.
        let pairs: Vec<(u32, u32)> = (1..200).map(|p| (p, p + 8000)).collect();
        let reversed: Vec<(u32, u32)> = pairs.iter().rev().copied().collect();
        let a = Snapshot::new(Vec::new(), set(vec![endpoint("10.0.0.1", &pairs)]));
        let b = Snapshot::new(Vec::new(), set(vec![endpoint("10.0.0.1", &reversed)]));
        assert_eq!(a.version, b.version);
        assert_eq!(a.version.len(), 16);
        let c = Snapshot::new(Vec::new(), set(vec![endpoint("10.0.0.2", &pairs)]));
        assert_ne!(a.version, c.version);
        let d = Snapshot::new(Vec::new(), set(vec![endpoint("10.0.0.1", &pairs[1..])]));
        assert_ne!(a.version, d.version);
        assert_ne!(
            Snapshot::empty().version,
            Snapshot::new(Vec::new(), set(Vec::new())).version
        );
    }

    #[test]
    fn protocol_labels() {
        assert_eq!(protocol_label(pb::Protocol::Http as i32), "HTTP");
        assert_eq!(
            protocol_label(pb::Protocol::Unspecified as i32),
            "UNSPECIFIED"
        );
        assert_eq!(protocol_label(99), "UNKNOWN(99)");
    }
}
