use std::net::IpAddr;

use super::*;
use crate::model::DocumentRef;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn origin(file: &str, index: usize) -> DocumentRef {
    DocumentRef {
        file: file.to_owned(),
        index,
        resource: None,
    }
}

fn port(index: usize, name: Option<&str>, port: u16, target: TargetPort) -> ServicePortDef {
    ServicePortDef {
        index,
        name: name.map(str::to_owned),
        port,
        transport: Transport::Tcp,
        target,
        app_protocol: None,
    }
}

fn service(
    name: &str,
    namespace: &str,
    selector: &[(&str, &str)],
    ports: Vec<ServicePortDef>,
) -> ServiceDef {
    ServiceDef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        vips: vec![IpAddr::from([10, 96, 0, 1])],
        ports,
        selector: labels(selector),
        origin: origin("services.yaml", 1),
    }
}

fn workload(
    name: &str,
    namespace: &str,
    address: [u8; 4],
    label_pairs: &[(&str, &str)],
    ports: &[(&str, u16)],
) -> Workload {
    Workload {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        address: IpAddr::from(address),
        labels: labels(label_pairs),
        service_account: "default".to_owned(),
        ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
        mesh_port: Some(15008),
        token_sha256: None,
        origin: origin("pods.yaml", 1),
    }
}

#[test]
fn selector_matching_follows_kubernetes() {
    let table = [
        (vec![("app", "web")], vec![("app", "web")], true),
        (
            vec![("app", "web")],
            vec![("app", "web"), ("version", "v1")],
            true,
        ),
        (
            vec![("app", "web"), ("version", "v1")],
            vec![("app", "web")],
            false,
        ),
        (vec![("app", "web")], vec![("app", "api")], false),
        (vec![("app", "web")], vec![("App", "web")], false),
        (vec![("app", "")], vec![("app", "")], true),
        (vec![("app", "")], vec![], false),
        // An empty selector manages no endpoints.
        (vec![], vec![("app", "web")], false),
        (vec![], vec![], false),
    ];
    for (selector, workload_labels, expected) in table {
        assert_eq!(
            selects(&labels(&selector), &labels(&workload_labels)),
            expected,
            "{selector:?} vs {workload_labels:?}"
        );
    }
}

#[test]
fn target_port_resolution() {
    let ports: BTreeMap<String, u16> =
        [("http".to_owned(), 8080), ("metrics".to_owned(), 9090)].into();
    let table = [
        (TargetPort::Number(80), Some(80)),
        (TargetPort::Named("http".to_owned()), Some(8080)),
        (TargetPort::Named("metrics".to_owned()), Some(9090)),
        (TargetPort::Named("grpc".to_owned()), None),
    ];
    for (target, expected) in table {
        assert_eq!(resolve_target_port(&target, &ports), expected, "{target:?}");
    }
    assert_eq!(
        resolve_target_port(&TargetPort::Named("http".to_owned()), &BTreeMap::new()),
        None
    );
}

#[test]
fn protocol_derivation() {
    use pb::Protocol::*;
    let table = [
        (None, None, Unspecified),
        (Some("web"), None, Unspecified),
        (Some("http"), None, Http),
        (Some("http-web"), None, Http),
        (Some("HTTP-web"), None, Http),
        (Some("http2"), None, Http2),
        (Some("http2-api"), None, Http2),
        (Some("grpc"), None, Grpc),
        (Some("grpc-api"), None, Grpc),
        (Some("grpc-web"), None, Http),
        (Some("tcp-db"), None, Tcp),
        (Some("tls"), None, Tls),
        (Some("tls-x"), None, Tls),
        (Some("https"), None, Tls),
        (Some("httpx"), None, Unspecified),
        (Some("mysql"), None, Unspecified),
        (Some("web"), Some("http"), Http),
        (Some("web"), Some("HTTP"), Http),
        (Some("web"), Some("kubernetes.io/h2c"), Http2),
        (Some("web"), Some("Kubernetes.io/H2C"), Http2),
        (Some("web"), Some("http2"), Http2),
        (Some("web"), Some("grpc"), Grpc),
        (Some("web"), Some("tcp"), Tcp),
        (Some("web"), Some("tls"), Tls),
        // appProtocol wins over the name, even when it is not understood.
        (Some("http-web"), Some("tcp"), Tcp),
        (Some("http-web"), Some("example.com/custom"), Unspecified),
        (None, Some("grpc"), Grpc),
    ];
    for (name, app_protocol, expected) in table {
        assert_eq!(
            derive_protocol(name, app_protocol),
            expected,
            "{name:?} {app_protocol:?}"
        );
    }
}

