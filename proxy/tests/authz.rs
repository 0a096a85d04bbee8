//! AuthorizationPolicy enforcement in-process: a proxy context whose
//! snapshot carries policies, its mesh listener and inbound path on
//! loopback, and tiny apps that record what reached them. Checks that a
//! denial is a 403 `rbac_denied` (or a closed connection for TCP), that
//! nothing denied reaches the app, and that the app sees the normalized
//! request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_proto::v1;
use knit_proxy::addr::{ClientAddr, OrigDstAddr};
use knit_proxy::config::snapshot::Snapshot;
use knit_proxy::context::{DataPathSettings, NodeMeta, ProxyContext};
use knit_proxy::error::Error;
use knit_proxy::inbound;
use knit_proxy::mesh::client::open_tunnel;
use knit_proxy::mesh::pool::MeshPool;
use knit_proxy::mesh::server::MeshListener;
use knit_proxy::mesh::{ORIG_PROTO_HEADER, TARGET_PORT_HEADER};
use knit_proxy::stats::ERROR_REASONS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- policies

fn strs(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn policy(
    name: &str,
    action: v1::AuthorizationAction,
    rule: v1::AuthorizationRule,
) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        name: name.into(),
        namespace: "shop".into(),
        action: action as i32,
        rules: vec![rule],
    }
}

