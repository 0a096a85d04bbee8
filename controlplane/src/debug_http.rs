//! knitd's own HTTP endpoints: health and debug views of the state.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ca::pki::CertSummary;
use crate::ca::{CaView, CertificateAuthority, ServingCert};
use crate::registry::ProxyRegistry;
use crate::shutdown::shutdown_requested;
use crate::state::ConfigState;

/// A response before it becomes HTTP: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn json(value: &impl serde::Serialize) -> Reply {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: "application/json",
                body: body + "\n",
            },
            Err(err) => Reply::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode JSON: {err}\n"),
            ),
        }
    }
}

/// What the debug pages read.
#[derive(Debug, Clone)]
pub struct DebugSources {
    pub state: Arc<ConfigState>,
    pub registry: Arc<ProxyRegistry>,
    pub ca: Arc<CertificateAuthority>,
    /// knitd's TLS serving certificate, when the TLS server runs.
    pub serving: Option<Arc<ServingCert>>,
    /// The mesh root namespace, for `/debug/mtls`.
    pub root_namespace: String,
    /// What proxies are sent now, for `/debug/rollout`.
    pub rollout: Arc<crate::rollout::Rollout>,
}

/// `/debug/ca`: the CA, its bundle and knitd's own certificate; only
/// public facts (subjects, fingerprints, dates), never key material.
#[derive(Debug, Clone, serde::Serialize)]
struct CaPage {
    #[serde(flatten)]
    ca: CaView,
    serving_certificate: Option<CertSummary>,
}

