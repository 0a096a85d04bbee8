use super::*;
use crate::config::loader::{ParsedFiles, parse_file};
use crate::config::validate::assemble;
use crate::model::MeshConfig;
use crate::translate::{Translation, translate};

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80}\n  - {name: tls, port: 443}\n  - {name: tcp-db, port: 5432}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.11\n  ports:\n  - {name: http, port: 80}\n";

/// Loads `files` (services first) and translates them.
fn compile(files: &[(&str, &str)]) -> (Translation, MeshConfig) {
    let mut parsed = ParsedFiles::default();
    parse_file("0-services.yaml", SERVICES, &mut parsed);
    for (name, text) in files {
        parse_file(name, text, &mut parsed);
    }
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let (config, errors) = assemble(parsed.documents);
    assert!(errors.is_empty(), "{errors:?}");
    (translate(&config), config)
}

fn rule(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    )
}

/// (port, mode, sni, rule) of every port of `shop/<service>` with settings.
fn client_tls_of(
    translation: &Translation,
    service: &str,
) -> Vec<(u32, &'static str, String, String)> {
    let service = translation
        .snapshot
        .services
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service}"));
    service
        .ports
        .iter()
        .filter_map(|port| {
            let tls = port.client_tls.as_ref()?;
            let mode = match pb::ClientTlsMode::try_from(tls.mode) {
                Ok(pb::ClientTlsMode::Disable) => "DISABLE",
                Ok(pb::ClientTlsMode::Simple) => "SIMPLE",
                Ok(pb::ClientTlsMode::Mutual) => "MUTUAL",
                Ok(pb::ClientTlsMode::IstioMutual) => "ISTIO_MUTUAL",
                _ => "UNSPECIFIED",
            };
            Some((
                port.port,
                mode,
                tls.sni.clone(),
                tls.destination_rule.clone(),
            ))
        })
        .collect()
}

#[test]
fn port_level_settings_win_and_sni_defaults_to_the_hostname() {
    let (translation, _) = compile(&[(
        "dr.yaml",
        &rule(
            "backend",
            "  host: backend\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}\n    - port: {number: 5432}\n      tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, sni: db.example.com}\n",
        ),
    )]);
    let host = "backend.shop.svc.cluster.local".to_owned();
    let rule = "shop/backend".to_owned();
    assert_eq!(
        client_tls_of(&translation, "backend"),
        [
            (80, "ISTIO_MUTUAL", String::new(), rule.clone()),
            (443, "SIMPLE", host, rule.clone()),
            (5432, "SIMPLE", "db.example.com".to_owned(), rule),
        ]
    );
    assert!(
        client_tls_of(&translation, "web").is_empty(),
        "other services keep auto mTLS"
    );
    // Port 443 is named `tls`: the app already speaks TLS there.
    assert_eq!(
        translation.warnings,
        [
            "config warning: dr.yaml doc 1 (DestinationRule shop/backend): SIMPLE on Service shop/backend port 443: the port carries TLS the app originates (protocol TLS), so the proxy's TLS wraps it a second time"
        ]
    );
    let port = &translation.snapshot.services[0].ports[1];
    let wire = port
        .client_tls
        .as_ref()
        .map(|tls| tls.ca_certificates.as_str());
    assert_eq!(wire, Some("/etc/ca.pem"));
}

#[test]
fn a_port_without_settings_keeps_auto_mtls() {
    let (translation, _) = compile(&[(
        "dr.yaml",
        &rule(
            "backend",
            "  host: backend.shop.svc.cluster.local\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: DISABLE}\n    - port: {number: 8080}\n      tls: {mode: DISABLE}\n",
        ),
    )]);
    assert_eq!(
        client_tls_of(&translation, "backend"),
        [(80, "DISABLE", String::new(), "shop/backend".to_owned())]
    );
    assert_eq!(
        translation.warnings,
        [
            "config warning: dr.yaml doc 1 (DestinationRule shop/backend): spec.trafficPolicy.portLevelSettings[1].port.number: Service shop/backend has no TCP port 8080; ignored"
        ]
    );
}

