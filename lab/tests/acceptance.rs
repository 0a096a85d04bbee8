//! The foundation's acceptance, end to end: real knitd, real knit-init
//! capture, real knit-proxy sidecars, echo apps, in network namespaces.
//! Tests synchronise on conditions (config dumps, counters), never on
//! fixed sleeps.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{OrLogs, new_lab};
use knit_lab::{ClientSpec, Lab, PodSpec, ServiceSpec, wait_until};

const BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const PATIENCE: Duration = Duration::from_secs(30);

/// knitd, Service `backend` (VIP:80 → 8080) with `replicas` sidecar'd
/// replicas, and a sidecar'd `frontend`, with the frontend's proxy
/// knowing every replica.
fn mesh(name: &str, replicas: usize) -> Lab {
    let mut lab = new_lab(name);
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(BACKEND_VIP)
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    for i in 1..=replicas {
        add_backend(&mut lab, i);
    }
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .service_account("frontend")
            .sidecar(true),
    )
    .or_logs(&lab);
    wait_for_endpoints(&lab, "frontend", replicas, PATIENCE);
    lab
}

fn add_backend(lab: &mut Lab, i: usize) -> Ipv4Addr {
    let spec = PodSpec::new(&format!("backend-{i}"))
        .label("app", "backend")
        .service_account("backend")
        .sidecar(true);
    lab.add_pod(spec).or_logs(lab).ip
}

/// The number of endpoints `pod`'s proxy has for default/backend port 80.
fn backend_endpoints(lab: &Lab, pod: &str) -> knit_lab::Result<usize> {
    let dump = lab.proxy_config_dump(pod)?;
    Ok(dump["services"]["default/backend"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["port"] == 80))
        .and_then(|p| p["endpoints"].as_array())
        .map_or(0, Vec::len))
}

fn wait_for_endpoints(lab: &Lab, pod: &str, n: usize, timeout: Duration) {
    wait_until(
        &format!("{pod}'s proxy to list {n} backend endpoints"),
        timeout,
        || Ok(backend_endpoints(lab, pod)? == n),
    )
    .or_logs(lab);
}

fn stat(lab: &Lab, pod: &str, name: &str) -> u64 {
    lab.proxy_stats(pod)
        .or_logs(lab)
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("{pod} has no stat {name}"))
}

/// Packets counted by the nat rule of `chain` in `pod` whose spec contains
/// `needle` (nat rules see the first packet of each connection).
fn nat_packets(lab: &Lab, pod: &str, chain: &str, needle: &str) -> u64 {
    let rules = lab.iptables_nat_rules(pod).or_logs(lab);
    let matching: Vec<_> = rules
        .iter()
        .filter(|r| r.chain == chain && r.spec.contains(needle))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {chain} rule with {needle:?} in {pod}: {rules:?}"
    );
    matching[0].packets
}

fn assert_all_ok(lab: &Lab, report: &knit_lab::ClientReport, n: u64) {
    assert_eq!(
        (report.sent, report.ok),
        (n, n),
        "{report:?}\n\nlab logs:\n{}",
        lab.logs_tail(40)
    );
}

/// Acceptance 1: 100 requests from the frontend to http://backend all
/// succeed, both replicas answer, and each request crossed the frontend's
/// proxy (where iptables redirected the app's connections) and one
/// backend's proxy (reached on its mesh port, which capture leaves alone).
#[test]
fn requests_cross_both_proxies_through_real_capture() {
    let lab = mesh("accept1", 2);
    let report = lab
        .run_client(
            "frontend",
            &ClientSpec::new("http://backend/").count(100).concurrency(2),
        )
        .or_logs(&lab);
    assert_all_ok(&lab, &report, 100);
    assert_eq!(report.by_pod.len(), 2, "both replicas answer: {report:?}");
    assert!(report.by_pod.values().all(|n| *n > 0), "{report:?}");

    // Exactly 100 requests through the frontend's outbound listener and,
    // between them, exactly 100 through the backends' proxies.
    assert_eq!(stat(&lab, "frontend", "outbound.http.requests"), 100);
    let delivered: u64 = (1..=2)
        .map(|i| stat(&lab, &format!("backend-{i}"), "mesh.requests"))
        .sum();
    assert_eq!(delivered, 100);
    for i in 1..=2 {
        let pod = format!("backend-{i}");
        assert_eq!(
            stat(&lab, &pod, "mesh.requests"),
            report.by_pod[&pod],
            "{pod} proxied each answer it gave"
        );
    }
    // The app's two connections (concurrency 2) were redirected to 15001.
    assert_eq!(
        nat_packets(&lab, "frontend", "KNIT_REDIRECT", "--to-ports 15001"),
        2
    );
}

