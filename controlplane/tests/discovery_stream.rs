//! knitd in-process on loopback: a proxy's discovery stream from connect to
//! updates, ACK, NACK, bad config and disconnect.

mod common;

use std::time::Duration;

use common::{
    BACKEND_SERVICE, DEADLINE, eventually, get_json, http_get, workload_entry, write_config,
};
use knit_controlplane::{Knitd, KnitdOptions};
use knit_proto::v1 as pb;
use knit_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// The update after a config change must arrive within this.
const PUSH_DEADLINE: Duration = Duration::from_secs(2);

fn loopback_options(dir: &std::path::Path) -> KnitdOptions {
    let mut options = KnitdOptions::new(dir);
    options.grpc_addr = "127.0.0.1:0".parse().unwrap_or(options.grpc_addr);
    options.http_addr = "127.0.0.1:0".parse().unwrap_or(options.http_addr);
    // The TLS server has tests of its own (mesh_ca); these need plaintext.
    options.grpc_tls_addr = None;
    options
}

fn node(pod: &str) -> pb::Node {
    pb::Node {
        pod_name: pod.to_owned(),
        namespace: "default".to_owned(),
        ips: vec!["198.18.0.100".to_owned()],
        service_account: "client".to_owned(),
        proxy_version: "test".to_owned(),
        ..Default::default()
    }
}

struct Proxy {
    requests: mpsc::Sender<pb::DiscoveryRequest>,
    responses: Streaming<pb::DiscoveryResponse>,
}

