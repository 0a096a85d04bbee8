//! The root rotation procedure of the module docs, step by step at the CA:
//! which root signs and which roots the bundle serves after each restart,
//! starting from a root knitd generated in `--state-dir` and moving to an
//! operator's plug-in root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::authority::{CaOptions, CaSource, CertificateAuthority};
use super::pki;
use super::store;

fn write(path: &Path, text: &str, mode: u32) -> PathBuf {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_path_buf()
}

/// A self-signed P-256 root as an operator's CA tool would make it:
/// (certificate file, key file mode 0600, fingerprint).
fn operator_root(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Operator Mesh Root B");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed");
    (
        write(&dir.join("root-b.pem"), &cert.pem(), 0o644),
        write(&dir.join("root-b-key.pem"), &key.serialize_pem(), 0o600),
        pki::fingerprint(cert.der()),
    )
}

/// The bundle's fingerprints, in the order it is served.
fn bundle(ca: &CertificateAuthority) -> Vec<String> {
    ca.trust_bundle_pem()
        .iter()
        .map(|pem| {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
            pki::fingerprint(der.as_ref())
        })
        .collect()
}

/// The fingerprint of the bundle root that a freshly issued certificate's
/// signature checks against.
fn signing_root(ca: &CertificateAuthority) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let issued = ca.issue_serving(&key, &[]).expect("issued");
    let leaf_der = issued.chain.first().expect("a leaf").clone();
    let leaf = pki::parse(&leaf_der).expect("parsed");
    let roots: Vec<CertificateDer<'static>> = ca
        .trust_bundle_pem()
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM"))
        .collect();
    let signer = roots
        .iter()
        .find(|root| {
            pki::parse(root).is_ok_and(|parsed| pki::check_issued_by(&leaf, &parsed).is_ok())
        })
        .expect("the leaf chains to a root of the bundle");
    pki::fingerprint(signer.as_ref())
}

#[test]
fn each_restart_of_the_procedure_signs_and_trusts_what_it_should() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let state_dir = || CaOptions {
        source: CaSource::StateDir(state.clone()),
        ..CaOptions::default()
    };

    // Before: the generated root A signs and is the whole bundle.
    let ca = CertificateAuthority::open(&state_dir()).expect("opens");
    let root_a_file = store::cert_path(&state);
    let a = bundle(&ca)[0].clone();
    assert_eq!(bundle(&ca), std::slice::from_ref(&a));
    assert_eq!(signing_root(&ca), a);

    // 1. Trust B first: A still signs, the bundle is {A, B}.
    let (b_cert, b_key, b) = operator_root(dir.path());
    let ca = CertificateAuthority::open(&CaOptions {
        extra_trust_bundle: Some(b_cert.clone()),
        ..state_dir()
    })
    .expect("opens");
    assert_eq!(bundle(&ca), [a.clone(), b.clone()]);
    assert_eq!(signing_root(&ca), a);

    // 2. B signs as a plug-in root, A stays trusted: {B, A}.
    let plug_in_b = |extra: Option<PathBuf>| CaOptions {
        source: CaSource::PlugIn {
            cert: b_cert.clone(),
            key: b_key.clone(),
            chain: None,
        },
        extra_trust_bundle: extra,
        ..CaOptions::default()
    };
    let ca = CertificateAuthority::open(&plug_in_b(Some(root_a_file.clone()))).expect("opens");
    assert_eq!(bundle(&ca), [b.clone(), a.clone()]);
    assert_eq!(signing_root(&ca), b);
    let view = serde_json::to_value(ca.view()).expect("JSON");
    assert_eq!(view["trust_bundle"][0]["role"], "active");
    assert_eq!(view["trust_bundle"][1]["role"], "extra");

    // 3. Drop A: B alone.
    let ca = CertificateAuthority::open(&plug_in_b(None)).expect("opens");
    assert_eq!(bundle(&ca), std::slice::from_ref(&b));
    assert_eq!(signing_root(&ca), b);

    // An extra bundle that repeats the active root serves it once.
    let both = write(
        &dir.path().join("both.pem"),
        &format!(
            "{}{}",
            std::fs::read_to_string(&b_cert).expect("read"),
            std::fs::read_to_string(&root_a_file).expect("read")
        ),
        0o644,
    );
    let ca = CertificateAuthority::open(&plug_in_b(Some(both))).expect("opens");
    assert_eq!(bundle(&ca), [b, a]);
}
