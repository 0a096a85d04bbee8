//! Every app and its client over loopback, in-process and through the
//! `knit-lab` binary. No namespaces, so no root needed; the same pairs run
//! pod to pod in `apps.rs`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use knit_lab::client::{self, ClientSpec};
use knit_lab::{
    BannerClientSpec, GrpcClientSpec, GrpcMode, TcpClientSpec, TlsClientSpec, WsClientSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

async fn start_echo(pod: &'static str) -> SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::echo::serve(l, pod).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_uploads_are_verified_over_both_protocols() {
    let addr = start_echo("xfer").await;
    const N: u64 = 8 * 1024 * 1024 + 13;
    for http2 in [false, true] {
        let spec = ClientSpec::new(&format!("http://{addr}/"))
            .download(N)
            .count(2)
            .http2(http2)
            .timeout(Duration::from_secs(60));
        let r = client::run(&spec).await.unwrap();
        assert!(r.all_ok(), "http2={http2}: {r:?}");
        assert_eq!((r.verified, r.mismatched), (2, 0), "{r:?}");
        assert_eq!(r.bytes_received, 2 * N);
        assert_eq!(r.by_pod["xfer"], 2, "the pod comes from x-echo-pod");
        let check = r.transfer.as_ref().unwrap();
        assert_eq!((check.direction.as_str(), check.bytes), ("download", N));
        assert_eq!(check.sha256, knit_lab::pattern::pattern_sha256(N));

        let spec = ClientSpec::new(&format!("http://{addr}/"))
            .upload(N)
            .http2(http2)
            .timeout(Duration::from_secs(60));
        let r = client::run(&spec).await.unwrap();
        assert!(r.all_ok(), "http2={http2}: {r:?}");
        assert_eq!((r.verified, r.bytes_sent), (1, N), "{r:?}");
        let last = r.last.as_ref().unwrap().json().unwrap();
        assert_eq!(last["bytes"], N);
        let version = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(last["version"], version);
    }

    // The upload went chunked: the echo saw no Content-Length.
    let r = client::run(&ClientSpec::new(&format!("http://{addr}/")).upload(10))
        .await
        .unwrap();
    assert!(r.all_ok(), "{r:?}");

    // A server sending the wrong bytes fails the check, and the run says why.
    let (l, bad) = listener().await;
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123456789")
                    .await;
            });
        }
    });
    let r = client::run(&ClientSpec::new(&format!("http://{bad}/")).download(10))
        .await
        .unwrap();
    assert_eq!((r.sent, r.ok, r.mismatched), (1, 0, 1), "{r:?}");
    assert!(r.errors[0].contains("download check failed"), "{r:?}");
    assert!(!r.all_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_bidi_and_deadlines() {
    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::grpc::serve(l, "grpc-pod").await });
    let url = format!("http://{addr}");

    let r = knit_lab::grpc_client::run_client(&GrpcClientSpec::new(&url, GrpcMode::Unary).count(5))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.sent, r.replies), (5, 5));
    assert_eq!(r.by_pod["grpc-pod"], 5);
    assert_eq!(r.trailer.as_deref(), Some("grpc-pod"));
    assert_eq!((r.code, r.code_name.as_str()), (0, "OK"));

    let r = knit_lab::grpc_client::run_client(&GrpcClientSpec::new(&url, GrpcMode::Bidi).count(20))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.sent, r.replies), (20, 20));
    assert_eq!(
        r.trailer.as_deref(),
        Some("grpc-pod"),
        "a real trailer after the stream"
    );

    let slow = GrpcClientSpec::new(&url, GrpcMode::Slow)
        .slow(Duration::from_millis(2000))
        .deadline(Duration::from_millis(200))
        .expect(Code::DeadlineExceeded);
    let r = knit_lab::grpc_client::run_client(&slow).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.code, r.code_name.as_str()), (4, "DEADLINE_EXCEEDED"));
    assert!((200..1500).contains(&r.elapsed_ms), "{r:?}");

    // The same call expected to succeed says why it did not.
    let mut not_ok = slow.clone();
    not_ok.expect = "OK".into();
    let r = knit_lab::grpc_client::run_client(&not_ok).await.unwrap();
    assert!(!r.ok);
    assert!(
        r.reason.as_deref().unwrap().contains("DEADLINE_EXCEEDED"),
        "{r:?}"
    );

    // Within its deadline the slow call succeeds.
    let r = knit_lab::grpc_client::run_client(
        &GrpcClientSpec::new(&url, GrpcMode::Slow)
            .slow(Duration::from_millis(50))
            .deadline(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.trailer.as_deref(), Some("grpc-pod"));

    // Nobody listening: the run completes and reports UNAVAILABLE.
    let (gone, gone_addr) = listener().await;
    drop(gone);
    let r = knit_lab::grpc_client::run_client(&GrpcClientSpec::new(
        &format!("http://{gone_addr}"),
        GrpcMode::Unary,
    ))
    .await
    .unwrap();
    assert!(!r.ok);
    assert_eq!(r.code_name, "UNAVAILABLE", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_come_back() {
    let addr = start_echo("ws-pod").await;
    let r = knit_lab::ws::run_client(
        &WsClientSpec::new(&format!("ws://{addr}/ws"))
            .count(11)
            .size(100_000),
    )
    .await
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.sent, r.echoed), (11, 11));
    assert_eq!(r.pod.as_deref(), Some("ws-pod"));
    assert_eq!(r.close_code, Some(1000), "{r:?}");

    // A path that is no WebSocket endpoint fails the handshake, reported.
    let r = knit_lab::ws::run_client(&WsClientSpec::new(&format!("ws://{addr}/other")))
        .await
        .unwrap();
    assert!(!r.ok);
    assert!(r.reason.as_deref().unwrap().contains("handshake"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_echo_with_sni_and_certificate_checks() {
    let dir = tempfile::tempdir().unwrap();
    knit_lab::tls::write_lab_certs(dir.path()).unwrap();
    let config = knit_lab::tls::server_config(dir.path()).unwrap();
    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::tls::serve_echo(l, "tls-pod", config).await });
    let ca = dir.path().join(knit_lab::tls::CA_FILE);

    let spec = TlsClientSpec::new("127.0.0.1", addr.port(), &ca)
        .sni("tls-echo.default.svc.cluster.local")
        .bytes(3 * 1024 * 1024);
    let r = knit_lab::tls_client::run_client(&spec).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.hello,
        "hello from tls-pod sni=tls-echo.default.svc.cluster.local"
    );
    assert_eq!(r.pod.as_deref(), Some("tls-pod"));
    assert_eq!(r.bytes_echoed, 3 * 1024 * 1024);
    assert_eq!(r.tls_version.as_deref(), Some("TLSv1_3"));

    // A name the certificate does not carry: the client refuses the server.
    let wrong = TlsClientSpec::new("127.0.0.1", addr.port(), &ca).sni("other.example");
    let r = knit_lab::tls_client::run_client(&wrong).await.unwrap();
    assert!(!r.ok);
    assert!(
        r.reason.as_deref().unwrap().contains("certificate"),
        "{r:?}"
    );

    // Another lab's CA does not vouch for this server.
    let other = tempfile::tempdir().unwrap();
    knit_lab::tls::write_lab_certs(other.path()).unwrap();
    let spec =
        TlsClientSpec::new("127.0.0.1", addr.port(), other.path().join("ca.pem")).sni("tls-echo");
    let r = knit_lab::tls_client::run_client(&spec).await.unwrap();
    assert!(!r.ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_and_half_close_echo() {
    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::tcp_apps::serve_banner(l, "banner-pod").await });
    let r =
        knit_lab::tcp_clients::run_banner_client(&BannerClientSpec::new("127.0.0.1", addr.port()))
            .await
            .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.greeting, "220 banner-pod ready");
    assert_eq!(r.pod.as_deref(), Some("banner-pod"));
    assert_eq!(r.echo, "hello from knit-lab banner-client");
    assert_eq!(r.bye, "221 bye");
    assert!(r.greeting_ms < 1000, "{r:?}");

    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::tcp_apps::serve_tcp_echo(l, "tcp-pod").await });
    for n in [0u64, 1, 5 * 1024 * 1024] {
        let r = knit_lab::tcp_clients::run_tcp_client(
            &TcpClientSpec::new("localhost", addr.port()).bytes(n),
        )
        .await
        .unwrap();
        assert!(r.ok, "{n}: {r:?}");
        assert_eq!(r.bytes_sent, n);
        assert_eq!(r.bytes_received, n + "|tcp-pod".len() as u64);
        assert_eq!(r.pod.as_deref(), Some("tcp-pod"));
    }

    // A server that answers before the FIN is not a half-close echo.
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.write_all(b"early").await;
    });
    let r = knit_lab::tcp_clients::run_tcp_client(
        &TcpClientSpec::new("127.0.0.1", addr.port()).bytes(10),
    )
    .await
    .unwrap();
    assert!(!r.ok, "{r:?}");
}