#[test]
fn endpoints_are_selected_workloads_with_resolved_ports() {
    let config = MeshConfig {
        services: vec![
            service(
                "web",
                "shop",
                &[("app", "web")],
                vec![
                    port(0, Some("metrics"), 9000, TargetPort::Number(9090)),
                    port(1, Some("http"), 80, TargetPort::Named("http".to_owned())),
                ],
            ),
            service(
                "api",
                "default",
                &[],
                vec![port(0, None, 8080, TargetPort::Number(8080))],
            ),
        ],
        workloads: vec![
            workload(
                "web-b",
                "shop",
                [10, 0, 0, 2],
                &[("app", "web")],
                &[("http", 8081)],
            ),
            workload(
                "web-a",
                "shop",
                [10, 0, 0, 1],
                &[("app", "web"), ("v", "1")],
                &[("http", 8080)],
            ),
            workload(
                "web-other-ns",
                "default",
                [10, 0, 0, 3],
                &[("app", "web")],
                &[("http", 8080)],
            ),
            workload("web-no-http", "shop", [10, 0, 0, 4], &[("app", "web")], &[]),
            workload(
                "db",
                "shop",
                [10, 0, 0, 5],
                &[("app", "db")],
                &[("http", 8080)],
            ),
        ],
        peer_authentications: Vec::new(),
        authorization_policies: Vec::new(),
        destination_rules: Vec::new(),
    };
    let translation = translate(&config);
    let snapshot = &translation.snapshot;

    // Sorted by namespace then name; ports by number.
    let names: Vec<&str> = snapshot
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "api.default.svc.cluster.local",
            "web.shop.svc.cluster.local"
        ]
    );
    let web = &snapshot.services[1];
    assert_eq!(web.vips, ["10.96.0.1"]);
    let ports: Vec<(u32, &str, i32)> = web
        .ports
        .iter()
        .map(|p| (p.port, p.name.as_str(), p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (80, "http", pb::Protocol::Http as i32),
            (9000, "metrics", pb::Protocol::Unspecified as i32)
        ]
    );

    // The selector-less Service manages no endpoints.
    assert_eq!(snapshot.endpoints[0].service_name, "api");
    assert!(snapshot.endpoints[0].endpoints.is_empty());

    let web_endpoints = &snapshot.endpoints[1].endpoints;
    let summary: Vec<(&str, &str, BTreeMap<u32, u32>)> = web_endpoints
        .iter()
        .map(|e| {
            (
                e.workload_name.as_str(),
                e.address.as_str(),
                e.ports.iter().map(|(k, v)| (*k, *v)).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "web-a",
                "10.0.0.1",
                BTreeMap::from([(80, 8080), (9000, 9090)])
            ),
            (
                "web-b",
                "10.0.0.2",
                BTreeMap::from([(80, 8081), (9000, 9090)])
            ),
            // No "http" port: an endpoint for 9000 only.
            ("web-no-http", "10.0.0.4", BTreeMap::from([(9000, 9090)])),
        ]
    );
    assert_eq!(web_endpoints[0].workload_namespace, "shop");
    assert_eq!(web_endpoints[0].service_account, "default");
    assert_eq!(
        translation.warnings,
        [
            "config warning: services.yaml doc 1: spec.ports[1].targetPort: WorkloadEntry shop/web-no-http (pods.yaml doc 1) declares no port \"http\", so it is not an endpoint for port 80"
        ]
    );
}

#[test]
fn workload_without_any_resolvable_port_is_no_endpoint() {
    let config = MeshConfig {
        services: vec![service(
            "web",
            "default",
            &[("app", "web")],
            vec![port(
                0,
                Some("http"),
                80,
                TargetPort::Named("http".to_owned()),
            )],
        )],
        workloads: vec![workload(
            "web-a",
            "default",
            [10, 0, 0, 1],
            &[("app", "web")],
            &[],
        )],
        peer_authentications: Vec::new(),
        authorization_policies: Vec::new(),
        destination_rules: Vec::new(),
    };
    let translation = translate(&config);
    assert!(translation.snapshot.endpoints[0].endpoints.is_empty());
    assert_eq!(translation.warnings.len(), 1);
}

#[test]
fn udp_ports_are_left_out_with_a_warning() {
    let mut dns = port(0, Some("dns"), 53, TargetPort::Number(53));
    dns.transport = Transport::Udp;
    let config = MeshConfig {
        services: vec![service(
            "dns",
            "default",
            &[("app", "dns")],
            vec![dns, port(1, Some("dns-tcp"), 53, TargetPort::Number(53))],
        )],
        workloads: vec![workload(
            "dns-a",
            "default",
            [10, 0, 0, 1],
            &[("app", "dns")],
            &[],
        )],
        peer_authentications: Vec::new(),
        authorization_policies: Vec::new(),
        destination_rules: Vec::new(),
    };
    let translation = translate(&config);
    assert_eq!(translation.snapshot.services[0].ports.len(), 1);
    assert_eq!(translation.snapshot.services[0].ports[0].name, "dns-tcp");
    assert_eq!(
        translation.warnings,
        [
            "config warning: services.yaml doc 1: spec.ports[0]: 53/UDP is not carried by the mesh, ignored"
        ]
    );
}

#[test]
fn version_is_stable_and_follows_content() {
    let build = |address: [u8; 4]| MeshConfig {
        services: vec![service(
            "web",
            "default",
            &[("app", "web")],
            vec![port(0, Some("http"), 80, TargetPort::Number(8080))],
        )],
        workloads: vec![workload(
            "web-a",
            "default",
            address,
            &[("app", "web")],
            &[],
        )],
        peer_authentications: Vec::new(),
        authorization_policies: Vec::new(),
        destination_rules: Vec::new(),
    };
    let first = translate(&build([10, 0, 0, 1])).snapshot.version;
    let again = translate(&build([10, 0, 0, 1])).snapshot.version;
    assert_eq!(first, again);
    let moved = translate(&build([10, 0, 0, 2])).snapshot.version;
    assert_ne!(first, moved);
    // Where a resource was declared is not content.
    let mut elsewhere = build([10, 0, 0, 1]);
    elsewhere.workloads[0].origin = origin("other.yaml", 7);
    assert_eq!(translate(&elsewhere).snapshot.version, first);
}
