//! Acceptance table for mesh peer identity: certificates made with rcgen,
//! each presented in a real TLS 1.3 handshake (tokio-rustls over an
//! in-memory duplex) in both directions:
//!
//! - as the server's certificate, checked by `SpiffeServerVerifier` inside
//!   `client_config`, which expects exactly `EXPECTED`;
//! - as the client's certificate, checked by `SpiffeClientVerifier` inside
//!   `server_config`, which accepts any workload of the trust domain; there
//!   the row states which identity `peer_identity` must report.
//!
//! The side presenting the row's certificate uses a plain rustls config, as
//! a misconfigured or hostile peer would; only the verifying side uses the
//! mesh configs under test. Rejections are asserted by reason, as the
//! verifying side reports it, so a row cannot pass by failing for an
//! unrelated cause.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use knit_proxy::identity::{
    IdentityError, MESH_ALPN, SpiffeId, SpiffeServerVerifier, TrustBundle, TrustDomain,
    client_config, peer_identity, rejection_reason, server_config,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";
/// The identity the control plane says the dialled endpoint runs as.
const EXPECTED: &str = "spiffe://cluster.local/ns/default/sa/backend";
/// The well-behaved other end in each direction.
const PEER: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the PKI

/// A CA: its certificate and what rcgen needs to sign with it.
struct Ca {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str, is_ca: IsCa, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = is_ca;
    params.key_usages = key_usages;
    params
}

fn signing_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