fn deny_admin() -> v1::AuthorizationPolicy {
    policy(
        "deny-admin",
        v1::AuthorizationAction::Deny,
        v1::AuthorizationRule {
            to: vec![v1::AuthorizationOperation {
                paths: strs(&["/admin", "/admin/*"]),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

fn deny_port(port: u16) -> v1::AuthorizationPolicy {
    policy(
        "deny-db",
        v1::AuthorizationAction::Deny,
        v1::AuthorizationRule {
            to: vec![v1::AuthorizationOperation {
                ports: vec![u32::from(port)],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

/// A proxy context serving this workload (`backend` in `shop`) with
/// `policies`.
fn context(policies: Vec<v1::AuthorizationPolicy>) -> Arc<ProxyContext> {
    let mut ctx = ProxyContext::new(DataPathSettings {
        inbound_detect_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    ctx.node = NodeMeta {
        workload: "backend-1".into(),
        namespace: "shop".into(),
    };
    let ctx = Arc::new(ctx);
    publish(&ctx, policies);
    ctx
}

fn publish(ctx: &ProxyContext, policies: Vec<v1::AuthorizationPolicy>) {
    let resp = v1::DiscoveryResponse {
        version_info: "test".into(),
        nonce: "n".into(),
        authorization: policies,
        ..Default::default()
    };
    ctx.config
        .publish(Snapshot::from_proto(&resp).expect("valid snapshot"));
}

/// Denials of `listener` as `/stats` counts them: under their reason when
/// the counter table has it, else under `other`.
fn denials(stats: &BTreeMap<String, u64>, listener: &str) -> u64 {
    let reason = if ERROR_REASONS.contains(&"rbac_denied") {
        "rbac_denied"
    } else {
        "other"
    };
    stats[&format!("{listener}.errors.{reason}")]
}

/// The `knit_requests_total` series with this response code, summed.
fn requests_with_code(metrics: &str, code: u16) -> u64 {
    let label = format!("response_code=\"{code}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("knit_requests_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------- apps

/// An HTTP/1.1 app that records `METHOD target` of every request it gets.
async fn recording_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let line = format!("{} {}", req.method(), req.uri());
                    log.lock().expect("app log").push(line.clone());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(line)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A TCP app that counts connections and echoes.
async fn counting_tcp_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

// ---------------------------------------------------------------- proxies

async fn mesh_listener(ctx: Arc<ProxyContext>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mesh");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(MeshListener::new(listener, ctx).run());
    addr
}

/// The inbound side: each connection handled as if captured for `app`.
async fn inbound_listener(ctx: Arc<ProxyContext>, app: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind inbound");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(inbound::handle_connection(
                stream,
                ClientAddr(peer),
                OrigDstAddr(app),
                ctx.clone(),
            ));
        }
    });
    addr
}

/// Status, `x-knit-error` and body of one response.
async fn read_response(resp: Response<Incoming>) -> (StatusCode, Option<String>, String) {
    let status = resp.status();
    let reason = resp
        .headers()
        .get("x-knit-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------- tests

/// (method, path as sent, status, x-knit-error, what the app saw)
type MeshCase = (
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
    Option<&'static str>,
);

#[tokio::test]
async fn mesh_requests_are_normalized_then_authorized() {
    let (app, seen) = recording_app().await;
    let ctx = context(vec![deny_admin()]);
    let mesh = mesh_listener(ctx.clone()).await;

    let stream = TcpStream::connect(mesh).await.expect("connect mesh");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    let cases: &[MeshCase] = &[
        ("GET", "/admin", 403, Some("rbac_denied"), None),
        ("GET", "/a/../admin", 403, Some("rbac_denied"), None),
        ("GET", "//admin", 403, Some("rbac_denied"), None),
        ("GET", "/%2Fadmin", 403, Some("rbac_denied"), None),
        ("GET", "/%5Cadmin", 403, Some("rbac_denied"), None),
        ("GET", "/%2e%2e/admin/users", 403, Some("rbac_denied"), None),
        ("get", "/%61dmin?x=1", 403, Some("rbac_denied"), None),
        ("GET", "/%zz", 400, Some("bad_request"), None),
        ("GET", "/a%00", 400, Some("bad_request"), None),
        ("GET", "/ADMIN", 200, None, Some("GET /ADMIN")),
        (
            "get",
            "//x/./y/%7euser?q=/../admin",
            200,
            None,
            Some("GET /x/y/~user?q=/../admin"),
        ),
        ("PURGE", "/a/b/..", 200, None, Some("PURGE /a/")),
    ];
    for (method, path, status, reason, saw) in cases {
        let before = seen.lock().expect("app log").len();
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("http://backend.shop.svc{path}"))
            .header(TARGET_PORT_HEADER, app.port())
            .header(ORIG_PROTO_HEADER, "HTTP/1.1")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.ready().await.expect("ready");
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let (got_status, got_reason, body) = read_response(resp).await;
        assert_eq!(got_status.as_u16(), *status, "{method} {path}: {body}");
        assert_eq!(got_reason.as_deref(), *reason, "{method} {path}");
        let log = seen.lock().expect("app log").clone();
        match saw {
            Some(line) => assert_eq!(log.get(before).map(String::as_str), Some(*line)),
            None => assert_eq!(
                log.len(),
                before,
                "{method} {path} reached the app: {log:?}"
            ),
        }
        if *status == 403 {
            assert!(body.contains("shop/deny-admin"), "{body}");
        }
    }

    let stats = ctx.stats_map();
    assert_eq!(denials(&stats, "mesh"), 7, "{stats:?}");
    assert_eq!(stats["mesh.errors.bad_request"], 2, "{stats:?}");
    let metrics = ctx.metrics.encode();
    assert_eq!(requests_with_code(&metrics, 403), 7, "{metrics}");
    assert_eq!(requests_with_code(&metrics, 200), 3, "{metrics}");

    // The compiled policies are part of the config dump.
    let dump = serde_json::to_value(&**ctx.config.load()).expect("dump");
    assert_eq!(
        dump["authorization"]["deny"][0]["name"], "shop/deny-admin",
        "{dump}"
    );
}

#[tokio::test]
async fn mesh_tunnels_are_authorized_as_tcp() {
    let (denied_app, denied_accepts) = counting_tcp_app().await;
    let (open_app, open_accepts) = counting_tcp_app().await;
    let ctx = context(vec![deny_port(denied_app.port())]);
    let mesh = mesh_listener(ctx.clone()).await;
    let pool = MeshPool::new(Duration::from_secs(5));

    let refused = open_tunnel(&pool, mesh, None, denied_app.port(), &[])
        .await
        .map(|_| ())
        .expect_err("a tunnel to the denied port is refused");
    match refused {
        Error::TunnelRefused { status, reason, .. } => {
            assert_eq!((status, reason.as_str()), (403, "rbac_denied"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(denied_accepts.load(Ordering::SeqCst), 0);

    let tunnel = open_tunnel(&pool, mesh, None, open_app.port(), &[])
        .await
        .expect("a tunnel to another port opens");
    let mut tunnel = TokioIo::new(tunnel);
    tunnel.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    tokio::time::timeout(DEADLINE, tunnel.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&back, b"ping");
    assert_eq!(open_accepts.load(Ordering::SeqCst), 1);

    // HTTP-only fields fail closed on a tunnel: a DENY on paths denies it.
    publish(&ctx, vec![deny_admin()]);
    let refused = open_tunnel(&pool, mesh, None, open_app.port(), &[])
        .await
        .map(|_| ())
        .expect_err("HTTP fields match a tunnel in DENY");
    assert!(
        matches!(&refused, Error::TunnelRefused { status: 403, reason, .. } if reason == "rbac_denied"),
        "{refused}"
    );
    assert_eq!(open_accepts.load(Ordering::SeqCst), 1);
    assert_eq!(denials(&ctx.stats_map(), "mesh"), 2);
}

#[tokio::test]
async fn inbound_http_is_normalized_and_authorized_as_plaintext() {
    let (app, seen) = recording_app().await;
    let ctx = context(vec![deny_admin()]);
    let inbound = inbound_listener(ctx.clone(), app).await;

    let stream = TcpStream::connect(inbound).await.expect("connect inbound");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let mut send = async |path: &str| {
        let req = Request::builder()
            .uri(path)
            .header("host", "backend.shop.svc")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.ready().await.expect("ready");
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        read_response(resp).await
    };

    let (status, reason, _) = send("/x/../admin").await;
    assert_eq!(
        (status, reason.as_deref()),
        (StatusCode::FORBIDDEN, Some("rbac_denied"))
    );
    let (status, _, body) = send("/x//y/%2e/z?k=%2e%2e").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "GET /x/y/z?k=%2e%2e");
    assert_eq!(*seen.lock().expect("app log"), ["GET /x/y/z?k=%2e%2e"]);

    // A plaintext client has no identity: an ALLOW on principals refuses it.
    publish(
        &ctx,
        vec![policy(
            "allow-web",
            v1::AuthorizationAction::Allow,
            v1::AuthorizationRule {
                from: vec![v1::AuthorizationSource {
                    principals: strs(&["cluster.local/ns/shop/sa/web"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )],
    );
    let (status, reason, body) = send("/").await;
    assert_eq!(
        (status, reason.as_deref()),
        (StatusCode::FORBIDDEN, Some("rbac_denied"))
    );
    assert!(body.contains("no ALLOW policy matched"), "{body}");
    assert_eq!(seen.lock().expect("app log").len(), 1);

    let stats = ctx.stats_map();
    assert_eq!(denials(&stats, "inbound"), 2, "{stats:?}");
    assert_eq!(requests_with_code(&ctx.metrics.encode(), 403), 2);
}

#[tokio::test]
async fn inbound_fragment_is_a_bad_request() {
    let (app, seen) = recording_app().await;
    let ctx = context(vec![deny_admin()]);
    let inbound = inbound_listener(ctx.clone(), app).await;
    let mut stream = TcpStream::connect(inbound).await.expect("connect inbound");
    stream
        .write_all(b"GET /admin#x HTTP/1.1\r\nHost: backend\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("x-knit-error: bad_request"), "{raw}");
    assert!(seen.lock().expect("app log").is_empty());
}

#[tokio::test]
async fn inbound_tcp_denied_is_closed_before_the_app_is_connected() {
    let (db, db_accepts) = counting_tcp_app().await;
    let ctx = context(vec![deny_port(db.port())]);
    let inbound = inbound_listener(ctx.clone(), db).await;

    let mut client = TcpStream::connect(inbound).await.expect("connect inbound");
    client.write_all(b"\x00\x01opaque").await.expect("write");
    let mut back = Vec::new();
    let read = tokio::time::timeout(DEADLINE, client.read_to_end(&mut back))
        .await
        .expect("closed in time");
    // Closed, perhaps with a reset (unread input): either way, no byte back.
    assert!(read.is_err() || back.is_empty(), "{back:?}");
    assert_eq!(db_accepts.load(Ordering::SeqCst), 0);
    assert_eq!(denials(&ctx.stats_map(), "inbound"), 1);
    assert!(
        !ctx.metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("knit_tcp_connections_opened_total{")),
        "a denied connection is not an opened one"
    );

    // Without the policy the same connection reaches the app.
    publish(&ctx, vec![]);
    let mut client = TcpStream::connect(inbound).await.expect("connect inbound");
    client.write_all(b"\x00\x01opaque").await.expect("write");
    let mut echo = [0u8; 8];
    tokio::time::timeout(DEADLINE, client.read_exact(&mut echo))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&echo, b"\x00\x01opaque");
    assert_eq!(db_accepts.load(Ordering::SeqCst), 1);
}
