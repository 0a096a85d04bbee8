use super::*;
use crate::config::loader::{ParsedFiles, parse_file};
use crate::config::validate::assemble;
use crate::model::MeshConfig;

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

/// A DestinationRule `shop/dr` with `spec` (indented by two).
fn rule(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\n  namespace: shop\nspec:\n{spec}"
    )
}

const AT: &str = "config error: dr.yaml doc 1 (DestinationRule shop/dr)";

fn only_rule(spec: &str) -> DestinationRuleDef {
    let (config, errors) = load(&[("dr.yaml", &rule(spec))]);
    assert!(errors.is_empty(), "{spec}: {errors:?}");
    match config.destination_rules.as_slice() {
        [rule] => rule.clone(),
        other => panic!("{spec}: {other:?}"),
    }
}

fn tls(mode: ClientTlsMode) -> ClientTlsDef {
    ClientTlsDef {
        mode,
        ca_certificates: None,
        client_certificate: None,
        private_key: None,
        sni: None,
        subject_alt_names: Vec::new(),
    }
}

#[test]
fn destination_rule_loads_under_every_api_version() {
    for api_version in [
        "mesh.knit.dev/v1alpha1",
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    ] {
        let text = rule("  host: backend\n  trafficPolicy:\n    tls: {mode: DISABLE}\n")
            .replace("networking.istio.io/v1", api_version);
        let (config, errors) = load(&[("dr.yaml", &text)]);
        assert!(errors.is_empty(), "{api_version}: {errors:?}");
        assert_eq!(config.destination_rules.len(), 1, "{api_version}");
        assert_eq!(
            config.destination_rules[0].origin.to_string(),
            "dr.yaml doc 1 (DestinationRule shop/dr)"
        );
    }
}

