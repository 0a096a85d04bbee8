//! Helpers shared by the integration tests: config files, loopback HTTP,
//! and waiting on conditions with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous, so tests stay deterministic on busy machines.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const BACKEND_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: backend
spec:
  clusterIP: 198.19.0.10
  selector:
    app: backend
  ports:
  - name: http
    port: 80
    targetPort: web
";

pub fn workload_entry(name: &str, address: &str) -> String {
    format!(
        "apiVersion: mesh.knit.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: {name}
spec:
  address: {address}
  serviceAccount: backend
  labels:
    app: backend
  ports:
    web: 8080
"
    )
}

/// Writes `name` in one step (temp dotfile + rename), as operators should,
/// so a poll never sees half a file.
pub fn write_config(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).unwrap_or_else(|err| panic!("write {}: {err}", temp.display()));
    std::fs::rename(&temp, dir.join(name)).unwrap_or_else(|err| panic!("rename to {name}: {err}"));
}

/// `GET path` over a fresh loopback connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect {addr}: {err}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|err| panic!("send request: {err}"));
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response within {DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("read response: {err}"));
    let text = String::from_utf8(raw).unwrap_or_else(|err| panic!("response is not UTF-8: {err}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head:?}"));
    (status, body.to_owned())
}

pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: bad JSON ({err}): {body}"))
}

/// Polls `check` until it yields a value or `DEADLINE` passes.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= give_up {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
