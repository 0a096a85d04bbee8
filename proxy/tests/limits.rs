//! Hostile clients against the proxy's HTTP fronts, driven in-process as
//! in `forwarding.rs`: request smuggling, header and URI limits,
//! slowloris, HTTP/2 abuse (rapid reset, CONTINUATION floods, HPACK
//! bombs), and the per-listener connection limit. Each test counts what
//! reached the upstream app and ends by checking that a well-behaved
//! client on a new connection is still served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_proto::v1;
use knit_proxy::addr::{ClientAddr, OrigDstAddr};
use knit_proxy::config::snapshot::Snapshot;
use knit_proxy::context::{DataPathSettings, ProxyContext};
use knit_proxy::mesh::server::MeshListener;
use knit_proxy::outbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

const VIP: &str = "198.19.0.10:80";
/// How long any single wait in these tests may take before it fails; far
/// above what the proxy needs, for busy machines.
const DEADLINE: Duration = Duration::from_secs(20);
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: backend\r\n\r\n";

/// The upstream app: counts every request the moment it arrives, keeps
/// paths and headers, answers `ok <path> body=<len>` once the body is in.
/// `Upgrade: echo` switches to a byte echo.
#[derive(Default)]
struct App {
    hits: AtomicUsize,
    seen: Mutex<Vec<(String, HeaderMap)>>,
}

impl App {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    async fn wait_for_hits(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.hits() < n {
            assert!(
                Instant::now() < deadline,
                "app saw {} requests, waited for {n}",
                self.hits()
            );
            sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn start_app() -> (SocketAddr, Arc<App>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    let app = Arc::new(App::default());
    let state = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let app = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| app_service(app.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, app)
}

async fn app_service(
    app: Arc<App>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    app.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    app.seen
        .lock()
        .expect("lock")
        .push((path.clone(), req.headers().clone()));
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .expect("response");
        return Ok(resp);
    }
    let resp = match req.into_body().collect().await {
        Ok(body) => Response::new(Full::new(Bytes::from(format!(
            "ok {path} body={}",
            body.to_bytes().len()
        )))),
        Err(_) => Response::builder()
            .status(500)
            .body(Full::new(Bytes::new()))
            .expect("response"),
    };
    Ok(resp)
}

fn settings() -> DataPathSettings {
    DataPathSettings {
        // Clients here write at once; the margin is for busy machines.
        outbound_detect_timeout: Duration::from_secs(1),
        ..DataPathSettings::default()
    }
}

fn context(app: SocketAddr, settings: DataPathSettings) -> Arc<ProxyContext> {
    let ctx = Arc::new(ProxyContext::new(settings));
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
            endpoints: vec![v1::Endpoint {
                address: app.ip().to_string(),
                workload_name: "backend-0".into(),
                workload_namespace: "default".into(),
                service_account: "backend".into(),
                ports: [(80, u32::from(app.port()))].into_iter().collect(),
                mesh_port: 0,
                mtls: None,
            }],
        }],
        ..Default::default()
    };
    ctx.config
        .publish(Snapshot::from_proto(&resp).expect("valid snapshot"));
    ctx
}

/// The app behind an outbound proxy "captured" for the service VIP.
async fn outbound_proxy(settings: DataPathSettings) -> (SocketAddr, Arc<App>, Arc<ProxyContext>) {
    let (app_addr, app) = start_app().await;
    let ctx = context(app_addr, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = ctx.clone();
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
                served.clone(),
            ));
        }
    });
    (addr, app, ctx)
}

/// What a raw HTTP/1.1 client got back.
#[derive(Debug)]
struct Exchange {
    text: String,
    /// Status codes of the responses, in order.
    statuses: Vec<u16>,
    /// The proxy closed the connection (EOF or reset) before the deadline.
    closed: bool,
}

/// Writes `raw` and reads until the proxy closes the connection or
/// `wait` passes. Write errors are ignored: the proxy may close while a
/// hostile client is still sending, and what it answered still counts.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Exchange {
    let (mut read, mut write) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let raw = raw.to_vec();
    // Written while the answer is read, so a proxy that answers early is
    // heard even if it then resets the connection.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&raw).await;
        write
    });
    let got = read_until_closed(&mut read).await;
    writer.abort();
    got
}

