//! mTLS modes end to end: PeerAuthentication in knitd's config, the
//! backend's proxy enforcing it, through real capture.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{OrLogs, new_lab, requests_with, stat};
use knit_lab::{
    AppSpec, ClientSpec, Lab, PodSpec, ServiceSpec, TCP_ECHO_PORT, TcpClientSpec, wait_until,
};

const PATIENCE: Duration = Duration::from_secs(30);

fn mesh(name: &str) -> (Lab, Ipv4Addr) {
    let mut lab = new_lab(name);
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    let backend = lab
        .add_pod(
            PodSpec::new("backend-1")
                .label("app", "backend")
                .service_account("backend")
                .sidecar(true)
                .app(AppSpec::TcpEcho {
                    port: TCP_ECHO_PORT,
                }),
        )
        .or_logs(&lab)
        .ip;
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .sidecar(true),
    )
    .or_logs(&lab);
    lab.add_pod(PodSpec::new("plain").label("app", "plain"))
        .or_logs(&lab);
    wait_until("frontend's proxy to know the backend", PATIENCE, || {
        let dump = lab.proxy_config_dump("frontend")?;
        Ok(dump["services"]["default/backend"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 1))
    })
    .or_logs(&lab);
    (lab, backend)
}

fn wait_for_mode(lab: &Lab, port: u16, mode: &str) {
    wait_until(
        &format!("backend-1's proxy to enforce {mode} on port {port}"),
        PATIENCE,
        || {
            let inbound = &lab.proxy_config_dump("backend-1")?["inbound"];
            let effective = inbound["ports"]
                .get(port.to_string())
                .unwrap_or(&inbound["default"])
                .clone();
            Ok(effective == mode)
        },
    )
    .or_logs(lab);
}

/// PERMISSIVE (the default) lets an unmeshed pod in; STRICT on the
/// backend's namespace refuses it before anything reaches the app, counts
/// it, and meshed callers keep working.
#[test]
fn strict_refuses_plaintext_and_keeps_meshed_callers() {
    let (lab, backend) = mesh("strict");
    let url = format!("http://{backend}:8080/");

    let r = lab
        .run_client("plain", &ClientSpec::new(&url).count(5))
        .or_logs(&lab);
    assert_eq!(
        r.ok,
        5,
        "PERMISSIVE accepts plaintext: {r:?}\n{}",
        lab.logs_tail(20)
    );
    let metrics = lab
        .http_get_in_node(&format!("http://{backend}:15090/metrics"))
        .or_logs(&lab)
        .body;
    assert!(
        metrics.contains("reporter=\"destination\",source_workload=\"unknown\"")
            && metrics.contains("connection_security_policy=\"none\",response_code=\"200\"} 5"),
        "plaintext is labelled none: {metrics}"
    );

    lab.write_config(
        "pa-default.yaml",
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .or_logs(&lab);
    wait_for_mode(&lab, 8080, "strict");

    let delivered_before = stat(&lab, "backend-1", "inbound.http.requests");
    let r = lab
        .run_client("plain", &ClientSpec::new(&url).count(3))
        .or_logs(&lab);
    assert_eq!(r.ok, 0, "STRICT refuses plaintext: {r:?}");
    assert!(stat(&lab, "backend-1", "inbound.errors.mtls_required") >= 3);
    assert_eq!(
        stat(&lab, "backend-1", "inbound.http.requests"),
        delivered_before,
        "nothing reached the app"
    );

    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_eq!(
        (r.sent, r.ok),
        (20, 20),
        "meshed callers still succeed: {r:?}\n{}",
        lab.logs_tail(20)
    );
}

/// Port-level STRICT on one port, PERMISSIVE on another, same workload.
#[test]
fn port_level_strict_next_to_permissive() {
    let (lab, backend) = mesh("portlevel");
    lab.write_config(
        "pa-backend.yaml",
        &format!(
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {{name: backend, namespace: default}}\n\
             spec:\n  selector: {{matchLabels: {{app: backend}}}}\n  mtls: {{mode: PERMISSIVE}}\n  portLevelMtls:\n    \"{TCP_ECHO_PORT}\": {{mode: STRICT}}\n"
        ),
    )
    .or_logs(&lab);
    wait_for_mode(&lab, TCP_ECHO_PORT, "strict");
    wait_for_mode(&lab, 8080, "permissive");

    let r = lab
        .run_client(
            "plain",
            &ClientSpec::new(&format!("http://{backend}:8080/")).count(3),
        )
        .or_logs(&lab);
    assert_eq!(r.ok, 3, "port 8080 is PERMISSIVE: {r:?}");
    let t = lab
        .run_tcp_client(
            "plain",
            &TcpClientSpec::new(&backend.to_string(), TCP_ECHO_PORT).bytes(64),
        )
        .or_logs(&lab);
    assert!(!t.ok, "port {TCP_ECHO_PORT} is STRICT: {t:?}");
    assert!(stat(&lab, "backend-1", "inbound.errors.mtls_required") >= 1);
}

/// The mode `pod`'s proxy is told for backend-1's port 8080 (lower case).
fn client_view(lab: &Lab, pod: &str) -> knit_lab::Result<String> {
    let dump = lab.proxy_config_dump(pod)?;
    let mtls = &dump["services"]["default/backend"][0]["endpoints"][0]["mtls"];
    let mode = mtls["ports"].get("8080").unwrap_or(&mtls["default"]);
    Ok(mode.as_str().unwrap_or("").to_owned())
}

fn write_mode(lab: &Lab, mode: &str) {
    lab.write_config(
        "pa-default.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: default}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        ),
    )
    .or_logs(lab);
}

/// DISABLE: meshed callers are told so and send plaintext (the backend
/// labels their requests `none`, with the caller's workload); PERMISSIVE
/// again: back to mutual TLS.
#[test]
fn disable_makes_meshed_callers_send_plaintext() {
    let (lab, backend) = mesh("disable");
    let metrics_url = format!("http://{backend}:15090/metrics");
    write_mode(&lab, "DISABLE");
    wait_for_mode(&lab, 8080, "disable");
    wait_until("frontend to be told DISABLE", PATIENCE, || {
        Ok(client_view(&lab, "frontend")? == "disable")
    })
    .or_logs(&lab);

    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (20, 20), "{r:?}\n{}", lab.logs_tail(20));
    let metrics = lab.http_get_in_node(&metrics_url).or_logs(&lab).body;
    let plaintext = [
        ("reporter", "destination"),
        ("source_workload", "frontend"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(requests_with(&metrics, &plaintext), 20, "{metrics}");
    assert_eq!(
        requests_with(
            &metrics,
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls")
            ]
        ),
        0,
        "{metrics}"
    );

    write_mode(&lab, "PERMISSIVE");
    wait_until("frontend to be told PERMISSIVE", PATIENCE, || {
        Ok(client_view(&lab, "frontend")? == "permissive")
    })
    .or_logs(&lab);
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(10))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (10, 10), "{r:?}");
    let metrics = lab.http_get_in_node(&metrics_url).or_logs(&lab).body;
    assert_eq!(
        requests_with(
            &metrics,
            &[
                ("reporter", "destination"),
                ("source_workload", "frontend"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/default"
                ),
                ("connection_security_policy", "mutual_tls")
            ]
        ),
        10,
        "{metrics}"
    );
}