/// Routes one request. Pure apart from reading the shared state.
pub fn route(method: &Method, path: &str, sources: &DebugSources) -> Reply {
    let state = &sources.state;
    let known = matches!(
        path,
        "/healthz"
            | "/debug/snapshot"
            | "/debug/proxies"
            | "/debug/errors"
            | "/debug/warnings"
            | "/debug/ca"
            | "/debug/mtls"
            | "/debug/authz"
            | "/debug/rollout"
    );
    if !known {
        return Reply::text(StatusCode::NOT_FOUND, format!("no such page: {path}\n"));
    }
    if method != Method::GET {
        return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match path {
        "/healthz" => Reply::text(StatusCode::OK, "ok"),
        "/debug/snapshot" => Reply::json(&state.snapshot().view()),
        "/debug/proxies" => Reply::json(&sources.registry.list()),
        "/debug/ca" => Reply::json(&CaPage {
            ca: sources.ca.view(),
            serving_certificate: sources.serving.as_ref().map(|s| s.summary()),
        }),
        "/debug/mtls" => Reply::json(&crate::mtls::view(&state.mtls(), &sources.root_namespace)),
        "/debug/authz" => Reply::json(&crate::authz::view(&state.snapshot())),
        "/debug/rollout" => Reply::json(&sources.rollout.view()),
        "/debug/errors" => Reply::json(&state.report().errors),
        _ => Reply::json(&state.report().warnings),
    }
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    response
}

/// Serves until shutdown. Requests are instant, so open connections are
/// simply dropped at shutdown.
pub async fn serve(
    listener: TcpListener,
    sources: DebugSources,
    mut shutdown: watch::Receiver<bool>,
) {
    let sources = Arc::new(sources);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!("debug HTTP accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = Arc::clone(&sources);
        connections.spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let reply = route(request.method(), request.uri().path(), &sources);
                async move { Ok::<_, Infallible>(into_response(reply)) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("debug HTTP connection ended: {err}");
            }
        });
    }
    connections.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Snapshot, SnapshotView};
    use crate::state::ConfigReport;
    use knit_proto::v1 as pb;

    #[test]
    fn routes() {
        let state = ConfigState::new(Snapshot::new(
            vec![pb::Service {
                name: "web".to_owned(),
                namespace: "default".to_owned(),
                ..Default::default()
            }],
            Vec::new(),
        ));
        state.set_report(ConfigReport {
            errors: vec!["config error: a.yaml doc 1: broken".to_owned()],
            warnings: vec![],
        });
        let registry = ProxyRegistry::new();
        let ca = match CertificateAuthority::open(&crate::ca::CaOptions::default()) {
            Ok(ca) => Arc::new(ca),
            Err(err) => panic!("{err}"),
        };
        let state = Arc::new(state);
        let sources = DebugSources {
            state: Arc::clone(&state),
            registry: Arc::clone(&registry),
            ca: Arc::clone(&ca),
            serving: None,
            root_namespace: crate::model::DEFAULT_ROOT_NAMESPACE.to_owned(),
            rollout: Arc::new(crate::rollout::Rollout::new(
                state.snapshot(),
                crate::rollout::DEFAULT_ROLLOUT_TIMEOUT,
            )),
        };
        let _proxy = registry.register(pb::Node {
            pod_name: "web-a".to_owned(),
            namespace: "default".to_owned(),
            ..Default::default()
        });

        let health = route(&Method::GET, "/healthz", &sources);
        assert_eq!(
            (health.status, health.body.as_str()),
            (StatusCode::OK, "ok")
        );

        let snapshot = route(&Method::GET, "/debug/snapshot", &sources);
        assert_eq!(snapshot.content_type, "application/json");
        let view: SnapshotView = match serde_json::from_str(&snapshot.body) {
            Ok(view) => view,
            Err(err) => panic!("{err}: {}", snapshot.body),
        };
        assert_eq!(view, state.snapshot().view());

        let errors = route(&Method::GET, "/debug/errors", &sources);
        let errors: Vec<String> = serde_json::from_str(&errors.body).unwrap_or_default();
        assert_eq!(errors, ["config error: a.yaml doc 1: broken"]);

        let proxies = route(&Method::GET, "/debug/proxies", &sources);
        let proxies: serde_json::Value = serde_json::from_str(&proxies.body).unwrap_or_default();
        assert_eq!(proxies[0]["pod_name"], "web-a");
        assert_eq!(proxies[0]["acked_version"], serde_json::Value::Null);

        let page = route(&Method::GET, "/debug/ca", &sources);
        let page: serde_json::Value = serde_json::from_str(&page.body).unwrap_or_default();
        assert_eq!(page["source"], "ephemeral");
        assert_eq!(page["trust_domain"], "cluster.local");
        assert_eq!(
            page["active_issuer"]["fingerprint"],
            page["trust_bundle"][0]["fingerprint"]
        );
        assert_eq!(page["trust_bundle"][0]["role"], "active");
        assert_eq!(page["serving_certificate"], serde_json::Value::Null);
        assert!(!page.to_string().contains("PRIVATE"), "{page}");

        let rollout = route(&Method::GET, "/debug/rollout", &sources);
        let rollout: serde_json::Value = serde_json::from_str(&rollout.body).unwrap_or_default();
        assert_eq!(rollout["config_version"], state.snapshot().version.as_str());
        assert_eq!(rollout["published_version"], rollout["config_version"]);
        assert_eq!(rollout["holds"], serde_json::json!([]));

        assert_eq!(
            route(&Method::GET, "/nope", &sources).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::POST, "/healthz", &sources).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// `/debug/mtls` shows what knitd computed from the config directory.
    #[test]
    fn mtls_page_shows_each_workload_entry() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        let yaml = "\
apiVersion: mesh.knit.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: web-a
  namespace: shop
spec:
  address: 10.0.0.1
  labels:
    app: web
  ports:
    http: 8080
    metrics: 9090
---
apiVersion: mesh.knit.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: db-a
  namespace: data
spec:
  address: 10.0.0.2
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: mesh-root
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  portLevelMtls:
    9090:
      mode: PERMISSIVE
";
        std::fs::write(dir.path().join("mesh.yaml"), yaml)
            .unwrap_or_else(|err| panic!("write: {err}"));
        let state = Arc::new(ConfigState::new(Snapshot::empty()));
        crate::watch::apply(&state, crate::watch::compile_dir(dir.path()));
        assert!(state.report().errors.is_empty(), "{:?}", state.report());
        let ca = match CertificateAuthority::open(&crate::ca::CaOptions::default()) {
            Ok(ca) => Arc::new(ca),
            Err(err) => panic!("{err}"),
        };
        let sources = DebugSources {
            rollout: Arc::new(crate::rollout::Rollout::new(
                state.snapshot(),
                crate::rollout::DEFAULT_ROLLOUT_TIMEOUT,
            )),
            state,
            registry: ProxyRegistry::new(),
            ca,
            serving: None,
            root_namespace: "mesh-root".to_owned(),
        };
        let reply = route(&Method::GET, "/debug/mtls", &sources);
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type, "application/json");
        let page: serde_json::Value =
            serde_json::from_str(&reply.body).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            page,
            serde_json::json!([
                {
                    "namespace": "shop",
                    "name": "web-a",
                    "default": "STRICT",
                    "ports": [
                        {"name": "http", "port": 8080, "mode": "STRICT"},
                        {"name": "metrics", "port": 9090, "mode": "PERMISSIVE"},
                    ],
                    "port_overrides": {"9090": "PERMISSIVE"},
                    "mesh_policy": "mesh-root/default",
                    "namespace_policy": null,
                    "workload_policy": "shop/web",
                },
                {
                    "namespace": "data",
                    "name": "db-a",
                    "default": "STRICT",
                    "ports": [],
                    "port_overrides": {},
                    "mesh_policy": "mesh-root/default",
                    "namespace_policy": null,
                    "workload_policy": null,
                },
            ])
        );
        assert_eq!(
            route(&Method::POST, "/debug/mtls", &sources).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