async fn read_until_closed(s: &mut OwnedReadHalf) -> Exchange {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    Exchange {
        statuses: statuses(&text),
        text,
        closed,
    }
}

/// The status of each response in `text`, following Content-Length from
/// one response to the next (every response here has one).
fn statuses(mut text: &str) -> Vec<u16> {
    let mut found = Vec::new();
    while let Some(rest) = text.strip_prefix("HTTP/1.1 ") {
        let Some(status) = rest.get(..3).and_then(|s| s.parse().ok()) else {
            break;
        };
        found.push(status);
        let Some(head_end) = text.find("\r\n\r\n") else {
            break;
        };
        let length = text[..head_end]
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        text = text.get(head_end + 4 + length..).unwrap_or("");
    }
    found
}

/// The proxy answers `status` once, closes, and the app saw nothing.
async fn assert_rejected(proxy: SocketAddr, app: &App, name: &str, raw: &str, status: u16) {
    let before = app.hits();
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [status], "{name}: {got:?}");
    assert!(got.closed, "{name}: connection left open: {got:?}");
    assert!(
        got.text.to_ascii_lowercase().contains("x-knit-error: "),
        "{name}: {got:?}"
    );
    assert_eq!(
        app.hits(),
        before,
        "{name}: reached the app: {:?}",
        app.paths()
    );
}

