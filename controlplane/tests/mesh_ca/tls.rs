//! The TLS port (15012, ephemeral here): a client that trusts the mesh
//! bundle reaches Certificates and Discovery; one that does not, does not;
//! the serving certificate is renewed without a restart.

use std::time::Duration;

use knit_controlplane::Knitd;
use knit_controlplane::ca::CaOptions;
use knit_proto::v1 as pb;
use knit_proto::v1::certificates_client::CertificatesClient;
use knit_proto::v1::discovery_client::DiscoveryClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::common::{DEADLINE, eventually, get_json};
use crate::support::*;

async fn start_tls(dir: &std::path::Path, ca: CaOptions) -> Knitd {
    let mut opts = options(dir, ca);
    opts.grpc_tls_addr = Some(([127, 0, 0, 1], 0).into());
    opts.tls_sans = vec!["127.0.0.1".to_owned(), "knitd.lab.test".to_owned()];
    start(opts).await
}

async fn tls_channel(
    knitd: &Knitd,
    bundle: &[String],
    server_name: &str,
) -> Result<Channel, String> {
    let addr = knitd
        .grpc_tls_addr()
        .unwrap_or_else(|| panic!("no TLS server"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(bundle.concat()))
        .domain_name(server_name);
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .map_err(|err| err.to_string())?
        .tls_config(tls)
        .map_err(|err| err.to_string())?
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .map_err(|err| format!("{err:?}"))
}

#[tokio::test]
async fn a_client_trusting_the_bundle_signs_and_streams_over_tls() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let knitd = start_tls(dir.path(), CaOptions::default()).await;
    let bundle = knitd.ca().trust_bundle_pem();

    for server_name in [
        "knitd.knit-system.svc",
        "knitd.knit-system.svc.cluster.local",
        "knitd.lab.test",
        "127.0.0.1",
    ] {
        let channel = tls_channel(&knitd, &bundle, server_name)
            .await
            .unwrap_or_else(|err| panic!("{server_name}: {err}"));

        let mut certificates = CertificatesClient::new(channel.clone());
        let response = certificates
            .sign(sign_request(
                Some(WEB_TOKEN),
                &csr(&key(), vec![uri(WEB_ID)]),
                0,
            ))
            .await
            .unwrap_or_else(|status| panic!("Sign over TLS: {status}"))
            .into_inner();
        verify_chain(&response.cert_chain_pem, &response.trust_bundle_pem)
            .unwrap_or_else(|err| panic!("{err}"));

        // Refusals work the same over TLS.
        let status = certificates
            .sign(sign_request(None, &csr(&key(), vec![uri(WEB_ID)]), 0))
            .await
            .err()
            .unwrap_or_else(|| panic!("signed without a token"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated);

        let mut discovery = DiscoveryClient::new(channel);
        let (requests, outbound) = tokio::sync::mpsc::channel(4);
        requests
            .send(pb::DiscoveryRequest {
                node: Some(pb::Node {
                    pod_name: "web-0".to_owned(),
                    namespace: "shop".to_owned(),
                    service_account: "web".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let mut responses = discovery
            .stream(ReceiverStream::new(outbound))
            .await
            .unwrap_or_else(|status| panic!("Discovery.Stream over TLS: {status}"))
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, responses.message())
            .await
            .unwrap_or_else(|_| panic!("no discovery response within {DEADLINE:?}"))
            .unwrap_or_else(|status| panic!("{status}"))
            .unwrap_or_else(|| panic!("stream ended"));
        assert_eq!(first.version_info, knitd.state().snapshot().version);
        drop(requests);
    }

    // The serving certificate carries knitd's SPIFFE ID (shown by /debug/ca).
    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert!(
        page["serving_certificate"]["fingerprint"].is_string(),
        "{page}"
    );
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn a_client_trusting_another_root_or_name_is_refused() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let knitd = start_tls(dir.path(), CaOptions::default()).await;
    let stranger = test_root("Stranger Root");
    let error = tls_channel(&knitd, &[stranger.cert.pem()], "knitd.knit-system.svc")
        .await
        .err()
        .unwrap_or_else(|| panic!("a stranger's root was accepted"));
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let bundle = knitd.ca().trust_bundle_pem();
    let error = tls_channel(&knitd, &bundle, "evil.example.com")
        .await
        .err()
        .unwrap_or_else(|| panic!("a name not in the certificate was accepted"));
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_while_serving() {
    let dir = temp_dir();
    write_mesh(dir.path());
    // 4 s certificates: renewed every 2 s.
    let ca = CaOptions {
        default_cert_ttl: Duration::from_secs(4),
        ..CaOptions::default()
    };
    let knitd = start_tls(dir.path(), ca).await;
    let first =
        get_json(knitd.http_addr(), "/debug/ca").await["serving_certificate"]["fingerprint"]
            .clone();
    let renewed = eventually("the serving certificate to be renewed", || {
        let first = first.clone();
        let addr = knitd.http_addr();
        async move {
            let now =
                get_json(addr, "/debug/ca").await["serving_certificate"]["fingerprint"].clone();
            (now != first).then_some(now)
        }
    })
    .await;
    assert!(renewed.is_string());
    // New handshakes get a valid certificate.
    let bundle = knitd.ca().trust_bundle_pem();
    let channel = tls_channel(&knitd, &bundle, "knitd.knit-system.svc")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    CertificatesClient::new(channel)
        .sign(sign_request(
            Some(WEB_TOKEN),
            &csr(&key(), vec![uri(WEB_ID)]),
            0,
        ))
        .await
        .unwrap_or_else(|status| panic!("{status}"));
    let _ = knitd.shutdown().await;
}
