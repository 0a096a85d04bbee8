//! DestinationRule `trafficPolicy.tls` end to end: knitd compiles the rule
//! into the client TLS of a service port, the caller's proxy follows it,
//! through real capture.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{OrLogs, new_lab, requests_with, stat};
use knit_lab::{
    AppSpec, BannerClientSpec, ClientSpec, Lab, PodSpec, ServiceSpec, TLS_PORT, wait_until,
};

const PATIENCE: Duration = Duration::from_secs(30);

/// knitd, a `backend` Service on a meshed pod, a meshed `frontend`, and
/// whatever `extra` adds; returns the lab and the backend's and frontend's
/// addresses.
fn mesh(name: &str, extra: impl FnOnce(&mut Lab)) -> (Lab, Ipv4Addr, Ipv4Addr) {
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
                .sidecar(true),
        )
        .or_logs(&lab)
        .ip;
    let frontend = lab
        .add_pod(
            PodSpec::new("frontend")
                .label("app", "frontend")
                .sidecar(true),
        )
        .or_logs(&lab)
        .ip;
    extra(&mut lab);
    wait_until("frontend's proxy to know the backend", PATIENCE, || {
        let dump = lab.proxy_config_dump("frontend")?;
        Ok(dump["services"]["default/backend"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 1))
    })
    .or_logs(&lab);
    (lab, backend, frontend)
}

/// Waits until `pod`'s proxy applies `mode` (lower case, as /config_dump
/// shows it) to port 0 of `service`.
fn wait_for_client_tls(lab: &Lab, pod: &str, service: &str, mode: &str) {
    wait_until(
        &format!("{pod}'s proxy to apply {mode} to {service}"),
        PATIENCE,
        || {
            let dump = lab.proxy_config_dump(pod)?;
            Ok(dump["services"][format!("default/{service}")][0]["client_tls"]["mode"] == mode)
        },
    )
    .or_logs(lab);
}

fn metrics(lab: &Lab, ip: Ipv4Addr) -> String {
    lab.http_get_in_node(&format!("http://{ip}:15090/metrics"))
        .or_logs(lab)
        .body
}

fn from_frontend(security: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("reporter", "destination"),
        ("source_workload", "frontend"),
        ("connection_security_policy", security),
    ]
}

fn destination_rule(name: &str, host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

/// Auto mTLS sends mutual TLS to a meshed backend; DISABLE makes the
/// frontend send plaintext, and both proxies label it `none`.
#[test]
fn disable_sends_plaintext_to_a_meshed_backend() {
    let (lab, backend, frontend) = mesh("dr-disable", |_| {});
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(5))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (5, 5), "{r:?}\n{}", lab.logs_tail(20));
    assert_eq!(
        requests_with(&metrics(&lab, backend), &from_frontend("mutual_tls")),
        5,
        "auto mTLS before the rule"
    );

    lab.write_config(
        "dr-backend.yaml",
        &destination_rule("backend", "backend", "{mode: DISABLE}"),
    )
    .or_logs(&lab);
    wait_for_client_tls(&lab, "frontend", "backend", "disable");
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (20, 20), "{r:?}\n{}", lab.logs_tail(20));
    let at_backend = metrics(&lab, backend);
    assert_eq!(
        requests_with(&at_backend, &from_frontend("none")),
        20,
        "{at_backend}"
    );
    assert_eq!(
        requests_with(&at_backend, &from_frontend("mutual_tls")),
        5,
        "{at_backend}"
    );
    let at_frontend = metrics(&lab, frontend);
    assert_eq!(
        requests_with(
            &at_frontend,
            &[
                ("reporter", "source"),
                ("destination_workload", "backend-1"),
                ("connection_security_policy", "none"),
            ]
        ),
        20,
        "the source side tells the same: {at_frontend}"
    );
}