/// A plain request on a new connection still works.
async fn assert_still_serves(proxy: SocketAddr, app: &App) {
    let before = app.hits();
    let got = exchange(
        proxy,
        b"GET /ok HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.statuses, [200], "{got:?}");
    assert!(got.text.ends_with("ok /ok body=0"), "{got:?}");
    assert_eq!(app.hits(), before + 1);
    assert!(
        !app.paths().contains(&"/smuggled".to_owned()),
        "{:?}",
        app.paths()
    );
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_400_and_never_smuggles() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let cases = [
        (
            "CL then TE",
            "Content-Length: 4\r\nTransfer-Encoding: chunked",
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 4",
        ),
        (
            "CL 0 then TE",
            "Content-Length: 0\r\nTransfer-Encoding: chunked",
        ),
    ];
    for (name, headers) in cases {
        let raw = format!(
            "POST /te-cl HTTP/1.1\r\nHost: backend\r\n{headers}\r\n\r\n0\r\n\r\n{SMUGGLED}"
        );
        assert_rejected(proxy, &app, name, &raw, 400).await;
    }
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn repeated_or_malformed_content_length_is_400() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let cases = [
        ("equal twice", "Content-Length: 3\r\nContent-Length: 3"),
        ("conflicting", "Content-Length: 3\r\nContent-Length: 5"),
        ("list", "Content-Length: 3, 3"),
        ("sign", "Content-Length: +3"),
        ("hex", "Content-Length: 0x3"),
        ("empty", "Content-Length:"),
    ];
    for (name, headers) in cases {
        let raw = format!("POST /cl HTTP/1.1\r\nHost: backend\r\n{headers}\r\n\r\nabc{SMUGGLED}");
        assert_rejected(proxy, &app, name, &raw, 400).await;
    }
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn transfer_encoding_other_than_plain_chunked_is_400() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let cases = [
        ("chunked, identity", "Transfer-Encoding: chunked, identity"),
        ("identity, chunked", "Transfer-Encoding: identity, chunked"),
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked"),
        ("xchunked", "Transfer-Encoding: xchunked"),
        ("two spaces", "Transfer-Encoding:  chunked"),
        ("tab", "Transfer-Encoding:\tchunked"),
        ("trailing space", "Transfer-Encoding: chunked "),
        (
            "repeated",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ),
        ("space before colon", "Transfer-Encoding : chunked"),
        ("vertical tab", "Transfer-Encoding:\x0bchunked"),
    ];
    for (name, headers) in cases {
        let raw =
            format!("POST /te HTTP/1.1\r\nHost: backend\r\n{headers}\r\n\r\n0\r\n\r\n{SMUGGLED}");
        assert_rejected(proxy, &app, name, &raw, 400).await;
    }
    let http10 = format!(
        "POST /te HTTP/1.0\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    assert_rejected(proxy, &app, "HTTP/1.0 with TE", &http10, 400).await;
    // The plain spelling is served, case-insensitively as the RFC says.
    for spelling in ["chunked", "Chunked"] {
        let raw = format!(
            "POST /plain HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: {spelling}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let got = exchange(proxy, raw.as_bytes()).await;
        assert_eq!(got.statuses, [200], "{got:?}");
        assert!(got.text.ends_with("ok /plain body=3"), "{got:?}");
    }
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn obs_fold_bare_cr_lf_nul_and_host_confusion_are_400() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let cases = [
        (
            "obs-fold",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nX-A: a\r\n b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obs-fold into TE",
            format!(
                "POST /f HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "bare CR",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nX-A: a\rb\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF line ends",
            format!("GET /f HTTP/1.1\nHost: backend\nX-A: a\n\n{SMUGGLED}"),
        ),
        (
            "one bare LF",
            format!("GET /f HTTP/1.1\r\nHost: backend\nX-A: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "NUL",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nX-A: a\0b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "DEL",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nX-A: a\x7fb\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two Hosts",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nHost: other\r\n\r\n{SMUGGLED}"),
        ),
        (
            "no Host",
            format!("GET /f HTTP/1.1\r\nX-A: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "double space in request line",
            format!("GET  /f HTTP/1.1\r\nHost: backend\r\n\r\n{SMUGGLED}"),
        ),
        (
            "no colon",
            format!("GET /f HTTP/1.1\r\nHost: backend\r\nX-A a\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (name, raw) in cases {
        assert_rejected(proxy, &app, name, &raw, 400).await;
    }
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn malformed_chunked_bodies_end_the_connection_without_a_second_request() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let cases = [
        ("size overflow", "FFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n"),
        ("size garbage", "3x\r\nabc\r\n0\r\n\r\n"),
        ("space after size", "3 \r\nabc\r\n0\r\n\r\n"),
        ("0x prefix", "0x3\r\nabc\r\n0\r\n\r\n"),
        ("negative", "-3\r\nabc\r\n0\r\n\r\n"),
        ("bare LF", "3\nabc\n0\n\n"),
        ("data longer than size", "3\r\nabcX\r\n0\r\n\r\n"),
        ("empty size", "\r\nabc\r\n0\r\n\r\n"),
        ("folded trailer", "0\r\nX-T: a\r\n b\r\n\r\n"),
    ];
    for (name, body) in cases {
        let before = app.hits();
        let raw = format!(
            "POST /chunked HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
        );
        let got = exchange(proxy, raw.as_bytes()).await;
        assert!(got.closed, "{name}: {got:?}");
        // The head was fine and may already be upstream; the body error
        // then turns whatever comes back into a 400.
        assert!(
            got.statuses.is_empty() || got.statuses == [400],
            "{name}: {got:?}"
        );
        assert!(app.hits() <= before + 1, "{name}: {:?}", app.paths());
        assert!(
            !app.paths().contains(&"/smuggled".to_owned()),
            "{name}: {:?}",
            app.paths()
        );
    }
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn a_rejected_pipelined_request_follows_the_answer_to_the_good_one() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let raw = format!(
        "GET /first HTTP/1.1\r\nHost: backend\r\n\r\n\
         POST /second HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [200, 400], "{got:?}");
    assert!(got.closed, "{got:?}");
    assert_eq!(app.paths(), ["/first"]);
    // Well-formed pipelining still works.
    let raw = "GET /a HTTP/1.1\r\nHost: backend\r\n\r\nPOST /b HTTP/1.1\r\nHost: backend\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n";
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [200, 200, 200], "{got:?}");
    assert_eq!(app.paths(), ["/first", "/a", "/b", "/c"]);
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn header_and_uri_limits_answer_431_and_414() {
    let limits = DataPathSettings {
        http_max_header_bytes: 8 * 1024,
        http_max_headers: 20,
        http_max_uri_bytes: 1024,
        ..settings()
    };
    let (proxy, app, _) = outbound_proxy(limits).await;
    let big_value = format!(
        "GET /h HTTP/1.1\r\nHost: backend\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    assert_rejected(proxy, &app, "one big header", &big_value, 431).await;
    // Larger than anything the proxy reads before deciding: it answers
    // while the client is still sending.
    let huge = format!(
        "GET /h HTTP/1.1\r\nHost: backend\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    assert_rejected(proxy, &app, "huge header", &huge, 431).await;
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    let too_many = format!("GET /h HTTP/1.1\r\nHost: backend\r\n{many}\r\n");
    assert_rejected(proxy, &app, "21 headers", &too_many, 431).await;
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: backend\r\n\r\n",
        "u".repeat(1024)
    );
    assert_rejected(proxy, &app, "long URI", &long_uri, 414).await;
    let endless_line = format!("GET /{}", "u".repeat(4096));
    assert_rejected(proxy, &app, "request line without end", &endless_line, 414).await;

    // Just within every limit: served.
    let uri = format!("/{}", "u".repeat(1023));
    let fields: String = (0..18).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = format!("GET {uri} HTTP/1.1\r\nHost: backend\r\n{fields}Connection: close\r\n\r\n");
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [200], "{got:?}");
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn slowloris_is_disconnected_after_the_header_timeout() {
    let (proxy, app, _) = outbound_proxy(DataPathSettings {
        http_header_read_timeout: Duration::from_millis(500),
        ..settings()
    })
    .await;
    let s = TcpStream::connect(proxy).await.expect("connect");
    let (mut read, mut write) = s.into_split();
    let started = Instant::now();
    // One header byte every 50 ms: the whole head would take a minute.
    let trickle = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET /slow HTTP/1.1\r\nHost: backend\r\n")
            .await;
        for _ in 0..1200 {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let end = timeout(DEADLINE, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "slow client still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the timeout"
    );
    trickle.abort();
    assert_eq!(app.hits(), 0);
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn keep_alive_waits_are_idle_time_not_header_time() {
    let (proxy, app, _) = outbound_proxy(DataPathSettings {
        http_header_read_timeout: Duration::from_millis(200),
        http_idle_timeout: Duration::from_secs(3),
        ..settings()
    })
    .await;
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    for path in ["/one", "/two"] {
        sender.ready().await.expect("ready");
        let req = Request::builder()
            .uri(path)
            .header("host", "backend")
            .body(Empty::<Bytes>::new())
            .expect("req");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body");
        // Longer than the header timeout, well within the idle timeout.
        sleep(Duration::from_millis(700)).await;
    }
    // Then idle past the idle timeout: the proxy closes the connection.
    timeout(DEADLINE, conn)
        .await
        .expect("idle connection closed")
        .expect("join")
        .expect("clean close");
    assert_eq!(app.paths(), ["/one", "/two"]);
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn switching_protocols_passes_bytes_untouched_and_a_declined_upgrade_stays_guarded() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: backend\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(DEADLINE, s.read_exact(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Not HTTP any more: bytes the guard would reject in a head.
    let bytes = b"\0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\n\n";
    s.write_all(bytes).await.expect("write");
    let mut echoed = vec![0u8; bytes.len()];
    timeout(DEADLINE, s.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(echoed, bytes);
    drop(s);

    // An upgrade the upstream declines: the next request on the
    // connection is a request again, and checked like one.
    let raw = format!(
        "GET /nope HTTP/1.1\r\nHost: backend\r\nConnection: upgrade\r\nUpgrade: nope\r\n\r\n\
         POST /after HTTP/1.1\r\nHost: backend\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx{SMUGGLED}"
    );
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [200, 400], "{got:?}");
    assert!(got.closed);
    assert_eq!(app.paths(), ["/ws", "/nope"]);
    assert_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn hop_by_hop_and_knit_headers_from_the_app_never_reach_upstream() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let raw = "GET /hop HTTP/1.1\r\nHost: backend\r\nConnection: close, x-private\r\nX-Private: 1\r\n\
               Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\
               X-Knit-Target-Port: 15000\r\nX-Knit-Error: forged\r\nX-App: kept\r\n\r\n";
    let got = exchange(proxy, raw.as_bytes()).await;
    assert_eq!(got.statuses, [200], "{got:?}");
    let seen = app.seen.lock().expect("lock");
    let (_, headers) = &seen[0];
    let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-app"], "{headers:?}");
}

// ---- HTTP/2 -------------------------------------------------------------

async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    (client, tokio::spawn(conn))
}

fn h2_get(path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("http://backend{path}"))
        .body(())
        .expect("request")
}

/// Sends a bodiless request and returns its status.
async fn h2_status(client: &mut h2::client::SendRequest<Bytes>, req: Request<()>) -> StatusCode {
    let ready = timeout(DEADLINE, client.clone().ready())
        .await
        .expect("ready in time")
        .expect("ready");
    *client = ready;
    let (resp, _) = client.send_request(req, true).expect("send");
    timeout(DEADLINE, resp)
        .await
        .expect("response in time")
        .expect("response")
        .status()
}

async fn assert_h2_still_serves(proxy: SocketAddr, app: &App) {
    let before = app.hits();
    let (mut client, _conn) = h2_client(proxy).await;
    assert_eq!(h2_status(&mut client, h2_get("/ok")).await, StatusCode::OK);
    assert_eq!(app.hits(), before + 1);
}

#[tokio::test]
async fn paced_resets_after_each_request_reached_upstream_trip_the_premature_reset_limit() {
    // Each stream is reset only once the app has it, so h2's own
    // pending-accept guard never sees it: the proxy's count must.
    let limit = 10;
    let (proxy, app, _) = outbound_proxy(DataPathSettings {
        http2_max_premature_resets: limit,
        ..settings()
    })
    .await;
    let (mut client, conn) = h2_client(proxy).await;
    let mut reset = 0;
    for i in 0..200 {
        let Ok(Ok(ready)) = timeout(DEADLINE, client.ready()).await else {
            break;
        };
        client = ready;
        // No END_STREAM: the app waits for a body that never comes.
        let Ok((mut resp, mut stream)) = client.send_request(h2_get("/paced"), false) else {
            break;
        };
        tokio::select! {
            () = app.wait_for_hits(i + 1) => {}
            // The connection is closing: the request is refused without
            // upstream work, or the stream dies with the connection.
            _ = &mut resp => break,
        }
        stream.send_reset(h2::Reason::CANCEL);
        reset += 1;
    }
    timeout(DEADLINE, conn)
        .await
        .expect("connection ended")
        .expect("join")
        .ok();
    println!(
        "paced reset: {reset} streams reset, {} reached the app",
        app.hits()
    );
    // One more than the limit may be in flight when the last reset trips it.
    assert!(
        app.hits() <= limit + 1,
        "{} requests reached the app",
        app.hits()
    );
    assert!(reset < 200);
    assert_h2_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn occasional_cancels_do_not_close_an_http2_connection() {
    let limit = 10;
    let (proxy, app, _) = outbound_proxy(DataPathSettings {
        http2_max_premature_resets: limit,
        ..settings()
    })
    .await;
    let (mut client, _conn) = h2_client(proxy).await;
    // Three answered requests for every cancelled one, well past the count.
    for i in 0..(4 * limit) {
        if i % 4 == 3 {
            client = timeout(DEADLINE, client.ready())
                .await
                .expect("ready in time")
                .expect("ready");
            let (_resp, mut stream) = client
                .send_request(h2_get("/cancelled"), false)
                .expect("send");
            app.wait_for_hits(i + 1).await;
            stream.send_reset(h2::Reason::CANCEL);
        } else {
            assert_eq!(
                h2_status(&mut client, h2_get("/answered")).await,
                StatusCode::OK
            );
        }
    }
    assert_eq!(
        h2_status(&mut client, h2_get("/still-open")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_header_limits_answer_431_and_414() {
    let limits = DataPathSettings {
        http_max_header_bytes: 8 * 1024,
        http_max_headers: 20,
        http_max_uri_bytes: 1024,
        ..settings()
    };
    let (proxy, app, _) = outbound_proxy(limits).await;
    let (mut client, _conn) = h2_client(proxy).await;
    let big = Request::builder()
        .uri("http://backend/big")
        .header("x-big", "a".repeat(9 * 1024))
        .body(())
        .expect("request");
    assert_eq!(
        h2_status(&mut client, big).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let mut many = Request::builder().uri("http://backend/many");
    for i in 0..21 {
        many = many.header(format!("x-{i}"), "v");
    }
    assert_eq!(
        h2_status(&mut client, many.body(()).expect("request")).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let long = h2_get(&format!("/{}", "u".repeat(1024)));
    assert_eq!(h2_status(&mut client, long).await, StatusCode::URI_TOO_LONG);
    // h2 resets a stream whose content-lengths differ; equal ones it lets
    // through, to a hop that may be HTTP/1.1.
    let two_lengths = Request::builder()
        .uri("http://backend/cl")
        .header("content-length", "0")
        .header("content-length", "0")
        .body(())
        .expect("request");
    assert_eq!(
        h2_status(&mut client, two_lengths).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.hits(), 0, "{:?}", app.paths());
    // The same connection goes on serving.
    assert_eq!(
        h2_status(&mut client, h2_get("/fine")).await,
        StatusCode::OK
    );
}

// Raw HTTP/2 frames, for what a well-behaved client library cannot send.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn hpack_int(first: u8, prefix_bits: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend(s);
}

/// A literal field without indexing, new name.
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_str(name.as_bytes(), &mut out);
    hpack_str(value, &mut out);
    out
}

/// `GET http://backend/` from the static table plus an authority.
fn request_block() -> Vec<u8> {
    let mut out = vec![0x82, 0x86, 0x84];
    out.extend(literal(":authority", b"backend"));
    out
}

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Opens a raw HTTP/2 connection and sends `frames` after the preface,
/// in the background; the caller reads what comes back meanwhile.
async fn raw_h2(addr: SocketAddr, frames: &[Vec<u8>]) -> OwnedReadHalf {
    let (read, mut write) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend(f);
    }
    // The proxy may hang up before it has read everything; what it sent
    // back is what the test looks at.
    tokio::spawn(async move {
        let _ = write.write_all(&out).await;
        // Held open while the test reads: a client FIN is no answer.
        sleep(DEADLINE).await;
        drop(write);
    });
    read
}

/// Reads frames until `done` says so, the connection closes or the
/// deadline passes.
async fn read_frames(s: &mut OwnedReadHalf, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
    let deadline = Instant::now() + DEADLINE;
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    while !done(&frames) {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push(Frame {
                kind: buf[3],
                stream,
                payload: buf[9..9 + len].to_vec(),
            });
            buf.drain(..9 + len);
        }
    }
    frames
}

fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .map(|f| u32::from_be_bytes(f.payload[4..8].try_into().expect("4 bytes")))
}

fn rst_code(frames: &[Frame], stream: u32) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == RST_STREAM && f.stream == stream)
        .map(|f| u32::from_be_bytes(f.payload[..4].try_into().expect("4 bytes")))
}

#[tokio::test]
async fn continuation_flood_gets_goaway() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, &request_block())];
    // Endless CONTINUATION frames, none ending the header block.
    let filler = literal("x-filler", b"0123456789");
    frames.extend((0..10_000).map(|_| frame(CONTINUATION, 0, 1, &filler)));
    let mut s = raw_h2(proxy, &frames).await;
    let got = read_frames(&mut s, |f| goaway_code(f).is_some()).await;
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));
    assert_eq!(app.hits(), 0);
    assert_h2_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn rapid_reset_burst_ends_in_goaway_with_bounded_upstream_work() {
    let settings = settings();
    // Streams reset before hyper took them are h2's to count; those it
    // took and whose handler then saw the reset are the proxy's. Either
    // way the connection stops after a few dozen, far below the burst.
    let bound = settings.http2_max_pending_accept_resets + settings.http2_max_premature_resets;
    let (proxy, app, _) = outbound_proxy(settings).await;
    // 10 000 streams, each opened (HEADERS, END_STREAM) and at once reset.
    let mut frames = Vec::new();
    for i in 0..10_000u32 {
        let stream = 2 * i + 1;
        frames.push(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &request_block(),
        ));
        frames.push(frame(RST_STREAM, 0, stream, &0x8u32.to_be_bytes()));
    }
    let mut s = raw_h2(proxy, &frames).await;
    let got = read_frames(&mut s, |f| goaway_code(f).is_some()).await;
    let goaway = got.iter().find(|f| f.kind == GOAWAY).expect("GOAWAY");
    let last_stream =
        u32::from_be_bytes(goaway.payload[..4].try_into().expect("4 bytes")) & 0x7fff_ffff;
    println!(
        "rapid reset: GOAWAY {:?} after stream {last_stream} of 19999; {} requests reached the app",
        goaway_code(&got),
        app.hits()
    );
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));
    assert!(last_stream < 19_999);
    assert!(
        app.hits() <= bound,
        "{} requests reached the app (bound {bound})",
        app.hits()
    );
    assert_h2_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn hpack_bomb_gets_goaway() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    // One 4 000-byte field in the dynamic table, then 4 000 one-byte
    // references to it: a 6 KiB frame that decodes to 16 MB.
    let mut block = request_block();
    block.push(0x40);
    hpack_str(b"x-bomb", &mut block);
    hpack_str(&[b'a'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0xbe, 4000));
    let mut s = raw_h2(
        proxy,
        &[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)],
    )
    .await;
    let got = read_frames(&mut s, |f| goaway_code(f).is_some()).await;
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));
    assert_eq!(app.hits(), 0);
    assert_h2_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn http2_requests_with_connection_specific_headers_are_reset() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    // Malformed requests (RFC 9113 §8.2.2) are a stream error: reset.
    let cases: [(&str, &[u8]); 5] = [
        ("transfer-encoding", b"chunked"),
        ("connection", b"keep-alive"),
        ("te", b"gzip"),
        ("upgrade", b"h2c"),
        ("content-length", b"1, 1"),
    ];
    for (name, value) in cases {
        let mut block = request_block();
        block.extend(literal(name, value));
        let mut s = raw_h2(
            proxy,
            &[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)],
        )
        .await;
        let got = read_frames(&mut s, |f| {
            rst_code(f, 1).is_some() || goaway_code(f).is_some()
        })
        .await;
        assert_eq!(rst_code(&got, 1), Some(PROTOCOL_ERROR), "{name}");
        assert_eq!(app.hits(), 0, "{name}");
    }
    // A field value h2 cannot even decode into a header (CR, LF, NUL)
    // breaks the connection's HPACK state: the whole connection goes.
    for value in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b"] {
        let mut block = request_block();
        block.extend(literal("x-bad", value));
        let mut s = raw_h2(
            proxy,
            &[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)],
        )
        .await;
        let got = read_frames(&mut s, |f| {
            rst_code(f, 1).is_some() || goaway_code(f).is_some()
        })
        .await;
        let code = goaway_code(&got).or(rst_code(&got, 1));
        assert_eq!(code, Some(PROTOCOL_ERROR), "{value:?}");
        assert_eq!(app.hits(), 0, "{value:?}");
    }
    assert_h2_still_serves(proxy, &app).await;
}

