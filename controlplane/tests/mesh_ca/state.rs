//! Where the CA's key comes from: the state dir across restarts, plug-in
//! CAs, key file permissions, and the extra trust bundle.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use knit_controlplane::ca::pki::fingerprint;
use knit_controlplane::ca::{CaOptions, CaSource};
use rcgen::{CertificateParams, DnType, KeyUsagePurpose};

use crate::common::get_json;
use crate::support::*;

fn state_dir_options(dir: &std::path::Path) -> CaOptions {
    CaOptions {
        source: CaSource::StateDir(dir.join("state")),
        ..CaOptions::default()
    }
}

#[tokio::test]
async fn a_restart_with_the_same_state_dir_keeps_the_root() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let ca = state_dir_options(dir.path());
    let state = dir.path().join("state");

    let knitd = start(options(dir.path(), ca.clone())).await;
    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert_eq!(page["source"], "generated");
    let before = sign_ok(&knitd, WEB_TOKEN, &csr(&key(), vec![uri(WEB_ID)]), 0).await;
    knitd
        .shutdown()
        .await
        .unwrap_or_else(|err| panic!("shutdown: {err}"));

    let key_mode = std::fs::metadata(state.join("root-key.pem"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(key_mode, 0o600);

    let knitd = start(options(dir.path(), ca)).await;
    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert_eq!(page["source"], "loaded");
    let after = sign_ok(&knitd, WEB_TOKEN, &csr(&key(), vec![uri(WEB_ID)]), 0).await;
    assert_eq!(after.trust_bundle_pem, before.trust_bundle_pem, "same root");
    // The leaf issued before the restart verifies against the bundle after it.
    verify_chain(&before.cert_chain_pem, &after.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("old leaf no longer verifies: {err}"));
    verify_chain(&after.cert_chain_pem, &before.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("new leaf does not verify: {err}"));
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn a_readable_or_broken_key_file_is_refused_at_start() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let ca = state_dir_options(dir.path());
    let knitd = start(options(dir.path(), ca.clone())).await;
    let _ = knitd.shutdown().await;
    let key_file = dir.path().join("state").join("root-key.pem");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|err| panic!("{err}"));
    let error = start_err(options(dir.path(), ca.clone())).await;
    assert!(error.contains("root-key.pem"), "{error}");
    assert!(error.contains("mode 0644"), "{error}");
    assert!(error.contains("chmod 600"), "{error}");

    write_file(
        &dir.path().join("state"),
        "root-key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let error = start_err(options(dir.path(), ca)).await;
    assert!(error.starts_with("CA error: "), "{error}");
    assert!(error.contains("root-key.pem"), "{error}");
}

/// An intermediate under a root, both made by the test: the operator's PKI.
fn operator_pki(dir: &std::path::Path) -> (TestCa, TestCa, PathBuf, PathBuf, PathBuf) {
    let root = test_root("Example Root CA");
    let intermediate = test_child(&root, ca_params("Example Mesh Intermediate", ca_usages()));
    let cert = write_file(dir, "ca-cert.pem", &intermediate.cert.pem(), 0o644);
    let key = write_file(dir, "ca-key.pem", &intermediate.key_pem, 0o600);
    let chain = write_file(dir, "ca-chain.pem", &root.cert.pem(), 0o644);
    (root, intermediate, cert, key, chain)
}

#[tokio::test]
async fn a_plug_in_intermediate_signs_and_its_root_is_the_bundle() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let (root, intermediate, cert, key_file, chain) = operator_pki(dir.path());
    let ca = CaOptions {
        source: CaSource::PlugIn {
            cert,
            key: key_file,
            chain: Some(chain),
        },
        ..CaOptions::default()
    };
    let knitd = start(options(dir.path(), ca)).await;
    let response = sign_ok(&knitd, WEB_TOKEN, &csr(&key(), vec![uri(WEB_ID)]), 0).await;
    assert_eq!(response.cert_chain_pem.len(), 2, "leaf + intermediate");
    assert_eq!(der(&response.cert_chain_pem[1]), *intermediate.cert.der());
    assert_eq!(response.trust_bundle_pem.len(), 1);
    assert_eq!(der(&response.trust_bundle_pem[0]), *root.cert.der());
    verify_chain(&response.cert_chain_pem, &response.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("{err}"));

    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert_eq!(page["source"], "plug-in");
    assert_eq!(
        page["active_issuer"]["fingerprint"],
        fingerprint(intermediate.cert.der()).as_str()
    );
    assert_eq!(
        page["trust_bundle"][0]["fingerprint"],
        fingerprint(root.cert.der()).as_str()
    );
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn a_self_signed_plug_in_root_is_its_own_bundle() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let root = test_root("Example Root CA");
    let ca = CaOptions {
        source: CaSource::PlugIn {
            cert: write_file(dir.path(), "root.pem", &root.cert.pem(), 0o644),
            key: write_file(dir.path(), "root-key.pem", &root.key_pem, 0o400),
            chain: None,
        },
        ..CaOptions::default()
    };
    let knitd = start(options(dir.path(), ca)).await;
    let response = sign_ok(&knitd, WEB_TOKEN, &csr(&key(), vec![uri(WEB_ID)]), 0).await;
    assert_eq!(response.cert_chain_pem.len(), 1);
    assert_eq!(der(&response.trust_bundle_pem[0]), *root.cert.der());
    verify_chain(&response.cert_chain_pem, &response.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("{err}"));
    let _ = knitd.shutdown().await;
}

