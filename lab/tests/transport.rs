//! How proxies carry traffic between pods, end to end through real
//! capture: one multiplexed HTTP/2 connection per peer pod.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{OrLogs, new_lab};
use knit_lab::{ClientSpec, Lab, PodSpec, ServiceSpec, wait_until};

fn stat(lab: &Lab, pod: &str, name: &str) -> u64 {
    lab.proxy_stats(pod)
        .or_logs(lab)
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("{pod} has no stat {name}"))
}

/// 1000 HTTP/1.1 requests from 10 app connections use one HTTP/2
/// connection between the two proxies; meshed pods with the default mode
/// talk mutual TLS, and both proxies' metrics say so.
#[test]
fn app_connections_share_one_http2_connection_between_proxies() {
    let mut lab = new_lab("h2share");
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    lab.add_pod(
        PodSpec::new("backend-1")
            .label("app", "backend")
            .service_account("backend")
            .sidecar(true),
    )
    .or_logs(&lab);
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .service_account("frontend")
            .sidecar(true),
    )
    .or_logs(&lab);
    wait_until(
        "frontend's proxy to know the backend endpoint",
        Duration::from_secs(30),
        || {
            let dump = lab.proxy_config_dump("frontend")?;
            Ok(dump["services"]["default/backend"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 1))
        },
    )
    .or_logs(&lab);

    let report = lab
        .run_client(
            "frontend",
            &ClientSpec::new("http://backend/")
                .count(1000)
                .concurrency(10),
        )
        .or_logs(&lab);
    assert_eq!(
        (report.sent, report.ok),
        (1000, 1000),
        "{report:?}\n{}",
        lab.logs_tail(30)
    );
    assert_eq!(report.by_pod.get("backend-1"), Some(&1000), "{report:?}");

    // 10 app connections into the frontend's proxy...
    assert_eq!(stat(&lab, "frontend", "outbound.connections"), 10);
    assert_eq!(stat(&lab, "frontend", "outbound.http.requests"), 1000);
    // ...one connection between the proxies, carrying every request...
    assert_eq!(
        stat(&lab, "frontend", "upstream.mesh.connections_opened"),
        1
    );
    assert_eq!(
        stat(&lab, "frontend", "upstream.direct.connections_opened"),
        0
    );
    assert_eq!(stat(&lab, "backend-1", "mesh.connections"), 1);
    assert_eq!(stat(&lab, "backend-1", "mesh.requests"), 1000);
    // ...which arrived on the mesh port, not through inbound capture.
    assert_eq!(stat(&lab, "backend-1", "inbound.connections"), 0);

    // Both proxies report the 1000 requests on /metrics (15090) as mutual
    // TLS, each naming the other's proven SPIFFE identity.
    for (pod, reporter) in [("frontend", "source"), ("backend-1", "destination")] {
        let ip = lab.pod(pod).or_logs(&lab).ip;
        let metrics = lab
            .http_get_in_node(&format!("http://{ip}:15090/metrics"))
            .or_logs(&lab);
        assert_eq!(metrics.status, 200);
        let want = format!(
            "knit_requests_total{{reporter=\"{reporter}\",source_workload=\"frontend\",source_namespace=\"default\",\
             source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\",\
             destination_service=\"backend.default.svc.cluster.local\",destination_workload=\"backend-1\",\
             destination_namespace=\"default\",destination_principal=\"spiffe://cluster.local/ns/default/sa/backend\",\
             connection_security_policy=\"mutual_tls\",response_code=\"200\"}} 1000"
        );
        assert!(metrics.body.contains(&want), "{pod}: {}", metrics.body);
    }
}

/// Dual-stack pods: the same calls over IPv6 are captured and carried
/// through both proxies — to a service's IPv6 VIP, and straight to a
/// meshed pod's IPv6 address.
#[test]
fn ipv6_is_captured_and_proxied_in_dual_stack_pods() {
    let mut lab = knit_lab::Lab::builder("ipv6")
        .dual_stack(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    let vip6 = lab
        .service_vip6("default", "backend")
        .or_logs(&lab)
        .expect("a dual-stack lab gives services an IPv6 VIP");
    let backend = lab
        .add_pod(
            PodSpec::new("backend-1")
                .label("app", "backend")
                .sidecar(true),
        )
        .or_logs(&lab);
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .sidecar(true),
    )
    .or_logs(&lab);
    wait_until(
        "frontend's proxy to know the IPv6 VIP",
        Duration::from_secs(30),
        || {
            let dump = lab.proxy_config_dump("frontend")?;
            Ok(dump["services"]["default/backend"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 1))
        },
    )
    .or_logs(&lab);
    // knit-init saw the pod's global IPv6 address and captured IPv6 too.
    let v6_rules = lab
        .exec_in_pod("frontend", "ip6tables-save", &["-t", "nat"])
        .or_logs(&lab);
    assert!(v6_rules.contains("KNIT_REDIRECT"), "{v6_rules}");

    // To the service's IPv6 VIP: the frontend's proxy balances it and
    // carries it to the backend's proxy.
    let before = lab.proxy_stats("backend-1").or_logs(&lab);
    let r = lab
        .run_client(
            "frontend",
            &ClientSpec::new(&format!("http://[{vip6}]/")).count(20),
        )
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (20, 20), "{r:?}\n{}", lab.logs_tail(30));
    assert_eq!(r.by_pod.get("backend-1"), Some(&20), "{r:?}");
    let after = lab.proxy_stats("backend-1").or_logs(&lab);
    assert_eq!(after["mesh.requests"] - before["mesh.requests"], 20);

    // Straight to the backend pod's IPv6 address: captured on the way out
    // (not a service, so passed through) and on the way in (inbound IPv6
    // capture), delivered to the app from ::6.
    let ip6 = backend.ipv6.expect("dual-stack pods have an IPv6 address");
    let front_before = lab.proxy_stats("frontend").or_logs(&lab);
    let r = lab
        .run_client(
            "frontend",
            &ClientSpec::new(&format!("http://[{ip6}]:8080/")).count(5),
        )
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (5, 5), "{r:?}\n{}", lab.logs_tail(30));
    let echo = r.last.as_ref().map(|l| l.body.clone()).unwrap_or_default();
    let front_after = lab.proxy_stats("frontend").or_logs(&lab);
    let back_after = lab.proxy_stats("backend-1").or_logs(&lab);
    assert_eq!(
        front_after["outbound.passthrough.connections"]
            - front_before["outbound.passthrough.connections"],
        1
    );
    assert_eq!(
        back_after["inbound.http.requests"] - after["inbound.http.requests"],
        5,
        "{echo}"
    );
}
