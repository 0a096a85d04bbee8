//! Helpers: a mesh config with token-carrying workloads, knitd options on
//! loopback, CSRs and test CAs made with rcgen, and chain verification with
//! rustls' WebPKI verifier (independent of the CA's own code).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use knit_controlplane::ca::CaOptions;
use knit_controlplane::ca::pki::hex;
use knit_controlplane::model::TokenDigest;
use knit_controlplane::{Knitd, KnitdOptions};
use knit_proto::v1 as pb;
use knit_proto::v1::certificates_client::CertificatesClient;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::common::write_config;

pub const WEB_TOKEN: &str = "web-token-5d1c0a5e7b";
pub const DB_TOKEN: &str = "db-token-94e2f1c3a8";
pub const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const DB_ID: &str = "spiffe://cluster.local/ns/shop/sa/db";

pub fn token_sha256(token: &str) -> String {
    hex(&TokenDigest::of_token(token).0)
}

pub fn workload(name: &str, sa: &str, address: &str, token: &str) -> String {
    format!(
        "apiVersion: mesh.knit.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: shop
  annotations:
    mesh.knit.dev/token-sha256: \"{}\"
spec:
  address: {address}
  serviceAccount: {sa}
",
        token_sha256(token)
    )
}

/// `web-0` (sa web) and `db-0` (sa db) in namespace shop, each with a token.
pub fn write_mesh(dir: &Path) {
    write_config(
        dir,
        "web.yaml",
        &workload("web-0", "web", "198.18.0.1", WEB_TOKEN),
    );
    write_config(
        dir,
        "db.yaml",
        &workload("db-0", "db", "198.18.0.2", DB_TOKEN),
    );
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"))
}

/// Loopback on ephemeral ports, no TLS server unless a test asks.
pub fn options(config_dir: &Path, ca: CaOptions) -> KnitdOptions {
    let mut options = KnitdOptions::new(config_dir);
    options.grpc_addr = ([127, 0, 0, 1], 0).into();
    options.http_addr = ([127, 0, 0, 1], 0).into();
    options.grpc_tls_addr = None;
    options.ca = ca;
    options
}

pub async fn start(options: KnitdOptions) -> Knitd {
    Knitd::start(options)
        .await
        .unwrap_or_else(|err| panic!("start knitd: {err}"))
}

pub async fn start_err(options: KnitdOptions) -> String {
    match Knitd::start(options).await {
        Ok(knitd) => {
            let _ = knitd.shutdown().await;
            panic!("knitd started")
        }
        Err(err) => err.to_string(),
    }
}

pub fn sign_request(
    token: Option<&str>,
    csr_pem: &str,
    ttl_seconds: i64,
) -> Request<pb::SignRequest> {
    let mut request = Request::new(pb::SignRequest {
        csr_pem: csr_pem.to_owned(),
        ttl_seconds,
    });
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .unwrap_or_else(|err| panic!("metadata: {err}"));
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// `Certificates.Sign` over knitd's plaintext port.
pub async fn sign(
    knitd: &Knitd,
    token: Option<&str>,
    csr_pem: &str,
    ttl_seconds: i64,
) -> Result<pb::SignResponse, tonic::Status> {
    let mut client = CertificatesClient::connect(format!("http://{}", knitd.grpc_addr()))
        .await
        .unwrap_or_else(|err| panic!("connect: {err}"));
    client
        .sign(sign_request(token, csr_pem, ttl_seconds))
        .await
        .map(|response| response.into_inner())
}

pub async fn sign_ok(knitd: &Knitd, token: &str, csr_pem: &str, ttl: i64) -> pb::SignResponse {
    sign(knitd, Some(token), csr_pem, ttl)
        .await
        .unwrap_or_else(|status| panic!("Sign refused: {status}"))
}

pub fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap_or_else(|err| panic!("{err}"))
}

pub fn uri(value: &str) -> SanType {
    SanType::URI(
        value
            .to_owned()
            .try_into()
            .unwrap_or_else(|err| panic!("{err}")),
    )
}

pub fn dns(value: &str) -> SanType {
    SanType::DnsName(
        value
            .to_owned()
            .try_into()
            .unwrap_or_else(|err| panic!("{err}")),
    )
}

/// A CSR as a proxy makes it: empty subject, the given SANs.
pub fn csr(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .unwrap_or_else(|err| panic!("CSR: {err}"))
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap_or_else(|err| panic!("PEM: {err}"))
}

/// Verifies `chain` (leaf first) against `bundle` as a TLS peer would
/// verify a client certificate (which also checks the clientAuth usage).
pub fn verify_chain(chain: &[String], bundle: &[String]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in bundle {
        roots.add(der(pem)).map_err(|err| err.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| err.to_string())?;
    let certs: Vec<CertificateDer<'static>> = chain.iter().map(|pem| der(pem)).collect();
    verifier
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|err| err.to_string())
}

/// A CA made by the test, as an operator's tooling would.
pub struct TestCa {
    pub cert: Certificate,
    pub key_pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

pub fn ca_params(common_name: &str, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Example Corp");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = key_usages;
    params
}

pub fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

pub fn test_root(common_name: &str) -> TestCa {
    let key = key();
    let params = ca_params(common_name, ca_usages());
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|err| panic!("{err}"));
    TestCa {
        cert,
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate with `params` signed by `parent`.
pub fn test_child(parent: &TestCa, params: CertificateParams) -> TestCa {
    let key = key();
    let cert = params
        .signed_by(&key, &parent.issuer)
        .unwrap_or_else(|err| panic!("{err}"));
    TestCa {
        cert,
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes `text` to `dir/name` with `mode`.
pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {name}: {err}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {name}: {err}"));
    path
}