fn knit_lab_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_knit-lab"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_print_one_json_report_and_exit_0_when_they_ran() {
    let (l, addr) = listener().await;
    tokio::spawn(async move { knit_lab::grpc::serve(l, "cli-grpc").await });
    let (l, banner) = listener().await;
    tokio::spawn(async move { knit_lab::tcp_apps::serve_banner(l, "cli-banner").await });
    let echo = start_echo("cli-echo").await;
    let out = tokio::task::spawn_blocking(move || {
        let grpc = knit_lab_cli(&[
            "grpc-client",
            "--url",
            &format!("http://{addr}"),
            "--mode",
            "bidi",
            "--count",
            "3",
        ]);
        let banner = knit_lab_cli(&[
            "banner-client",
            "--host",
            "127.0.0.1",
            "--port",
            &banner.port().to_string(),
        ]);
        let ws = knit_lab_cli(&[
            "ws-client",
            "--url",
            &format!("ws://{echo}/ws"),
            "--count",
            "2",
        ]);
        let dl = knit_lab_cli(&[
            "client",
            "--url",
            &format!("http://{echo}/"),
            "--download",
            "100000",
            "--http2",
        ]);
        // Refused: it ran, so exit 0 with ok=false.
        let refused = knit_lab_cli(&["tcp-client", "--host", "127.0.0.1", "--port", "9"]);
        let bad = knit_lab_cli(&["grpc-client", "--url", "ftp://x", "--mode", "unary"]);
        (grpc, banner, ws, dl, refused, bad)
    })
    .await
    .unwrap();
    let json = |o: &std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let grpc = json(&out.0);
    assert_eq!(
        (grpc["ok"].as_bool(), grpc["replies"].as_u64()),
        (Some(true), Some(3)),
        "{grpc}"
    );
    assert_eq!(grpc["trailer"], "cli-grpc");
    let banner = json(&out.1);
    assert_eq!(banner["pod"], "cli-banner", "{banner}");
    assert!(banner["greeting_ms"].is_u64());
    let ws = json(&out.2);
    assert_eq!(ws["echoed"], 2, "{ws}");
    let dl = json(&out.3);
    assert_eq!(
        (dl["ok"].as_u64(), dl["verified"].as_u64()),
        (Some(1), Some(1)),
        "{dl}"
    );
    assert_eq!(dl["transfer"]["bytes"], 100000);
    let refused = json(&out.4);
    assert_eq!(refused["ok"], false);
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("connecting to 127.0.0.1:9"),
        "{refused}"
    );
    assert!(!out.5.status.success());
    assert!(String::from_utf8_lossy(&out.5.stderr).contains("invalid --url"));
}
