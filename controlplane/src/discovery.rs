//! `Discovery.Stream`: one bidirectional stream per proxy. The proxy names
//! itself, gets the current snapshot, then a new one whenever the version
//! changes; it answers each with an ACK or a NACK (xDS semantics).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use knit_proto::v1 as pb;
use knit_proto::v1_server::discovery_server::Discovery;
use knit_proto::wire::{EncodedDiscoveryResponse, encode_shared};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{DocumentRef, MtlsMode, Workload};
use crate::mtls::{WorkloadMtls, effective_mtls_by_port};
use crate::push_throttle::{InFlight, PushThrottle};
use crate::registry::{ProxyRegistry, Registration};
use crate::rollout::{DEFAULT_ROLLOUT_TIMEOUT, MtlsTable, Published, Rollout};
use crate::shutdown::shutdown_requested;
use crate::snapshot::Snapshot;
use crate::state::ConfigState;

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

/// A fresh random nonce per response, so a late answer to an older response
/// can be told apart even when the version is the same.
fn new_nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Why a first request is refused, if it is.
pub fn check_node(request: &pb::DiscoveryRequest) -> Result<pb::Node, Status> {
    match &request.node {
        Some(node) if !node.pod_name.is_empty() && !node.namespace.is_empty() => Ok(node.clone()),
        Some(_) => Err(Status::invalid_argument(
            "the first DiscoveryRequest must carry node.pod_name and node.namespace (one is empty)",
        )),
        None => Err(Status::invalid_argument(
            "the first DiscoveryRequest must carry node (with pod_name and namespace)",
        )),
    }
}

/// How a request after the first one relates to what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack {
        version: String,
    },
    Nack {
        version: String,
        message: String,
    },
    /// Names a nonce other than the latest sent: superseded, ignored.
    Stale,
}

pub fn classify_answer(request: &pb::DiscoveryRequest, latest_nonce: &str) -> Answer {
    if request.response_nonce != latest_nonce {
        return Answer::Stale;
    }
    match &request.error_detail {
        Some(detail) => Answer::Nack {
            version: request.version_info.clone(),
            message: detail.message.clone(),
        },
        None => Answer::Ack {
            version: request.version_info.clone(),
        },
    }
}

#[derive(Debug, Clone)]
pub struct DiscoveryService {
    rollout: Arc<Rollout>,
    registry: Arc<ProxyRegistry>,
    throttle: PushThrottle,
    shutdown: watch::Receiver<bool>,
}

impl DiscoveryService {
    /// Serves `state`'s config through a rollout with the default timeout
    /// (spawns the task that follows the config; call within a runtime).
    pub fn new(
        state: Arc<ConfigState>,
        registry: Arc<ProxyRegistry>,
        throttle: PushThrottle,
        shutdown: watch::Receiver<bool>,
    ) -> DiscoveryService {
        let rollout = Rollout::follow(state, DEFAULT_ROLLOUT_TIMEOUT, shutdown.clone());
        DiscoveryService {
            rollout,
            registry,
            throttle,
            shutdown,
        }
    }

