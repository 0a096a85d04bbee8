//! Scenario (e)'s load: a new mutual-TLS connection per request, straight
//! to a server-side proxy's mesh port, so every request costs the server a
//! full TLS 1.3 handshake with a client certificate. The client holds a
//! workload certificate from the contender's own CA and verifies the
//! server's SPIFFE ID the way Knit's proxies do; each connection carries
//! one HTTP/2 request and is closed.
//!
//! It runs as `knit-bench handshake-client` inside the client pod (its
//! network namespace is entered by `ip netns exec`, never by this process)
//! and prints its [`HandshakeReport`] as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_lab::Histogram;
use knit_proxy::identity::{SpiffeId, SpiffeServerVerifier, TrustBundle, TrustDomain};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::{BenchError, Result};

/// The most connections one run may open, whatever its duration.
pub const MAX_CONNECTIONS_PER_RUN: u64 = 1_000_000;

/// What to connect to, and how hard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeSpec {
    pub addr: SocketAddr,
    /// PEM files: the client's certificate and key, and the root(s) the
    /// server's certificate must chain to.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The SPIFFE ID the server must present.
    pub server_id: String,
    /// The ALPN protocol offered (`knit/h2` for Knit, `h2` for Envoy).
    pub alpn: String,
    /// Request path, and an extra header (Knit's target port).
    pub path: String,
    pub header: Option<(String, String)>,
    /// Connections in flight at once; the run's length.
    pub concurrency: u64,
    pub duration: Duration,
}

impl HandshakeSpec {
    /// The arguments of `knit-bench handshake-client` for this spec.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "handshake-client".to_string(),
            "--addr".to_string(),
            self.addr.to_string(),
            "--cert".to_string(),
            self.cert.display().to_string(),
            "--key".to_string(),
            self.key.display().to_string(),
            "--ca".to_string(),
            self.ca.display().to_string(),
            "--server-id".to_string(),
            self.server_id.clone(),
            "--alpn".to_string(),
            self.alpn.clone(),
            "--path".to_string(),
            self.path.clone(),
            "--concurrency".to_string(),
            self.concurrency.to_string(),
            "--duration-ms".to_string(),
            self.duration.as_millis().to_string(),
        ];
        if let Some((name, value)) = &self.header {
            args.push("--header".to_string());
            args.push(format!("{name}: {value}"));
        }
        args
    }
}

/// What the client saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeReport {
    /// Connections attempted, and those whose request got a 2xx.
    pub attempted: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub elapsed_ms: u64,
    pub bytes_received: u64,
    /// Connect + handshake + request, per connection.
    pub latency: Histogram,
}

/// Runs the client loop: `concurrency` workers each open a connection,
/// send one request, close, and go again until the duration ends.
pub async fn run(spec: HandshakeSpec) -> Result<HandshakeReport> {
    let connector = connector(&spec)?;
    let server_name = ServerName::IpAddress(spec.addr.ip().into());
    let shared = Arc::new((spec, connector, server_name));
    let started = Instant::now();
    let deadline = started + shared.0.duration;
    let per_worker = MAX_CONNECTIONS_PER_RUN / shared.0.concurrency.max(1);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shared.0.concurrency.max(1) {
        let shared = shared.clone();
        workers.spawn(async move {
            let (spec, connector, name) = &*shared;
            let mut report = HandshakeReport::default();
            while Instant::now() < deadline && report.attempted < per_worker {
                report.attempted += 1;
                let began = Instant::now();
                match one(spec, connector, name.clone()).await {
                    Ok(bytes) => {
                        report.ok += 1;
                        report.bytes_received += bytes;
                        report.latency.record(began.elapsed());
                    }
                    Err(e) => {
                        report.errors += 1;
                        if report.error_samples.len() < 5 {
                            report.error_samples.push(e);
                        }
                    }
                }
            }
            report
        });
    }
    let mut total = HandshakeReport::default();
    while let Some(done) = workers.join_next().await {
        let r = done.map_err(|e| BenchError::invalid("handshake worker", e.to_string()))?;
        total.attempted += r.attempted;
        total.ok += r.ok;
        total.errors += r.errors;
        total.bytes_received += r.bytes_received;
        total.latency.merge(&r.latency);
        for e in r.error_samples {
            if total.error_samples.len() < 10 {
                total.error_samples.push(e);
            }
        }
    }
    total.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(total)
}

/// One connection, one request: the body's length, or what failed.
async fn one(
    spec: &HandshakeSpec,
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
) -> std::result::Result<u64, String> {
    const STEP: Duration = Duration::from_secs(5);
    let step = |what: &'static str| move |_| format!("{what}: timed out after {STEP:?}");
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(spec.addr))
        .await
        .map_err(step("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .map_err(step("handshake"))?
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("http2: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::get(format!("https://{}{}", spec.addr, spec.path));
    if let Some((k, v)) = &spec.header {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = tokio::time::timeout(STEP, async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        Ok(body.len() as u64)
    })
    .await
    .map_err(step("request"))?;
    // Closing the connection is part of the cost the scenario measures.
    drop(sender);
    let _ = driver.await;
    result
}

fn connector(spec: &HandshakeSpec) -> Result<tokio_rustls::TlsConnector> {
    let bad = |what: &str, e: String| BenchError::invalid(what, e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.cert)
        .map_err(|e| bad(&spec.cert.display().to_string(), e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&spec.cert.display().to_string(), e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&spec.key)
        .map_err(|e| bad(&spec.key.display().to_string(), e.to_string()))?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.ca)
        .map_err(|e| bad(&spec.ca.display().to_string(), e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&spec.ca.display().to_string(), e.to_string()))?;
    let server_id =
        SpiffeId::parse(&spec.server_id).map_err(|e| bad("--server-id", e.to_string()))?;
    let domain = TrustDomain::new(server_id.trust_domain())
        .map_err(|e| bad("--server-id", e.to_string()))?;
    let bundle = TrustBundle::new(domain, roots)
        .map_err(|e| bad(&spec.ca.display().to_string(), e.to_string()))?;
    let verifier = SpiffeServerVerifier::new(Arc::new(bundle), server_id);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS versions", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("client certificate", e.to_string()))?;
    config.alpn_protocols = vec![spec.alpn.as_bytes().to_vec()];
    // One handshake per connection is the point: no resumption.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_the_spec() {
        let spec = HandshakeSpec {
            addr: "198.18.0.5:15008".parse().unwrap(),
            cert: "/c.pem".into(),
            key: "/c.key".into(),
            ca: "/ca.pem".into(),
            server_id: "spiffe://cluster.local/ns/default/sa/s".to_string(),
            alpn: "knit/h2".to_string(),
            path: "/bytes/1024".to_string(),
            header: Some(("x-knit-target-port".to_string(), "8080".to_string())),
            concurrency: 8,
            duration: Duration::from_secs(3),
        };
        let args = spec.to_args();
        assert_eq!(args[0], "handshake-client");
        let at = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].clone()
        };
        assert_eq!(at("--addr"), "198.18.0.5:15008");
        assert_eq!(at("--alpn"), "knit/h2");
        assert_eq!(at("--duration-ms"), "3000");
        assert_eq!(at("--header"), "x-knit-target-port: 8080");
    }
}
