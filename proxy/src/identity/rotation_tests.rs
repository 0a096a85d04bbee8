//! Root rotation and CA restarts as a proxy's identity manager sees them,
//! against a real knitd started in-process on loopback and restarted with
//! the CA options of each step of the operator's procedure (see knitd's
//! `ca` module docs). Every wait is on a condition with a generous
//! deadline.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use knit_controlplane::ca::{CaOptions, CaSource};
use knit_controlplane::model::TokenDigest;
use knit_controlplane::{Knitd, KnitdOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::manager::{IdentityManager, IdentityOptions, WorkloadIdentity};
use super::{SpiffeId, TrustDomain, bundle::fingerprint, io_rejection_reason};

/// Generous: debug builds on two busy cores.
const DEADLINE: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "shop";
/// (entry name, service account, token) per workload.
const WEB: (&str, &str, &str) = ("web-0", "web", "3a6f1c0e9b2d4f7a8c5e1b0d9f3a7c2e");
const DB: (&str, &str, &str) = ("db-0", "db", "8e2c4a6f0b1d3e5f7a9c2b4d6e8f0a1c");

fn trust_domain() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid")
}

fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::workload(&trust_domain(), NAMESPACE, sa).expect("valid")
}

fn write(path: &Path, content: &str, mode: u32) -> PathBuf {
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_path_buf()
}

