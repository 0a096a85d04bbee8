//! The workload identity lifecycle against a real knitd, started in-process
//! on loopback with an in-memory CA: issuance, renewal, surviving the CA's
//! absence, refusals, mutual TLS between two issued identities, and the
//! proxy's readiness and metrics. Every wait is on a condition (an identity
//! change, a recorded failure, a readiness answer) with a generous
//! deadline; nothing sleeps for a fixed time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use knit_controlplane::model::TokenDigest;
use knit_controlplane::{Knitd, KnitdOptions};
use knit_proxy::identity::sign::IssueErrorClass;
use knit_proxy::identity::{
    IdentityManager, IdentityOptions, IssueError, MESH_ALPN, SpiffeId, SpiffeServerVerifier,
    TrustDomain, WorkloadIdentity, peer_identity, rejection_reason,
};
use knit_proxy::{DataPathSettings, NodeIdentity, ProxyOptions};
use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Generous: debug builds on two busy cores.
const DEADLINE: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "shop";

/// A token per workload: (entry name, service account, token).
const WEB: (&str, &str, &str) = ("web-0", "web", "7f3c0e5b9a1d4e2f8c6b0a9d7e5f3c1b");
const DB: (&str, &str, &str) = ("db-0", "db", "0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn workload_entry(name: &str, sa: &str, token: &str, address: &str) -> String {
    let digest = hex(&TokenDigest::of_token(token).0);
    format!(
        "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  \
         name: \"{name}\"\n  namespace: \"{NAMESPACE}\"\n  annotations:\n    \
         \"mesh.knit.dev/token-sha256\": \"{digest}\"\nspec:\n  address: \"{address}\"\n  \
         labels: {{\"app\": \"{sa}\"}}\n  serviceAccount: \"{sa}\"\n  ports: {{}}\n"
    )
}

/// A knitd on loopback whose config holds the WEB and DB workloads, and a
/// directory for token files.
struct Mesh {
    knitd: Knitd,
    dir: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        for (i, (name, sa, token)) in [WEB, DB].into_iter().enumerate() {
            let yaml = workload_entry(name, sa, token, &format!("198.18.0.{}", 11 + i));
            std::fs::write(config.join(format!("we-{name}.yaml")), yaml).expect("entry");
        }
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let knitd = Knitd::start(KnitdOptions {
            grpc_addr: loopback,
            grpc_tls_addr: None,
            http_addr: loopback,
            poll_interval: Duration::from_millis(50),
            ..KnitdOptions::new(&config)
        })
        .await
        .expect("knitd starts");
        Mesh { knitd, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.knitd.grpc_addr())
    }

    fn token_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, content).expect("token file");
        path
    }

    /// Options for workload `(name, sa, token)`, its token in a file with a
    /// trailing newline (as `echo` writes it).
    fn options(&self, (name, sa, token): (&str, &str, &str)) -> IdentityOptions {
        IdentityOptions {
            token_file: Some(self.token_file(name, &format!("{token}\n"))),
            requested_ttl: Duration::from_secs(3600),
            ..IdentityOptions::new(self.url(), td(), NAMESPACE, sa)
        }
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid")
}

fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::workload(&td(), NAMESPACE, sa).expect("valid")
}

/// Waits (up to `deadline`) for the manager's identity to change, and
/// returns what it changed to.
async fn next_change(
    changes: &mut watch::Receiver<u64>,
    manager: &IdentityManager,
    deadline: Duration,
) -> Option<Arc<WorkloadIdentity>> {
    tokio::time::timeout(deadline, changes.changed())
        .await
        .expect("the identity changed within the deadline")
        .expect("the manager is alive");
    manager.current()
}