/// ISTIO_MUTUAL: mutual TLS to a backend whose PeerAuthentication is
/// DISABLE (auto mTLS would send plaintext there), and refusal, not
/// plaintext, toward an endpoint without a Knit proxy.
#[test]
fn istio_mutual_overrides_a_disable_peer_authentication() {
    let (lab, backend, _) = mesh("dr-istio-mutual", |lab| {
        lab.add_service(
            ServiceSpec::new("legacy")
                .vip(Ipv4Addr::new(198, 19, 0, 12))
                .port("http", 80, 8080)
                .selector("app", "legacy"),
        )
        .or_logs(lab);
        lab.add_pod(PodSpec::new("legacy-1").label("app", "legacy"))
            .or_logs(lab);
    });
    lab.write_config(
        "pa-default.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: DISABLE}}\n",
    )
    .or_logs(&lab);
    wait_until(
        "frontend to be told the backend is DISABLE",
        PATIENCE,
        || {
            let dump = lab.proxy_config_dump("frontend")?;
            let mtls = &dump["services"]["default/backend"][0]["endpoints"][0]["mtls"];
            Ok(mtls["ports"].get("8080").unwrap_or(&mtls["default"]) == "disable")
        },
    )
    .or_logs(&lab);
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(10))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (10, 10), "{r:?}");
    assert_eq!(
        requests_with(&metrics(&lab, backend), &from_frontend("none")),
        10,
        "auto mTLS follows DISABLE"
    );

    lab.write_config(
        "dr.yaml",
        &format!(
            "{}---\n{}",
            destination_rule(
                "backend",
                "backend.default.svc.cluster.local",
                "{mode: ISTIO_MUTUAL}"
            ),
            destination_rule("legacy", "legacy", "{mode: ISTIO_MUTUAL}")
        ),
    )
    .or_logs(&lab);
    wait_for_client_tls(&lab, "frontend", "backend", "istio_mutual");
    wait_for_client_tls(&lab, "frontend", "legacy", "istio_mutual");
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (20, 20), "{r:?}\n{}", lab.logs_tail(20));
    let at_backend = metrics(&lab, backend);
    let mutual = [
        ("reporter", "destination"),
        ("source_workload", "frontend"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/default",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/backend",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(requests_with(&at_backend, &mutual), 20, "{at_backend}");

    // legacy-1 has no Knit proxy to terminate mesh mutual TLS.
    let r = lab
        .run_client("frontend", &ClientSpec::new("http://legacy/").count(3))
        .or_logs(&lab);
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.statuses.get(&503), Some(&3), "{r:?}");
    assert_eq!(r.knit_errors.get("mesh_tls_unavailable"), Some(&3), "{r:?}");
    assert!(stat(&lab, "frontend", "outbound.errors.mesh_tls_unavailable") >= 3);
}