fn new_root(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let params = ca_params(
        cn,
        IsCa::Ca(BasicConstraints::Unconstrained),
        signing_usages(),
    );
    let cert = params.self_signed(&key).expect("self-sign root");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(cn: &str, parent: &Ca, is_ca: IsCa, key_usages: Vec<KeyUsagePurpose>) -> Ca {
    let key = KeyPair::generate().expect("key");
    let params = ca_params(cn, is_ca, key_usages);
    let cert = params
        .signed_by(&key, &parent.issuer)
        .expect("sign intermediate");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

struct Pki {
    root: Ca,
    inter: Ca,
    other_root: Ca,
    other_inter: Ca,
    inter_no_bc: Ca,
    inter_not_ca: Ca,
    inter_no_certsign: Ca,
    bundle: Arc<TrustBundle>,
}

impl Pki {
    fn new() -> Self {
        let root = new_root("Knit Test Root");
        let inter = intermediate(
            "Knit Test Intermediate",
            &root,
            IsCa::Ca(BasicConstraints::Unconstrained),
            signing_usages(),
        );
        let other_root = new_root("Other Root");
        let other_inter = intermediate(
            "Other Intermediate",
            &other_root,
            IsCa::Ca(BasicConstraints::Unconstrained),
            signing_usages(),
        );
        // Each flawed intermediate has its own subject, so path building
        // cannot wander to a sound one by name.
        let inter_no_bc = intermediate(
            "Intermediate Without BasicConstraints",
            &root,
            IsCa::NoCa,
            signing_usages(),
        );
        let inter_not_ca = intermediate(
            "Intermediate With CA False",
            &root,
            IsCa::ExplicitNoCa,
            signing_usages(),
        );
        let inter_no_certsign = intermediate(
            "Intermediate Without KeyCertSign",
            &root,
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        );
        let bundle = Arc::new(
            TrustBundle::new(td(), vec![root.der.clone()]).expect("bundle of the test root"),
        );
        Self {
            root,
            inter,
            other_root,
            other_inter,
            inter_no_bc,
            inter_not_ca,
            inter_no_certsign,
            bundle,
        }
    }
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).expect("valid trust domain")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

// ---------------------------------------------------------------- leaves

/// A certificate chain and its key, as one side of a handshake presents it.
struct Presented {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Presented {
    fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// What a leaf looks like; the default is a well-formed SVID for EXPECTED.
#[derive(Clone)]
struct LeafSpec {
    sans: Vec<SanType>,
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    validity: Option<(i32, i32)>,
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("ASCII URI"))
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().expect("ASCII name"))
}

fn svid(uri_san: &str) -> LeafSpec {
    LeafSpec {
        sans: vec![uri(uri_san)],
        is_ca: IsCa::ExplicitNoCa,
        key_usages: vec![KeyUsagePurpose::DigitalSignature],
        ekus: vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        validity: None,
    }
}

impl LeafSpec {
    fn sans(mut self, sans: Vec<SanType>) -> Self {
        self.sans = sans;
        self
    }
    fn basic_constraints(mut self, is_ca: IsCa) -> Self {
        self.is_ca = is_ca;
        self
    }
    fn key_usages(mut self, key_usages: Vec<KeyUsagePurpose>) -> Self {
        self.key_usages = key_usages;
        self
    }
    fn ekus(mut self, ekus: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.ekus = ekus;
        self
    }
    /// Valid from Jan 1 of the first year to Jan 1 of the second.
    fn years(mut self, from: i32, to: i32) -> Self {
        self.validity = Some((from, to));
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = self.sans.clone();
        params.is_ca = self.is_ca;
        params.key_usages = self.key_usages.clone();
        params.extended_key_usages = self.ekus.clone();
        if let Some((from, to)) = self.validity {
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
        }
        params
    }

    /// Signed by `ca`; the presented chain is the leaf and then `extra`.
    fn signed_by(&self, ca: &Ca, extra: &[&Ca]) -> Presented {
        let key = KeyPair::generate().expect("key");
        let cert = self
            .params()
            .signed_by(&key, &ca.issuer)
            .expect("sign leaf");
        let mut chain = vec![cert.der().clone()];
        chain.extend(extra.iter().map(|ca| ca.der.clone()));
        Presented {
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// Under the test intermediate, presented with it: the normal shape.
    fn issued(&self, pki: &Pki) -> Presented {
        self.signed_by(&pki.inter, &[&pki.inter])
    }

    fn self_signed(&self) -> Presented {
        let key = KeyPair::generate().expect("key");
        let cert = self.params().self_signed(&key).expect("self-sign leaf");
        Presented {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

// ------------------------------------------------------------ handshakes

/// How a handshake ended, from the verifying side's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Accepted; the verified peer identity.
    Accepted(String),
    /// Rejected; the verifying side's reason token.
    Rejected(&'static str),
}

fn ok(id: &str) -> Outcome {
    Outcome::Accepted(id.to_owned())
}

fn no(reason: &'static str) -> Outcome {
    Outcome::Rejected(reason)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The reason behind a tokio-rustls handshake error.
fn reason_of(err: &std::io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => rejection_reason(tls),
        None => "io_error",
    }
}

/// A name that matches nothing in any certificate: the mesh verifier must
/// not care (and `client_config` does not even send it).
fn unrelated_server_name() -> ServerName<'static> {
    ServerName::try_from("unrelated.example").expect("valid DNS name")
}

/// Runs one handshake over an in-memory pipe. After success, one byte
/// each way proves the session carries data.
async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (
    std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
    std::io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connect = TlsConnector::from(client).connect(unrelated_server_name(), c);
    let accept = TlsAcceptor::from(server).accept(s);
    let (mut c, mut s) =
        tokio::time::timeout(HANDSHAKE_DEADLINE, async { tokio::join!(connect, accept) })
            .await
            .expect("handshake finished within the deadline");
    if let (Ok(client), Ok(server)) = (&mut c, &mut s) {
        let exchange = async {
            client.write_all(b"?").await?;
            client.flush().await?;
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await?;
            server.write_all(b"!").await?;
            server.flush().await?;
            client.read_exact(&mut byte).await?;
            std::io::Result::Ok(byte[0])
        };
        let echoed = tokio::time::timeout(HANDSHAKE_DEADLINE, exchange)
            .await
            .expect("data exchange within the deadline")
            .expect("data flows over an accepted session");
        assert_eq!(echoed, b'!');
        assert_eq!(
            client.get_ref().1.alpn_protocol(),
            Some(MESH_ALPN),
            "the mesh ALPN is negotiated"
        );
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
    (c, s)
}

/// The row's certificate as the server's; the client is the mesh config
/// expecting EXPECTED.
async fn as_server_cert(pki: &Pki, presented: &Presented, peer: &Presented) -> Outcome {
    let server = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(presented.chain.clone(), presented.key())
        .map(|mut config| {
            config.alpn_protocols = vec![MESH_ALPN.to_vec()];
            Arc::new(config)
        })
        .expect("plain server config");
    let client = client_config(
        pki.bundle.clone(),
        peer.chain.clone(),
        peer.key(),
        id(EXPECTED),
        &[MESH_ALPN],
    )
    .expect("mesh client config");
    match handshake(client, server).await {
        (Ok(client), _) => Outcome::Accepted(
            peer_identity(client.get_ref().1)
                .expect("identity of a verified server")
                .to_string(),
        ),
        (Err(e), _) => Outcome::Rejected(reason_of(&e)),
    }
}

/// The row's certificate as the client's (or none); the server is the mesh
/// config.
async fn as_client_cert(pki: &Pki, presented: Option<&Presented>, peer: &Presented) -> Outcome {
    // The presenting client verifies the mesh server properly, so a
    // failure can only come from the server's verdict on the client.
    let builder = ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            pki.bundle.clone(),
            id(PEER),
        )));
    let mut client = match presented {
        Some(p) => builder
            .with_client_auth_cert(p.chain.clone(), p.key())
            .expect("plain client config"),
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![MESH_ALPN.to_vec()];
    let server = server_config(
        pki.bundle.clone(),
        peer.chain.clone(),
        peer.key(),
        &[MESH_ALPN],
    )
    .expect("mesh server config");
    match handshake(Arc::new(client), server).await {
        (_, Ok(server)) => Outcome::Accepted(
            peer_identity(server.get_ref().1)
                .expect("identity of a verified client")
                .to_string(),
        ),
        (_, Err(e)) => Outcome::Rejected(reason_of(&e)),
    }
}

// ------------------------------------------------------------- the table

struct Row {
    name: &'static str,
    presented: Presented,
    /// Verdict of `SpiffeServerVerifier` (expecting EXPECTED).
    as_server: Outcome,
    /// Verdict of `SpiffeClientVerifier`, with the identity it yields.
    as_client: Outcome,
}

fn row(name: &'static str, presented: Presented, as_server: Outcome, as_client: Outcome) -> Row {
    Row {
        name,
        presented,
        as_server,
        as_client,
    }
}

fn table(pki: &Pki) -> Vec<Row> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use KeyUsagePurpose::{DigitalSignature, KeyAgreement, KeyCertSign};
    let exact = || svid(EXPECTED);
    let case_ns = "spiffe://cluster.local/ns/Default/sa/backend";
    let case_sa = "spiffe://cluster.local/ns/default/sa/Backend";
    let wrong_sa = "spiffe://cluster.local/ns/default/sa/frontend";
    let wrong_ns = "spiffe://cluster.local/ns/prod/sa/backend";
    let bad_id = "peer_spiffe_id_invalid";
    let bad_san = "peer_san_invalid";
    vec![
        row(
            "exact identity",
            exact().issued(pki),
            ok(EXPECTED),
            ok(EXPECTED),
        ),
        row(
            "exact identity, signed by the root directly",
            exact().signed_by(&pki.root, &[]),
            ok(EXPECTED),
            ok(EXPECTED),
        ),
        row(
            "exact identity, no extendedKeyUsage",
            exact().ekus(vec![]).issued(pki),
            ok(EXPECTED),
            ok(EXPECTED),
        ),
        row(
            "wrong trust domain",
            svid("spiffe://other.local/ns/default/sa/backend").issued(pki),
            no("peer_trust_domain_mismatch"),
            no("peer_trust_domain_mismatch"),
        ),
        row(
            "DNS SAN only",
            exact()
                .sans(vec![dns("backend.default.svc.cluster.local")])
                .issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "URI SAN + DNS SAN",
            exact()
                .sans(vec![
                    uri(EXPECTED),
                    dns("backend.default.svc.cluster.local"),
                ])
                .issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "URI SAN + IP SAN",
            exact()
                .sans(vec![
                    uri(EXPECTED),
                    SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11))),
                ])
                .issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "URI SAN + e-mail SAN",
            exact()
                .sans(vec![
                    uri(EXPECTED),
                    SanType::Rfc822Name("backend@cluster.local".try_into().expect("ASCII")),
                ])
                .issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "two URI SANs (expected first)",
            exact().sans(vec![uri(EXPECTED), uri(wrong_sa)]).issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "no SAN",
            exact().sans(vec![]).issued(pki),
            no(bad_san),
            no(bad_san),
        ),
        row(
            "other (untrusted) CA",
            exact().signed_by(&pki.other_inter, &[&pki.other_inter, &pki.other_root]),
            no("peer_cert_untrusted"),
            no("peer_cert_untrusted"),
        ),
        row(
            "self-signed leaf",
            exact().self_signed(),
            no("peer_cert_untrusted"),
            no("peer_cert_untrusted"),
        ),
        row(
            "intermediate not presented",
            exact().signed_by(&pki.inter, &[]),
            no("peer_cert_untrusted"),
            no("peer_cert_untrusted"),
        ),
        row(
            "expired",
            exact().years(2020, 2021).issued(pki),
            no("peer_cert_expired"),
            no("peer_cert_expired"),
        ),
        row(
            "not yet valid",
            exact().years(2090, 2091).issued(pki),
            no("peer_cert_not_yet_valid"),
            no("peer_cert_not_yet_valid"),
        ),
        row(
            "intermediate without basicConstraints",
            exact().signed_by(&pki.inter_no_bc, &[&pki.inter_no_bc]),
            no("peer_chain_invalid"),
            no("peer_chain_invalid"),
        ),
        row(
            "intermediate with CA:false",
            exact().signed_by(&pki.inter_not_ca, &[&pki.inter_not_ca]),
            no("peer_chain_invalid"),
            no("peer_chain_invalid"),
        ),
        row(
            "intermediate without keyCertSign",
            exact().signed_by(&pki.inter_no_certsign, &[&pki.inter_no_certsign]),
            no("peer_chain_invalid"),
            no("peer_chain_invalid"),
        ),
        row(
            "leaf is a CA",
            exact()
                .basic_constraints(IsCa::Ca(BasicConstraints::Unconstrained))
                .key_usages(vec![DigitalSignature, KeyCertSign])
                .issued(pki),
            no("peer_cert_usage"),
            no("peer_cert_usage"),
        ),
        row(
            "leaf with keyCertSign",
            exact()
                .key_usages(vec![DigitalSignature, KeyCertSign])
                .issued(pki),
            no("peer_cert_usage"),
            no("peer_cert_usage"),
        ),
        row(
            "leaf without keyUsage",
            exact().key_usages(vec![]).issued(pki),
            no("peer_cert_usage"),
            no("peer_cert_usage"),
        ),
        row(
            "leaf without digitalSignature",
            exact().key_usages(vec![KeyAgreement]).issued(pki),
            no("peer_cert_usage"),
            no("peer_cert_usage"),
        ),
        row(
            "EKU clientAuth only",
            exact().ekus(vec![ClientAuth]).issued(pki),
            no("peer_cert_usage"),
            ok(EXPECTED),
        ),
        row(
            "EKU serverAuth only",
            exact().ekus(vec![ServerAuth]).issued(pki),
            ok(EXPECTED),
            no("peer_cert_usage"),
        ),
        row(
            "namespace case variant",
            svid(case_ns).issued(pki),
            no("peer_identity_mismatch"),
            ok(case_ns),
        ),
        row(
            "service account case variant",
            svid(case_sa).issued(pki),
            no("peer_identity_mismatch"),
            ok(case_sa),
        ),
        row(
            "trust domain case variant",
            svid("spiffe://Cluster.local/ns/default/sa/backend").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "scheme case variant (SPIFFE://)",
            svid("SPIFFE://cluster.local/ns/default/sa/backend").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "extra path segment",
            svid("spiffe://cluster.local/ns/default/sa/backend/extra").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "trailing slash",
            svid("spiffe://cluster.local/ns/default/sa/backend/").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "missing sa",
            svid("spiffe://cluster.local/ns/default").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "percent-encoded path",
            svid("spiffe://cluster.local/ns/default/sa/back%65nd").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "query component",
            svid("spiffe://cluster.local/ns/default/sa/backend?x=1").issued(pki),
            no(bad_id),
            no(bad_id),
        ),
        row(
            "wrong service account",
            svid(wrong_sa).issued(pki),
            no("peer_identity_mismatch"),
            ok(wrong_sa),
        ),
        row(
            "wrong namespace",
            svid(wrong_ns).issued(pki),
            no("peer_identity_mismatch"),
            ok(wrong_ns),
        ),
    ]
}

#[tokio::test]
async fn only_the_exact_identity_is_accepted_on_both_sides() {
    let pki = Pki::new();
    // The well-behaved ends: a client SVID for PEER (dialling the row's
    // server), and a server SVID for PEER (accepting the row's client).
    let peer = svid(PEER).issued(&pki);
    let rows = table(&pki);
    assert!(
        rows.len() >= 20,
        "the table covers at least 20 certificates"
    );

    let mut report = vec![format!(
        "{:<45} | {:<36} | {}",
        "certificate", "as server cert (expects backend)", "as client cert"
    )];
    let mut failures = Vec::new();
    for row in &rows {
        let as_server = as_server_cert(&pki, &row.presented, &peer).await;
        let as_client = as_client_cert(&pki, Some(&row.presented), &peer).await;
        report.push(format!(
            "{:<45} | {:<36} | {}",
            row.name,
            show(&as_server),
            show(&as_client)
        ));
        if as_server != row.as_server {
            failures.push(format!(
                "{}: as server cert got {as_server:?}, want {:?}",
                row.name, row.as_server
            ));
        }
        if as_client != row.as_client {
            failures.push(format!(
                "{}: as client cert got {as_client:?}, want {:?}",
                row.name, row.as_client
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Every certificate the dialling side accepts is an SVID of exactly the
    // expected identity.
    let accepted_as_expected = rows.iter().filter(|r| r.as_server == ok(EXPECTED)).count();
    assert_eq!(
        accepted_as_expected, 4,
        "exact SVIDs (intermediate, root-signed, no EKU, serverAuth-only EKU)"
    );
}

fn show(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted(id) if id == EXPECTED => "accepted".to_owned(),
        Outcome::Accepted(id) => format!("accepted as {}", id.trim_start_matches("spiffe://")),
        Outcome::Rejected(reason) => format!("rejected: {reason}"),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let peer = svid(PEER).issued(&pki);
    assert_eq!(
        as_client_cert(&pki, None, &peer).await,
        no("peer_cert_missing")
    );
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_either_during_rotation() {
    let pki = Pki::new();
    let both = Arc::new(
        TrustBundle::new(td(), vec![pki.root.der.clone(), pki.other_root.der.clone()])
            .expect("two roots"),
    );
    let only_other =
        Arc::new(TrustBundle::new(td(), vec![pki.other_root.der.clone()]).expect("one root"));
    let old = svid(EXPECTED).issued(&pki);
    let new = svid(EXPECTED).signed_by(&pki.other_inter, &[&pki.other_inter]);
    let peer = svid(PEER).issued(&pki);
    let verify = |bundle: &Arc<TrustBundle>, p: &Presented| {
        SpiffeServerVerifier::new(bundle.clone(), id(EXPECTED)).verify(
            &p.chain[0],
            &p.chain[1..],
            rustls::pki_types::UnixTime::now(),
        )
    };
    assert!(verify(&both, &old).is_ok());
    assert!(verify(&both, &new).is_ok());
    assert!(verify(&only_other, &new).is_ok());
    assert!(matches!(
        verify(&only_other, &old),
        Err(IdentityError::Chain(webpki::Error::UnknownIssuer))
    ));

    // And through a real handshake with a config built on the two-root
    // bundle.
    let pki_both = Pki {
        bundle: both,
        ..pki
    };
    assert_eq!(as_server_cert(&pki_both, &new, &peer).await, ok(EXPECTED));
    assert_eq!(
        as_client_cert(&pki_both, Some(&new), &peer).await,
        ok(EXPECTED)
    );
}

#[tokio::test]
async fn mesh_server_refuses_clients_without_the_mesh_alpn_or_tls13() {
    let pki = Pki::new();
    let client_cert = svid(PEER).issued(&pki);
    let server_cert = svid(EXPECTED).issued(&pki);
    let server = server_config(
        pki.bundle.clone(),
        server_cert.chain.clone(),
        server_cert.key(),
        &[MESH_ALPN],
    )
    .expect("mesh server config");

    // Offers only h2: not a mesh client.
    let mut h2_only = (*client_config(
        pki.bundle.clone(),
        client_cert.chain.clone(),
        client_cert.key(),
        id(EXPECTED),
        &[MESH_ALPN],
    )
    .expect("mesh client config"))
    .clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let (_, accepted) = handshake(Arc::new(h2_only), server.clone()).await;
    let err = accepted.expect_err("no common ALPN protocol");
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::NoApplicationProtocol)
        ),
        "{err}"
    );

    // TLS 1.2 only: refused whatever the certificate.
    let tls12 = ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            pki.bundle.clone(),
            id(EXPECTED),
        )))
        .with_client_auth_cert(client_cert.chain.clone(), client_cert.key())
        .expect("TLS 1.2 client config");
    let (connected, accepted) = handshake(Arc::new(tls12), server).await;
    assert!(connected.is_err() && accepted.is_err());
}

