//! The outbound and inbound data paths in-process: connections are handed
//! to `handle_connection` with a chosen original destination, as the
//! capture listener would after SO_ORIGINAL_DST. The capture itself is
//! covered by the lab's end-to-end tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_proto::v1;
use knit_proxy::addr::{ClientAddr, OrigDstAddr};
use knit_proxy::config::snapshot::Snapshot;
use knit_proxy::context::{DataPathSettings, ProxyContext};
use knit_proxy::{inbound, outbound};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VIP: &str = "198.19.0.10:80";

/// An upstream app: answers `<name> <method> <path> host=<host> body=<len>`.
async fn start_app(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .map(|h| h.to_str().unwrap_or("?").to_owned())
                        .or_else(|| req.uri().authority().map(|a| a.to_string()))
                        .unwrap_or_default();
                    let line = format!("{name} {} {} host={host}", req.method(), req.uri().path());
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{line} body={body}"
                    )))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn context(endpoints: &[SocketAddr]) -> Arc<ProxyContext> {
    let direct: Vec<_> = endpoints.iter().map(|addr| (*addr, 0)).collect();
    context_with(&direct)
}

/// A context whose `backend` endpoints are `(app address, mesh port)`; mesh
/// port 0 means "no proxy there".
fn context_with(endpoints: &[(SocketAddr, u16)]) -> Arc<ProxyContext> {
    let ctx = Arc::new(ProxyContext::new(DataPathSettings {
        outbound_detect_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    }));
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
                name: "http".into(),
                port: 80,
                protocol: 0,
                client_tls: None,
            }],
        }],
        endpoints: vec![v1::ServiceEndpoints {
            service_name: "backend".into(),
            service_namespace: "default".into(),
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, (addr, mesh_port))| v1::Endpoint {
                    address: addr.ip().to_string(),
                    workload_name: format!("backend-{i}"),
                    workload_namespace: "default".into(),
                    service_account: "backend".into(),
                    ports: [(80, u32::from(addr.port()))].into_iter().collect(),
                    mesh_port: u32::from(*mesh_port),
                    mtls: None,
                })
                .collect(),
        }],
        ..Default::default()
    };
    ctx.config
        .publish(Snapshot::from_proto(&resp).expect("valid snapshot"));
    ctx
}

#[derive(Clone, Copy)]
enum Side {
    Outbound,
    Inbound,
}

/// A "captured" listener: every accepted connection goes to the proxy's
/// handler with `orig_dst`, as if iptables had redirected it.
async fn captured(ctx: Arc<ProxyContext>, side: Side, orig_dst: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let (client, dst) = (ClientAddr(peer), OrigDstAddr(orig_dst));
            match side {
                Side::Outbound => tokio::spawn(outbound::handle_connection(
                    stream,
                    client,
                    dst,
                    ctx.clone(),
                )),
                Side::Inbound => {
                    tokio::spawn(inbound::handle_connection(stream, client, dst, ctx.clone()))
                }
            };
        }
    });
    addr
}

async fn h1_client(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::combinators::BoxBody<Bytes, Infallible>>
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> Request<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    Request::builder()
        .uri(path)
        .header("host", "backend")
        .body(Full::new(Bytes::new()).boxed())
        .expect("request")
}

async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8")
}

#[tokio::test]
async fn keep_alive_requests_are_balanced_round_robin_per_request() {
    let a = start_app("a").await;
    let b = start_app("b").await;
    let ctx = context(&[a, b]);
    let proxy = captured(ctx.clone(), Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        client.ready().await.expect("ready");
        let resp = client.send_request(get("/hello")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        answers.push(text(resp).await);
    }
    assert_eq!(
        answers,
        [
            "a GET /hello host=backend body=0",
            "b GET /hello host=backend body=0",
            "a GET /hello host=backend body=0",
            "b GET /hello host=backend body=0"
        ]
    );
    let stats = ctx.stats.to_map();
    assert_eq!(stats["outbound.http.requests"], 4);
    assert_eq!(stats["outbound.connections"], 1);
    assert_eq!(stats["outbound.detect.http1"], 1);
}

#[tokio::test]
async fn large_chunked_body_is_streamed_through() {
    let a = start_app("a").await;
    let ctx = context(&[a]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    // 8 MiB in 64 KiB chunks with no Content-Length: chunked encoding.
    let chunks =
        (0..128).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; 64 * 1024]))));
    let body = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "backend")
        .body(body)
        .expect("req");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(
        text(resp).await,
        format!("a POST /upload host=backend body={}", 8 * 1024 * 1024)
    );
}

#[tokio::test]
async fn no_endpoints_gets_a_named_503() {
    let ctx = context(&[]);
    let proxy = captured(ctx.clone(), Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    let resp = client.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-knit-error"], "no_endpoints");
    assert!(
        text(resp)
            .await
            .contains("service default/backend port 80 has no endpoints")
    );
    assert_eq!(ctx.stats.to_map()["outbound.errors.no_endpoints"], 1);
}

#[tokio::test]
async fn refused_endpoint_gets_upstream_connect_failed() {
    // Bind then drop: a port on loopback that refuses connections.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let ctx = context(&[dead]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    let resp = client.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-knit-error"], "upstream_connect_failed");
}

#[tokio::test]
async fn forged_knit_headers_from_the_app_are_stripped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let forged = req.headers().contains_key("x-knit-error");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "forged={forged}"
            )))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    let ctx = context(&[app]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    let mut req = get("/");
    req.headers_mut().insert(
        "x-knit-error",
        http::HeaderValue::from_static("no_endpoints"),
    );
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(text(resp).await, "forged=false");
}

