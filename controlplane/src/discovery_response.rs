//! What each proxy is sent: every service and endpoint (with the modes
//! clients are told for each endpoint) and the proxy's own inbound policy
//! and authorization. Pure functions of the snapshot and the mTLS table.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use knit_proto::v1 as pb;
use knit_proto::wire::{EncodedDiscoveryResponse, encode_shared};

use crate::model::{DocumentRef, MtlsMode, Workload};
use crate::mtls::{WorkloadMtls, effective_mtls_by_port};
use crate::rollout::{MtlsTable, Published};
use crate::snapshot::Snapshot;

/// What `node` is sent for `snapshot` with nothing held: the config's own
/// modes on both sides. The nonce is set by the stream.
pub fn snapshot_for(node: &pb::Node, snapshot: &Snapshot) -> pb::DiscoveryResponse {
    response_for(
        node,
        snapshot,
        &MtlsTable::desired(snapshot),
        &snapshot.version,
    )
}

/// What `node` is sent: every service and endpoint, each endpoint with the
/// modes clients are told for it (`table.client`), and the node's own
/// inbound policy (`table.server`). The nonce is set by the stream.
pub fn response_for(
    node: &pb::Node,
    snapshot: &Snapshot,
    table: &MtlsTable,
    version: &str,
) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        services: snapshot.services.clone(),
        endpoints: client_endpoints(snapshot, table),
        ..response_head(node, snapshot, table, version)
    }
}

/// What a stream sends `node` for `published`: [`response_for`], with the
/// part every proxy shares encoded once per published config.
pub fn encoded_response_for(
    node: &pb::Node,
    published: &Published,
    nonce: String,
) -> EncodedDiscoveryResponse {
    let mut head = response_head(
        node,
        &published.snapshot,
        &published.table,
        &published.version,
    );
    head.nonce = nonce;
    EncodedDiscoveryResponse {
        head,
        shared: shared_part(published),
    }
}

/// The services and endpoints of `published`, encoded: built by the first
/// stream that sends it, then shared (a reference count, not a copy).
fn shared_part(published: &Published) -> Bytes {
    published
        .encoded_shared
        .get_or_init(|| {
            let endpoints = client_endpoints(&published.snapshot, &published.table);
            encode_shared(&published.snapshot.services, &endpoints)
        })
        .clone()
}

/// Every endpoint, each with the modes clients are told for it.
fn client_endpoints(snapshot: &Snapshot, table: &MtlsTable) -> Vec<pb::ServiceEndpoints> {
    let mut endpoints = snapshot.endpoints.clone();
    for endpoint in endpoints
        .iter_mut()
        .flat_map(|set| set.endpoints.iter_mut())
    {
        if endpoint.mesh_port == 0 {
            continue;
        }
        let key = (
            endpoint.workload_namespace.clone(),
            endpoint.workload_name.clone(),
        );
        endpoint.mtls = table.client.get(&key).map(|modes| proto_policy(modes, []));
    }
    endpoints
}

/// The per-proxy fields: version, inbound policy and authorization
/// (services and endpoints left empty, the nonce unset).
fn response_head(
    node: &pb::Node,
    snapshot: &Snapshot,
    table: &MtlsTable,
    version: &str,
) -> pb::DiscoveryResponse {
    let node_key = (node.namespace.clone(), node.pod_name.clone());
    let inbound = match table.server.get(&node_key) {
        Some(modes) => {
            let declared = snapshot
                .mtls
                .workloads
                .iter()
                .find(|w| w.name == node.pod_name && w.namespace == node.namespace)
                .map(|w| w.ports.values().copied().collect::<Vec<u16>>())
                .unwrap_or_default();
            proto_policy(modes, declared)
        }
        None => inbound_policy(node, snapshot),
    };
    pb::DiscoveryResponse {
        version_info: version.to_owned(),
        nonce: String::new(),
        services: Vec::new(),
        endpoints: Vec::new(),
        inbound: Some(inbound),
        authorization: crate::authz::authorization_for(node, snapshot),
    }
}

/// `modes` on the wire, listing `declared` ports and every port with its
/// own mode.
fn proto_policy(
    modes: &WorkloadMtls,
    declared: impl IntoIterator<Item = u16>,
) -> pb::InboundPolicy {
    let port_modes = declared
        .into_iter()
        .chain(modes.ports.keys().copied())
        .map(|port| (u32::from(port), proto_mode(modes.mode(port)) as i32))
        .collect();
    pb::InboundPolicy {
        default_mode: proto_mode(modes.default) as i32,
        port_modes,
    }
}

