//! Which upstream `upstream_for` picks for each DestinationRule mode and
//! kind of endpoint, and configs whose TLS files cannot be used being
//! rejected with a message naming the service, port and file.

use knit_proto::v1;
use knit_proxy::config::snapshot::{Snapshot, Upstream};
use knit_proxy::context::{DataPathSettings, ProxyContext};
use knit_proxy::identity::{IdentityManager, IdentityOptions, TrustDomain};

use crate::support::{Files, client_tls, new_ca};

const POD_IP: &str = "10.0.0.9";

/// An endpoint of every kind: a meshed one (PERMISSIVE), a meshed one whose
/// port is DISABLE, one without a Knit proxy, and this very pod.
fn endpoints(service: &str) -> v1::ServiceEndpoints {
    let endpoint =
        |name: &str, address: &str, mesh_port: u32, mode: Option<v1::MtlsMode>| v1::Endpoint {
            address: address.into(),
            workload_name: name.into(),
            workload_namespace: "default".into(),
            service_account: "backend".into(),
            ports: [(80, 8080)].into_iter().collect(),
            mesh_port,
            mtls: mode.map(|mode| v1::InboundPolicy {
                default_mode: mode as i32,
                port_modes: Default::default(),
            }),
        };
    v1::ServiceEndpoints {
        service_name: service.into(),
        service_namespace: "default".into(),
        endpoints: vec![
            endpoint("meshed", "10.0.0.1", 15008, None),
            endpoint(
                "meshed-disable",
                "10.0.0.2",
                15008,
                Some(v1::MtlsMode::Disable),
            ),
            endpoint("plain", "10.0.0.3", 0, None),
            endpoint("self", POD_IP, 15008, None),
        ],
    }
}

fn service(name: &str, vip: &str, tls: Option<v1::ClientTls>) -> v1::Service {
    v1::Service {
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.svc.cluster.local"),
        vips: vec![vip.into()],
        ports: vec![v1::ServicePort {
            name: "http".into(),
            port: 80,
            protocol: v1::Protocol::Http as i32,
            client_tls: tls,
        }],
    }
}

fn snapshot(ca_file: &str) -> Snapshot {
    let simple = v1::ClientTls {
        ca_certificates: ca_file.to_owned(),
        ..client_tls(v1::ClientTlsMode::Simple)
    };
    let resp = v1::DiscoveryResponse {
        version_info: "v".into(),
        services: vec![
            service("auto", "198.19.0.1", None),
            service(
                "disable",
                "198.19.0.2",
                Some(client_tls(v1::ClientTlsMode::Disable)),
            ),
            service(
                "istio",
                "198.19.0.3",
                Some(client_tls(v1::ClientTlsMode::IstioMutual)),
            ),
            service("simple", "198.19.0.4", Some(simple)),
        ],
        endpoints: ["auto", "disable", "istio", "simple"]
            .into_iter()
            .map(endpoints)
            .collect(),
        ..Default::default()
    };
    Snapshot::from_proto(&resp).unwrap_or_else(|e| panic!("config rejected: {e}"))
}

fn context(with_identity: bool) -> ProxyContext {
    let mut ctx = ProxyContext::new(DataPathSettings::default());
    ctx.pod_ips = vec![POD_IP.parse().expect("ip")];
    if with_identity {
        let trust_domain = TrustDomain::new("cluster.local").expect("trust domain");
        ctx.identity = Some(IdentityManager::new(IdentityOptions::new(
            "http://127.0.0.1:15010",
            trust_domain,
            "shop",
            "frontend",
        )));
    }
    ctx
}

/// The choice in a few words, or the error's reason token.
fn describe(result: Result<Upstream, knit_proxy::Error>) -> String {
    match result {
        Ok(Upstream::Direct(addr)) => format!("direct {addr}"),
        Ok(Upstream::Mesh {
            peer,
            identity: Some(id),
            ..
        }) => format!("mtls {peer} {id}"),
        Ok(Upstream::Mesh {
            peer,
            identity: None,
            ..
        }) => format!("plaintext mesh {peer}"),
        Ok(Upstream::Tls { addr, tls }) => format!("tls {addr} sni {}", tls.sni),
        Err(e) => format!("error {}: {e}", e.reason()),
    }
}

