//! Every lab app and its client, pod to pod over the bridge, without
//! sidecars: the baseline the mesh tests compare against. Needs root (CI
//! runs as root); without it every test fails saying so.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{OrLogs, new_lab};
use knit_lab::{
    AppSpec, BANNER_PORT, BannerClientSpec, ClientSpec, GRPC_PORT, GrpcClientSpec, GrpcMode, Lab,
    PodSpec, TCP_ECHO_PORT, TLS_PORT, TcpClientSpec, TlsClientSpec, WsClientSpec,
};
use tonic::Code;

/// A lab with `server` running every app and a plain `client` pod.
fn apps_lab(name: &str) -> (Lab, String) {
    let mut lab = new_lab(name);
    let server = lab
        .add_pod(
            PodSpec::new("server")
                .label("app", "server")
                .app(AppSpec::GrpcEcho { port: GRPC_PORT })
                .app(AppSpec::TlsEcho { port: TLS_PORT })
                .app(AppSpec::Banner { port: BANNER_PORT })
                .app(AppSpec::TcpEcho {
                    port: TCP_ECHO_PORT,
                }),
        )
        .or_logs(&lab);
    lab.add_pod(PodSpec::new("client")).or_logs(&lab);
    (lab, server.ip.to_string())
}

#[test]
fn every_app_answers_its_client_pod_to_pod() {
    let (lab, ip) = apps_lab("apps");

    // The server's WorkloadEntry names every port, so Services can target
    // them by name.
    let we = std::fs::read_to_string(lab.config_dir().join("we-server.yaml")).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&we).unwrap();
    assert_eq!(
        v["spec"]["ports"],
        serde_json::json!({"http": 8080, "grpc": 50051, "tls": 8443, "banner": 2525, "tcp": 9000}),
        "{we}"
    );
    let pod = lab.pod("server").unwrap();
    assert_eq!(pod.apps.len(), 4);
    assert_eq!(
        lab.pod_pids("server").unwrap().len(),
        5,
        "the echo and four apps"
    );

    // gRPC: unary, a bidirectional stream, and a deadline.
    let url = format!("http://{ip}:{GRPC_PORT}");
    let r = lab
        .run_grpc_client(
            "client",
            &GrpcClientSpec::new(&url, GrpcMode::Unary).count(10),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!((r.replies, r.by_pod["server"]), (10, 10), "{r:?}");
    assert_eq!(r.trailer.as_deref(), Some("server"), "{r:?}");
    let r = lab
        .run_grpc_client(
            "client",
            &GrpcClientSpec::new(&url, GrpcMode::Bidi).count(50),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!((r.sent, r.replies), (50, 50), "{r:?}");
    assert_eq!(r.trailer.as_deref(), Some("server"), "{r:?}");
    let r = lab
        .run_grpc_client(
            "client",
            &GrpcClientSpec::new(&url, GrpcMode::Slow)
                .slow(Duration::from_millis(3000))
                .deadline(Duration::from_millis(300))
                .expect(Code::DeadlineExceeded),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!((r.code, r.code_name.as_str()), (4, "DEADLINE_EXCEEDED"));
    assert!(r.elapsed_ms < 3000, "{r:?}");

    // WebSocket on the echo's /ws.
    let r = lab
        .run_ws_client(
            "client",
            &WsClientSpec::new(&format!("ws://{ip}:8080/ws")).count(20),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!((r.echoed, r.pod.as_deref()), (20, Some("server")), "{r:?}");

    // TLS: the certificate verifies against the lab CA for the SNI name,
    // and the server saw that name.
    let sni = "tls-echo.default.svc.cluster.local";
    let r = lab
        .run_tls_client(
            "client",
            &TlsClientSpec::new(&ip, TLS_PORT, lab.ca_file())
                .sni(sni)
                .bytes(1 << 20),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.hello, format!("hello from server sni={sni}"));
    assert_eq!(r.bytes_echoed, 1 << 20);
    let r = lab
        .run_tls_client(
            "client",
            &TlsClientSpec::new(&ip, TLS_PORT, lab.ca_file()).sni("tls-echo"),
        )
        .or_logs(&lab);
    assert_eq!((r.ok, r.sni.as_deref()), (true, Some("tls-echo")), "{r:?}");
    let r = lab
        .run_tls_client(
            "client",
            &TlsClientSpec::new(&ip, TLS_PORT, lab.ca_file()).sni("not-in-the-cert"),
        )
        .or_logs(&lab);
    assert!(!r.ok, "a name outside the certificate must fail: {r:?}");

    // Server speaks first, at once.
    let r = lab
        .run_banner_client("client", &BannerClientSpec::new(&ip, BANNER_PORT))
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.greeting, "220 server ready");
    assert!(r.greeting_ms < 2000, "{r:?}");

    // Half-close: the answer comes only after the client's FIN.
    let r = lab
        .run_tcp_client(
            "client",
            &TcpClientSpec::new(&ip, TCP_ECHO_PORT).bytes(1 << 20),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.bytes_sent, r.pod.as_deref()),
        (1 << 20, Some("server")),
        "{r:?}"
    );

    // A background gRPC client joins with its typed report.
    let handle = lab
        .spawn_app_client(
            "client",
            &GrpcClientSpec::new(&url, GrpcMode::Unary).count(5),
        )
        .or_logs(&lab);
    let r = handle.join().or_logs(&lab);
    assert_eq!((r.ok, r.replies), (true, 5), "{r:?}");

    // Every app logs to the lab's log dir like the echo.
    let logs: Vec<String> = std::fs::read_dir(lab.logs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for app in ["echo", "grpc-echo", "tls-echo", "banner", "tcp-echo"] {
        assert!(
            logs.contains(&format!("server.{app}.log")),
            "{app} log missing: {logs:?}"
        );
    }
}

#[test]
fn large_transfers_are_verified_by_sha256() {
    let (lab, ip) = apps_lab("xfer");
    const MIB_100: u64 = 100 * 1024 * 1024;
    let url = format!("http://{ip}:8080/");
    let big = |spec: ClientSpec| {
        spec.timeout(Duration::from_secs(240))
            .duration(Duration::from_secs(300))
    };

    let r = lab
        .run_client("client", &big(ClientSpec::new(&url).download(MIB_100)))
        .or_logs(&lab);
    assert!(r.all_ok(), "{r:?}");
    let check = r.transfer.as_ref().expect("download check");
    assert_eq!((check.bytes, check.problem.as_deref()), (MIB_100, None));
    assert_eq!(check.sha256, check.expected_sha256);
    assert_eq!(r.bytes_received, MIB_100);

    let r = lab
        .run_client("client", &big(ClientSpec::new(&url).upload(MIB_100)))
        .or_logs(&lab);
    assert!(r.all_ok(), "{r:?}");
    let check = r.transfer.as_ref().expect("upload check");
    assert_eq!((check.bytes, check.problem.as_deref()), (MIB_100, None));
    assert_eq!(r.bytes_sent, MIB_100);
    assert_eq!(r.by_pod, BTreeMap::from([("server".to_string(), 1)]));

    // h2c both ways, smaller.
    for spec in [
        ClientSpec::new(&url).download(16 << 20),
        ClientSpec::new(&url).upload(16 << 20),
    ] {
        let r = lab
            .run_client("client", &big(spec.http2(true).count(2)))
            .or_logs(&lab);
        assert!(r.all_ok(), "{r:?}");
        assert_eq!(r.verified, 2, "{r:?}");
    }
}
