//! Every protocol a pod speaks, end to end through two Knit proxies and
//! real capture: the frontend's app → its proxy → (one HTTP/2 connection)
//! → the backend's proxy → the backend's app.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{OrLogs, new_lab};
use knit_lab::{
    AppSpec, BANNER_PORT, BannerClientSpec, ClientSpec, GRPC_PORT, GrpcClientSpec, GrpcMode, Lab,
    PodSpec, ServiceSpec, TCP_ECHO_PORT, TLS_PORT, TcpClientSpec, TlsClientSpec, WsClientSpec,
    wait_until,
};

const PATIENCE: Duration = Duration::from_secs(30);
/// The frontend's detection timeout: long, so that waiting for it could not
/// be mistaken for anything else.
const DETECT_TIMEOUT_MS: u64 = 3000;
const MIB: u64 = 1024 * 1024;

/// Services on one backend pod running every lab app, and a frontend.
fn protocol_mesh(name: &str) -> Lab {
    let mut lab = new_lab(name);
    lab.start_knitd().or_logs(&lab);
    let services = [
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .port("grpc", GRPC_PORT, GRPC_PORT)
            .selector("app", "backend"),
        // Named for the certificate the TLS app serves; the app speaks TLS
        // end to end, the proxies only see bytes.
        ServiceSpec::new("tls-echo")
            .vip(Ipv4Addr::new(198, 19, 0, 11))
            .port("secure", 443, TLS_PORT)
            .selector("app", "backend"),
        // The same server-first app twice: declared opaque, and undeclared.
        ServiceSpec::new("smtp")
            .vip(Ipv4Addr::new(198, 19, 0, 12))
            .port_with_protocol("mail", BANNER_PORT, BANNER_PORT, "tcp")
            .selector("app", "backend"),
        ServiceSpec::new("greeter")
            .vip(Ipv4Addr::new(198, 19, 0, 13))
            .port("greet", BANNER_PORT, BANNER_PORT)
            .selector("app", "backend"),
        ServiceSpec::new("raw")
            .vip(Ipv4Addr::new(198, 19, 0, 14))
            .port("raw", TCP_ECHO_PORT, TCP_ECHO_PORT)
            .selector("app", "backend"),
    ];
    for svc in services {
        lab.add_service(svc).or_logs(&lab);
    }
    lab.add_pod(
        PodSpec::new("backend-1")
            .label("app", "backend")
            .service_account("backend")
            .sidecar(true)
            .app(AppSpec::GrpcEcho { port: GRPC_PORT })
            .app(AppSpec::TlsEcho { port: TLS_PORT })
            .app(AppSpec::Banner { port: BANNER_PORT })
            .app(AppSpec::TcpEcho {
                port: TCP_ECHO_PORT,
            }),
    )
    .or_logs(&lab);
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .sidecar(true)
            .proxy_arg(&format!("--detect-timeout-ms={DETECT_TIMEOUT_MS}")),
    )
    .or_logs(&lab);
    wait_until(
        "frontend's proxy to know every service's endpoint",
        PATIENCE,
        || {
            let dump = lab.proxy_config_dump("frontend")?;
            Ok(["backend", "tls-echo", "smtp", "greeter", "raw"]
                .iter()
                .all(|svc| {
                    dump["services"][format!("default/{svc}")]
                        .as_array()
                        .is_some_and(|ports| {
                            ports
                                .iter()
                                .all(|p| p["endpoints"].as_array().is_some_and(|e| e.len() == 1))
                        })
                }))
        },
    )
    .or_logs(&lab);
    lab
}

