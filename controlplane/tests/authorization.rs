//! knitd in-process on loopback: AuthorizationPolicies reach the proxies
//! they select over the discovery stream, an invalid one fail-closed, and
//! `/debug/authz` shows which apply where.

mod common;

use common::{BACKEND_SERVICE, DEADLINE, eventually, get_json, workload_entry, write_config};
use knit_controlplane::{Knitd, KnitdOptions};
use knit_proto::v1 as pb;
use knit_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const DENY_ADMIN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: default
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
";

/// An ALLOW policy whose only rule is invalid: it must apply as an ALLOW
/// policy without rules.
const BROKEN_ALLOW: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: default
spec:
  rules:
  - from:
    - source:
        principals: [\"spiffe://cluster.local/ns/default/sa/frontend\"]
";

struct Proxy {
    requests: mpsc::Sender<pb::DiscoveryRequest>,
    responses: Streaming<pb::DiscoveryResponse>,
}

impl Proxy {
    async fn connect(knitd: &Knitd, pod: &str) -> Proxy {
        let mut client = DiscoveryClient::connect(format!("http://{}", knitd.grpc_addr()))
            .await
            .unwrap_or_else(|err| panic!("connect: {err}"));
        let (requests, outbound) = mpsc::channel(8);
        let first = pb::DiscoveryRequest {
            node: Some(pb::Node {
                pod_name: pod.to_owned(),
                namespace: "default".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        requests
            .send(first)
            .await
            .unwrap_or_else(|err| panic!("queue first request: {err}"));
        let responses = client
            .stream(ReceiverStream::new(outbound))
            .await
            .unwrap_or_else(|status| panic!("stream refused: {status}"))
            .into_inner();
        Proxy {
            requests,
            responses,
        }
    }

    /// The next response, ACKed.
    async fn next(&mut self) -> pb::DiscoveryResponse {
        let response = match tokio::time::timeout(DEADLINE, self.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => panic!("no response within {DEADLINE:?}"),
        };
        self.requests
            .send(pb::DiscoveryRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|err| panic!("send ACK: {err}"));
        response
    }
}

fn policy_names(response: &pb::DiscoveryResponse) -> Vec<String> {
    response
        .authorization
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

#[tokio::test]
async fn policies_reach_the_selected_proxy_and_an_invalid_one_fails_closed() {
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    write_config(
        dir.path(),
        "pods.yaml",
        &workload_entry("backend-a", "198.18.0.1"),
    );
    let mut options = KnitdOptions::new(dir.path());
    options.grpc_addr = "127.0.0.1:0".parse().unwrap_or(options.grpc_addr);
    options.http_addr = "127.0.0.1:0".parse().unwrap_or(options.http_addr);
    options.grpc_tls_addr = None;
    let knitd = Knitd::start(options)
        .await
        .unwrap_or_else(|err| panic!("start knitd: {err}"));

    let mut backend = Proxy::connect(&knitd, "backend-a").await;
    let mut stranger = Proxy::connect(&knitd, "not-a-workload").await;
    let first = backend.next().await;
    assert!(first.authorization.is_empty());
    assert!(stranger.next().await.authorization.is_empty());

    write_config(dir.path(), "authz.yaml", DENY_ADMIN);
    let second = backend.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_eq!(policy_names(&second), ["default/deny-admin"]);
    let deny = &second.authorization[0];
    assert_eq!(deny.action, pb::AuthorizationAction::Deny as i32);
    assert_eq!(deny.rules[0].to[0].paths, ["/admin*"]);
    // A new version reaches every proxy, but the selector leaves this one out.
    assert!(stranger.next().await.authorization.is_empty());

    write_config(
        dir.path(),
        "authz.yaml",
        &format!("{DENY_ADMIN}---\n{BROKEN_ALLOW}"),
    );
    let third = backend.next().await;
    assert_eq!(
        policy_names(&third),
        ["default/allow-frontend", "default/deny-admin"]
    );
    let allow = &third.authorization[0];
    assert_eq!(allow.action, pb::AuthorizationAction::Allow as i32);
    assert!(allow.rules.is_empty(), "{allow:?}");
    // A namespace-wide policy reaches a proxy knitd has no WorkloadEntry for.
    assert_eq!(
        policy_names(&stranger.next().await),
        ["default/allow-frontend"]
    );

    let errors = get_json(knitd.http_addr(), "/debug/errors").await;
    assert_eq!(
        errors,
        serde_json::json!([
            "config error: authz.yaml doc 2 (AuthorizationPolicy default/allow-frontend): \
             spec.rules[0].from[0].source.principals[0]: \
             \"spiffe://cluster.local/ns/default/sa/frontend\" must be written without the \
             spiffe:// scheme: \"cluster.local/ns/default/sa/frontend\"; applied as \
             allow-nothing until fixed (an ALLOW policy with no rules)"
        ])
    );
    let page = eventually("/debug/authz to list both policies", || async {
        let page = get_json(knitd.http_addr(), "/debug/authz").await;
        (page[0]["policies"].as_array().map(Vec::len) == Some(2)).then_some(page)
    })
    .await;
    assert_eq!(
        page,
        serde_json::json!([{
            "namespace": "default",
            "name": "backend-a",
            "policies": [
                {"namespace": "default", "name": "allow-frontend", "action": "ALLOW",
                 "scope": "namespace", "fail_closed": true},
                {"namespace": "default", "name": "deny-admin", "action": "DENY",
                 "scope": "workload"},
            ],
        }])
    );
    let snapshot = get_json(knitd.http_addr(), "/debug/snapshot").await;
    assert_eq!(snapshot["authorization"][0]["fail_closed"], true);
    assert_eq!(snapshot["authorization"][1]["name"], "deny-admin");
    knitd
        .shutdown()
        .await
        .unwrap_or_else(|err| panic!("shutdown: {err}"));
}