#[tokio::test]
async fn http2_body_longer_than_its_content_length_is_reset() {
    let (proxy, app, _) = outbound_proxy(settings()).await;
    // A POST promising 3 bytes whose DATA carries a second request: were
    // the extra bytes passed on to an HTTP/1.1 hop, they would be one.
    let mut block = vec![0x83, 0x86, 0x84];
    block.extend(literal(":authority", b"backend"));
    block.extend(literal("content-length", b"3"));
    let body = format!("abc{SMUGGLED}");
    let frames = [
        frame(HEADERS, END_HEADERS, 1, &block),
        frame(DATA, END_STREAM, 1, body.as_bytes()),
    ];
    let mut s = raw_h2(proxy, &frames).await;
    let got = read_frames(&mut s, |f| {
        rst_code(f, 1).is_some() || goaway_code(f).is_some()
    })
    .await;
    assert_eq!(rst_code(&got, 1), Some(PROTOCOL_ERROR));
    // The head may have gone upstream before the DATA frame came in.
    assert!(app.hits() <= 1);
    assert_h2_still_serves(proxy, &app).await;
    assert!(
        !app.paths().contains(&"/smuggled".to_owned()),
        "{:?}",
        app.paths()
    );
}

// ---- The mesh listener ----------------------------------------------------

