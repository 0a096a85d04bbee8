//! Proxy-to-proxy transport in-process: the outbound side of one proxy
//! talks to the mesh listener of another over one multiplexed HTTP/2
//! connection, for HTTP requests, upgrades and opaque TCP tunnels.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use knit_proto::v1;
use knit_proxy::addr::{ClientAddr, OrigDstAddr};
use knit_proxy::config::snapshot::Snapshot;
use knit_proxy::context::{DataPathSettings, NodeMeta, ProxyContext};
use knit_proxy::mesh::server::MeshListener;
use knit_proxy::outbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VIP: &str = "198.19.0.10:80";

fn context(app: SocketAddr, mesh_port: u16, protocol: v1::Protocol) -> Arc<ProxyContext> {
    let mut ctx = ProxyContext::new(DataPathSettings {
        outbound_detect_timeout: Duration::from_millis(100),
        ..Default::default()
    });
    ctx.node = NodeMeta {
        workload: "frontend".into(),
        namespace: "shop".into(),
    };
    let ctx = Arc::new(ctx);
    ctx.listeners_bound
        .store(true, std::sync::atomic::Ordering::Release);
    let resp = v1::DiscoveryResponse {
        version_info: "test".into(),
        nonce: "n".into(),
        services: vec![v1::Service {
            name: "backend".into(),
            namespace: "default".into(),
            hostname: "backend.default.svc.cluster.local".into(),
            vips: vec!["198.19.0.10".into()],
            ports: vec![v1::ServicePort {
                name: "p".into(),
                port: 80,
                protocol: protocol as i32,
                client_tls: None,
            }],
        }],
        endpoints: vec![v1::ServiceEndpoints {
            service_name: "backend".into(),
            service_namespace: "default".into(),
            endpoints: vec![v1::Endpoint {
                address: app.ip().to_string(),
                workload_name: "backend-1".into(),
                workload_namespace: "default".into(),
                service_account: "backend".into(),
                ports: [(80, u32::from(app.port()))].into_iter().collect(),
                mesh_port: u32::from(mesh_port),
                mtls: None,
            }],
        }],
        ..Default::default()
    };
    ctx.config
        .publish(Snapshot::from_proto(&resp).expect("valid snapshot"));
    ctx
}

/// The receiving proxy: its mesh listener on loopback.
async fn peer_proxy() -> (Arc<ProxyContext>, u16) {
    let mut ctx = ProxyContext::new(DataPathSettings::default());
    ctx.node = NodeMeta {
        workload: "backend-1".into(),
        namespace: "default".into(),
    };
    let ctx = Arc::new(ctx);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mesh");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(MeshListener::new(listener, ctx.clone()).run());
    (ctx, port)
}

/// The sending proxy's outbound side, "captured" for the VIP.
async fn outbound_proxy(ctx: Arc<ProxyContext>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let dst = OrigDstAddr(VIP.parse().expect("vip"));
            tokio::spawn(outbound::handle_connection(
                stream,
                ClientAddr(peer),
                dst,
                ctx.clone(),
            ));
        }
    });
    addr
}