#[tokio::test]
async fn unknown_destination_is_passed_through_as_tcp() {
    // An echo server that is not a mesh service: bytes go straight through.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                let _ = s.shutdown().await;
                return;
            }
            s.write_all(&buf[..n]).await.expect("write");
        }
    });
    let ctx = context(&[]);
    let proxy = captured(ctx.clone(), Side::Outbound, echo).await;
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"\x00binary hello").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"\x00binary hello");
    assert_eq!(ctx.stats.to_map()["outbound.passthrough.connections"], 1);
}

#[tokio::test]
async fn http2_prior_knowledge_goes_through_both_proxies() {
    // app ← inbound proxy ← outbound proxy ← h2c client
    let app = start_app("a").await;
    let inbound_ctx = context(&[]);
    let inbound_addr = captured(inbound_ctx.clone(), Side::Inbound, app).await;
    let outbound_ctx = context(&[inbound_addr]);
    let outbound_addr = captured(
        outbound_ctx.clone(),
        Side::Outbound,
        VIP.parse().expect("vip"),
    )
    .await;

    let stream = TcpStream::connect(outbound_addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("http://backend.default:80/pkg.Svc/Call{i}"))
            .body(Full::new(Bytes::from_static(b"abc")).boxed())
            .expect("req");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            text(resp).await,
            format!("a GET /pkg.Svc/Call{i} host=backend.default:80 body=3")
        );
    }
    assert_eq!(outbound_ctx.stats.to_map()["outbound.detect.http2"], 1);
    assert_eq!(inbound_ctx.stats.to_map()["inbound.http.requests"], 3);
    assert_eq!(inbound_ctx.stats.to_map()["inbound.detect.http2"], 1);
}

#[tokio::test]
async fn refused_endpoint_is_retried_on_the_next_one() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let live = start_app("live").await;
    let ctx = context(&[dead, live]);
    let proxy = captured(ctx.clone(), Side::Outbound, VIP.parse().expect("vip")).await;
    let mut client = h1_client(proxy).await;
    for _ in 0..4 {
        client.ready().await.expect("ready");
        let resp = client.send_request(get("/")).await.expect("response");
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "every request lands on the live endpoint"
        );
        assert!(text(resp).await.starts_with("live GET /"));
    }
    assert_eq!(
        ctx.stats.to_map()["outbound.errors.upstream_connect_failed"],
        0
    );
}

#[tokio::test]
async fn http10_request_without_host_gets_the_original_destination_as_authority() {
    let a = start_app("a").await;
    let ctx = context(&[a]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(
        got.ends_with("a GET /old host=198.19.0.10:80 body=0"),
        "{got}"
    );
}

/// A TCP echo server on loopback.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn idle_tcp_connections_are_closed_and_busy_ones_are_not() {
    let echo = tcp_echo().await;
    let ctx = Arc::new(ProxyContext::new(DataPathSettings {
        tcp_idle_timeout: Duration::from_millis(300),
        ..Default::default()
    }));
    let proxy = captured(ctx.clone(), Side::Outbound, echo).await;

    // Busy for well over the idle timeout: a byte every 50 ms for 1 s.
    let mut busy = TcpStream::connect(proxy).await.expect("connect");
    for _ in 0..20 {
        busy.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).await.expect("echo while busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then silent: the proxy closes it.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle connection closed by the proxy: {closed:?}"
    );
    assert_eq!(ctx.stats.to_map()["outbound.errors.idle_timeout"], 1);
}

#[tokio::test]
async fn h2c_upgrade_is_declined_by_serving_plain_http11() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let upgrade = req.headers().contains_key("upgrade");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "upgrade_header={upgrade}"
            )))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    let ctx = context(&[app]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut got))
        .await
        .expect("in time")
        .expect("read");
    let got = String::from_utf8_lossy(&got[..n]);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "served, not switched: {got}"
    );
    assert!(got.ends_with("upgrade_header=false"), "{got}");
}

#[tokio::test]
async fn connect_requests_become_tunnels() {
    // An HTTP proxy of the app's: answers CONNECT with 200, then echoes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
            assert_eq!(req.method(), http::Method::CONNECT);
            assert_eq!(req.uri().to_string(), "external.example:443");
            tokio::spawn(async move {
                let upgraded = hyper::upgrade::on(&mut req).await.expect("upgrade");
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.expect("read");
                io.write_all(&buf).await.expect("write");
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    });
    let ctx = context(&[app]);
    let proxy = captured(ctx, Side::Outbound, VIP.parse().expect("vip")).await;
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"CONNECT external.example:443 HTTP/1.1\r\nHost: external.example:443\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn forged_knit_headers_from_unmeshed_clients_are_stripped_inbound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let forged = req
                .headers()
                .keys()
                .filter(|k| k.as_str().starts_with("x-knit-"))
                .count();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "forged={forged}"
            )))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    let proxy = captured(context(&[]), Side::Inbound, app).await;
    let mut client = h1_client(proxy).await;
    let mut req = get("/");
    req.headers_mut().insert(
        "x-knit-target-port",
        http::HeaderValue::from_static("15000"),
    );
    req.headers_mut().insert(
        "x-knit-peer",
        http::HeaderValue::from_static("spiffe://evil"),
    );
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(text(resp).await, "forged=0");
}