#[tokio::test]
async fn issues_a_certificate_for_the_workload_that_verifies_against_the_bundle() {
    logs();
    let mesh = Mesh::start().await;
    let manager = IdentityManager::new(mesh.options(WEB));
    assert!(manager.current().is_none());
    let before = SystemTime::now();
    let identity = manager.sign_once().await.expect("issued");

    assert_eq!(identity.id, spiffe("web"));
    assert_eq!(
        identity.id.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(Arc::ptr_eq(
        &manager.current().expect("installed"),
        &identity
    ));
    // The bundle is knitd's, and the chain verifies to it as this ID.
    let roots: Vec<String> = mesh.knitd.ca().trust_bundle_pem();
    let from_knitd = knit_proxy::identity::TrustBundle::from_pem(td(), &roots).expect("bundle");
    assert_eq!(identity.bundle.roots(), from_knitd.roots());
    let (leaf, intermediates) = identity.cert_chain().split_first().expect("a leaf");
    SpiffeServerVerifier::new(identity.bundle.clone(), spiffe("web"))
        .verify(leaf, intermediates, UnixTime::now())
        .expect("the leaf verifies as web");
    // The requested hour, counted from issuance (whole seconds).
    let lifetime = identity
        .not_after
        .duration_since(before)
        .expect("expires in the future");
    assert!(
        lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3601),
        "{lifetime:?}"
    );
    assert!(identity.bundle_not_after() > identity.not_after);
    assert_eq!(identity.server_config.alpn_protocols, [MESH_ALPN.to_vec()]);
    assert_eq!(identity.serial().len(), 32, "16 random bytes, hex");
    assert!(!format!("{identity:?}").contains("PRIVATE"));

    // A second issuance is a new certificate for a new key.
    let again = manager.sign_once().await.expect("issued again");
    assert_ne!(again.serial(), identity.serial());
    assert_ne!(again.cert_chain()[0], identity.cert_chain()[0]);
    mesh.knitd.shutdown().await.expect("knitd stops");
}

