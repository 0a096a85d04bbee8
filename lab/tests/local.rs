//! The echo app and the load client over loopback, in-process and through
//! the `knit-lab` binary. No namespaces, so no root needed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_lab::client::{self, ClientSpec};
use tokio::net::{TcpListener, TcpStream};

async fn start_echo(name: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { knit_lab::echo::serve(listener, name).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_counts_echo_answers() {
    let addr = start_echo("local-echo").await;
    let spec = ClientSpec::new(&format!("http://{addr}/x"))
        .count(50)
        .concurrency(4);
    let r = client::run(&spec).await.unwrap();
    assert_eq!((r.sent, r.ok, r.failed), (50, 50, 0), "{r:?}");
    assert_eq!(r.statuses, BTreeMap::from([(200, 50)]));
    assert_eq!(r.by_pod, BTreeMap::from([("local-echo".to_string(), 50)]));
    assert!(r.last.is_none(), "last is only kept for a single request");

    // One request: the whole response is kept; the echo saw method, body and headers.
    let spec = ClientSpec::new(&format!("http://localhost:{}/y?z=1", addr.port()))
        .method("POST")
        .body_bytes(1000)
        .header("x-test", "yes");
    let r = client::run(&spec).await.unwrap();
    let last = r.last.expect("last response");
    assert_eq!(last.status, 200);
    assert_eq!(last.header("content-type"), Some("application/json"));
    let body = last.json().unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/y?z=1");
    assert_eq!(body["body_bytes"], 1000);
    assert_eq!(body["headers"]["x-test"], "yes");
    assert_eq!(body["host"], format!("localhost:{}", addr.port()));
    assert!(body["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let r = client::run(&ClientSpec::new(&format!("http://{addr}/status/503")).count(3))
        .await
        .unwrap();
    assert_eq!((r.sent, r.ok), (3, 0));
    assert_eq!(r.statuses, BTreeMap::from([(503, 3)]));
    assert_eq!(r.by_pod["local-echo"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_failures_and_stops_in_time() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let r = client::run(&ClientSpec::new(&format!("http://{closed}/")).count(3))
        .await
        .unwrap();
    assert_eq!((r.sent, r.failed, r.ok), (3, 3, 0), "{r:?}");
    assert_eq!(r.errors.len(), 1, "identical errors are kept once: {r:?}");
    assert!(r.errors[0].contains("connecting to"), "{r:?}");

    // A server that accepts and never answers: the per-request timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let spec =
        ClientSpec::new(&format!("http://{silent_addr}/")).timeout(Duration::from_millis(200));
    let r = client::run(&spec).await.unwrap();
    assert_eq!(r.failed, 1);
    assert!(r.errors[0].contains("no response within 200 ms"), "{r:?}");
    drop(silent);

    // The duration cap ends a long run early.
    let addr = start_echo("slow").await;
    let spec = ClientSpec::new(&format!("http://{addr}/"))
        .count(1000)
        .interval(Duration::from_millis(100))
        .duration(Duration::from_millis(450));
    let r = client::run(&spec).await.unwrap();
    assert!((3..=6).contains(&r.sent), "{r:?}");
    assert!(r.elapsed_ms < 2000, "{r:?}");

    assert!(client::run(&ClientSpec::new("https://x/")).await.is_err());
    assert!(
        client::run(&ClientSpec::new("http://x/").count(0))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_speaks_h2c_with_prior_knowledge() {
    let addr = start_echo("h2").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/grpc-ish"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["pod"], "h2");
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["host"], addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_prints_one_json_report() {
    let addr = start_echo("cli").await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_knit-lab"))
            .args([
                "client",
                "--url",
                &format!("http://{addr}/"),
                "--count",
                "5",
                "--concurrency",
                "2",
            ])
            .args(["--header", "x-a: b"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["sent"], 5);
    assert_eq!(v["ok"], 5);
    assert_eq!(v["statuses"]["200"], 5);
    assert_eq!(v["by_pod"]["cli"], 5);
    assert!(v["elapsed_ms"].is_u64());

    let bad = Command::new(env!("CARGO_BIN_EXE_knit-lab"))
        .args(["client", "--url", "ftp://x/"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("invalid --url") && stderr.contains("only http"),
        "{stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_knit-lab"))
        .args(["client", "--url", "http://x/", "--header", "nocolon"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
