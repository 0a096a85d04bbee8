//! Dual-stack labs: IPv6 from the benchmarking prefix 2001:2::/48 on the
//! bridge, the pods and (as second cluster IPs) the Services, with the
//! apps reachable pod to pod over IPv6 and IPv4 alike. Needs root.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{OrLogs, host_ip};
use knit_lab::{
    AppSpec, ClientSpec, GRPC_PORT, GrpcClientSpec, GrpcMode, Lab, NODE_IPV6, PodSpec, ServiceSpec,
    TCP_ECHO_PORT, TcpClientSpec, wait_until,
};

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn dual_lab(name: &str) -> Lab {
    Lab::builder(name)
        .dual_stack(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pods_talk_over_ipv6_and_ipv4() {
    let mut lab = dual_lab("v6");
    assert!(lab.is_dual_stack());
    let a = lab.add_pod(PodSpec::new("pod-a")).or_logs(&lab);
    let b = lab
        .add_pod(
            PodSpec::new("pod-b")
                .app(AppSpec::GrpcEcho { port: GRPC_PORT })
                .app(AppSpec::TcpEcho {
                    port: TCP_ECHO_PORT,
                }),
        )
        .or_logs(&lab);
    assert_eq!(a.ipv6, Some(v6("2001:2::11")));
    assert_eq!(b.ipv6, Some(v6("2001:2::12")));
    assert_eq!(b.ip, Ipv4Addr::new(198, 18, 0, 12));

    // The address is usable at once: DAD is off on the lab's interfaces.
    let addrs = lab
        .exec_in_pod("pod-b", "ip", &["-6", "-o", "addr", "show", "dev", "eth0"])
        .or_logs(&lab);
    assert!(
        addrs.contains("inet6 2001:2::12/64") && !addrs.contains("tentative"),
        "{addrs}"
    );
    let sysctl = knit_lab::find_tool("sysctl").unwrap();
    let dad = lab
        .exec_in_pod(
            "pod-b",
            sysctl.to_str().unwrap(),
            &["-n", "net.ipv6.conf.eth0.accept_dad"],
        )
        .or_logs(&lab);
    assert_eq!(dad.trim(), "0");
    let routes = lab
        .exec_in_pod("pod-a", "ip", &["-6", "route", "show", "default"])
        .or_logs(&lab);
    assert!(routes.contains(&format!("via {NODE_IPV6}")), "{routes}");

    // HTTP over IPv6; the echo sees the client's IPv6 address.
    let url = "http://[2001:2::12]:8080/six";
    let r = lab
        .run_client("pod-a", &ClientSpec::new(url).count(10))
        .or_logs(&lab);
    assert_eq!((r.sent, r.ok), (10, 10), "{r:?}");
    assert_eq!(r.by_pod["pod-b"], 10);
    let body = lab
        .http_get_in_pod("pod-a", url)
        .or_logs(&lab)
        .json()
        .unwrap();
    assert!(
        body["peer"].as_str().unwrap().starts_with("[2001:2::11]:"),
        "{body}"
    );
    assert_eq!(body["host"], "[2001:2::12]:8080");

    // IPv4 still works on the same dual-stack sockets, and the echo reports
    // IPv4 peers as IPv4 (not ::ffff:-mapped).
    let body = lab
        .http_get_in_pod("pod-a", &format!("http://{}:8080/", b.ip))
        .or_logs(&lab)
        .json()
        .unwrap();
    assert!(
        body["peer"].as_str().unwrap().starts_with("198.18.0.11:"),
        "{body}"
    );

    // The other apps listen on IPv6 too.
    let r = lab
        .run_grpc_client(
            "pod-a",
            &GrpcClientSpec::new(&format!("http://[2001:2::12]:{GRPC_PORT}"), GrpcMode::Bidi)
                .count(10),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.trailer.as_deref(), Some("pod-b"));
    let r = lab
        .run_tcp_client(
            "pod-a",
            &TcpClientSpec::new("2001:2::12", TCP_ECHO_PORT).bytes(100_000),
        )
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");
    // By name: the pod's hosts file lists its own IPv6 address.
    let hosts = std::fs::read_to_string(lab.hosts_file_path("pod-b").unwrap()).unwrap();
    assert!(hosts.contains("2001:2::12 pod-b\n"), "{hosts}");
    let r = lab
        .run_tcp_client("pod-b", &TcpClientSpec::new("pod-b", TCP_ECHO_PORT))
        .or_logs(&lab);
    assert!(r.ok, "{r:?}");

    // The WorkloadEntry keeps the IPv4 address.
    let we = std::fs::read_to_string(lab.config_dir().join("we-pod-b.yaml")).unwrap();
    assert!(we.contains("address: \"198.18.0.12\""), "{we}");

    // Nothing of it in the host's namespace.
    let host = host_ip(&["-6", "-o", "addr"]);
    assert!(!host.contains("2001:2:"), "{host}");
    let host = host_ip(&["-6", "route"]);
    assert!(!host.contains("2001:2:"), "{host}");
}

#[test]
fn services_get_an_ipv6_cluster_ip() {
    let mut lab = dual_lab("v6svc");
    lab.add_pod(PodSpec::new("web")).or_logs(&lab);
    let vip = lab
        .add_service(
            ServiceSpec::new("backend")
                .port("http", 80, 8080)
                .selector("app", "backend"),
        )
        .or_logs(&lab);
    assert_eq!(vip, Ipv4Addr::new(198, 19, 0, 10));
    assert_eq!(
        lab.service_vip6("default", "backend").unwrap(),
        Some(v6("2001:2:0:1::10"))
    );
    let svc = std::fs::read_to_string(lab.config_dir().join("svc-backend.yaml")).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&svc).unwrap();
    assert_eq!(
        v["spec"]["clusterIPs"],
        serde_json::json!(["198.19.0.10", "2001:2:0:1::10"])
    );
    assert_eq!(v["spec"]["ipFamilies"], serde_json::json!(["IPv4", "IPv6"]));
    assert_eq!(v["spec"]["ipFamilyPolicy"], "PreferDualStack");

    // Both addresses resolve in the pod.
    let ahosts = lab
        .exec_in_pod("web", "getent", &["ahosts", "backend"])
        .or_logs(&lab);
    assert!(
        ahosts.contains("198.19.0.10") && ahosts.contains("2001:2:0:1::10"),
        "{ahosts}"
    );
    let six = lab
        .exec_in_pod(
            "web",
            "getent",
            &["ahostsv6", "backend.default.svc.cluster.local"],
        )
        .or_logs(&lab);
    assert!(six.starts_with("2001:2:0:1::10"), "{six}");

    // An explicit IPv6 VIP, a single-stack service, and clashes refused.
    lab.add_service(
        ServiceSpec::new("pinned")
            .vip6(v6("2001:2:0:1::99"))
            .port("http", 80, 8080),
    )
    .or_logs(&lab);
    assert_eq!(
        lab.service_vip6("default", "pinned").unwrap(),
        Some(v6("2001:2:0:1::99"))
    );
    lab.add_service(
        ServiceSpec::new("legacy")
            .ipv4_only()
            .port("http", 80, 8080),
    )
    .or_logs(&lab);
    assert_eq!(lab.service_vip6("default", "legacy").unwrap(), None);
    let svc = std::fs::read_to_string(lab.config_dir().join("svc-legacy.yaml")).unwrap();
    assert!(!svc.contains("clusterIPs"), "{svc}");
    let clash = lab
        .add_service(
            ServiceSpec::new("clash")
                .vip6(v6("2001:2:0:1::99"))
                .port("http", 80, 8080),
        )
        .unwrap_err();
    assert!(
        clash.to_string().contains("already used by default/pinned"),
        "{clash}"
    );
    let outside = lab
        .add_service(
            ServiceSpec::new("outside")
                .vip6(v6("2001:db8::1"))
                .port("http", 80, 8080),
        )
        .unwrap_err();
    assert!(outside.to_string().contains("2001:2:0:1::/64"), "{outside}");
}

#[test]
fn knitd_takes_dual_stack_services_with_named_app_ports() {
    let mut lab = dual_lab("v6knitd");
    lab.start_knitd().or_logs(&lab);
    lab.add_pod(
        PodSpec::new("apps-1")
            .label("app", "apps")
            .app(AppSpec::GrpcEcho { port: GRPC_PORT }),
    )
    .or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("apps")
            .selector("app", "apps")
            .port_to("grpc", 50051, "grpc", Some("grpc"))
            .port_with_protocol("http", 80, 8080, "http"),
    )
    .or_logs(&lab);
    // knitd accepts the Service (its snapshot names both VIPs, and the
    // endpoint's named `grpc` target resolved to the pod's 50051) instead of
    // rejecting the file.
    wait_until(
        "knitd's snapshot to show default/apps with both VIPs and the grpc endpoint",
        Duration::from_secs(30),
        || {
            let snap = lab.knitd_get_json("/debug/snapshot")?;
            let mut strings = Vec::new();
            collect_strings(&snap["services"], &mut strings);
            Ok(strings.iter().any(|s| s == "2001:2:0:1::10")
                && strings.iter().any(|s| s == "198.19.0.10")
                && has_pair(&snap["endpoints"], "50051", 50051))
        },
    )
    .or_logs(&lab);
}

/// Every string in a JSON tree (the snapshot's shape is knitd's business).
fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Whether some object in the tree maps `key` to the number `value`.
fn has_pair(v: &serde_json::Value, key: &str, value: u64) -> bool {
    match v {
        serde_json::Value::Array(a) => a.iter().any(|v| has_pair(v, key, value)),
        serde_json::Value::Object(o) => {
            o.get(key).and_then(serde_json::Value::as_u64) == Some(value)
                || o.values().any(|v| has_pair(v, key, value))
        }
        _ => false,
    }
}