#[test]
fn hosts_name_one_service() {
    /// (name, namespace) of the Service, or part of the reason.
    type Expected<'a> = Result<(&'a str, &'a str), &'a str>;
    let table: [(&str, Expected); 12] = [
        ("backend", Ok(("backend", "shop"))),
        ("backend.web", Ok(("backend", "web"))),
        ("backend.web.svc", Ok(("backend", "web"))),
        ("backend.web.svc.cluster.local", Ok(("backend", "web"))),
        ("backend.web.svc.cluster.local.", Ok(("backend", "web"))),
        ("Backend.Web.svc.cluster.local", Ok(("backend", "web"))),
        (
            "*.web.svc.cluster.local",
            Err("wildcard hosts are not supported yet"),
        ),
        ("*", Err("wildcard hosts are not supported yet")),
        ("api.example.com", Err("does not name a Service")),
        (
            "backend.web.svc.other.domain",
            Err("does not name a Service"),
        ),
        ("1backend", Err("service name")),
        ("backend..svc", Err("namespace")),
    ];
    for (host, expected) in table {
        let got = service_of_host(host, "shop");
        match (expected, got) {
            (Ok((name, namespace)), Ok(service)) => {
                assert_eq!(
                    (service.name.as_str(), service.namespace.as_str()),
                    (name, namespace),
                    "{host}"
                )
            }
            (Err(part), Err(reason)) => assert!(reason.contains(part), "{host}: {reason}"),
            (expected, got) => panic!("{host}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn tls_settings_compile_per_mode_and_port() {
    let rule = only_rule(
        "  host: backend.shop.svc.cluster.local\n  trafficPolicy:\n    tls:\n      mode: SIMPLE\n      caCertificates: /etc/certs/ca.pem\n      sni: API.example.com\n      subjectAltNames: [api.example.com, spiffe://example.org/api]\n    portLevelSettings:\n    - port: {number: 8443}\n      tls:\n        mode: MUTUAL\n        caCertificates: /etc/certs/ca.pem\n        clientCertificate: /etc/certs/client.pem\n        privateKey: /etc/certs/client.key\n    - port: {number: 80}\n      tls: {mode: ISTIO_MUTUAL}\n    - port: {number: 81}\n      tls: {mode: DISABLE}\n",
    );
    assert_eq!(
        rule.service,
        ServiceName {
            name: "backend".to_owned(),
            namespace: "shop".to_owned()
        }
    );
    assert_eq!(rule.host, "backend.shop.svc.cluster.local");
    assert_eq!(
        rule.tls,
        Some(ClientTlsDef {
            ca_certificates: Some("/etc/certs/ca.pem".to_owned()),
            sni: Some("api.example.com".to_owned()),
            subject_alt_names: vec![
                "api.example.com".to_owned(),
                "spiffe://example.org/api".to_owned()
            ],
            ..tls(ClientTlsMode::Simple)
        })
    );
    let ports: Vec<(u16, usize, ClientTlsDef)> = rule
        .port_tls
        .iter()
        .map(|(port, entry)| (*port, entry.index, entry.tls.clone()))
        .collect();
    assert_eq!(
        ports,
        [
            (80, 1, tls(ClientTlsMode::IstioMutual)),
            (81, 2, tls(ClientTlsMode::Disable)),
            (
                8443,
                0,
                ClientTlsDef {
                    ca_certificates: Some("/etc/certs/ca.pem".to_owned()),
                    client_certificate: Some("/etc/certs/client.pem".to_owned()),
                    private_key: Some("/etc/certs/client.key".to_owned()),
                    ..tls(ClientTlsMode::Mutual)
                }
            ),
        ]
    );
    assert!(
        rule.not_implemented.is_empty(),
        "{:?}",
        rule.not_implemented
    );
}

#[test]
fn fields_knit_does_not_implement_are_accepted_and_named() {
    let rule = only_rule(
        "  host: backend\n  exportTo: [\".\"]\n  workloadSelector: {matchLabels: {app: web}}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {tcp: {maxConnections: 10}}\n    outlierDetection: {consecutive5xxErrors: 3}\n    tls: {mode: ISTIO_MUTUAL}\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: LEAST_REQUEST}\n",
    );
    assert_eq!(
        rule.not_implemented,
        [
            "spec.subsets: not implemented yet; accepted without effect",
            "spec.exportTo: not implemented yet; the rule applies mesh-wide, to every client",
            "spec.workloadSelector: not implemented yet; the rule applies to every client",
            "spec.trafficPolicy.loadBalancer: not implemented yet; accepted without effect",
            "spec.trafficPolicy.connectionPool: not implemented yet; accepted without effect",
            "spec.trafficPolicy.outlierDetection: not implemented yet; accepted without effect",
            "spec.trafficPolicy.portLevelSettings[0].loadBalancer: not implemented yet; accepted without effect",
        ]
    );
    assert_eq!(rule.tls, Some(tls(ClientTlsMode::IstioMutual)));
    assert!(
        rule.port_tls.is_empty(),
        "a port entry without tls sets none"
    );
}

#[test]
fn invalid_rules_name_the_field_and_reason() {
    let table = [
        (
            "  trafficPolicy:\n    tls: {mode: DISABLE}\n",
            "spec.host: must be set",
        ),
        (
            "  host: \"*.shop.svc.cluster.local\"\n",
            "spec.host: \"*.shop.svc.cluster.local\": wildcard hosts are not supported yet",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {}\n",
            "spec.trafficPolicy.tls.mode: must be set (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: simple}\n",
            "spec.trafficPolicy.tls.mode: unknown variant `simple`, expected one of `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE}\n",
            "spec.trafficPolicy.tls.caCertificates: must be set with SIMPLE and MUTUAL: the server is verified against these CAs, and Knit has no system roots policy yet",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: certs/ca.pem}\n",
            "spec.trafficPolicy.tls.caCertificates: \"certs/ca.pem\" must be an absolute path on the proxy's filesystem",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, insecureSkipVerify: true}\n",
            "spec.trafficPolicy.tls.insecureSkipVerify: is not supported: Knit always verifies the server",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: backend-ca}\n",
            "spec.trafficPolicy.tls.credentialName: is not supported by Knit (certificates from Kubernetes secrets)",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, caCrl: /crl.pem}\n",
            "spec.trafficPolicy.tls.caCrl: is not supported by Knit",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, clientCertificate: /c.pem}\n",
            "spec.trafficPolicy.tls.clientCertificate: is only used with MUTUAL",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: MUTUAL, caCertificates: /ca.pem, clientCertificate: /c.pem}\n",
            "spec.trafficPolicy.tls.privateKey: must be set with MUTUAL",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL, sni: backend}\n",
            "spec.trafficPolicy.tls.sni: is only used with SIMPLE or MUTUAL (the mesh verifies the endpoint's workload identity instead)",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: DISABLE, caCertificates: /ca.pem}\n",
            "spec.trafficPolicy.tls.caCertificates: is only used with SIMPLE or MUTUAL (DISABLE sends no TLS)",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, sni: 10.0.0.1}\n",
            "spec.trafficPolicy.tls.sni: \"10.0.0.1\" is an IP address; SNI carries DNS names only",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, subjectAltNames: [\"*\"]}\n",
            "spec.trafficPolicy.tls.subjectAltNames[0]: \"*\" would accept any certificate of the CA",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /ca.pem, subjectAltName: [api]}\n",
            "spec.trafficPolicy.tls.subjectAltName: unknown field `subjectAltName`, expected one of `mode`",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    portLevelSettings:\n    - tls: {mode: DISABLE}\n",
            "spec.trafficPolicy.portLevelSettings[0].port.number: must be set",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 70000}\n      tls: {mode: DISABLE}\n",
            "spec.trafficPolicy.portLevelSettings[0].port.number: 70000 is not a valid port",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: DISABLE}\n    - port: {number: 80}\n      tls: {mode: ISTIO_MUTUAL}\n",
            "spec.trafficPolicy.portLevelSettings[1].port.number: port 80 is already set by spec.trafficPolicy.portLevelSettings[0]",
        ),
        (
            "  host: backend\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: SIMPLE}\n",
            "spec.trafficPolicy.portLevelSettings[0].tls.caCertificates: must be set",
        ),
    ];
    for (spec, expected) in table {
        let (config, errors) = load(&[("dr.yaml", &rule(spec))]);
        assert!(config.destination_rules.is_empty(), "{spec}");
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        let want = format!("{AT}: {expected}");
        assert!(
            errors[0].starts_with(&want),
            "{spec}\n got: {}\nwant: {want}",
            errors[0]
        );
    }
}

#[test]
fn a_second_rule_of_the_same_name_is_a_duplicate() {
    let text = rule("  host: backend\n  trafficPolicy:\n    tls: {mode: DISABLE}\n");
    let (config, errors) = load(&[("a.yaml", &text), ("b.yaml", &text)]);
    assert_eq!(config.destination_rules.len(), 1);
    assert_eq!(
        errors,
        [
            "config error: b.yaml doc 1 (DestinationRule shop/dr): metadata.name: duplicate DestinationRule shop/dr, already defined in a.yaml doc 1"
        ]
    );
}