/// Acceptance 2: a third replica added to the config dir receives traffic
/// within 2 s, and no request fails during the change.
#[test]
fn scaling_out_reaches_the_new_replica_without_failing_a_request() {
    let mut lab = mesh("accept2", 2);
    // Steady load over keep-alive connections while the config changes.
    let load = lab
        .spawn_client(
            "frontend",
            &ClientSpec::new("http://backend/")
                .count(2000)
                .concurrency(2)
                .interval(Duration::from_millis(5))
                .duration(Duration::from_secs(60)),
        )
        .or_logs(&lab);
    wait_until("load to start", PATIENCE, || {
        Ok(stat(&lab, "frontend", "outbound.http.requests") >= 20)
    })
    .or_logs(&lab);

    add_backend(&mut lab, 3);
    let registered = lab.pod("backend-3").or_logs(&lab).registered_at;
    let deadline = Duration::from_secs(2).saturating_sub(registered.elapsed());
    wait_until(
        "backend-3 to receive traffic within 2 s of its WorkloadEntry",
        deadline,
        || {
            Ok(lab
                .proxy_stats("backend-3")?
                .get("mesh.requests")
                .copied()
                .unwrap_or(0)
                > 0)
        },
    )
    .or_logs(&lab);
    let reached_after = registered.elapsed();

    let report = load.join().or_logs(&lab);
    assert_all_ok(&lab, &report, report.sent);
    assert!(
        report.sent >= 100,
        "the load ran through the change: {report:?}"
    );
    assert!(
        report.by_pod.get("backend-3").is_some_and(|n| *n > 0),
        "{report:?}"
    );
    eprintln!(
        "backend-3 received traffic {reached_after:?} after its WorkloadEntry was written; {report:?}"
    );
}

/// Acceptance 3: with knitd gone, proxies keep serving their last config;
/// when it comes back they reconnect and pick up a change made meanwhile.
#[test]
fn proxies_survive_a_control_plane_outage_and_catch_up() {
    let mut lab = mesh("accept3", 2);
    lab.stop_knitd().or_logs(&lab);

    let report = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(100))
        .or_logs(&lab);
    assert_all_ok(&lab, &report, 100);
    assert_eq!(report.by_pod.len(), 2, "{report:?}");

    // Change the config while knitd is down: backend-2 leaves the service.
    lab.remove_config("we-backend-2.yaml").or_logs(&lab);
    assert_eq!(
        backend_endpoints(&lab, "frontend").or_logs(&lab),
        2,
        "nobody pushed the change yet"
    );

    lab.start_knitd().or_logs(&lab);
    wait_for_endpoints(&lab, "frontend", 1, PATIENCE);
    // Every proxy reconnected and ACKed knitd's current version.
    let version = lab.knitd_get_json("/debug/snapshot").or_logs(&lab)["version"].clone();
    wait_until("all three proxies to ACK the new version", PATIENCE, || {
        let proxies = lab.knitd_get_json("/debug/proxies")?;
        let acked = proxies.as_array().map_or(0, |list| {
            list.iter()
                .filter(|p| p["acked_version"] == version)
                .count()
        });
        Ok(acked == 3)
    })
    .or_logs(&lab);
    assert!(
        stat(&lab, "frontend", "config.control_plane_connects") >= 2,
        "the frontend reconnected"
    );

    let report = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_all_ok(&lab, &report, 20);
    assert_eq!(
        report.by_pod.keys().collect::<Vec<_>>(),
        ["backend-1"],
        "{report:?}"
    );
}