#[tokio::test]
async fn unusable_plug_in_cas_are_refused_with_a_clear_error() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let (root, _intermediate, cert, key_file, chain) = operator_pki(dir.path());
    let plug_in = |cert: &PathBuf, key: &PathBuf, chain: Option<&PathBuf>| CaOptions {
        source: CaSource::PlugIn {
            cert: cert.clone(),
            key: key.clone(),
            chain: chain.cloned(),
        },
        ..CaOptions::default()
    };

    // A leaf certificate (CA:FALSE) with its own key.
    let mut leaf_params = CertificateParams::default();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "not a ca");
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf = test_child(&root, leaf_params);
    let leaf_cert = write_file(dir.path(), "leaf.pem", &leaf.cert.pem(), 0o644);
    let leaf_key = write_file(dir.path(), "leaf-key.pem", &leaf.key_pem, 0o600);
    let error = start_err(options(
        dir.path(),
        plug_in(&leaf_cert, &leaf_key, Some(&chain)),
    ))
    .await;
    assert!(error.contains("is not a CA certificate"), "{error}");

    // A CA without keyCertSign.
    let weak = test_child(
        &root,
        ca_params("No Signing", vec![KeyUsagePurpose::DigitalSignature]),
    );
    let weak_cert = write_file(dir.path(), "weak.pem", &weak.cert.pem(), 0o644);
    let weak_key = write_file(dir.path(), "weak-key.pem", &weak.key_pem, 0o600);
    let error = start_err(options(
        dir.path(),
        plug_in(&weak_cert, &weak_key, Some(&chain)),
    ))
    .await;
    assert!(error.contains("keyCertSign"), "{error}");

    // The right certificate with someone else's key.
    let error = start_err(options(dir.path(), plug_in(&cert, &leaf_key, Some(&chain)))).await;
    assert!(error.contains("ca-cert.pem"), "{error}");
    assert!(
        error.contains("is not the key of the CA certificate"),
        "{error}"
    );

    // An intermediate without its chain: the root is unknown.
    let error = start_err(options(dir.path(), plug_in(&cert, &key_file, None))).await;
    assert!(
        error.contains("not self-signed") && error.contains("--ca-chain"),
        "{error}"
    );

    // A chain that does not lead to the intermediate's issuer.
    let stranger = test_root("Stranger Root");
    let wrong_chain = write_file(dir.path(), "wrong-chain.pem", &stranger.cert.pem(), 0o644);
    let error = start_err(options(
        dir.path(),
        plug_in(&cert, &key_file, Some(&wrong_chain)),
    ))
    .await;
    assert!(
        error.contains("wrong-chain.pem") && error.contains("is issued by"),
        "{error}"
    );

    // A group-readable plug-in key.
    let open_key = write_file(
        dir.path(),
        "open-key.pem",
        &std::fs::read_to_string(&key_file).unwrap_or_default(),
        0o640,
    );
    let error = start_err(options(dir.path(), plug_in(&cert, &open_key, Some(&chain)))).await;
    assert!(error.contains("mode 0640"), "{error}");
}

#[tokio::test]
async fn extra_roots_are_served_beside_the_active_one() {
    let dir = temp_dir();
    write_mesh(dir.path());
    let next_root = test_root("Next Mesh Root");
    let extra = write_file(dir.path(), "extra.pem", &next_root.cert.pem(), 0o644);
    let ca = CaOptions {
        extra_trust_bundle: Some(extra),
        ..state_dir_options(dir.path())
    };
    let knitd = start(options(dir.path(), ca)).await;
    let response = sign_ok(&knitd, WEB_TOKEN, &csr(&key(), vec![uri(WEB_ID)]), 0).await;
    assert_eq!(response.trust_bundle_pem.len(), 2);
    assert_eq!(der(&response.trust_bundle_pem[1]), *next_root.cert.der());
    // The active root is first and still signs.
    verify_chain(&response.cert_chain_pem, &response.trust_bundle_pem[..1])
        .unwrap_or_else(|err| panic!("{err}"));
    // A leaf of the next root verifies against the same bundle: peers
    // holding it accept both sides of a rotation.
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(WEB_ID)];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let next_leaf = test_child(&next_root, params);
    verify_chain(&[next_leaf.cert.pem()], &response.trust_bundle_pem)
        .unwrap_or_else(|err| panic!("{err}"));

    let page = get_json(knitd.http_addr(), "/debug/ca").await;
    assert_eq!(page["trust_bundle"][0]["role"], "active");
    assert_eq!(page["trust_bundle"][1]["role"], "extra");
    assert_eq!(
        page["trust_bundle"][1]["fingerprint"],
        fingerprint(next_root.cert.der()).as_str()
    );
    let _ = knitd.shutdown().await;

    // A bundle holding a non-CA certificate is refused.
    let mut leaf_params = CertificateParams::default();
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf = test_child(&next_root, leaf_params);
    let bad = write_file(dir.path(), "bad-extra.pem", &leaf.cert.pem(), 0o644);
    let error = start_err(options(
        dir.path(),
        CaOptions {
            extra_trust_bundle: Some(bad),
            ..state_dir_options(dir.path())
        },
    ))
    .await;
    assert!(
        error.contains("bad-extra.pem") && error.contains("not a CA certificate"),
        "{error}"
    );
}
