//! The compiled state every proxy is sent, its content-derived version, and
//! its JSON view for the debug endpoints and `--once --print`.

use std::collections::BTreeMap;

use knit_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// What every proxy needs, compiled from the config. Immutable once built;
/// a new config builds a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Content hash, so the same config has the same version across restarts.
    pub version: String,
    pub services: Vec<pb::Service>,
    pub endpoints: Vec<pb::ServiceEndpoints>,
}

impl Snapshot {
    pub fn new(services: Vec<pb::Service>, endpoints: Vec<pb::ServiceEndpoints>) -> Snapshot {
        Snapshot {
            version: content_version(&services, &endpoints),
            services,
            endpoints,
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
    format!("{:016x}", hash.0)
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