fn stats(lab: &Lab, pod: &str) -> BTreeMap<String, u64> {
    lab.proxy_stats(pod).or_logs(lab)
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// Runs `f` and checks that it went through both proxies: the frontend's
/// outbound listener took `connections` app connections, and the backend's
/// mesh listener saw `requests` requests and `tunnels` tunnels.
fn through_both_proxies(
    lab: &Lab,
    what: &str,
    connections: u64,
    requests: u64,
    tunnels: u64,
    f: impl FnOnce(),
) {
    let (front, back) = (stats(lab, "frontend"), stats(lab, "backend-1"));
    f();
    let (front2, back2) = (stats(lab, "frontend"), stats(lab, "backend-1"));
    assert_eq!(
        delta(&front2, &front, "outbound.connections"),
        connections,
        "{what}: frontend outbound connections"
    );
    assert_eq!(
        delta(&back2, &back, "mesh.requests"),
        requests,
        "{what}: backend mesh requests"
    );
    assert_eq!(
        delta(&back2, &back, "mesh.tunnels"),
        tunnels,
        "{what}: backend mesh tunnels"
    );
    assert_eq!(
        delta(&back2, &back, "inbound.connections"),
        0,
        "{what}: nothing bypassed the mesh port"
    );
}

#[test]
fn every_protocol_crosses_two_proxies() {
    let lab = protocol_mesh("protocols");
    let logs = || lab.logs_tail(30);

    through_both_proxies(&lab, "HTTP/1.1 keep-alive", 1, 50, 0, || {
        let r = lab
            .run_client("frontend", &ClientSpec::new("http://backend/").count(50))
            .or_logs(&lab);
        assert_eq!((r.sent, r.ok), (50, 50), "{r:?}\n{}", logs());
    });

    through_both_proxies(&lab, "100 MiB chunked upload", 1, 1, 0, || {
        let r = lab
            .run_client(
                "frontend",
                &ClientSpec::new("http://backend/")
                    .upload(100 * MIB)
                    .timeout(Duration::from_secs(120)),
            )
            .or_logs(&lab);
        assert_eq!(r.ok, 1, "{r:?}\n{}", logs());
        assert_eq!(r.bytes_sent, 100 * MIB, "{r:?}");
    });

    through_both_proxies(&lab, "100 MiB download", 1, 1, 0, || {
        let r = lab
            .run_client(
                "frontend",
                &ClientSpec::new("http://backend/")
                    .download(100 * MIB)
                    .timeout(Duration::from_secs(120)),
            )
            .or_logs(&lab);
        assert_eq!(r.ok, 1, "{r:?}\n{}", logs());
        assert_eq!(r.bytes_received, 100 * MIB, "{r:?}");
    });

    through_both_proxies(&lab, "HTTP/2 prior knowledge", 1, 20, 0, || {
        let r = lab
            .run_client(
                "frontend",
                &ClientSpec::new("http://backend/").count(20).http2(true),
            )
            .or_logs(&lab);
        assert_eq!((r.sent, r.ok), (20, 20), "{r:?}\n{}", logs());
    });

    let grpc_url = format!("http://backend:{GRPC_PORT}");
    through_both_proxies(&lab, "gRPC unary", 1, 10, 0, || {
        let r = lab
            .run_grpc_client(
                "frontend",
                &GrpcClientSpec::new(&grpc_url, GrpcMode::Unary).count(10),
            )
            .or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert_eq!(r.trailer.as_deref(), Some("backend-1"), "{r:?}");
    });
    through_both_proxies(&lab, "gRPC bidirectional stream", 1, 1, 0, || {
        let r = lab
            .run_grpc_client(
                "frontend",
                &GrpcClientSpec::new(&grpc_url, GrpcMode::Bidi).count(25),
            )
            .or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert_eq!(r.replies, 25, "{r:?}");
        assert_eq!(
            r.trailer.as_deref(),
            Some("backend-1"),
            "trailers crossed both proxies: {r:?}"
        );
    });
    through_both_proxies(&lab, "gRPC deadline", 1, 1, 0, || {
        let spec = GrpcClientSpec::new(&grpc_url, GrpcMode::Slow)
            .deadline(Duration::from_millis(300))
            .slow(Duration::from_secs(5))
            .expect(tonic::Code::DeadlineExceeded);
        let r = lab.run_grpc_client("frontend", &spec).or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert_eq!(r.code_name, "DEADLINE_EXCEEDED", "{r:?}");
    });

    // An upgrade gets a tunnel of its own.
    through_both_proxies(&lab, "WebSocket", 1, 0, 1, || {
        let r = lab
            .run_ws_client("frontend", &WsClientSpec::new("ws://backend/ws").count(20))
            .or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert_eq!(r.echoed, 20, "{r:?}");
    });

    through_both_proxies(&lab, "app-originated TLS", 1, 0, 1, || {
        let spec = TlsClientSpec::new("tls-echo", 443, lab.ca_file())
            .sni("tls-echo.default.svc.cluster.local");
        let r = lab.run_tls_client("frontend", &spec).or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert!(
            r.hello.contains("backend-1")
                && r.hello.contains("sni=tls-echo.default.svc.cluster.local"),
            "{r:?}"
        );
    });
    assert!(
        stats(&lab, "frontend")["outbound.detect.tls"] >= 1,
        "TLS was recognised, not decrypted"
    );

    through_both_proxies(&lab, "raw TCP with half-close", 1, 0, 1, || {
        let r = lab
            .run_tcp_client(
                "frontend",
                &TcpClientSpec::new("raw", TCP_ECHO_PORT).bytes(MIB),
            )
            .or_logs(&lab);
        assert!(r.ok, "{r:?}\n{}", logs());
        assert_eq!(r.bytes_received, MIB + "|backend-1".len() as u64, "{r:?}");
    });
}

/// On a declared opaque port the server's greeting arrives at once; on an
/// undeclared port the proxy first waits for the client to speak, then
/// falls back to TCP, and the protocol still works.
#[test]
fn server_first_protocols_skip_or_outwait_detection() {
    let lab = protocol_mesh("serverfirst");
    let before = stats(&lab, "frontend");

    let declared = lab
        .run_banner_client("frontend", &BannerClientSpec::new("smtp", BANNER_PORT))
        .or_logs(&lab);
    assert!(declared.ok, "{declared:?}\n{}", lab.logs_tail(30));
    assert!(declared.greeting.contains("backend-1"), "{declared:?}");
    assert!(
        declared.greeting_ms < DETECT_TIMEOUT_MS / 2,
        "a declared opaque port must not wait for detection: {declared:?}"
    );

    let sniffed = lab
        .run_banner_client("frontend", &BannerClientSpec::new("greeter", BANNER_PORT))
        .or_logs(&lab);
    assert!(sniffed.ok, "{sniffed:?}\n{}", lab.logs_tail(30));
    assert!(sniffed.greeting.contains("backend-1"), "{sniffed:?}");
    assert!(
        sniffed.greeting_ms >= DETECT_TIMEOUT_MS,
        "an undeclared server-first port waits out detection: {sniffed:?}"
    );

    let after = stats(&lab, "frontend");
    assert_eq!(delta(&after, &before, "outbound.detect.declared"), 1);
    assert_eq!(delta(&after, &before, "outbound.detect.timeout"), 1);
    assert_eq!(delta(&after, &before, "outbound.tcp.connections"), 2);
}

/// Excluded inbound ports and outbound CIDRs bypass the proxy; a pod
/// calling its own service goes through its proxy both ways and works.
#[test]
fn exclusions_bypass_the_proxy_and_self_calls_work() {
    let mut lab = new_lab("exclusions");
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    let backend = lab
        .add_pod(
            PodSpec::new("backend-1")
                .label("app", "backend")
                .sidecar(true)
                .init_arg("--exclude-inbound-ports=15000,15021,15090,8080"),
        )
        .or_logs(&lab);
    // The frontend does not capture traffic to the backend's /32.
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .sidecar(true)
            .init_arg(&format!("--exclude-outbound-cidrs={}/32", backend.ip)),
    )
    .or_logs(&lab);
    lab.add_pod(PodSpec::new("plain").label("app", "plain"))
        .or_logs(&lab);
    wait_until(
        "backend-1's proxy to know its own service",
        PATIENCE,
        || {
            let dump = lab.proxy_config_dump("backend-1")?;
            Ok(dump["services"]["default/backend"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 1))
        },
    )
    .or_logs(&lab);

    // Excluded inbound port: a client without a proxy reaches the app
    // directly, the backend's proxy sees nothing.
    let (front, back) = (stats(&lab, "frontend"), stats(&lab, "backend-1"));
    let url = format!("http://{}:8080/", backend.ip);
    let r = lab
        .run_client("plain", &ClientSpec::new(&url).count(5))
        .or_logs(&lab);
    assert_eq!(r.ok, 5, "{r:?}");
    // Excluded outbound CIDR: the frontend's own proxy sees nothing either.
    let r = lab
        .run_client("frontend", &ClientSpec::new(&url).count(5))
        .or_logs(&lab);
    assert_eq!(r.ok, 5, "{r:?}");
    let (front2, back2) = (stats(&lab, "frontend"), stats(&lab, "backend-1"));
    for name in [
        "outbound.connections",
        "inbound.connections",
        "mesh.connections",
    ] {
        assert_eq!(delta(&front2, &front, name), 0, "frontend {name}");
        assert_eq!(delta(&back2, &back, name), 0, "backend-1 {name}");
    }

    // A pod calling its own service: out through its proxy, back in through
    // the inbound side of the same proxy, to its own app.
    let r = lab
        .run_client("backend-1", &ClientSpec::new("http://backend/").count(10))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (10, 10), "{r:?}\n{}", lab.logs_tail(30));
    assert_eq!(r.by_pod.get("backend-1"), Some(&10), "{r:?}");
    let back3 = stats(&lab, "backend-1");
    assert_eq!(delta(&back3, &back2, "outbound.http.requests"), 10);
    assert_eq!(delta(&back3, &back2, "inbound.http.requests"), 10);
}
