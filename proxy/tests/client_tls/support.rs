//! What the client TLS tests share: a small PKI (rcgen), PEM files on disk,
//! TLS servers on loopback that report what they saw, the outbound side of
//! a proxy "captured" for one service VIP, and an HTTP/1.1 client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knit_proto::v1;
use knit_proxy::addr::{ClientAddr, OrigDstAddr};
use knit_proxy::config::snapshot::Snapshot;
use knit_proxy::context::{DataPathSettings, NodeMeta, ProxyContext};
use knit_proxy::outbound;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The service every test calls, and where its "captured" traffic goes.
pub const VIP: &str = "198.19.0.20:443";
pub const HOSTNAME: &str = "api.default.svc.cluster.local";

pub fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------- the PKI

pub struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn new_ca(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-sign CA");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("ASCII name"))
}

pub fn uri(name: &str) -> SanType {
    SanType::URI(name.try_into().expect("ASCII URI"))
}

/// A leaf signed by `ca` for `usage`, carrying `sans`.
pub fn leaf(ca: &Ca, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The server certificate most tests use: the service hostname, another
/// DNS name and a URI.
pub fn server_leaf(ca: &Ca) -> Leaf {
    leaf(
        ca,
        vec![
            dns(HOSTNAME),
            dns("api.example.test"),
            uri("spiffe://example.test/api"),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

/// PEM files the proxy reads, in a directory that lives as long as this.
pub struct Files(tempfile::TempDir);

impl Files {
    pub fn new() -> Files {
        Files(tempfile::tempdir().expect("tempdir"))
    }

    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).expect("write PEM");
        path.display().to_string()
    }

    pub fn path(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }
}

// ------------------------------------------------------------ the servers

/// What a test TLS server runs behind the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Greets with `sni=<sni> client=<yes|no> alpn=<alpn>`, then echoes
    /// until the client's FIN.
    Greeter,
    /// HTTP (HTTP/2 when ALPN chose it): answers `<version> <uri> sni=...`.
    Http,
}

pub struct TlsServer {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
}

impl TlsServer {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A server config for `leaf` offering `alpn`; with `client_ca`, a client
/// certificate from that CA is required.
pub fn server_config(leaf: &Leaf, alpn: &[&[u8]], client_ca: Option<&Ca>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der.clone()).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_server(config: Arc<ServerConfig>, app: App) -> TlsServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let seen = format!(
                    "sni={} client={} alpn={}",
                    session.server_name().unwrap_or("-"),
                    if session.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    session
                        .alpn_protocol()
                        .map_or("none".to_owned(), |p| String::from_utf8_lossy(p)
                            .into_owned())
                );
                let h2 = session.alpn_protocol() == Some(b"h2");
                match app {
                    App::Greeter => greet_and_echo(tls, seen).await,
                    App::Http => serve_http(tls, seen, h2).await,
                }
            });
        }
    });
    TlsServer { addr, accepted }
}

async fn greet_and_echo(tls: tokio_rustls::server::TlsStream<TcpStream>, seen: String) {
    let (read, mut write) = tokio::io::split(tls);
    if write
        .write_all(format!("{seen}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn serve_http(tls: tokio_rustls::server::TlsStream<TcpStream>, seen: String, h2: bool) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let body = format!("{:?} {} {seen}", req.version(), req.uri());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

// -------------------------------------------------------------- the proxy

/// A client TLS setting as knitd sends it, for DestinationRule
/// `default/api`.
pub fn client_tls(mode: v1::ClientTlsMode) -> v1::ClientTls {
    v1::ClientTls {
        mode: mode as i32,
        destination_rule: "default/api".into(),
        ..Default::default()
    }
}

/// Service `default/api` at [`VIP`] with one endpoint without a Knit proxy
/// at `server`, its port carrying `protocol` under `tls`.
pub fn response(
    server: SocketAddr,
    protocol: v1::Protocol,
    tls: Option<v1::ClientTls>,
) -> v1::DiscoveryResponse {
    v1::DiscoveryResponse {
        version_info: "test".into(),
        nonce: "n".into(),
        services: vec![v1::Service {
            name: "api".into(),
            namespace: "default".into(),
            hostname: HOSTNAME.into(),
            vips: vec!["198.19.0.20".into()],
            ports: vec![v1::ServicePort {
                name: "api".into(),
                port: 443,
                protocol: protocol as i32,
                client_tls: tls,
            }],
        }],
        endpoints: vec![v1::ServiceEndpoints {
            service_name: "api".into(),
            service_namespace: "default".into(),
            endpoints: vec![v1::Endpoint {
                address: server.ip().to_string(),
                workload_name: "api-1".into(),
                workload_namespace: "default".into(),
                service_account: "api".into(),
                ports: [(443, u32::from(server.port()))].into_iter().collect(),
                mesh_port: 0,
                mtls: None,
            }],
        }],
        ..Default::default()
    }
}

/// A proxy context serving `resp`, as the workload `frontend`.
pub fn context(resp: &v1::DiscoveryResponse) -> Arc<ProxyContext> {
    let mut ctx = ProxyContext::new(DataPathSettings {
        outbound_detect_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    ctx.node = NodeMeta {
        workload: "frontend".into(),
        namespace: "shop".into(),
    };
    let snapshot = Snapshot::from_proto(resp).unwrap_or_else(|e| panic!("config rejected: {e}"));
    ctx.config.publish(snapshot);
    Arc::new(ctx)
}

/// The outbound side of `ctx`, "captured" for [`VIP`]: every connection to
/// the returned address is handled as one the app made to the VIP.
pub async fn outbound_proxy(ctx: Arc<ProxyContext>) -> SocketAddr {
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

/// A finished response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// `count` HTTP/1.1 GETs on one connection to `proxy`.
pub async fn get_many(proxy: SocketAddr, count: usize) -> Vec<Reply> {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut replies = Vec::with_capacity(count);
    for i in 0..count {
        sender.ready().await.expect("ready");
        let req = Request::builder()
            .uri(format!("/r{i}"))
            .header("host", "api")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        replies.push(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    replies
}

pub async fn get(proxy: SocketAddr) -> Reply {
    get_many(proxy, 1).await.remove(0)
}