#[test]
fn configs_refuse_unusable_inputs() {
    let pki = Pki::new();
    let good = svid(PEER).issued(&pki);
    let dns_only = svid(PEER)
        .sans(vec![dns("frontend.default.svc")])
        .issued(&pki);

    let err = client_config(
        pki.bundle.clone(),
        dns_only.chain.clone(),
        dns_only.key(),
        id(EXPECTED),
        &[MESH_ALPN],
    )
    .expect_err("own certificate is not an SVID");
    assert!(matches!(err, IdentityError::OwnCertificate(_)), "{err}");
    let err = server_config(
        pki.bundle.clone(),
        dns_only.chain.clone(),
        dns_only.key(),
        &[MESH_ALPN],
    )
    .expect_err("own certificate is not an SVID");
    assert!(matches!(err, IdentityError::OwnCertificate(_)), "{err}");

    let err = client_config(
        pki.bundle.clone(),
        good.chain.clone(),
        good.key(),
        id("spiffe://other.local/ns/default/sa/backend"),
        &[MESH_ALPN],
    )
    .expect_err("expected identity outside the trust domain");
    assert!(
        matches!(err, IdentityError::ExpectedOutsideTrustDomain { .. }),
        "{err}"
    );

    let err = server_config(pki.bundle.clone(), good.chain.clone(), good.key(), &[])
        .expect_err("no ALPN");
    assert!(matches!(err, IdentityError::Alpn(_)), "{err}");

    // A key that does not belong to the certificate.
    let err = server_config(
        pki.bundle.clone(),
        good.chain.clone(),
        dns_only.key(),
        &[MESH_ALPN],
    )
    .expect_err("mismatched key");
    assert!(matches!(err, IdentityError::Tls(_)), "{err}");

    assert!(
        client_config(
            pki.bundle.clone(),
            good.chain.clone(),
            good.key(),
            id(EXPECTED),
            &[MESH_ALPN]
        )
        .is_ok()
    );
}