    pub fn rollout(&self) -> &Arc<Rollout> {
        &self.rollout
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EncodedDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Answer at once and do the work in a task, so a client that waits
        // for response headers before sending its first request still works.
        let (responses, outbound) = mpsc::channel(4);
        let session = ProxyStream {
            inbound: request.into_inner(),
            responses,
            rollout: Arc::clone(&self.rollout),
            registry: Arc::clone(&self.registry),
            throttle: self.throttle.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

/// One proxy's stream.
struct ProxyStream {
    inbound: Streaming<pb::DiscoveryRequest>,
    responses: mpsc::Sender<Result<EncodedDiscoveryResponse, Status>>,
    rollout: Arc<Rollout>,
    registry: Arc<ProxyRegistry>,
    throttle: PushThrottle,
    shutdown: watch::Receiver<bool>,
}

/// The last response sent on a stream.
struct Sent {
    version: String,
    nonce: String,
}

impl ProxyStream {
    async fn run(mut self) {
        let first = tokio::select! {
            first = self.inbound.message() => first,
            _ = shutdown_requested(&mut self.shutdown) => return,
        };
        let node = match first {
            Ok(Some(request)) => match check_node(&request) {
                Ok(node) => node,
                Err(status) => {
                    tracing::warn!("discovery stream refused: {}", status.message());
                    let _ = self.responses.send(Err(status)).await;
                    return;
                }
            },
            Ok(None) => return,
            Err(status) => {
                tracing::debug!("discovery stream failed before its first request: {status}");
                return;
            }
        };
        let who = format!("{}/{}", node.namespace, node.pod_name);
        let registration = self.registry.register(node.clone());
        // Subscribe before reading the snapshot, so no change slips between.
        let mut changes = self.rollout.subscribe();
        tracing::info!(proxy = %who, "proxy connected");

        // The push permit of an unanswered response, if one is out.
        let mut in_flight: Option<InFlight> = None;
        let Some(mut sent) = self
            .send_current(&node, &registration, &mut in_flight)
            .await
        else {
            tracing::info!(proxy = %who, "proxy disconnected");
            return;
        };
        loop {
            let expires = in_flight.as_ref().map(|held| held.expires);
            tokio::select! {
                _ = shutdown_requested(&mut self.shutdown) => break,
                _ = self.responses.closed() => break,
                _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)),
                    if expires.is_some() => {
                    tracing::debug!(proxy = %who, nonce = %sent.nonce, "no answer in time; push permit returned");
                    in_flight = None;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.rollout.current().version == sent.version {
                        continue;
                    }
                    match self.send_current(&node, &registration, &mut in_flight).await {
                        Some(now) => sent = now,
                        None => break,
                    }
                }
                request = self.inbound.message() => match request {
                    Ok(Some(request)) => match classify_answer(&request, &sent.nonce) {
                        Answer::Ack { version } => {
                            tracing::debug!(proxy = %who, %version, "proxy accepted config");
                            registration.record_ack(&version);
                            self.rollout.acked(registration.id(), &sent.nonce);
                            in_flight = None;
                        }
                        Answer::Nack { version, message } => {
                            tracing::warn!(
                                proxy = %who,
                                rejected = %sent.version,
                                serving = %version,
                                "proxy rejected config: {message}"
                            );
                            registration.record_nack(&message);
                            self.rollout.nacked(registration.id(), &sent.nonce);
                            in_flight = None;
                        }
                        Answer::Stale => {
                            tracing::debug!(
                                proxy = %who,
                                nonce = %request.response_nonce,
                                "answer to a superseded response"
                            );
                            // Still tells which config the proxy runs meanwhile.
                            if request.error_detail.is_none() {
                                self.rollout.acked(registration.id(), &request.response_nonce);
                            } else {
                                self.rollout.nacked(registration.id(), &request.response_nonce);
                            }
                        }
                    },
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy = %who, "discovery stream ended: {status}");
                        break;
                    }
                },
            }
        }
        self.rollout.removed(registration.id());
        drop(registration);
        tracing::info!(proxy = %who, "proxy disconnected");
    }

    /// Sends the current snapshot once a push permit is held (kept from an
    /// unanswered send, or waited for); `None` when the proxy is gone or
    /// knitd stops.
    async fn send_current(
        &self,
        node: &pb::Node,
        registration: &Registration,
        in_flight: &mut Option<InFlight>,
    ) -> Option<Sent> {
        match in_flight {
            Some(held) => self.throttle.renew(held),
            None => {
                let mut shutdown = self.shutdown.clone();
                *in_flight = tokio::select! {
                    permit = self.throttle.acquire() => permit,
                    _ = shutdown_requested(&mut shutdown) => return None,
                    _ = self.responses.closed() => return None,
                };
            }
        }
        // The config is read after the wait, so a proxy that waited gets
        // the newest one.
        let nonce = new_nonce();
        let key = (node.namespace.clone(), node.pod_name.clone());
        let published = self.rollout.take_for_send(registration.id(), &key, &nonce);
        let response = encoded_response_for(node, &published, nonce);
        let sent = Sent {
            version: response.head.version_info.clone(),
            nonce: response.head.nonce.clone(),
        };
        // Recorded first: an ACK may race in right after the send.
        registration.record_sent(&sent.version, &sent.nonce);
        self.responses.send(Ok(response)).await.ok()?;
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(nonce: &str, version: &str, nack: Option<&str>) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: None,
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: nack.map(|message| pb::ErrorDetail {
                message: message.to_owned(),
            }),
        }
    }

    #[test]
    fn answers_are_ack_nack_or_stale() {
        let table = [
            (
                request("n2", "v2", None),
                Answer::Ack {
                    version: "v2".to_owned(),
                },
            ),
            (
                request("n2", "v1", Some("bad route")),
                Answer::Nack {
                    version: "v1".to_owned(),
                    message: "bad route".to_owned(),
                },
            ),
            (request("n1", "v1", None), Answer::Stale),
            (request("n1", "v1", Some("old")), Answer::Stale),
            (request("", "", None), Answer::Stale),
        ];
        for (req, expected) in table {
            assert_eq!(classify_answer(&req, "n2"), expected, "{req:?}");
        }
    }

    #[test]
    fn first_request_must_name_the_node() {
        let node = |pod: &str, ns: &str| pb::DiscoveryRequest {
            node: Some(pb::Node {
                pod_name: pod.to_owned(),
                namespace: ns.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_node(&node("web-a", "default")).is_ok());
        for bad in [
            node("", "default"),
            node("web-a", ""),
            pb::DiscoveryRequest::default(),
        ] {
            match check_node(&bad) {
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
                Ok(node) => panic!("accepted {node:?}"),
            }
        }
    }

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

    #[test]
    fn nonces_differ() {
        let nonces: std::collections::HashSet<String> = (0..100).map(|_| new_nonce()).collect();
        assert_eq!(nonces.len(), 100);
    }
}
