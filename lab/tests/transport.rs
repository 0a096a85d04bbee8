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

/// Issue acceptance: 1000 HTTP/1.1 requests from 10 app connections use
/// one HTTP/2 connection between the two proxies.
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
}