async fn mesh_listener(settings: DataPathSettings) -> (SocketAddr, Arc<ProxyContext>) {
    let ctx = Arc::new(ProxyContext::new(settings));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mesh");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(MeshListener::new(listener, ctx.clone()).run());
    (addr, ctx)
}

/// A request a peer proxy would send: delivered to this pod's `app`.
fn mesh_request(app: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("http://backend{path}"))
        .header("x-knit-target-port", app.port())
        .header("x-knit-orig-proto", "HTTP/1.1")
        .body(Empty::new())
        .expect("request")
}

async fn mesh_peer(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn connection_limit_closes_the_extra_connection_and_keeps_the_others() {
    let (app_addr, app) = start_app().await;
    let limit = 3;
    let (mesh, ctx) = mesh_listener(DataPathSettings {
        max_connections_per_listener: limit,
        ..settings()
    })
    .await;
    let mut peers = Vec::new();
    for i in 0..limit {
        let mut peer = mesh_peer(mesh).await;
        let resp = peer
            .send_request(mesh_request(app_addr, &format!("/held{i}")))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        peers.push(peer);
    }
    // The extra connection is closed at once, before it can say anything.
    let got = exchange(mesh, PREFACE).await;
    assert!(got.closed && got.text.is_empty(), "{got:?}");
    assert_eq!(ctx.stats_map()["mesh.connections_refused"], 1);
    assert_eq!(ctx.stats_map()["mesh.connections"], limit as u64);
    // The connections held are unaffected.
    for (i, peer) in peers.iter_mut().enumerate() {
        let resp = peer
            .send_request(mesh_request(app_addr, &format!("/again{i}")))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // A connection that goes gives its place back.
    drop(peers.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stream = TcpStream::connect(mesh).await.expect("connect");
        let handshake =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
        if let Ok(Ok((mut peer, conn))) = timeout(Duration::from_secs(2), handshake).await {
            tokio::spawn(conn);
            if let Ok(resp) = peer.send_request(mesh_request(app_addr, "/new")).await {
                assert_eq!(resp.status(), StatusCode::OK);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.hits(), 2 * limit + 1);
}

#[tokio::test]
async fn mesh_listener_applies_the_same_http2_limits() {
    let (app_addr, app) = start_app().await;
    let (mesh, _) = mesh_listener(settings()).await;
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, &request_block())];
    frames.extend(
        (0..10_000).map(|_| frame(CONTINUATION, 0, 1, &literal("x-filler", b"0123456789"))),
    );
    let mut s = raw_h2(mesh, &frames).await;
    let got = read_frames(&mut s, |f| goaway_code(f).is_some()).await;
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));

    let mut peer = mesh_peer(mesh).await;
    let mut many = mesh_request(app_addr, "/many");
    for i in 0..100 {
        many.headers_mut().insert(
            http::HeaderName::try_from(format!("x-{i}")).expect("name"),
            "v".parse().expect("value"),
        );
    }
    let resp = peer.send_request(many).await.expect("response");
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(app.hits(), 0);
    let resp = peer
        .send_request(mesh_request(app_addr, "/fine"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.hits(), 1);
}