impl Proxy {
    async fn connect(knitd: &Knitd, first: pb::DiscoveryRequest) -> Result<Proxy, tonic::Status> {
        let mut client = DiscoveryClient::connect(format!("http://{}", knitd.grpc_addr()))
            .await
            .unwrap_or_else(|err| panic!("connect: {err}"));
        let (requests, outbound) = mpsc::channel(8);
        requests
            .send(first)
            .await
            .unwrap_or_else(|err| panic!("queue first request: {err}"));
        let responses = client
            .stream(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        Ok(Proxy {
            requests,
            responses,
        })
    }

    async fn send(&self, request: pb::DiscoveryRequest) {
        self.requests
            .send(request)
            .await
            .unwrap_or_else(|err| panic!("send request: {err}"));
    }

    async fn ack(&self, response: &pb::DiscoveryResponse) {
        self.send(pb::DiscoveryRequest {
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn next_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<pb::DiscoveryResponse>, tonic::Status> {
        tokio::time::timeout(limit, self.responses.message())
            .await
            .unwrap_or_else(|_| panic!("no response within {limit:?}"))
    }

    async fn expect_response(&mut self, limit: Duration) -> pb::DiscoveryResponse {
        match self.next_within(limit).await {
            Ok(Some(response)) => response,
            Ok(None) => panic!("stream ended"),
            Err(status) => panic!("stream failed: {status}"),
        }
    }
}

fn endpoint_names(response: &pb::DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .endpoints
        .iter()
        .flat_map(|set| set.endpoints.iter().map(|e| e.workload_name.clone()))
        .collect();
    names.sort();
    names
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"))
}

async fn start(dir: &std::path::Path) -> Knitd {
    Knitd::start(loopback_options(dir))
        .await
        .unwrap_or_else(|err| panic!("start knitd: {err}"))
}

/// The proxy entry for `pod` in `/debug/proxies`, once `accept` holds for it.
async fn proxy_status(
    knitd: &Knitd,
    pod: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(
        &format!("/debug/proxies to show {pod} as expected"),
        || async {
            let proxies = get_json(knitd.http_addr(), "/debug/proxies").await;
            proxies
                .as_array()
                .and_then(|list| list.iter().find(|p| p["pod_name"] == pod).cloned())
                .filter(|entry| accept(entry))
        },
    )
    .await
}

#[tokio::test]
async fn proxy_gets_snapshot_updates_and_its_answers_are_recorded() {
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    write_config(
        dir.path(),
        "pod-a.yaml",
        &workload_entry("backend-a", "198.18.0.1"),
    );
    let knitd = start(dir.path()).await;

    let (status, body) = http_get(knitd.http_addr(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let mut proxy = Proxy::connect(
        &knitd,
        pb::DiscoveryRequest {
            node: Some(node("client-a")),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|status| panic!("stream refused: {status}"));

    // On connect: the current snapshot.
    let first = proxy.expect_response(DEADLINE).await;
    assert_eq!(first.version_info, knitd.state().snapshot().version);
    assert!(!first.nonce.is_empty());
    assert_eq!(first.services.len(), 1);
    let service = &first.services[0];
    assert_eq!(service.hostname, "backend.default.svc.cluster.local");
    assert_eq!(service.vips, ["198.19.0.10"]);
    assert_eq!(service.ports[0].protocol, pb::Protocol::Http as i32);
    let endpoint = &first.endpoints[0].endpoints[0];
    assert_eq!(endpoint.address, "198.18.0.1");
    assert_eq!(endpoint.service_account, "backend");
    assert_eq!(endpoint.ports.get(&80), Some(&8080));

    // ACK: the registry shows it.
    proxy.ack(&first).await;
    let entry = proxy_status(&knitd, "client-a", |p| {
        p["acked_version"] == first.version_info.as_str()
    })
    .await;
    assert_eq!(entry["namespace"], "default");
    assert_eq!(entry["sent_version"], first.version_info.as_str());
    assert_eq!(entry["last_nack"], serde_json::Value::Null);
    assert!(
        entry["connected_since_unix"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );

    // A new WorkloadEntry reaches the proxy quickly.
    write_config(
        dir.path(),
        "pod-b.yaml",
        &workload_entry("backend-b", "198.18.0.2"),
    );
    let second = proxy.expect_response(PUSH_DEADLINE).await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(endpoint_names(&second), ["backend-a", "backend-b"]);
    proxy.ack(&second).await;

    // A malformed file is reported but pushes nothing.
    write_config(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
    );
    let errors = eventually("/debug/errors to list broken.yaml", || async {
        let errors = get_json(knitd.http_addr(), "/debug/errors").await;
        let listed: Vec<String> = serde_json::from_value(errors).unwrap_or_default();
        listed
            .iter()
            .any(|e| e.contains("broken.yaml"))
            .then_some(listed)
    })
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("config error: broken.yaml doc 1: invalid YAML"),
        "{}",
        errors[0]
    );
    assert_eq!(knitd.state().snapshot().version, second.version_info);

    // The next response is the next real change, so nothing was pushed for
    // the malformed file.
    write_config(
        dir.path(),
        "pod-c.yaml",
        &workload_entry("backend-c", "198.18.0.3"),
    );
    let third = proxy.expect_response(PUSH_DEADLINE).await;
    assert_eq!(
        endpoint_names(&third),
        ["backend-a", "backend-b", "backend-c"]
    );

    // A late answer to an older response is stale and ignored; the NACK of
    // the latest one is recorded.
    proxy.ack(&first).await;
    proxy
        .send(pb::DiscoveryRequest {
            version_info: second.version_info.clone(),
            response_nonce: third.nonce.clone(),
            error_detail: Some(pb::ErrorDetail {
                message: "route table rejected".to_owned(),
            }),
            ..Default::default()
        })
        .await;
    let entry = proxy_status(&knitd, "client-a", |p| {
        p["last_nack"] == "route table rejected"
    })
    .await;
    assert_eq!(entry["acked_version"], second.version_info.as_str());
    assert_eq!(entry["sent_version"], third.version_info.as_str());
    assert_eq!(entry["sent_nonce"], third.nonce.as_str());

    // /debug/snapshot shows what was sent.
    let snapshot = get_json(knitd.http_addr(), "/debug/snapshot").await;
    assert_eq!(snapshot["version"], third.version_info.as_str());
    assert_eq!(snapshot["services"][0]["ports"][0]["protocol"], "HTTP");
    assert_eq!(
        snapshot["endpoints"][0]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        snapshot["endpoints"][0]["endpoints"][0]["ports"]["80"],
        8080
    );

    // Disconnect: the registry forgets the proxy.
    drop(proxy);
    eventually("the proxy to leave /debug/proxies", || async {
        let proxies = get_json(knitd.http_addr(), "/debug/proxies").await;
        (proxies.as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;

    tokio::time::timeout(DEADLINE, knitd.shutdown())
        .await
        .unwrap_or_else(|_| panic!("shutdown took longer than {DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("shutdown: {err}"));
}

#[tokio::test]
async fn first_request_without_node_is_invalid_argument() {
    let dir = temp_dir();
    let knitd = start(dir.path()).await;
    let bad_firsts = [
        pb::DiscoveryRequest::default(),
        pb::DiscoveryRequest {
            node: Some(pb::Node {
                pod_name: "client-a".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    for first in bad_firsts {
        let status = match Proxy::connect(&knitd, first).await {
            Err(status) => status,
            Ok(mut proxy) => match proxy.next_within(DEADLINE).await {
                Err(status) => status,
                Ok(other) => panic!("expected InvalidArgument, got {other:?}"),
            },
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains("node"), "{status}");
    }
    assert!(knitd.registry().is_empty());
    let shutdown = tokio::time::timeout(DEADLINE, knitd.shutdown()).await;
    assert!(matches!(shutdown, Ok(Ok(()))), "{shutdown:?}");
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_run_returns() {
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    let options = loopback_options(dir.path());
    let knitd = Knitd::start(options)
        .await
        .unwrap_or_else(|err| panic!("start: {err}"));
    let mut proxy = Proxy::connect(
        &knitd,
        pb::DiscoveryRequest {
            node: Some(node("client-a")),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|status| panic!("stream refused: {status}"));
    proxy.expect_response(DEADLINE).await;

    let stopping = tokio::spawn(knitd.shutdown());
    // The stream ends (cleanly or with a status) instead of hanging.
    match proxy.next_within(DEADLINE).await {
        Ok(None) | Err(_) => {}
        Ok(Some(response)) => panic!("unexpected response during shutdown: {response:?}"),
    }
    let stopped = tokio::time::timeout(DEADLINE, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");

    // `run` returns Ok once its shutdown future resolves.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(knit_controlplane::run(
        loopback_options(dir.path()),
        async move {
            let _ = stopped.await;
        },
    ));
    let _ = stop.send(());
    let result = tokio::time::timeout(DEADLINE, running).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[tokio::test]
async fn a_peer_authentication_change_pushes_the_new_inbound_mode() {
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    write_config(
        dir.path(),
        "pod-a.yaml",
        &workload_entry("backend-a", "198.18.0.1"),
    );
    let knitd = start(dir.path()).await;

    let mut proxy = Proxy::connect(
        &knitd,
        pb::DiscoveryRequest {
            node: Some(node("backend-a")),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|status| panic!("stream refused: {status}"));
    let first = proxy.expect_response(DEADLINE).await;
    let inbound = first.inbound.clone().unwrap_or_default();
    assert_eq!(inbound.default_mode, pb::MtlsMode::Permissive as i32);
    assert_eq!(
        inbound.port_modes.get(&8080),
        Some(&(pb::MtlsMode::Permissive as i32))
    );
    proxy.ack(&first).await;

    write_config(
        dir.path(),
        "peer-authentication.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n",
    );
    let second = proxy.expect_response(PUSH_DEADLINE).await;
    assert_ne!(second.version_info, first.version_info);
    assert_eq!(second.version_info, knitd.state().snapshot().version);
    let inbound = second.inbound.unwrap_or_default();
    assert_eq!(inbound.default_mode, pb::MtlsMode::Strict as i32);
    assert_eq!(
        inbound.port_modes.get(&8080),
        Some(&(pb::MtlsMode::Strict as i32))
    );
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// The mode a response tells clients for backend-a.
fn client_mode(response: &pb::DiscoveryResponse) -> i32 {
    response
        .endpoints
        .iter()
        .flat_map(|set| set.endpoints.iter())
        .find(|e| e.workload_name == "backend-a")
        .and_then(|e| e.mtls.as_ref())
        .map(|m| m.default_mode)
        .unwrap_or_else(|| panic!("no mtls for backend-a in {response:?}"))
}

fn server_mode(response: &pb::DiscoveryResponse) -> i32 {
    response.inbound.as_ref().map_or(0, |i| i.default_mode)
}

/// DISABLE → STRICT over real streams: clients are told mTLS at once, the
/// server keeps PERMISSIVE until the client ACKs, then gets STRICT. Back to
/// DISABLE: the server relaxes first, clients go plaintext after its ACK.
#[tokio::test]
async fn disable_to_strict_is_sequenced_by_acks() {
    use pb::MtlsMode::{Disable, Permissive, Strict};
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    write_config(
        dir.path(),
        "pod-a.yaml",
        &workload_entry("backend-a", "198.18.0.1"),
    );
    write_config(dir.path(), "pa.yaml", &peer_authentication("DISABLE"));
    let knitd = start(dir.path()).await;
    let connect = |pod: &'static str| {
        Proxy::connect(
            &knitd,
            pb::DiscoveryRequest {
                node: Some(node(pod)),
                ..Default::default()
            },
        )
    };
    let mut server = connect("backend-a")
        .await
        .unwrap_or_else(|status| panic!("stream refused: {status}"));
    let mut client = connect("frontend")
        .await
        .unwrap_or_else(|status| panic!("stream refused: {status}"));
    let s1 = server.expect_response(DEADLINE).await;
    let c1 = client.expect_response(DEADLINE).await;
    assert_eq!(server_mode(&s1), Disable as i32);
    assert_eq!(client_mode(&c1), Disable as i32);
    server.ack(&s1).await;
    client.ack(&c1).await;

    write_config(dir.path(), "pa.yaml", &peer_authentication("STRICT"));
    let s2 = server.expect_response(PUSH_DEADLINE).await;
    let c2 = client.expect_response(PUSH_DEADLINE).await;
    assert_eq!(client_mode(&c2), Strict as i32, "clients go mTLS first");
    assert_eq!(server_mode(&s2), Permissive as i32, "the server waits");
    server.ack(&s2).await;
    // Nothing more until the client answers.
    let early = tokio::time::timeout(Duration::from_millis(300), server.responses.message()).await;
    assert!(early.is_err(), "STRICT before the client ACKed: {early:?}");
    client.ack(&c2).await;
    // After the drain time (requests routed before the ACK).
    let s3 = server.expect_response(DEADLINE).await;
    assert_eq!(server_mode(&s3), Strict as i32);
    assert_eq!(s3.version_info, knitd.state().snapshot().version);
    server.ack(&s3).await;
    let c3 = client.expect_response(PUSH_DEADLINE).await;
    client.ack(&c3).await;

    write_config(dir.path(), "pa.yaml", &peer_authentication("DISABLE"));
    let s4 = server.expect_response(PUSH_DEADLINE).await;
    let c4 = client.expect_response(PUSH_DEADLINE).await;
    assert_eq!(server_mode(&s4), Disable as i32, "the server relaxes first");
    assert_eq!(client_mode(&c4), Permissive as i32, "clients keep mTLS");
    client.ack(&c4).await;
    server.ack(&s4).await;
    let c5 = client.expect_response(DEADLINE).await;
    assert_eq!(client_mode(&c5), Disable as i32);
    assert_eq!(c5.version_info, knitd.state().snapshot().version);
}

#[tokio::test]
async fn pushes_wait_for_a_permit_freed_by_an_answer_or_its_timeout() {
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    let knitd = Knitd::start(KnitdOptions {
        max_concurrent_pushes: 1,
        push_answer_timeout: Duration::from_secs(2),
        ..loopback_options(dir.path())
    })
    .await
    .unwrap_or_else(|err| panic!("start knitd: {err}"));
    let first = |pod: &str| pb::DiscoveryRequest {
        node: Some(node(pod)),
        ..Default::default()
    };
    let connect = |pod: &'static str| {
        let knitd = &knitd;
        async move {
            Proxy::connect(knitd, first(pod))
                .await
                .unwrap_or_else(|status| panic!("{pod} refused: {status}"))
        }
    };

    // a holds the only permit until it answers.
    let mut a = connect("client-a").await;
    let config_a = a.expect_response(DEADLINE).await;
    let mut b = connect("client-b").await;
    let waiting = tokio::time::timeout(Duration::from_millis(500), b.responses.message()).await;
    assert!(
        waiting.is_err(),
        "b was sent a config while a held the permit"
    );
    a.ack(&config_a).await;
    let config_b = b.expect_response(DEADLINE).await;
    assert_eq!(config_b.version_info, config_a.version_info);

    // b never answers: its permit comes back after the 2 s timeout.
    let mut c = connect("client-c").await;
    let started = std::time::Instant::now();
    let config_c = c.expect_response(DEADLINE + Duration::from_secs(2)).await;
    assert_eq!(config_c.version_info, config_a.version_info);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "c got its config before b's permit timed out: {:?}",
        started.elapsed()
    );
}