/// SIMPLE: a plaintext TCP client in a meshed pod reaches the lab's
/// tls-echo (outside the mesh) over TLS its proxy originates, verified with
/// the lab CA; the echo greets with the SNI the proxy sent. MUTUAL: the
/// proxy also presents a client certificate.
#[test]
fn simple_and_mutual_originate_tls_to_a_server_outside_the_mesh() {
    let (lab, _, _) = mesh("dr-simple", |lab| {
        lab.add_service(
            ServiceSpec::new("tls-echo")
                .vip(Ipv4Addr::new(198, 19, 0, 11))
                .port_with_protocol("echo", TLS_PORT, TLS_PORT, "tcp")
                .selector("app", "tls-echo"),
        )
        .or_logs(lab);
        lab.add_pod(
            PodSpec::new("tls-echo")
                .label("app", "tls-echo")
                .app(AppSpec::TlsEcho { port: TLS_PORT }),
        )
        .or_logs(lab);
    });
    let ca = lab.ca_file().display().to_string();
    let simple = |extra: &str| {
        destination_rule(
            "tls-echo",
            "tls-echo",
            &format!("{{mode: SIMPLE, caCertificates: \"{ca}\"{extra}}}"),
        )
    };
    let greet = || {
        lab.run_banner_client("frontend", &BannerClientSpec::new("tls-echo", TLS_PORT))
            .or_logs(&lab)
    };

    lab.write_config("dr-tls-echo.yaml", &simple(""))
        .or_logs(&lab);
    wait_for_client_tls(&lab, "frontend", "tls-echo", "simple");
    let r = greet();
    assert_eq!(
        r.greeting,
        "hello from tls-echo sni=tls-echo.default.svc.cluster.local",
        "the default SNI is the service hostname: {r:?}\n{}",
        lab.logs_tail(20)
    );
    assert_eq!(r.echo, BannerClientSpec::new("x", 1).line, "{r:?}");
    assert!(stat(&lab, "frontend", "upstream.direct.tls_connections_opened") >= 1);

    // MUTUAL: the proxy also presents a client certificate of the lab CA
    // (its key readable by the proxy's uid only, as a mounted secret is).
    let tls_dir = lab
        .ca_file()
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    let key = lab.dir().join("proxy-client.key");
    std::fs::copy(tls_dir.join(knit_lab::tls::CLIENT_KEY_FILE), &key)
        .unwrap_or_else(|e| panic!("copy the client key: {e}"));
    std::os::unix::fs::chown(&key, Some(1337), Some(1337))
        .unwrap_or_else(|e| panic!("chown the client key: {e}"));
    let cert = tls_dir.join(knit_lab::tls::CLIENT_CERT_FILE);
    lab.write_config(
        "dr-tls-echo.yaml",
        &destination_rule(
            "tls-echo",
            "tls-echo",
            &format!(
                "{{mode: MUTUAL, caCertificates: \"{ca}\", clientCertificate: \"{}\", privateKey: \"{}\"}}",
                cert.display(),
                key.display()
            ),
        ),
    )
    .or_logs(&lab);
    wait_for_client_tls(&lab, "frontend", "tls-echo", "mutual");
    let r = greet();
    assert_eq!(
        r.greeting,
        "hello from tls-echo sni=tls-echo.default.svc.cluster.local client=verified",
        "MUTUAL presents the client certificate: {r:?}\n{}",
        lab.logs_tail(20)
    );

    lab.write_config("dr-tls-echo.yaml", &simple(", sni: tls-echo"))
        .or_logs(&lab);
    wait_until("frontend's proxy to send SNI tls-echo", PATIENCE, || {
        let dump = lab.proxy_config_dump("frontend")?;
        Ok(dump["services"]["default/tls-echo"][0]["client_tls"]["sni"] == "tls-echo")
    })
    .or_logs(&lab);
    let r = greet();
    assert_eq!(r.greeting, "hello from tls-echo sni=tls-echo", "{r:?}");

    // A name the echo's certificate does not carry: refused, nothing sent.
    lab.write_config(
        "dr-tls-echo.yaml",
        &simple(", subjectAltNames: [not-the-echo.example]"),
    )
    .or_logs(&lab);
    wait_until("frontend's proxy to expect another SAN", PATIENCE, || {
        let dump = lab.proxy_config_dump("frontend")?;
        Ok(
            dump["services"]["default/tls-echo"][0]["client_tls"]["subject_alt_names"][0]
                == "not-the-echo.example",
        )
    })
    .or_logs(&lab);
    let failures_before = stat(&lab, "frontend", "outbound.errors.upstream_tls_failed");
    let r = greet();
    assert!(!r.ok && r.greeting.is_empty(), "{r:?}");
    assert!(
        stat(&lab, "frontend", "outbound.errors.upstream_tls_failed") > failures_before,
        "{}",
        lab.logs_tail(20)
    );

    // A CA file this proxy cannot read: the config is still accepted (no
    // NACK: the file is local to each proxy), and this port fails closed.
    let missing = lab.dir().join("no-such-ca.pem");
    lab.write_config(
        "dr-tls-echo.yaml",
        &destination_rule(
            "tls-echo",
            "tls-echo",
            &format!(
                "{{mode: SIMPLE, caCertificates: \"{}\"}}",
                missing.display()
            ),
        ),
    )
    .or_logs(&lab);
    wait_for_client_tls(&lab, "frontend", "tls-echo", "unusable");
    let proxies = lab.knitd_get_json("/debug/proxies").or_logs(&lab);
    let frontend = proxies
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pod_name"] == "frontend").cloned())
        .unwrap_or_default();
    assert_eq!(
        frontend["acked_version"], frontend["sent_version"],
        "the config was ACKed: {frontend}"
    );
    let r = greet();
    assert!(!r.ok && r.greeting.is_empty(), "never plaintext: {r:?}");
    assert!(stat(&lab, "frontend", "outbound.errors.upstream_tls_unusable") >= 1);
}