/// Acceptance 4: a malformed YAML file and a Service with an invalid port
/// are each reported with file, field and reason; the rest keeps serving.
#[test]
fn bad_config_is_reported_and_the_rest_keeps_serving() {
    let lab = mesh("accept4", 2);
    let version_before = lab.knitd_get_json("/debug/snapshot").or_logs(&lab)["version"].clone();

    lab.write_config(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    )
    .or_logs(&lab);
    lab.write_config(
        "badport.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: badport, namespace: default}\n\
         spec:\n  clusterIP: 198.19.0.30\n  selector: {app: backend}\n  ports: [{name: http, port: 70000, targetPort: 8080}]\n",
    )
    .or_logs(&lab);

    let mut errors = Vec::new();
    wait_until("knitd to report both bad files", PATIENCE, || {
        errors = lab
            .knitd_get_json("/debug/errors")?
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(errors.len() >= 2)
    })
    .or_logs(&lab);
    let errors: Vec<String> = errors
        .iter()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    let broken = errors
        .iter()
        .find(|e| e.contains("broken.yaml"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(
        broken.contains("doc 1") && broken.contains("YAML"),
        "{broken}"
    );
    let badport = errors
        .iter()
        .find(|e| e.contains("badport.yaml"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(
        badport.contains("spec.ports[0].port") && badport.contains("70000"),
        "{badport}"
    );

    // Each is also one log line.
    let log = std::fs::read_to_string(lab.logs_dir().join("knitd.log")).expect("knitd log");
    assert!(
        log.lines()
            .any(|l| l.contains("badport.yaml") && l.contains("spec.ports[0].port")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("broken.yaml")), "{log}");

    // The good config still serves, unchanged.
    let version_after = lab.knitd_get_json("/debug/snapshot").or_logs(&lab)["version"].clone();
    assert_eq!(version_before, version_after);
    let report = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(20))
        .or_logs(&lab);
    assert_all_ok(&lab, &report, 20);
    assert_eq!(backend_endpoints(&lab, "frontend").or_logs(&lab), 2);
}

/// Acceptance 5: a VIP without endpoints gets a 503 the proxy generated,
/// saying why.
#[test]
fn vip_without_endpoints_gets_a_named_503() {
    let mut lab = mesh("accept5", 1);
    lab.add_service(
        ServiceSpec::new("lonely")
            .port("http", 80, 8080)
            .selector("app", "nobody"),
    )
    .or_logs(&lab);
    wait_until("frontend's proxy to know default/lonely", PATIENCE, || {
        Ok(lab.proxy_config_dump("frontend")?["services"]
            .get("default/lonely")
            .is_some())
    })
    .or_logs(&lab);

    let resp = lab
        .http_get_in_pod("frontend", "http://lonely/")
        .or_logs(&lab);
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.header("x-knit-error"),
        Some("no_endpoints"),
        "{resp:?}"
    );
    assert!(resp.body.contains("default/lonely"), "{resp:?}");
    assert_eq!(stat(&lab, "frontend", "outbound.errors.no_endpoints"), 1);
}

/// Acceptance 6: the proxy's own upstream connections are not captured
/// again, and traffic to 127.0.0.1 inside a pod is not captured at all.
#[test]
fn proxy_traffic_is_not_recaptured_and_loopback_is_left_alone() {
    let lab = mesh("accept6", 1);
    let report = lab
        .run_client("frontend", &ClientSpec::new("http://backend/").count(10))
        .or_logs(&lab);
    assert_all_ok(&lab, &report, 10);

    // One app connection was redirected; the proxy's upstream connection
    // matched the uid exemption instead and so never looped back.
    assert_eq!(
        nat_packets(&lab, "frontend", "KNIT_REDIRECT", "--to-ports 15001"),
        1
    );
    // (The uid exemption, not the rule for the proxy calling its own pod IP.)
    let exempt = lab
        .iptables_nat_rules("frontend")
        .or_logs(&lab)
        .into_iter()
        .filter(|r| {
            r.chain == "KNIT_OUTPUT"
                && r.spec.contains("--uid-owner 1337")
                && !r.spec.contains("-o lo")
        })
        .map(|r| r.packets)
        .sum::<u64>();
    assert!(
        exempt >= 1,
        "the proxy's upstream connection hit the uid exemption"
    );
    assert_eq!(
        stat(&lab, "frontend", "outbound.connections"),
        1,
        "the proxy saw only the app's connection"
    );

    // Loopback inside the pod goes straight to the app.
    let loopback_before = nat_packets(&lab, "frontend", "KNIT_OUTPUT", "-d 127.0.0.0/8 -m comment");
    let started = Instant::now();
    let resp = lab
        .http_get_in_pod("frontend", "http://127.0.0.1:8080/local")
        .or_logs(&lab);
    assert_eq!(resp.status, 200, "{resp:?} after {:?}", started.elapsed());
    let echo = resp.json().or_logs(&lab);
    assert_eq!(echo["pod"], "frontend");
    assert!(
        echo["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{echo}"
    );
    assert_eq!(
        stat(&lab, "frontend", "outbound.connections"),
        1,
        "loopback never reached the proxy"
    );
    assert_eq!(
        stat(&lab, "frontend", "outbound.passthrough.connections"),
        0
    );
    assert!(
        nat_packets(&lab, "frontend", "KNIT_OUTPUT", "-d 127.0.0.0/8 -m comment") > loopback_before
    );
}