#[tokio::test]
async fn renews_before_expiry_and_serves_the_old_identity_while_the_ca_is_gone() {
    logs();
    let mesh = Mesh::start().await;
    // knitd has no minimum lifetime; 6 s means a renewal about every 3 s.
    let opts = IdentityOptions {
        requested_ttl: Duration::from_secs(6),
        ..mesh.options(WEB)
    };
    let manager = IdentityManager::new(opts);
    let mut changes = manager.subscribe();
    let task = tokio::spawn(manager.clone().run());

    let first = next_change(&mut changes, &manager, DEADLINE)
        .await
        .expect("first identity");
    let renewed = next_change(&mut changes, &manager, DEADLINE)
        .await
        .expect("renewed identity");
    let seen_at = SystemTime::now();
    assert_ne!(renewed.serial(), first.serial(), "a new certificate");
    assert_eq!(renewed.id, first.id);
    assert!(
        seen_at < first.not_after,
        "renewed before the first certificate expired"
    );

    // The CA goes away: the next renewal fails, and the renewed identity
    // keeps serving until it expires.
    mesh.knitd.shutdown().await.expect("knitd stops");
    tokio::time::timeout(DEADLINE, async {
        while manager.last_failure().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a renewal failed");
    let failure = manager.last_failure().expect("recorded");
    assert_eq!(failure.reason, "ca_unreachable", "{failure:?}");
    let current = manager.current().expect("still has an identity");
    assert_eq!(current.serial(), renewed.serial());
    assert!(SystemTime::now() < renewed.not_after);

    // At expiry it is withdrawn (no peer would accept it), not before.
    let withdrawn = next_change(&mut changes, &manager, DEADLINE).await;
    assert!(withdrawn.is_none(), "withdrawn, not replaced");
    assert!(SystemTime::now() >= renewed.not_after);
    task.abort();
}

/// What the tests log, for the tests that check a log line.
///
/// One process-wide subscriber, installed before a test logs anything:
/// tracing caches per call site whether anyone listens, so a
/// thread-scoped subscriber misses lines that a parallel test's thread
/// reached first. Lines are told apart by the CA URL (a port per test) or
/// a certificate serial, which are unique.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

fn logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

#[tokio::test]
async fn a_wrong_token_gets_no_identity_and_a_logged_refusal_until_the_file_is_fixed() {
    let logs = logs();
    let mesh = Mesh::start().await;
    let opts = mesh.options(WEB);
    let token_file = opts.token_file.clone().expect("set");
    std::fs::write(&token_file, "not-the-token\n").expect("write");
    let manager = IdentityManager::new(opts);

    let err = manager.sign_once().await.expect_err("refused");
    assert!(matches!(err, IssueError::Refused(_)), "{err}");
    assert_eq!(
        err.status().map(tonic::Status::code),
        Some(tonic::Code::Unauthenticated)
    );
    assert_eq!(err.reason(), "ca_unauthenticated");
    assert_eq!(err.class(), IssueErrorClass::Refused);
    assert!(!err.is_retryable());
    assert!(manager.current().is_none());

    // The loop logs each failure with its status and keeps trying...
    let mut changes = manager.subscribe();
    let task = tokio::spawn(manager.clone().run());
    tokio::time::timeout(DEADLINE, async {
        while manager.last_failure().is_none_or(|f| f.consecutive < 2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two refusals recorded");
    assert!(manager.current().is_none());
    let failure = manager.last_failure().expect("recorded");
    assert_eq!(failure.reason, "ca_unauthenticated");
    let refusals = logs.lines_with(&format!("ca={}", mesh.url()));
    assert!(
        refusals.iter().any(|line| line.contains(" WARN ")
            && line.contains("workload certificate not issued: the CA refused: Unauthenticated")
            && line.contains("grpc_status=\"Unauthenticated\"")
            && line.contains("no certificate yet")),
        "{refusals:#?}"
    );
    assert!(
        logs.lines_with("not-the-token").is_empty(),
        "tokens are never logged"
    );

    // ...and reads the token file on every attempt, so fixing it is enough.
    std::fs::write(&token_file, format!("{}\n", WEB.2)).expect("write");
    let identity = next_change(&mut changes, &manager, DEADLINE)
        .await
        .expect("issued");
    assert_eq!(identity.id, spiffe("web"));
    assert!(manager.last_failure().is_none());
    let installed = logs.lines_with(&format!("serial={}", identity.serial()));
    assert!(
        installed
            .iter()
            .any(|line| line.contains("workload certificate installed")
                && line.contains("id=spiffe://cluster.local/ns/shop/sa/web")),
        "{installed:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_service_account_other_than_the_tokens_is_refused() {
    logs();
    let mesh = Mesh::start().await;
    // WEB's token, but asking for db's identity.
    let opts = IdentityOptions {
        service_account: "db".into(),
        ..mesh.options(WEB)
    };
    let err = IdentityManager::new(opts)
        .sign_once()
        .await
        .expect_err("refused");
    assert_eq!(err.reason(), "ca_permission_denied", "{err}");
    assert!(
        err.to_string()
            .contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{err}"
    );

    // No token file at all, and a CA that is not there.
    let opts = IdentityOptions {
        token_file: None,
        ..mesh.options(WEB)
    };
    let err = IdentityManager::new(opts)
        .sign_once()
        .await
        .expect_err("refused");
    assert_eq!(err.reason(), "ca_unauthenticated", "{err}");
    let url = mesh.url();
    mesh.knitd.shutdown().await.expect("knitd stops");
    let opts = IdentityOptions::new(url, td(), NAMESPACE, "web");
    let err = IdentityManager::new(opts)
        .sign_once()
        .await
        .expect_err("no CA");
    assert_eq!(
        (err.reason(), err.is_retryable()),
        ("ca_unreachable", true),
        "{err}"
    );
}

/// One TLS handshake over an in-memory pipe; on success one byte each way.
async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> (
    Result<Vec<u8>, &'static str>,
    Result<SpiffeId, &'static str>,
) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("unrelated.example").expect("valid");
    let connect = async {
        let mut tls = TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| reason(&e))?;
        tls.write_all(b"?").await.map_err(|e| reason(&e))?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| reason(&e))?;
        Ok(tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec())
    };
    let accept = async {
        let mut tls = TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| reason(&e))?;
        let peer = peer_identity(tls.get_ref().1).map_err(|e| e.reason())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| reason(&e))?;
        tls.write_all(b"!").await.map_err(|e| reason(&e))?;
        tls.flush().await.map_err(|e| reason(&e))?;
        Ok(peer)
    };
    tokio::time::timeout(DEADLINE, async { tokio::join!(connect, accept) })
        .await
        .expect("the handshake finished")
}

fn reason(err: &std::io::Error) -> &'static str {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or("io_error", rejection_reason)
}