#[test]
fn bundles_hold_ca_roots_only() {
    let pki = Pki::new();
    assert!(matches!(
        TrustBundle::new(td(), vec![]),
        Err(IdentityError::EmptyBundle(_))
    ));
    let leaf = svid(EXPECTED).issued(&pki);
    assert!(matches!(
        TrustBundle::new(td(), vec![pki.root.der.clone(), leaf.chain[0].clone()]),
        Err(IdentityError::BadRoot { index: 1, .. })
    ));
    assert!(matches!(
        TrustBundle::new(
            td(),
            vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])]
        ),
        Err(IdentityError::BadRoot { index: 0, .. })
    ));

    // PEM, as Certificates.Sign returns it: one string per root, or
    // several blocks in one string.
    let two =
        TrustBundle::from_pem(td(), [&pki.root.pem, &pki.other_root.pem]).expect("two PEM roots");
    assert_eq!(
        two.roots(),
        &[pki.root.der.clone(), pki.other_root.der.clone()]
    );
    let joined = TrustBundle::from_pem(td(), [format!("{}{}", pki.root.pem, pki.other_root.pem)])
        .expect("two blocks in one string");
    assert_eq!(joined.roots().len(), 2);
    assert!(matches!(
        TrustBundle::from_pem(td(), ["no certificates here"]),
        Err(IdentityError::EmptyBundle(_))
    ));
    assert_eq!(two.trust_domain().as_str(), TD);
}