#[test]
fn each_mode_picks_its_upstream_per_endpoint() {
    let files = Files::new();
    let ca_file = files.write("ca.pem", &new_ca("CA").pem);
    let snapshot = snapshot(&ca_file);
    let id = "spiffe://cluster.local/ns/default/sa/backend";
    let no_proxy = "error mesh_tls_unavailable: service default/istio port 80 requires mesh \
                    mutual TLS (ISTIO_MUTUAL, DestinationRule default/api), but endpoint plain \
                    (10.0.0.3:8080) has no Knit proxy; not sent in plaintext";
    let no_identity = "error mesh_tls_unavailable: service default/istio port 80 requires \
                       mesh mutual TLS (ISTIO_MUTUAL, DestinationRule default/api), but this \
                       proxy runs without a workload identity; not sent in plaintext";
    // (identity on, service, endpoint, expected)
    let table: Vec<(bool, &str, &str, String)> = vec![
        // Auto: mTLS unless the endpoint's port is DISABLE.
        (true, "auto", "meshed", format!("mtls 10.0.0.1:15008 {id}")),
        (
            true,
            "auto",
            "meshed-disable",
            "plaintext mesh 10.0.0.2:15008".into(),
        ),
        (true, "auto", "plain", "direct 10.0.0.3:8080".into()),
        (true, "auto", "self", format!("direct {POD_IP}:8080")),
        (
            false,
            "auto",
            "meshed",
            "plaintext mesh 10.0.0.1:15008".into(),
        ),
        // DISABLE: plaintext, over the mesh hop where there is a proxy.
        (
            true,
            "disable",
            "meshed",
            "plaintext mesh 10.0.0.1:15008".into(),
        ),
        (
            true,
            "disable",
            "meshed-disable",
            "plaintext mesh 10.0.0.2:15008".into(),
        ),
        (true, "disable", "plain", "direct 10.0.0.3:8080".into()),
        (true, "disable", "self", format!("direct {POD_IP}:8080")),
        // ISTIO_MUTUAL: mTLS even to a DISABLE port; never plaintext.
        (true, "istio", "meshed", format!("mtls 10.0.0.1:15008 {id}")),
        (
            true,
            "istio",
            "meshed-disable",
            format!("mtls 10.0.0.2:15008 {id}"),
        ),
        (true, "istio", "plain", no_proxy.into()),
        (true, "istio", "self", format!("direct {POD_IP}:8080")),
        (false, "istio", "meshed", no_identity.into()),
        // SIMPLE: TLS to the endpoint's own address, proxy or not.
        (
            true,
            "simple",
            "meshed",
            "tls 10.0.0.1:8080 sni simple.default.svc.cluster.local".into(),
        ),
        (
            true,
            "simple",
            "plain",
            "tls 10.0.0.3:8080 sni simple.default.svc.cluster.local".into(),
        ),
    ];
    let with_identity = context(true);
    let without_identity = context(false);
    for (identity, service, workload, expected) in table {
        let ctx = if identity {
            &with_identity
        } else {
            &without_identity
        };
        let target = &snapshot.services[&format!("default/{service}")][0];
        let ep = target
            .endpoints
            .iter()
            .find(|ep| &*ep.workload == workload)
            .unwrap_or_else(|| panic!("no endpoint {workload}"));
        assert_eq!(
            describe(ctx.upstream_for(target, ep)),
            expected,
            "{service} -> {workload} (identity {identity})"
        );
    }
}

