use super::*;
use crate::config::loader::{ParsedFiles, parse_file};

/// Parses and assembles `files` in order; returns the model and every error.
fn load(files: &[(&str, &str)]) -> (MeshConfig, Vec<String>) {
    let mut parsed = ParsedFiles::default();
    for (name, text) in files {
        parse_file(name, text, &mut parsed);
    }
    let (config, errors) = assemble(parsed.documents);
    let mut all: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
    all.extend(errors.iter().map(ToString::to_string));
    (config, all)
}

fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn workload(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

const GOOD_SERVICE_SPEC: &str = "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

#[test]
fn each_invalid_service_gives_one_error_naming_file_document_and_field() {
    let good = service(
        "frontend",
        "  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n",
    );
    let table: Vec<(String, &str)> = vec![
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 70000\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[0].port: 70000 is not a valid port (1-65535)",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 0\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[0].port: 0 is not a valid port (1-65535)",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.300\n  ports:\n  - port: 80\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.clusterIP: \"10.96.0.300\" is not a valid IP address (or \"None\" for a headless Service)",
        ),
        (
            service("backend", "  clusterIPs: [10.96.0.10, 10.96.0.11]\n  ports:\n  - port: 80\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.clusterIPs: may hold at most one IPv4 and one IPv6 address",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.11]\n  ports:\n  - port: 80\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.clusterIPs[0]: \"10.96.0.11\" must equal spec.clusterIP \"10.96.0.10\"",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    targetPort: 0\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[0].targetPort: 0 is not a valid port (1-65535)",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    targetPort: \"8080\"\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[0].targetPort: \"8080\" is not a valid port name (at most 15 lowercase letters, digits and single '-', with at least one letter)",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - name: a\n    port: 80\n  - name: b\n    port: 80\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[1].port: 80/TCP is already declared by spec.ports[0]",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - name: a\n    port: 80\n  - name: a\n    port: 81\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[1].name: \"a\" is already used by spec.ports[0]",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - name: a\n    port: 80\n  - port: 81\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[1].name: must be set when a Service has more than one port",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    protocol: QUIC\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports[0].protocol: \"QUIC\" is not supported (TCP, UDP or SCTP)",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.ports: a Service with a cluster IP needs at least one port",
        ),
        (
            service("backend", "  type: ExternalName\n  externalName: example.com\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.type: ExternalName Services are not supported",
        ),
        (
            service("backend", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n  selector:\n    bad key: x\n"),
            "config error: services.yaml doc 2 (Service default/backend): spec.selector: \"bad key\" is not a valid label key (optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n".to_owned(),
            "config error: services.yaml doc 2 (Service): metadata.name: must be set",
        ),
        (
            service("Backend", GOOD_SERVICE_SPEC),
            "config error: services.yaml doc 2 (Service default/Backend): metadata.name: \"Backend\" is not a valid DNS label (at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit)",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\n  namespace: Shop\nspec:\n  ports:\n  - port: 80\n".to_owned(),
            "config error: services.yaml doc 2 (Service Shop/backend): metadata.namespace: \"Shop\" is not a valid DNS label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\n".to_owned(),
            "config error: services.yaml doc 2 (Service default/backend): spec: must be set",
        ),
    ];
    for (bad, expected) in table {
        let text = format!("{good}---\n{bad}");
        let (config, errors) = load(&[("services.yaml", &text)]);
        assert_eq!(errors, [expected], "{bad}");
        // The bad document is skipped, the good one still loads.
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["frontend"], "{bad}");
    }
}

#[test]
fn each_invalid_workload_entry_gives_one_error_naming_file_document_and_field() {
    let table: Vec<(String, &str)> = vec![
        (
            workload("pod-a", "  address: 10.0.0\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.address: \"10.0.0\" is not a valid IP address",
        ),
        (
            workload("pod-a", "  address: \"\"\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.address: must be set",
        ),
        (
            workload("pod-a", "  address: 10.0.0.1\n  ports:\n    http: 70000\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.ports.http: 70000 is not a valid port (1-65535)",
        ),
        (
            workload("pod-a", "  address: 10.0.0.1\n  ports:\n    HTTP: 80\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.ports: \"HTTP\" is not a valid port name (at most 15 lowercase letters, digits and single '-', with at least one letter)",
        ),
        (
            workload("pod-a", "  address: 10.0.0.1\n  serviceAccount: Web_SA\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.serviceAccount: \"Web_SA\" is not a valid DNS subdomain (dot-separated DNS labels, at most 253 characters)",
        ),
        (
            workload("pod-a", "  address: 10.0.0.1\n  labels:\n    app: -web\n"),
            "config error: pods.yaml doc 1 (WorkloadEntry default/pod-a): spec.labels.app: \"-web\" is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        ),
        (
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {}\nspec:\n  address: 10.0.0.1\n".to_owned(),
            "config error: pods.yaml doc 1 (WorkloadEntry): metadata.name: must be set",
        ),
    ];
    for (bad, expected) in table {
        let (config, errors) = load(&[("pods.yaml", &bad)]);
        assert_eq!(errors, [expected], "{bad}");
        assert!(config.workloads.is_empty());
    }
}

#[test]
fn duplicates_across_files_are_reported_and_the_first_wins() {
    let a = format!(
        "{}---\n{}",
        service("backend", GOOD_SERVICE_SPEC),
        workload("pod-a", "  address: 10.0.0.1\n")
    );
    let b = format!(
        "{}---\n{}---\n{}---\n{}",
        service(
            "backend",
            "  clusterIP: 10.96.0.99\n  ports:\n  - port: 80\n"
        ),
        service("other", GOOD_SERVICE_SPEC),
        workload("pod-a", "  address: 10.0.0.2\n"),
        workload("pod-b", "  address: 10.0.0.1\n"),
    );
    let (config, errors) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    assert_eq!(
        errors,
        [
            "config error: b.yaml doc 1 (Service default/backend): metadata.name: duplicate Service default/backend, already defined in a.yaml doc 1",
            "config error: b.yaml doc 2 (Service default/other): spec.clusterIP: 10.96.0.10 is already the cluster IP of Service default/backend (a.yaml doc 1)",
            "config error: b.yaml doc 3 (WorkloadEntry default/pod-a): metadata.name: duplicate WorkloadEntry default/pod-a, already defined in a.yaml doc 2",
            "config error: b.yaml doc 4 (WorkloadEntry default/pod-b): spec.address: 10.0.0.1 is already the address of WorkloadEntry default/pod-a (a.yaml doc 2)",
        ]
    );
    assert_eq!(config.services.len(), 1);
    assert_eq!(config.services[0].vips, [IpAddr::from([10, 96, 0, 10])]);
    assert_eq!(config.workloads.len(), 1);
    assert_eq!(config.workloads[0].origin.file, "a.yaml");
}

#[test]
fn same_name_in_other_namespace_and_other_kind_is_not_a_duplicate() {
    let text = format!(
        "{}---\n{}---\n{}",
        service("web", GOOD_SERVICE_SPEC),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: None\n",
        workload("web", "  address: 10.0.0.1\n"),
    );
    let (config, errors) = load(&[("x.yaml", &text)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.workloads.len(), 1);
}

#[test]
fn valid_service_becomes_the_model() {
    let text = service(
        "backend",
        "  clusterIPs: [10.96.0.10, fd00::10]\n  selector:\n    app: backend\n  ports:\n  - name: http-web\n    port: 80\n    targetPort: web\n    appProtocol: http\n  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 5353\n",
    );
    let (config, errors) = load(&[("s.yaml", &text)]);
    assert!(errors.is_empty(), "{errors:?}");
    let svc = &config.services[0];
    assert_eq!(svc.namespace, "default");
    let vips: Vec<String> = svc.vips.iter().map(ToString::to_string).collect();
    assert_eq!(vips, ["10.96.0.10", "fd00::10"]);
    assert_eq!(
        svc.selector,
        BTreeMap::from([("app".to_owned(), "backend".to_owned())])
    );
    assert_eq!(
        svc.ports,
        [
            ServicePortDef {
                index: 0,
                name: Some("http-web".to_owned()),
                port: 80,
                transport: Transport::Tcp,
                target: TargetPort::Named("web".to_owned()),
                app_protocol: Some("http".to_owned()),
            },
            ServicePortDef {
                index: 1,
                name: Some("dns".to_owned()),
                port: 53,
                transport: Transport::Udp,
                target: TargetPort::Number(5353),
                app_protocol: None,
            },
        ]
    );
}

#[test]
fn headless_services_have_no_vips() {
    for spec in [
        "  clusterIP: None\n",
        "  clusterIP: \"\"\n",
        "  ports:\n  - port: 80\n",
        "  clusterIPs: [None]\n",
    ] {
        let (config, errors) = load(&[("s.yaml", &service("db", spec))]);
        assert!(errors.is_empty(), "{spec}: {errors:?}");
        assert!(config.services[0].vips.is_empty(), "{spec}");
    }
}

#[test]
fn workload_defaults() {
    let (config, errors) = load(&[("w.yaml", &workload("pod-a", "  address: fd00::1\n"))]);
    assert!(errors.is_empty(), "{errors:?}");
    let w = &config.workloads[0];
    assert_eq!(w.namespace, "default");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.address.to_string(), "fd00::1");
}

#[test]
fn proxy_annotation_decides_the_mesh_port() {
    let with_annotation = |value: &str| {
        format!(
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: p\n  annotations: {{mesh.knit.dev/proxy: {value}}}\nspec:\n  address: 10.0.0.1\n"
        )
    };
    let (config, errors) = load(&[("a.yaml", &workload("p", "  address: 10.0.0.1\n"))]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        config.workloads[0].mesh_port,
        Some(MESH_PORT),
        "meshed unless said otherwise"
    );

    let (config, errors) = load(&[("a.yaml", &with_annotation("none"))]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(config.workloads[0].mesh_port, None);

    let (config, errors) = load(&[("a.yaml", &with_annotation("knit"))]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(config.workloads[0].mesh_port, Some(MESH_PORT));

    let (config, errors) = load(&[("a.yaml", &with_annotation("envoy"))]);
    assert!(config.workloads.is_empty());
    assert_eq!(
        errors,
        [
            "config error: a.yaml doc 1 (WorkloadEntry default/p): metadata.annotations[mesh.knit.dev/proxy]: \"envoy\" is neither \"knit\" nor \"none\""
        ]
    );
}

#[test]
fn token_annotation_holds_a_sha256_digest_once_per_workload() {
    let with_token = |name: &str, address: &str, value: &str| {
        format!(
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  annotations:\n    mesh.knit.dev/token-sha256: \"{value}\"\nspec:\n  address: {address}\n"
        )
    };
    let digest = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
    let (config, errors) = load(&[("a.yaml", &with_token("p", "10.0.0.1", digest))]);
    assert!(errors.is_empty(), "{errors:?}");
    // SHA-256 of "test"; either case of hex is accepted.
    assert_eq!(
        config.workloads[0].token_sha256,
        Some(TokenDigest::of_token("test"))
    );
    let (config, errors) = load(&[("a.yaml", &workload("p", "  address: 10.0.0.1\n"))]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        config.workloads[0].token_sha256, None,
        "no annotation, no token"
    );

    for bad in [
        "abc",
        "+f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        &"g".repeat(64),
        "the-token-itself",
    ] {
        let (config, errors) = load(&[("a.yaml", &with_token("p", "10.0.0.1", bad))]);
        assert!(config.workloads.is_empty(), "{bad}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "config error: a.yaml doc 1 (WorkloadEntry default/p): metadata.annotations[mesh.knit.dev/token-sha256]: \"{bad}\" is not a SHA-256 digest"
            )),
            "{}",
            errors[0]
        );
    }

    let both = format!(
        "{}---\n{}",
        with_token("p", "10.0.0.1", digest),
        with_token("q", "10.0.0.2", &digest.to_ascii_lowercase())
    );
    let (config, errors) = load(&[("a.yaml", &both)]);
    assert_eq!(
        errors,
        [
            "config error: a.yaml doc 2 (WorkloadEntry default/q): metadata.annotations[mesh.knit.dev/token-sha256]: is already the token digest of WorkloadEntry default/p (a.yaml doc 1)"
        ]
    );
    assert_eq!(config.workloads.len(), 1);
}

fn peer_authentication(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{spec}"
    )
}

#[test]
fn each_invalid_peer_authentication_gives_one_error_naming_file_document_and_field() {
    let at = "config error: pa.yaml doc 1 (PeerAuthentication shop/p)";
    let table = [
        (
            "  portLevelMtls:\n    \"8080\":\n      mode: STRICT\n",
            format!(
                "{at}: spec.portLevelMtls: is only allowed with a workload selector \
                 (spec.selector.matchLabels), as in Istio"
            ),
        ),
        (
            "  selector:\n    matchLabels: {}\n  portLevelMtls:\n    8080:\n      mode: STRICT\n",
            format!(
                "{at}: spec.portLevelMtls: is only allowed with a workload selector \
                 (spec.selector.matchLabels), as in Istio"
            ),
        ),
        (
            "  selector:\n    matchLabels:\n      app: web\n  portLevelMtls:\n    http:\n      mode: STRICT\n",
            format!("{at}: spec.portLevelMtls: key \"http\" is not a port number (1-65535)"),
        ),
        (
            "  selector:\n    matchLabels:\n      app: web\n  portLevelMtls:\n    0:\n      mode: STRICT\n",
            format!("{at}: spec.portLevelMtls: key \"0\" is not a port number (1-65535)"),
        ),
        (
            "  selector:\n    matchLabels:\n      app: web\n  portLevelMtls:\n    70000:\n      mode: STRICT\n",
            format!("{at}: spec.portLevelMtls: key \"70000\" is not a port number (1-65535)"),
        ),
        (
            "  selector:\n    matchLabels:\n      \"bad key!\": web\n",
            format!(
                "{at}: spec.selector.matchLabels: {}",
                super::super::names::check_label_key("bad key!")
                    .err()
                    .unwrap_or_default()
            ),
        ),
        (
            "  selector:\n    matchLabels:\n      app: \"-web\"\n",
            format!(
                "{at}: spec.selector.matchLabels.app: {}",
                super::super::names::check_label_value("-web")
                    .err()
                    .unwrap_or_default()
            ),
        ),
    ];
    for (spec, expected) in table {
        let (config, errors) = load(&[("pa.yaml", &peer_authentication("p", spec))]);
        assert_eq!(errors, [expected], "{spec}");
        assert!(config.peer_authentications.is_empty());
    }
    let (_, errors) = load(&[(
        "pa.yaml",
        &peer_authentication("Bad_Name", "  mtls:\n    mode: STRICT\n"),
    )]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(
            "config error: pa.yaml doc 1 (PeerAuthentication shop/Bad_Name): metadata.name: "
        ),
        "{errors:?}"
    );
}

#[test]
fn valid_peer_authentication_becomes_the_model() {
    let spec = "  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: UNSET\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n    \"9090\":\n      mode: STRICT\n    7070: {}\n";
    let text = format!(
        "{}---\n{}",
        peer_authentication("p", spec),
        "apiVersion: mesh.knit.dev/v1alpha1\nkind: PeerAuthentication\nmetadata:\n  name: mesh\n  namespace: knit-system\n  creationTimestamp: \"2024-01-02T03:04:05Z\"\nspec: {}\n"
    );
    let (config, errors) = load(&[("pa.yaml", &text)]);
    assert!(errors.is_empty(), "{errors:?}");
    let [p, mesh] = config.peer_authentications.as_slice() else {
        panic!("{:?}", config.peer_authentications);
    };
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", "p"));
    assert_eq!(p.selector.get("app").map(String::as_str), Some("web"));
    assert_eq!(p.mode, None);
    assert_eq!(
        p.port_modes,
        BTreeMap::from([
            (7070, None),
            (8080, Some(MtlsMode::Disable)),
            (9090, Some(MtlsMode::Strict)),
        ])
    );
    assert_eq!(p.created, None);
    assert_eq!(
        p.origin.to_string(),
        "pa.yaml doc 1 (PeerAuthentication shop/p)"
    );
    assert_eq!((mesh.namespace.as_str(), mesh.mode), ("knit-system", None));
    assert!(mesh.selector.is_empty() && mesh.port_modes.is_empty());
    assert_eq!(
        mesh.created.as_ref().map(|t| t.0.to_string()),
        Some("2024-01-02T03:04:05Z".to_owned())
    );
}

#[test]
fn duplicate_peer_authentications_are_reported_and_the_first_wins() {
    let first = peer_authentication("p", "  mtls:\n    mode: STRICT\n");
    let second = peer_authentication("p", "  mtls:\n    mode: DISABLE\n");
    let other_ns = second.replace("namespace: shop", "namespace: other");
    let (config, errors) = load(&[
        ("a.yaml", &first),
        ("b.yaml", &format!("{second}---\n{other_ns}")),
    ]);
    assert_eq!(
        errors,
        [
            "config error: b.yaml doc 1 (PeerAuthentication shop/p): metadata.name: duplicate PeerAuthentication shop/p, already defined in a.yaml doc 1"
        ]
    );
    let kept: Vec<(&str, Option<MtlsMode>)> = config
        .peer_authentications
        .iter()
        .map(|p| (p.namespace.as_str(), p.mode))
        .collect();
    assert_eq!(
        kept,
        [
            ("shop", Some(MtlsMode::Strict)),
            ("other", Some(MtlsMode::Disable))
        ]
    );
}
