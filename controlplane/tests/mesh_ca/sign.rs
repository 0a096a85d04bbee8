//! `Certificates.Sign`: what a leaf looks like, and every refusal.

use std::time::Duration;

use knit_controlplane::ca::CaOptions;
use knit_controlplane::ca::pki::now_unix;
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common::{eventually, get_json, write_config};
use crate::support::*;

fn short_max() -> CaOptions {
    CaOptions {
        max_cert_ttl: Duration::from_secs(48 * 3600),
        ..CaOptions::default()
    }
}

#[tokio::test]
async fn a_leaf_carries_the_callers_identity_only_and_chains_to_the_bundle() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let knitd = start(options(dir.path(), short_max())).await;
    let key = key();
    let request = csr(&key, vec![uri(WEB_ID)]);

    let response = sign_ok(&knitd, WEB_TOKEN, &request, 3600).await;
    assert_eq!(
        response.cert_chain_pem.len(),
        1,
        "a root signs leaves directly"
    );
    assert_eq!(response.trust_bundle_pem.len(), 1);
    verify_chain(&response.cert_chain_pem, &response.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("leaf does not chain to the bundle: {err}"));

    let leaf_der = der(&response.cert_chain_pem[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap_or_else(|err| panic!("{err}"));
    let root_der = der(&response.trust_bundle_pem[0]);
    let (_, root) = X509Certificate::from_der(&root_der).unwrap_or_else(|err| panic!("{err}"));
    leaf.verify_signature(Some(root.public_key()))
        .unwrap_or_else(|err| panic!("signature: {err}"));

    // Exactly the URI SAN, critical with an empty subject.
    let san = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no SAN"));
    assert!(san.critical);
    assert_eq!(san.value.general_names, [GeneralName::URI(WEB_ID)]);
    assert_eq!(leaf.subject().iter().count(), 0, "subject is empty");
    // The proxy's own key, untouched.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // Not a CA, usable for both ends of mTLS.
    let bc = leaf
        .basic_constraints()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no basicConstraints"));
    assert!(!bc.value.ca);
    let ku = leaf
        .key_usage()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no keyUsage"));
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf
        .extended_key_usage()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no EKU"));
    assert!(eku.value.server_auth && eku.value.client_auth);
    // Validity: the TTL asked for, backdated a minute.
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    let now = now_unix();
    assert!(
        (now - 70..=now - 50).contains(&not_before),
        "notBefore {not_before}, now {now}"
    );
    assert!(
        (now + 3590..=now + 3610).contains(&not_after),
        "notAfter {not_after}, now {now}"
    );

    // 0 gets the default (24 h); more than the maximum gets the maximum.
    let leaf_lifetime = |pem: &str| {
        let der = der(pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap_or_else(|err| panic!("{err}"));
        cert.validity().not_after.timestamp() - now_unix()
    };
    let default = sign_ok(&knitd, WEB_TOKEN, &request, 0).await;
    let lifetime = leaf_lifetime(&default.cert_chain_pem[0]);
    assert!((86_390..=86_400).contains(&lifetime), "{lifetime}");
    let capped = sign_ok(&knitd, WEB_TOKEN, &request, 30 * 86_400).await;
    let lifetime = leaf_lifetime(&capped.cert_chain_pem[0]);
    assert!((172_790..=172_800).contains(&lifetime), "{lifetime}");

    // Serials differ from leaf to leaf.
    let serial = |pem: &str| {
        let der = der(pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap_or_else(|err| panic!("{err}"));
        cert.raw_serial().to_vec()
    };
    assert_ne!(
        serial(&default.cert_chain_pem[0]),
        serial(&capped.cert_chain_pem[0])
    );

    // /debug/ca names the root the bundle holds.
    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert_eq!(page["source"], "ephemeral");
    assert_eq!(page["max_cert_ttl"], "2d");
    assert_eq!(
        page["trust_bundle"][0]["fingerprint"],
        knit_controlplane::ca::pki::fingerprint(&root_der).as_str()
    );
    let _ = knitd.shutdown().await;
}

/// A CSR for `WEB_ID` whose signature no longer verifies.
fn badly_signed_csr() -> String {
    let good = csr(&key(), vec![uri(WEB_ID)]);
    let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap_or_else(|err| panic!("{err}"));
    let mut bytes = der.as_ref().to_vec();
    // The signature is the last element; flip a bit in the middle of it so
    // the DER structure stays intact.
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE REQUEST", bytes), config)
}

#[tokio::test]
async fn csrs_for_anything_but_the_callers_identity_are_refused() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let knitd = start(options(dir.path(), CaOptions::default())).await;
    let key = key();
    let permission_denied: Vec<(&str, Vec<rcgen::SanType>)> = vec![
        (
            "another namespace",
            vec![uri("spiffe://cluster.local/ns/other/sa/web")],
        ),
        ("another service account", vec![uri(DB_ID)]),
        (
            "another trust domain",
            vec![uri("spiffe://example.org/ns/shop/sa/web")],
        ),
        (
            "an extra DNS SAN",
            vec![uri(WEB_ID), dns("web.shop.svc.cluster.local")],
        ),
        ("two URI SANs", vec![uri(WEB_ID), uri(DB_ID)]),
        ("no SAN", vec![]),
    ];
    for (what, sans) in permission_denied {
        let status = sign(&knitd, Some(WEB_TOKEN), &csr(&key, sans), 0)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: signed"));
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status}");
        // The message names what was asked and what is allowed.
        assert!(
            status.message().contains("the CSR asks for"),
            "{what}: {status}"
        );
        assert!(status.message().contains(WEB_ID), "{what}: {status}");
    }

    let invalid = [
        (
            "malformed PEM",
            "not a CSR".to_owned(),
            "no PEM CERTIFICATE REQUEST",
        ),
        (
            "not PKCS#10",
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            "not PKCS#10",
        ),
        (
            "bad signature",
            badly_signed_csr(),
            "signature does not verify",
        ),
    ];
    for (what, pem, reason) in invalid {
        let status = sign(&knitd, Some(WEB_TOKEN), &pem, 0)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: signed"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}");
        assert!(status.message().contains(reason), "{what}: {status}");
    }
    let status = sign(&knitd, Some(WEB_TOKEN), &csr(&key, vec![uri(WEB_ID)]), -5)
        .await
        .err()
        .unwrap_or_else(|| panic!("negative TTL signed"));
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("ttl_seconds"), "{status}");
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn callers_without_a_valid_token_are_refused() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let knitd = start(options(dir.path(), CaOptions::default())).await;
    let request = csr(&key(), vec![uri(WEB_ID)]);

    for (what, token) in [
        ("no token", None),
        ("unknown token", Some("guess")),
        ("web's token plus a byte", Some("web-token-5d1c0a5e7bx")),
    ] {
        let status = sign(&knitd, token, &request, 0)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: signed"));
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status}");
    }
    // A valid token of another workload does not get web's identity.
    let status = sign(&knitd, Some(DB_TOKEN), &request, 0)
        .await
        .err()
        .unwrap_or_else(|| panic!("db's token signed web's identity"));
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains(DB_ID),
        "names what db may get: {status}"
    );
    // ...but gets its own.
    sign_ok(&knitd, DB_TOKEN, &csr(&key(), vec![uri(DB_ID)]), 0).await;
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn a_config_change_rotates_and_revokes_tokens() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let mut opts = options(dir.path(), CaOptions::default());
    opts.poll_interval = Duration::from_millis(50);
    let knitd = start(opts).await;
    let request = csr(&key(), vec![uri(WEB_ID)]);
    sign_ok(&knitd, WEB_TOKEN, &request, 0).await;

    let new_token = "web-token-rotated-77aa";
    write_config(
        dir.path(),
        "web.yaml",
        &workload("web-0", "web", "198.18.0.1", new_token),
    );
    eventually("the rotated token to be accepted", || async {
        sign(&knitd, Some(new_token), &request, 0).await.ok()
    })
    .await;
    let status = sign(&knitd, Some(WEB_TOKEN), &request, 0)
        .await
        .err()
        .unwrap_or_else(|| panic!("the old token still works"));
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");

    // Removing the workload revokes its token.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap_or_else(|err| panic!("{err}"));
    eventually("the removed workload's token to be refused", || async {
        match sign(&knitd, Some(new_token), &request, 0).await {
            Err(status) if status.code() == Code::Unauthenticated => Some(()),
            _ => None,
        }
    })
    .await;
    let _ = knitd.shutdown().await;
}