/// An HTTP/1.1-only app that reports the version and peer it saw.
async fn h1_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let body = format!(
                        "{:?} {} host={} peer={} knit_headers={}",
                        req.version(),
                        req.uri(),
                        req.headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-"),
                        peer.ip(),
                        req.headers()
                            .keys()
                            .filter(|k| k.as_str().starts_with("x-knit-"))
                            .count(),
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_thousand_requests_from_ten_app_connections_share_one_peer_connection() {
    let app = h1_app().await;
    let (peer_ctx, mesh_port) = peer_proxy().await;
    let ctx = context(app, mesh_port, v1::Protocol::Unspecified);
    let proxy = outbound_proxy(ctx.clone()).await;

    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(proxy).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            for i in 0..100 {
                sender.ready().await.expect("ready");
                let req = Request::builder()
                    .uri(format!("/r{i}"))
                    .header("host", "backend")
                    .body(Empty::<Bytes>::new())
                    .expect("req");
                let resp = sender.send_request(req).await.expect("response");
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                let body = String::from_utf8_lossy(&body);
                // The app got HTTP/1.1 with its Host, from the delivery
                // source, with no mesh headers left on the request.
                assert_eq!(
                    body,
                    format!("HTTP/1.1 /r{i} host=backend peer=127.0.0.6 knit_headers=0")
                );
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let out = ctx.stats_map();
    assert_eq!(out["outbound.http.requests"], 1000);
    assert_eq!(out["upstream.mesh.connections_opened"], 1, "{out:?}");
    assert_eq!(out["upstream.direct.connections_opened"], 0, "{out:?}");
    let peer = peer_ctx.stats_map();
    assert_eq!(peer["mesh.connections"], 1, "{peer:?}");
    assert_eq!(peer["mesh.requests"], 1000, "{peer:?}");

    // Both proxies report the requests, labelled from the mesh.
    let common = "source_workload=\"frontend\",source_namespace=\"shop\",source_principal=\"unknown\",\
                  destination_service=\"backend.default.svc.cluster.local\",destination_workload=\"backend-1\",\
                  destination_namespace=\"default\",destination_principal=\"unknown\",\
                  connection_security_policy=\"none\",response_code=\"200\"} 1000";
    let source = ctx.metrics.encode();
    assert!(
        source.contains(&format!(
            "knit_requests_total{{reporter=\"source\",{common}"
        )),
        "{source}"
    );
    let destination = peer_ctx.metrics.encode();
    assert!(
        destination.contains(&format!(
            "knit_requests_total{{reporter=\"destination\",{common}"
        )),
        "{destination}"
    );
}

#[tokio::test]
async fn opaque_tcp_rides_a_tunnel_with_half_close() {
    // An echo that answers after the client's FIN: it needs half-close.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        s.write_all(&got).await.expect("write");
        s.write_all(b"|done").await.expect("write");
    });
    let (peer_ctx, mesh_port) = peer_proxy().await;
    let ctx = context(app, mesh_port, v1::Protocol::Tcp);
    let proxy = outbound_proxy(ctx.clone()).await;

    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"\x00\x01opaque bytes").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"\x00\x01opaque bytes|done");
    assert_eq!(peer_ctx.stats_map()["mesh.tunnels"], 1);
    assert_eq!(ctx.stats_map()["upstream.mesh.connections_opened"], 1);
    let source = ctx.metrics.encode();
    assert!(
        source.contains(
            "knit_tcp_connections_opened_total{reporter=\"source\",source_workload=\"frontend\""
        ) && source.contains("destination_workload=\"backend-1\""),
        "{source}"
    );
    let destination = peer_ctx.metrics.encode();
    assert!(
        destination.contains(
            "knit_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"frontend\",source_namespace=\"shop\""
        ),
        "{destination}"
    );
}

#[tokio::test]
async fn websocket_style_upgrade_goes_through_a_tunnel() {
    // An app that switches protocols, then echoes bytes upper-cased.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
            assert_eq!(req.headers()["upgrade"], "websocket");
            tokio::spawn(async move {
                let upgraded = hyper::upgrade::on(&mut req).await.expect("upgrade");
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 5];
                io.read_exact(&mut buf).await.expect("read");
                io.write_all(&buf.to_ascii_uppercase())
                    .await
                    .expect("write");
            });
            let resp = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Empty::<Bytes>::new())
                .expect("resp");
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    });
    let (peer_ctx, mesh_port) = peer_proxy().await;
    let ctx = context(app, mesh_port, v1::Protocol::Unspecified);
    let proxy = outbound_proxy(ctx).await;

    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"HELLO");
    assert_eq!(peer_ctx.stats_map()["mesh.tunnels"], 1);
}

#[tokio::test]
async fn expect_100_continue_and_chunked_bodies_cross_the_http2_hop() {
    let app = h1_app().await;
    let (_peer, mesh_port) = peer_proxy().await;
    let ctx = context(app, mesh_port, v1::Protocol::Unspecified);
    let proxy = outbound_proxy(ctx).await;

    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: backend\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write head");
    // The client holds its body until told to continue.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .expect("write body");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn strict_peer_refuses_plaintext_before_the_app_sees_anything() {
    // An app that counts what reaches it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let (peer_ctx, mesh_port) = peer_proxy().await;
    // The peer's workload is STRICT except port 1 (a port nobody uses).
    let policy = v1::DiscoveryResponse {
        version_info: "strict".into(),
        inbound: Some(v1::InboundPolicy {
            default_mode: v1::MtlsMode::Strict as i32,
            port_modes: [(1, v1::MtlsMode::Permissive as i32)].into_iter().collect(),
        }),
        ..Default::default()
    };
    peer_ctx
        .config
        .publish(Snapshot::from_proto(&policy).expect("valid policy"));
    // This side has no identity, so it can only speak plaintext.
    let ctx = context(app, mesh_port, v1::Protocol::Unspecified);
    let proxy = outbound_proxy(ctx).await;

    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "backend")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()["x-knit-error"], "mtls_required");
    assert_eq!(peer_ctx.stats_map()["mesh.errors.mtls_required"], 1);
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
}