#[test]
fn the_first_rule_for_a_host_wins_and_the_other_is_reported() {
    let first = rule(
        "b-first",
        "  host: backend\n  trafficPolicy:\n    tls: {mode: DISABLE}\n",
    );
    let second = rule(
        "a-second",
        "  host: backend.shop.svc.cluster.local\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n",
    );
    let (translation, _) = compile(&[("1.yaml", &first), ("2.yaml", &second)]);
    assert_eq!(
        client_tls_of(&translation, "backend")[0],
        (80, "DISABLE", String::new(), "shop/b-first".to_owned())
    );
    assert_eq!(
        translation.warnings,
        [
            "config warning: 2.yaml doc 1 (DestinationRule shop/a-second): DestinationRule shop/a-second is ignored: DestinationRule shop/b-first (1.yaml doc 1) also names Service shop/backend and wins (the oldest wins; without creation timestamps, the first in the config directory)"
        ]
    );

    // With creation timestamps, the older one wins whatever the file order.
    let stamped = |text: &str, time: &str| {
        text.replace(
            "namespace: shop}",
            &format!("namespace: shop, creationTimestamp: \"{time}\"}}"),
        )
    };
    let (translation, _) = compile(&[
        ("1.yaml", &stamped(&first, "2026-02-01T00:00:00Z")),
        ("2.yaml", &stamped(&second, "2026-01-01T00:00:00Z")),
    ]);
    assert_eq!(client_tls_of(&translation, "backend")[0].3, "shop/a-second");
    assert!(
        translation.warnings[0].starts_with("config warning: 1.yaml doc 1 (DestinationRule shop/b-first): DestinationRule shop/b-first is ignored"),
        "{:?}",
        translation.warnings
    );
}

#[test]
fn warnings_name_unimplemented_fields_and_missing_services() {
    let (translation, _) = compile(&[(
        "dr.yaml",
        &format!(
            "{}---\n{}",
            rule(
                "lb",
                "  host: web\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    tls: {mode: ISTIO_MUTUAL}\n"
            ),
            rule(
                "ghost",
                "  host: ghost.shop.svc.cluster.local\n  trafficPolicy:\n    tls: {mode: DISABLE}\n"
            )
        ),
    )]);
    assert_eq!(
        translation.warnings,
        [
            "config warning: dr.yaml doc 1 (DestinationRule shop/lb): spec.trafficPolicy.loadBalancer: not implemented yet; accepted without effect",
            "config warning: dr.yaml doc 2 (DestinationRule shop/ghost): spec.host: \"ghost.shop.svc.cluster.local\" names Service shop/ghost, which does not exist; the rule has no effect",
        ]
    );
    assert_eq!(client_tls_of(&translation, "web").len(), 1);
}

#[test]
fn the_config_version_covers_client_tls() {
    let version = |files: &[(&str, &str)]| compile(files).0.snapshot.version;
    let disable = rule(
        "backend",
        "  host: backend\n  trafficPolicy:\n    tls: {mode: DISABLE}\n",
    );
    let simple = rule(
        "backend",
        "  host: backend\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}\n",
    );
    let other_ca = simple.replace("/etc/ca.pem", "/etc/other-ca.pem");
    let none = version(&[]);
    let with_disable = version(&[("dr.yaml", &disable)]);
    assert_ne!(none, with_disable);
    assert_eq!(with_disable, version(&[("dr.yaml", &disable)]), "stable");
    let with_simple = version(&[("dr.yaml", &simple)]);
    assert_ne!(with_disable, with_simple);
    assert_ne!(with_simple, version(&[("dr.yaml", &other_ca)]));
}

#[test]
fn the_snapshot_view_shows_client_tls() {
    let (translation, _) = compile(&[(
        "dr.yaml",
        &rule(
            "backend",
            "  host: backend\n  trafficPolicy:\n    tls: {mode: MUTUAL, caCertificates: /etc/ca.pem, clientCertificate: /etc/c.pem, privateKey: /etc/c.key, subjectAltNames: [api.example.com]}\n",
        ),
    )]);
    let view = serde_json::to_value(translation.snapshot.view()).unwrap_or_default();
    assert_eq!(
        view["services"][0]["ports"][0]["client_tls"],
        serde_json::json!({
            "mode": "MUTUAL",
            "destination_rule": "shop/backend",
            "sni": "backend.shop.svc.cluster.local",
            "ca_certificates": "/etc/ca.pem",
            "client_certificate": "/etc/c.pem",
            "private_key": "/etc/c.key",
            "subject_alt_names": ["api.example.com"],
        })
    );
    assert!(
        view["services"][1]["ports"][0].get("client_tls").is_none(),
        "absent without a rule"
    );
}