/// Acceptance 5 and safe toggling: under a steady 200 rps from a
/// meshed client, PERMISSIVE → STRICT → PERMISSIVE → DISABLE → STRICT →
/// DISABLE → PERMISSIVE fails no request. knitd sequences the DISABLE ↔
/// STRICT steps (clients go mTLS before the server enforces; the server
/// relaxes before clients go plaintext).
#[test]
fn toggling_modes_under_load_fails_no_request() {
    let (lab, backend) = mesh("toggle");
    let metrics_url = format!("http://{backend}:15090/metrics");
    let load = lab
        .spawn_client(
            "frontend",
            &ClientSpec::new("http://backend/")
                .count(8_000)
                .concurrency(4)
                .rate(200)
                .duration(Duration::from_secs(40)),
        )
        .or_logs(&lab);
    wait_until("load to start", PATIENCE, || {
        Ok(stat(&lab, "frontend", "outbound.http.requests") >= 50)
    })
    .or_logs(&lab);

    let started = std::time::Instant::now();
    let mut timeline = Vec::new();
    let steps = [
        ("STRICT", "strict", "strict"),
        ("PERMISSIVE", "permissive", "permissive"),
        ("DISABLE", "disable", "disable"),
        ("STRICT", "strict", "strict"),
        ("DISABLE", "disable", "disable"),
        ("PERMISSIVE", "permissive", "permissive"),
    ];
    for (mode, server, client) in steps {
        let before = stat(&lab, "frontend", "outbound.http.requests");
        write_mode(&lab, mode);
        wait_for_mode(&lab, 8080, server);
        wait_until(&format!("frontend to be told {mode}"), PATIENCE, || {
            Ok(client_view(&lab, "frontend")? == client)
        })
        .or_logs(&lab);
        // Let traffic run in the new mode before the next change.
        wait_until("traffic in the new mode", PATIENCE, || {
            Ok(stat(&lab, "frontend", "outbound.http.requests") >= before + 300)
        })
        .or_logs(&lab);
        timeline.push(format!("{:>6.2}s {mode}", started.elapsed().as_secs_f64()));
    }
    let report = load.join().or_logs(&lab);
    let seconds = report.elapsed_ms as f64 / 1000.0;
    eprintln!(
        "{}\n{} requests in {seconds:.1} s ({:.0} rps), {} ok",
        timeline.join("\n"),
        report.sent,
        report.sent as f64 / seconds,
        report.ok
    );
    assert_eq!(
        report.ok,
        report.sent,
        "no request may fail while modes change: {report:?}\n{}",
        lab.logs_tail(40)
    );
    assert!(report.sent >= 1800, "the load ran throughout: {report:?}");
    let metrics = lab.http_get_in_node(&metrics_url).or_logs(&lab).body;
    let frontend = |security: &str| {
        requests_with(
            &metrics,
            &[
                ("reporter", "destination"),
                ("source_workload", "frontend"),
                ("connection_security_policy", security),
            ],
        )
    };
    assert!(
        frontend("none") > 0 && frontend("mutual_tls") > 0,
        "both plaintext (DISABLE) and mutual TLS were used: {metrics}"
    );
    assert_eq!(
        stat(&lab, "backend-1", "mesh.errors.mtls_required"),
        0,
        "no plaintext request met STRICT"
    );
}