#[tokio::test]
async fn client_configs_from_two_identities_of_one_ca_handshake_only_with_the_expected_peer() {
    logs();
    let mesh = Mesh::start().await;
    let web = IdentityManager::new(mesh.options(WEB))
        .sign_once()
        .await
        .expect("web issued");
    let db = IdentityManager::new(mesh.options(DB))
        .sign_once()
        .await
        .expect("db issued");
    assert_eq!(db.id, spiffe("db"));

    // web dials db, expecting db: both sides verify, the mesh ALPN is used.
    let to_db = web.client_config(&db.id).expect("client config");
    assert!(Arc::ptr_eq(
        &to_db,
        &web.client_config(&db.id).expect("cached")
    ));
    let (client, server) = handshake(to_db, db.server_config.clone()).await;
    assert_eq!(client.as_deref(), Ok(MESH_ALPN));
    assert_eq!(server, Ok(spiffe("web")), "db sees web's identity");

    // Expecting another workload: web refuses db's certificate.
    let to_other = web.client_config(&spiffe("cache")).expect("client config");
    let (client, server) = handshake(to_other, db.server_config.clone()).await;
    assert_eq!(client, Err("peer_identity_mismatch"));
    assert!(server.is_err());

    // And the other way round, after web renewed: old and new certificates
    // of one CA accept each other.
    let web_renewed = IdentityManager::new(mesh.options(WEB))
        .sign_once()
        .await
        .expect("web renewed");
    let (client, server) = handshake(
        db.client_config(&web.id).expect("config"),
        web_renewed.server_config.clone(),
    )
    .await;
    assert_eq!(client.as_deref(), Ok(MESH_ALPN));
    assert_eq!(server, Ok(spiffe("db")));

    // An ID outside the trust domain is refused when the config is built.
    let foreign = SpiffeId::parse("spiffe://other.domain/ns/shop/sa/db").expect("valid");
    assert_eq!(
        web.client_config(&foreign)
            .map(|_| ())
            .map_err(|e| e.reason()),
        Err("tls_config_invalid")
    );
    mesh.knitd.shutdown().await.expect("knitd stops");
}

/// A port nothing in this process has been handed before. The kernel may
/// hand a just-closed port out again, so each one is remembered; another
/// socket can still take it before the proxy binds it, which
/// [`start_proxy`] retries.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().expect("not poisoned");
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

type ProxyTask = tokio::task::JoinHandle<Result<(), knit_proxy::Error>>;