fn proto_mode(mode: MtlsMode) -> pb::MtlsMode {
    match mode {
        MtlsMode::Disable => pb::MtlsMode::Disable,
        MtlsMode::Permissive => pb::MtlsMode::Permissive,
        MtlsMode::Strict => pb::MtlsMode::Strict,
    }
}

/// The inbound policy of the proxy `node`: that of the WorkloadEntry named
/// (pod_name, namespace), with a mode for each port it declares and each
/// port its workload policy sets; for a node without one, the mesh /
/// namespace default (a workload without labels in that namespace).
pub fn inbound_policy(node: &pb::Node, snapshot: &Snapshot) -> pb::InboundPolicy {
    let policies = &snapshot.mtls.policies;
    let root = snapshot.root_namespace.as_str();
    let found = snapshot
        .mtls
        .workloads
        .iter()
        .find(|w| w.name == node.pod_name && w.namespace == node.namespace);
    let (modes, declared) = match found {
        Some(workload) => (
            effective_mtls_by_port(policies, root, workload),
            workload.ports.values().copied().collect::<Vec<u16>>(),
        ),
        None => {
            let anonymous = Workload {
                name: node.pod_name.clone(),
                namespace: node.namespace.clone(),
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                labels: BTreeMap::new(),
                service_account: String::new(),
                ports: BTreeMap::new(),
                mesh_port: None,
                token_sha256: None,
                origin: DocumentRef {
                    file: String::new(),
                    index: 0,
                    resource: None,
                },
            };
            (
                effective_mtls_by_port(policies, root, &anonymous),
                Vec::new(),
            )
        }
    };
    proto_policy(&modes, declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn doc() -> DocumentRef {
        DocumentRef {
            file: "t.yaml".to_owned(),
            index: 0,
            resource: None,
        }
    }

    fn workload(name: &str, namespace: &str, app: &str, ports: &[(&str, u16)]) -> Workload {
        Workload {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            address: IpAddr::from([10, 0, 0, 1]),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            service_account: "default".to_owned(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            mesh_port: None,
            token_sha256: None,
            origin: doc(),
        }
    }

    fn policy(
        namespace: &str,
        app: Option<&str>,
        mode: Option<MtlsMode>,
        ports: &[(u16, Option<MtlsMode>)],
    ) -> crate::model::PeerAuthenticationDef {
        crate::model::PeerAuthenticationDef {
            name: format!("pa-{}", app.unwrap_or("default")),
            namespace: namespace.to_owned(),
            selector: app
                .map(|a| BTreeMap::from([("app".to_owned(), a.to_owned())]))
                .unwrap_or_default(),
            mode,
            port_modes: ports.iter().copied().collect(),
            created: None,
            origin: doc(),
        }
    }

    fn pod(name: &str, namespace: &str) -> pb::Node {
        pb::Node {
            pod_name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn inbound_policy_per_node() {
        use MtlsMode::{Disable, Permissive, Strict};
        use pb::MtlsMode as P;
        let workloads = vec![
            workload("web", "shop", "web", &[("http", 8080), ("admin", 9090)]),
            workload("db", "shop", "db", &[("sql", 5432)]),
            workload("other", "misc", "web", &[("http", 8080)]),
        ];
        let policies = vec![
            policy("shop", None, Some(Strict), &[]),
            policy(
                "shop",
                Some("web"),
                Some(Permissive),
                &[(9000, Some(Strict)), (9090, None)],
            ),
            policy("knit-system", None, Some(Disable), &[]),
        ];
        let snapshot = Snapshot::with_mtls(
            Vec::new(),
            Vec::new(),
            crate::mtls::MtlsInputs {
                workloads,
                policies,
            },
            "knit-system",
        );
        type Case<'a> = (pb::Node, P, &'a [(u32, P)]);
        let table: [Case; 5] = [
            // Workload PERMISSIVE, port 9000 (undeclared) STRICT, 9090 UNSET.
            (
                pod("web", "shop"),
                P::Permissive,
                &[
                    (8080, P::Permissive),
                    (9000, P::Strict),
                    (9090, P::Permissive),
                ],
            ),
            // Namespace STRICT.
            (pod("db", "shop"), P::Strict, &[(5432, P::Strict)]),
            // Unknown node: its namespace's default.
            (pod("ghost", "shop"), P::Strict, &[]),
            // Root-namespace mesh-wide DISABLE, for a known and unknown node.
            (pod("other", "misc"), P::Disable, &[(8080, P::Disable)]),
            (pod("ghost", "elsewhere"), P::Disable, &[]),
        ];
        for (node, default, ports) in table {
            let response = snapshot_for(&node, &snapshot);
            assert_eq!(response.version_info, snapshot.version);
            let inbound = response.inbound.unwrap_or_else(|| panic!("no inbound"));
            assert_eq!(inbound.default_mode, default as i32, "{node:?}");
            let got: BTreeMap<u32, i32> = inbound.port_modes.into_iter().collect();
            let want: BTreeMap<u32, i32> = ports.iter().map(|(p, m)| (*p, *m as i32)).collect();
            assert_eq!(got, want, "{node:?}");
        }
        // Nothing configured: PERMISSIVE, never UNSPECIFIED.
        let empty = snapshot_for(&pod("web", "shop"), &Snapshot::empty());
        assert_eq!(
            empty.inbound.map(|i| i.default_mode),
            Some(P::Permissive as i32)
        );
    }

    #[test]
    fn the_encoded_response_is_the_whole_response_with_one_shared_part() {
        use prost::Message;
        let services = vec![pb::Service {
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
            ..pb::Service::default()
        }];
        let endpoint = |name: &str, mesh_port| pb::Endpoint {
            address: "198.18.0.7".to_owned(),
            workload_name: name.to_owned(),
            workload_namespace: "shop".to_owned(),
            mesh_port,
            ..pb::Endpoint::default()
        };
        let endpoints = vec![pb::ServiceEndpoints {
            service_name: "web".to_owned(),
            service_namespace: "shop".to_owned(),
            endpoints: vec![endpoint("web", 15008), endpoint("legacy", 0)],
        }];
        let snapshot = Arc::new(Snapshot::with_mtls(
            services,
            endpoints,
            crate::mtls::MtlsInputs {
                workloads: vec![workload("web", "shop", "web", &[("http", 8080)])],
                policies: vec![policy("shop", None, Some(MtlsMode::Strict), &[])],
            },
            "knit-system",
        ));
        let published = Published::unsequenced(Arc::clone(&snapshot));
        let mut shared = Vec::new();
        for node in [pod("web", "shop"), pod("client", "misc")] {
            let encoded = encoded_response_for(&node, &published, "n1".to_owned());
            let decoded =
                pb::DiscoveryResponse::decode(encoded.encode_to_vec().as_slice()).expect("decodes");
            let mut whole = response_for(&node, &snapshot, &published.table, &published.version);
            whole.nonce = "n1".to_owned();
            assert_eq!(decoded, whole, "{node:?}");
            // The meshed endpoint carries its modes, the other none.
            let eps = &decoded.endpoints[0].endpoints;
            assert!(eps[0].mtls.is_some() && eps[1].mtls.is_none(), "{eps:?}");
            shared.push(encoded.shared);
        }
        // One encoding, shared by both streams.
        assert_eq!(shared[0].as_ptr(), shared[1].as_ptr());
    }

    #[test]
    fn a_new_peer_authentication_changes_the_version() {
        let mut inputs = crate::mtls::MtlsInputs {
            workloads: vec![workload("web", "shop", "web", &[("http", 8080)])],
            policies: Vec::new(),
        };
        let before = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs.clone(), "knit-system");
        let same = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs.clone(), "knit-system");
        assert_eq!(before.version, same.version);
        let other_root = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs.clone(), "mesh-root");
        assert_ne!(before.version, other_root.version);
        inputs
            .policies
            .push(policy("shop", None, Some(MtlsMode::Strict), &[]));
        let after = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs.clone(), "knit-system");
        assert_ne!(before.version, after.version);
        inputs.policies[0].mode = Some(MtlsMode::Disable);
        let changed = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs.clone(), "knit-system");
        assert_ne!(after.version, changed.version);
        inputs.workloads[0]
            .labels
            .insert("tier".to_owned(), "a".to_owned());
        let relabelled = Snapshot::with_mtls(Vec::new(), Vec::new(), inputs, "knit-system");
        assert_ne!(changed.version, relabelled.version);
    }
}
