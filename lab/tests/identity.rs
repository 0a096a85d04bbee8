//! Workload identity in the lab: each sidecar's proxy gets its certificate
//! from knitd's CA with the token the lab provisioned, is ready only with
//! it, and exports its expiry; knitd's root survives a restart. Needs root
//! and the workspace's binaries (`cargo build --workspace --bins`).

mod common;

use std::os::unix::fs::MetadataExt;

use common::{OrLogs, new_lab};
use knit_lab::{Lab, PROXY_UID, PodSpec, workload_entry_file};

/// A gauge's value from a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

fn metrics(lab: &Lab, pod: &str) -> String {
    let ip = lab.pod(pod).or_logs(lab).ip;
    let resp = lab
        .http_get_in_node(&format!("http://{ip}:15090/metrics"))
        .or_logs(lab);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

fn root_fingerprint(lab: &Lab) -> String {
    let ca = lab.knitd_get_json("/debug/ca").or_logs(lab);
    ca["active_issuer"]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no active issuer fingerprint in {ca}"))
        .to_owned()
}

#[test]
fn sidecars_get_a_certificate_with_their_token_and_the_root_survives_restarts() {
    let mut lab = new_lab("identity");
    lab.start_knitd().or_logs(&lab);
    // `add_pod` returns once the proxy is ready, which with identity on
    // means it holds a certificate.
    let web = lab
        .add_pod(
            PodSpec::new("web")
                .namespace("shop")
                .service_account("web-sa")
                .sidecar(true),
        )
        .or_logs(&lab);

    let text = metrics(&lab, "web");
    let scraped = std::time::Instant::now();
    let cert = gauge(&text, "knit_identity_cert_expiry_seconds")
        .unwrap_or_else(|| panic!("no certificate gauge in:\n{text}"));
    let bundle = gauge(&text, "knit_identity_bundle_expiry_seconds")
        .unwrap_or_else(|| panic!("no bundle gauge in:\n{text}"));
    // The default 24 h lifetime, a little of it gone.
    assert!(cert > 23 * 3600 && cert <= 24 * 3600, "{cert}");
    assert!(
        bundle > cert,
        "the root outlives the leaf: {bundle} vs {cert}"
    );

    // The token is the proxy's alone to read; its digest, not the token,
    // is in the WorkloadEntry.
    let token_file = web.token_file.clone().expect("sidecar pods have a token");
    let meta = std::fs::metadata(&token_file).expect("token file exists");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (PROXY_UID, 0o400));
    let token = std::fs::read_to_string(&token_file).expect("readable as root");
    let entry = std::fs::read_to_string(lab.config_dir().join(workload_entry_file("web")))
        .expect("the WorkloadEntry");
    assert!(
        entry.contains(&format!(
            "\"mesh.knit.dev/token-sha256\": \"{}\"",
            knit_lab::pattern::sha256_hex(token.as_bytes())
        )),
        "{entry}"
    );
    assert!(
        !entry.contains(&token),
        "the token itself stays out of the config"
    );

    let log = std::fs::read_to_string(lab.logs_dir().join("web.proxy.log")).expect("proxy log");
    assert!(
        log.lines()
            .any(|line| line.contains("workload certificate installed")
                && line.contains("id=spiffe://cluster.local/ns/shop/sa/web-sa")),
        "{log}"
    );

    // With --state-dir, a restarted knitd signs with the same root, so
    // proxies' bundles stay valid across control-plane restarts.
    let before = root_fingerprint(&lab);
    lab.restart_knitd().or_logs(&lab);
    assert_eq!(root_fingerprint(&lab), before);
    let ca = lab.knitd_get_json("/debug/ca").or_logs(&lab);
    assert_eq!(ca["source"], "loaded", "{ca}");

    // A pod added after the restart chains to that same root: the
    // bundle gauge (the earliest root's expiry) matches the first pod's.
    lab.add_pod(
        PodSpec::new("db")
            .namespace("shop")
            .service_account("db-sa")
            .sidecar(true),
    )
    .or_logs(&lab);
    let db_bundle = gauge(&metrics(&lab, "db"), "knit_identity_bundle_expiry_seconds")
        .expect("db's bundle gauge");
    let between = i64::try_from(scraped.elapsed().as_secs()).expect("small");
    assert!(
        db_bundle <= bundle && bundle - db_bundle <= between + 2,
        "{db_bundle} vs {bundle}, {between} s apart"
    );

    // Removing a pod takes its token with it.
    lab.remove_pod("web").or_logs(&lab);
    assert!(!token_file.exists());
}

#[test]
fn identity_off_runs_without_a_certificate() {
    let mut lab = new_lab("identityoff");
    lab.start_knitd().or_logs(&lab);
    lab.add_pod(
        PodSpec::new("plain")
            .sidecar(true)
            .proxy_arg("--identity=off"),
    )
    .or_logs(&lab);
    let text = metrics(&lab, "plain");
    assert!(
        gauge(&text, "knit_identity_cert_expiry_seconds").is_none(),
        "{text}"
    );
    let log = std::fs::read_to_string(lab.logs_dir().join("plain.proxy.log")).expect("proxy log");
    assert!(!log.contains("workload certificate installed"), "{log}");
}

/// A proxy that reaches knitd over TLS (15012), verifying knitd with the
/// mesh root it was given, gets its certificate and its config there (a
/// wrong root is refused in `proxy/tests/identity_lifecycle.rs`).
#[test]
fn a_proxy_reaches_knitd_over_tls_with_the_mesh_root() {
    let mut lab = new_lab("cp-tls");
    lab.start_knitd().or_logs(&lab);
    // A public certificate, readable by the proxy's uid.
    let root = lab.dir().join("mesh-root.pem");
    let state_root = lab.knitd_state_root().or_logs(&lab).cert;
    std::fs::copy(&state_root, &root).unwrap_or_else(|e| panic!("copy the root: {e}"));
    lab.add_pod(
        PodSpec::new("web")
            .sidecar(true)
            .proxy_arg(&format!(
                "--control-plane=https://{}",
                knit_lab::KNITD_GRPC_TLS_ADDR
            ))
            .proxy_arg(&format!("--control-plane-ca={}", root.display())),
    )
    .or_logs(&lab);
    let proxies = lab.knitd_get_json("/debug/proxies").or_logs(&lab);
    assert!(
        proxies.as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["pod_name"] == "web" && p["acked_version"].is_string())),
        "web's proxy ACKed a config over TLS: {proxies}"
    );
    let expiry = gauge(&metrics(&lab, "web"), "knit_identity_cert_expiry_seconds");
    assert!(
        expiry.is_some_and(|s| s > 0),
        "web holds a certificate: {expiry:?}"
    );
    let log = std::fs::read_to_string(lab.logs_dir().join("web.proxy.log")).unwrap_or_default();
    assert!(
        log.contains("connected to control plane") && log.contains("https://"),
        "{log}"
    );
}