/// Runs the whole proxy for `WEB` against `mesh` on fresh loopback ports:
/// (readiness port, metrics port, stop, task). A port taken between
/// picking and binding is retried with new ones.
async fn start_proxy(
    mesh: &Mesh,
    identity: IdentityOptions,
) -> (u16, u16, tokio::sync::oneshot::Sender<()>, ProxyTask) {
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..5 {
        let (readiness, metrics) = (free_port(), free_port());
        let opts = ProxyOptions {
            control_plane: mesh.url(),
            control_plane_ca: None,
            node: NodeIdentity {
                pod_name: WEB.0.into(),
                namespace: NAMESPACE.into(),
                pod_ips: vec!["198.18.0.11".into()],
                service_account: WEB.1.into(),
            },
            outbound_addr: addr(free_port()),
            inbound_addr: addr(free_port()),
            mesh_addr: addr(free_port()),
            ipv6: false,
            admin_addr: addr(free_port()),
            readiness_addr: addr(readiness),
            metrics_addr: addr(metrics),
            settings: DataPathSettings::default(),
            identity: Some(identity.clone()),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut proxy = tokio::spawn(knit_proxy::run(opts, async move {
            let _ = stopped.await;
        }));
        // Binding comes first in `run`: once readiness answers, all six
        // listeners are bound.
        let started = tokio::time::timeout(DEADLINE, async {
            loop {
                if proxy.is_finished() {
                    return false;
                }
                if get(readiness, "/healthz/ready").await.is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the proxy binds its listeners");
        if started {
            return (readiness, metrics, stop, proxy);
        }
        match (&mut proxy).await.expect("joined") {
            Err(err) if err.reason() == "bind_failed" => {
                eprintln!("retrying on new ports: {err}");
            }
            other => panic!("the proxy stopped while starting: {other:?}"),
        }
    }
    panic!("no free set of ports after 5 tries");
}

/// Polls readiness until its body contains `want`: (status, body). Fails
/// at once, with the proxy's own error, if the proxy stops.
async fn poll_readiness(readiness: u16, proxy: &mut ProxyTask, want: &str) -> (u16, String) {
    let mut last = None;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            if proxy.is_finished() {
                panic!("the proxy stopped: {:?}", proxy.await);
            }
            if let Some((status, body)) = get(readiness, "/healthz/ready").await {
                if body.contains(want) {
                    return (status, body);
                }
                last = Some(body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("readiness never said {want:?}; last answer: {last:?}"))
}

/// `GET path` on 127.0.0.1:port: (status, body), or `None` if nothing
/// answers yet.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test]
async fn the_proxy_is_ready_only_once_it_holds_a_certificate() {
    logs();
    let mesh = Mesh::start().await;
    let identity = mesh.options(WEB);
    let token_file = identity.token_file.clone().expect("set");
    std::fs::write(&token_file, "wrong\n").expect("write");
    let (readiness, metrics, stop, mut proxy) = start_proxy(&mesh, identity).await;
    // Config arrives, but with a refused token there is no certificate.
    let (status, body) = poll_readiness(readiness, &mut proxy, "ca_unauthenticated").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: waiting for a workload certificate from the CA"),
        "{body}"
    );
    let (_, text) = get(metrics, "/metrics").await.expect("metrics answer");
    assert!(
        !text.contains("knit_identity_cert_expiry_seconds"),
        "{text}"
    );

    std::fs::write(&token_file, WEB.2).expect("write");
    let (status, _) = poll_readiness(readiness, &mut proxy, "ready\n").await;
    assert_eq!(status, 200);
    let (_, text) = get(metrics, "/metrics").await.expect("metrics answer");
    let gauge = |name: &str| -> i64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let cert = gauge("knit_identity_cert_expiry_seconds");
    assert!((3500..=3600).contains(&cert), "{cert}");
    assert!(gauge("knit_identity_bundle_expiry_seconds") > cert);

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, proxy)
        .await
        .expect("the proxy stops")
        .expect("joined")
        .expect("ran cleanly");
    mesh.knitd.shutdown().await.expect("knitd stops");
}

#[test]
fn options_that_can_never_work_are_refused_up_front() {
    let bad_url = IdentityOptions::new("not a url", td(), NAMESPACE, "web");
    assert_eq!(
        bad_url.validate().map_err(|e| e.reason()).err(),
        Some("ca_address_invalid")
    );
    let bad_sa = IdentityOptions::new("http://127.0.0.1:1", td(), NAMESPACE, "Web!");
    let err = bad_sa.validate().expect_err("not a SPIFFE path segment");
    assert_eq!(err.reason(), "identity_invalid");
    assert_eq!(err.class(), IssueErrorClass::Config);
    let good = IdentityOptions::new("http://127.0.0.1:1", td(), NAMESPACE, "web");
    assert_eq!(good.validate().ok(), Some(spiffe("web")));
}

/// Over knitd's TLS port (15012) the proxy verifies knitd against the root
/// it was given: the mesh root works, another root is refused before any
/// token is sent.
#[tokio::test]
async fn signing_over_tls_verifies_knitd_with_the_given_root() {
    logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let (name, sa, token) = WEB;
    std::fs::write(
        config.join("we-web.yaml"),
        workload_entry(name, sa, token, "198.18.0.11"),
    )
    .expect("entry");
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let knitd = Knitd::start(KnitdOptions {
        grpc_addr: loopback,
        grpc_tls_addr: Some(loopback),
        tls_sans: vec!["127.0.0.1".to_owned()],
        http_addr: loopback,
        ..KnitdOptions::new(&config)
    })
    .await
    .expect("knitd starts");
    let tls_addr = knitd.grpc_tls_addr().expect("TLS server runs");
    let root = dir.path().join("root.pem");
    std::fs::write(&root, knitd.ca().trust_bundle_pem().concat()).expect("root file");
    let token_file = dir.path().join("web.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let options = |root_file: &Path| IdentityOptions {
        token_file: Some(token_file.clone()),
        ca_root_file: Some(root_file.to_path_buf()),
        ..IdentityOptions::new(format!("https://{tls_addr}"), td(), NAMESPACE, sa)
    };

    let identity = IdentityManager::new(options(&root))
        .sign_once()
        .await
        .expect("issued over TLS");
    assert_eq!(identity.id, spiffe("web"));

    // A root that did not sign knitd's certificate.
    let other = Knitd::start(KnitdOptions {
        grpc_addr: loopback,
        grpc_tls_addr: None,
        http_addr: loopback,
        ..KnitdOptions::new(&config)
    })
    .await
    .expect("another knitd");
    let other_root = dir.path().join("other-root.pem");
    std::fs::write(&other_root, other.ca().trust_bundle_pem().concat()).expect("root file");
    let err = IdentityManager::new(options(&other_root))
        .sign_once()
        .await
        .expect_err("knitd is not verified by another root");
    assert_eq!(err.reason(), "ca_unreachable", "{err}");

    // An http:// CA with a root, or https:// without one, cannot work.
    let mismatched = IdentityOptions {
        ca_root_file: None,
        ..options(&root)
    };
    assert!(mismatched.validate().is_err());
}