/// Settings wrong on the wire reject the whole config, naming service,
/// port and rule. Files this proxy cannot use are local to it: that port
/// alone fails closed (503 `upstream_tls_unusable`, never plaintext) and
/// the rest of the config applies.
#[test]
fn tls_settings_errors_reject_the_config_and_bad_files_fail_the_port_closed() {
    let files = Files::new();
    let ca = new_ca("CA");
    let other = new_ca("Other CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let garbage = files.write("garbage.pem", "not a certificate\n");
    let leaf = crate::support::server_leaf(&ca);
    let cert_file = files.write("client.pem", &leaf.cert_pem);
    let other_leaf = crate::support::server_leaf(&other);
    let wrong_key = files.write("wrong.key", &other_leaf.key_pem);
    let missing = files.path("missing.pem");
    let mutual = |key: &str| v1::ClientTls {
        ca_certificates: ca_file.clone(),
        client_certificate: cert_file.clone(),
        private_key: key.to_owned(),
        ..client_tls(v1::ClientTlsMode::Mutual)
    };
    let simple = |ca: &str| v1::ClientTls {
        ca_certificates: ca.to_owned(),
        ..client_tls(v1::ClientTlsMode::Simple)
    };
    let at = "service default/simple port 80: DestinationRule default/api";
    let response = |tls: &v1::ClientTls| v1::DiscoveryResponse {
        version_info: "v".into(),
        services: vec![service("simple", "198.19.0.4", Some(tls.clone()))],
        endpoints: vec![endpoints("simple")],
        ..Default::default()
    };

    let wire_errors: Vec<(v1::ClientTls, String)> = vec![
        (simple(""), format!("{at}: ca_certificates is not set")),
        (
            v1::ClientTls {
                sni: "10.0.0.1".into(),
                ..simple(&ca_file)
            },
            format!("{at}: sni \"10.0.0.1\" is not a DNS name"),
        ),
        (
            v1::ClientTls {
                ca_certificates: ca_file.clone(),
                ..client_tls(v1::ClientTlsMode::Disable)
            },
            format!("{at}: ca_certificates is only used with SIMPLE or MUTUAL"),
        ),
        (
            v1::ClientTls {
                mode: 42,
                ..client_tls(v1::ClientTlsMode::Disable)
            },
            format!("{at}: unknown client TLS mode 42"),
        ),
    ];
    for (tls, expected) in wire_errors {
        let expected = format!("invalid config: {expected}");
        match Snapshot::from_proto(&response(&tls)) {
            Ok(_) => panic!("accepted {tls:?}"),
            Err(e) => assert!(
                e.to_string().starts_with(&expected),
                "\n got: {e}\nwant: {expected}"
            ),
        }
    }

    let file_errors: Vec<(v1::ClientTls, String)> = vec![
        (
            simple(&missing),
            format!("{at}: caCertificates {missing}: cannot read: No such file or directory"),
        ),
        (
            simple(&garbage),
            format!("{at}: caCertificates {garbage}: holds no PEM certificate"),
        ),
        (
            mutual(&wrong_key),
            format!(
                "{at}: clientCertificate {cert_file}: cannot be used with privateKey {wrong_key}"
            ),
        ),
        (
            mutual(&garbage),
            format!("{at}: privateKey {garbage}: no usable PEM private key"),
        ),
    ];
    let ctx = context(true);
    for (tls, expected) in file_errors {
        let snapshot = Snapshot::from_proto(&response(&tls))
            .unwrap_or_else(|e| panic!("a bad file must not reject the config: {e}"));
        let dump = serde_json::to_value(&snapshot).expect("json");
        let shown = &dump["services"]["default/simple"][0]["client_tls"];
        assert_eq!(shown["mode"], "unusable", "{shown}");
        let reason = shown["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with(&expected),
            "\n got: {reason}\nwant: {expected}"
        );
        let target = snapshot
            .lookup("198.19.0.4:80".parse().expect("addr"))
            .expect("the service is there");
        // Every endpoint, meshed or not: never plaintext, never mesh.
        for ep in &target.endpoints {
            let choice = describe(ctx.upstream_for(target, ep));
            assert!(
                choice.starts_with("error upstream_tls_unusable: "),
                "{}: fails closed: {choice}",
                ep.workload
            );
        }
    }
    // The same settings with good files are accepted, and shown without
    // any key material in /config_dump.
    let resp = v1::DiscoveryResponse {
        version_info: "v".into(),
        services: vec![service(
            "simple",
            "198.19.0.4",
            Some(mutual(&files.write("client.key", &leaf.key_pem))),
        )],
        ..Default::default()
    };
    let snapshot = Snapshot::from_proto(&resp).unwrap_or_else(|e| panic!("{e}"));
    let dump = serde_json::to_value(&snapshot).expect("json");
    let tls = &dump["services"]["default/simple"][0]["client_tls"];
    assert_eq!(tls["mode"], "mutual", "{tls}");
    assert_eq!(tls["sni"], "simple.default.svc.cluster.local");
    assert_eq!(tls["client_certificate"], cert_file.as_str());
    assert!(!dump.to_string().contains("PRIVATE KEY"));
}