/// A self-signed ECDSA P-256 root, its files written into `dir`.
struct Root {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

fn make_root(dir: &Path, name: &str) -> Root {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Knit test root {name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed");
    Root {
        cert: write(&dir.join(format!("{name}.pem")), &cert.pem(), 0o644),
        key: write(
            &dir.join(format!("{name}-key.pem")),
            &key.serialize_pem(),
            0o600,
        ),
        fingerprint: fingerprint(cert.der()),
    }
}

/// A config directory with the WEB and DB workloads, and one address that
/// every knitd of the test binds, so the managers reach whichever runs.
struct Mesh {
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Mesh {
    fn new() -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        for (i, (name, sa, token)) in [WEB, DB].into_iter().enumerate() {
            let digest: String = TokenDigest::of_token(token)
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let yaml = format!(
                "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  \
                 name: \"{name}\"\n  namespace: \"{NAMESPACE}\"\n  annotations:\n    \
                 \"mesh.knit.dev/token-sha256\": \"{digest}\"\nspec:\n  address: \"198.18.0.{}\"\n  \
                 serviceAccount: \"{sa}\"\n  ports: {{}}\n",
                11 + i
            );
            std::fs::write(config.join(format!("we-{name}.yaml")), yaml).expect("entry");
        }
        Mesh {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Starts knitd with `ca`; the first start picks the port, later ones
    /// reuse it (a restart).
    async fn start(&mut self, ca: CaOptions) -> Knitd {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let knitd = Knitd::start(KnitdOptions {
            grpc_addr: self.addr,
            grpc_tls_addr: None,
            http_addr: loopback,
            poll_interval: Duration::from_millis(50),
            ca,
            ..KnitdOptions::new(self.dir.path().join("config"))
        })
        .await
        .expect("knitd starts");
        self.addr = knitd.grpc_addr();
        knitd
    }

    fn manager(
        &self,
        (name, sa, token): (&str, &str, &str),
        ttl: Duration,
    ) -> Arc<IdentityManager> {
        let token_file = write(&self.dir.path().join(format!("{name}.token")), token, 0o600);
        IdentityManager::new(IdentityOptions {
            token_file: Some(token_file),
            requested_ttl: ttl,
            ..IdentityOptions::new(
                format!("http://{}", self.addr),
                trust_domain(),
                NAMESPACE,
                sa,
            )
        })
    }
}

fn plug_in(root: &Root, extra: Option<&Root>) -> CaOptions {
    CaOptions {
        source: CaSource::PlugIn {
            cert: root.cert.clone(),
            key: root.key.clone(),
            chain: None,
        },
        extra_trust_bundle: extra.map(|r| r.cert.clone()),
        ..CaOptions::default()
    }
}

type Client = tokio_rustls::client::TlsStream<DuplexStream>;
type Server = tokio_rustls::server::TlsStream<DuplexStream>;

/// One mesh handshake over an in-memory pipe, `client` dialling a peer
/// that must be `expected`; the two ends, or the client's rejection reason.
async fn dial(
    client: &WorkloadIdentity,
    expected: &SpiffeId,
    server: Arc<ServerConfig>,
) -> Result<(Client, Server), &'static str> {
    let config: Arc<ClientConfig> = client.client_config(expected).expect("client config");
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("unrelated.example").expect("valid");
    let (connected, accepted) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(
            TlsConnector::from(config).connect(name, c),
            TlsAcceptor::from(server).accept(s)
        )
    })
    .await
    .expect("the handshake finished");
    let client = connected.map_err(|e| io_rejection_reason(&e))?;
    let server = accepted.map_err(|e| io_rejection_reason(&e))?;
    Ok((client, server))
}

/// A request and an answer over an established connection.
async fn exchange((client, server): &mut (Client, Server)) {
    let round = async {
        client.write_all(b"ping").await.expect("client writes");
        client.flush().await.expect("client flushes");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("server reads");
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.expect("server writes");
        server.flush().await.expect("server flushes");
        client.read_exact(&mut buf).await.expect("client reads");
        assert_eq!(&buf, b"pong");
    };
    tokio::time::timeout(DEADLINE, round)
        .await
        .expect("the exchange finished");
}

/// The three restarts of the procedure, with a long-lived connection made
/// under the old root, new handshakes at every step, and knitd down in
/// between.
#[tokio::test]
async fn a_root_rotation_swaps_bundles_whole_and_keeps_old_connections() {
    let mut mesh = Mesh::new();
    let (a, b) = (
        make_root(mesh.dir.path(), "a"),
        make_root(mesh.dir.path(), "b"),
    );
    let hour = Duration::from_secs(3600);

    // 1. Root A signs.
    let knitd = mesh.start(plug_in(&a, None)).await;
    let (web, db) = (mesh.manager(WEB, hour), mesh.manager(DB, hour));
    let web_a = web.sign_once().await.expect("web issued");
    let db_a = db.sign_once().await.expect("db issued");
    assert_eq!(web_a.root_fingerprint(), a.fingerprint);
    assert!(web_a.bundle.has_exactly(&[&a.fingerprint]));
    let mut old_connection = dial(&web_a, &spiffe("db"), db_a.server_config.clone())
        .await
        .expect("web and db handshake under root A");
    exchange(&mut old_connection).await;

    // Between restarts the CA is gone: a renewal fails and the
    // certificate in use stays.
    knitd.shutdown().await.expect("knitd stops");
    let err = web.sign_once().await.expect_err("no CA");
    assert_eq!(err.reason(), "ca_unreachable");
    assert!(Arc::ptr_eq(&web.current().expect("still served"), &web_a));

    // 2. Still A signing, bundle {A, B}.
    let knitd = mesh.start(plug_in(&a, Some(&b))).await;
    let web_ab = web.sign_once().await.expect("web renewed");
    let db_ab = db.sign_once().await.expect("db renewed");
    assert!(web_ab.bundle.has_exactly(&[&a.fingerprint, &b.fingerprint]));
    assert!(db_ab.bundle.has_exactly(&[&b.fingerprint, &a.fingerprint]));
    assert_eq!(web_ab.root_fingerprint(), a.fingerprint);
    // A new identity with new configs; the old one is untouched.
    assert!(web_a.bundle.has_exactly(&[&a.fingerprint]));
    assert!(!Arc::ptr_eq(&web_a.server_config, &web_ab.server_config));
    assert!(!Arc::ptr_eq(
        &web_a.client_config(&spiffe("db")).expect("config"),
        &web_ab.client_config(&spiffe("db")).expect("config")
    ));
    knitd.shutdown().await.expect("knitd stops");

    // 3. B signs, bundle {B, A}. Leaves of both roots meet in new
    // handshakes, in both directions.
    let knitd = mesh.start(plug_in(&b, Some(&a))).await;
    let db_b = db.sign_once().await.expect("db renewed under B");
    assert_eq!(db_b.root_fingerprint(), b.fingerprint);
    assert_eq!(
        db_b.bundle.fingerprints(),
        [b.fingerprint.clone(), a.fingerprint.clone()]
    );
    let mut mixed = dial(&web_ab, &spiffe("db"), db_b.server_config.clone())
        .await
        .expect("an A leaf dials a B leaf");
    exchange(&mut mixed).await;
    let mut mixed_back = dial(&db_b, &spiffe("web"), web_ab.server_config.clone())
        .await
        .expect("a B leaf dials an A leaf");
    exchange(&mut mixed_back).await;
    let web_b = web.sign_once().await.expect("web renewed under B");
    assert_eq!(web_b.root_fingerprint(), b.fingerprint);
    exchange(&mut old_connection).await;
    knitd.shutdown().await.expect("knitd stops");

    // 4. B only, once every leaf chains to B.
    let knitd = mesh.start(plug_in(&b, None)).await;
    let web_only_b = web.sign_once().await.expect("web renewed, B only");
    assert!(web_only_b.bundle.has_exactly(&[&b.fingerprint]));
    let mut fresh = dial(&web_only_b, &spiffe("db"), db_b.server_config.clone())
        .await
        .expect("B leaves with bundle {B}");
    exchange(&mut fresh).await;
    // Why step 3 waits for every leaf: a leaf of A is no longer trusted
    // for new handshakes...
    assert_eq!(
        dial(&web_only_b, &spiffe("db"), db_a.server_config.clone())
            .await
            .err(),
        Some("peer_cert_untrusted")
    );
    // ...while connections made under A carry on: nothing re-verifies them.
    exchange(&mut old_connection).await;
    exchange(&mut mixed).await;

    let metrics = web.metrics();
    assert_eq!(metrics.renewals(), 3, "A+B, B+A, B");
    let installed = metrics.installed().expect("recorded");
    assert_eq!(
        (installed.serial.as_str(), installed.bundle_fingerprints),
        (web_only_b.serial(), vec![b.fingerprint.clone()])
    );
    knitd.shutdown().await.expect("knitd stops");
}

async fn next_change(changes: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the identity changed in time")
        .expect("the manager runs");
}

/// The renewal loop across a knitd restart: renewals fail while knitd is
/// down, the old certificate keeps serving, and the retry after the
/// restart succeeds well before the old certificate runs out.
#[tokio::test]
async fn a_renewal_racing_a_restart_is_retried_until_it_succeeds() {
    let mut mesh = Mesh::new();
    let state = mesh.dir.path().join("state");
    let ca = || CaOptions {
        source: CaSource::StateDir(state.clone()),
        ..CaOptions::default()
    };
    let knitd = mesh.start(ca()).await;
    // 8 s certificates: a renewal about every 4 s.
    let web = mesh.manager(WEB, Duration::from_secs(8));
    let mut changes = web.subscribe();
    let task = tokio::spawn(web.clone().run());
    next_change(&mut changes).await;

    knitd.shutdown().await.expect("knitd stops");
    let first = web.current().expect("issued");
    // A renewal may have landed before knitd stopped; that one is seen.
    changes.borrow_and_update();
    tokio::time::timeout(DEADLINE, async {
        while web.metrics().sign_failures("ca_unreachable") < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("renewals failed and were retried");
    let serving = web.current().expect("still serving");
    assert_eq!(serving.serial(), first.serial());
    let failure = web.last_failure().expect("recorded");
    assert!(failure.consecutive >= 2, "{failure:?}");

    let knitd = mesh.start(ca()).await;
    next_change(&mut changes).await;
    let renewed = web.current().expect("renewed");
    assert_ne!(renewed.serial(), first.serial());
    assert_eq!(renewed.root_fingerprint(), first.root_fingerprint());
    assert!(
        std::time::SystemTime::now() < first.not_after,
        "renewed before the old certificate expired"
    );
    assert!(web.last_failure().is_none());
    assert!(web.metrics().renewals() >= 1);
    task.abort();
    knitd.shutdown().await.expect("knitd stops");
}
