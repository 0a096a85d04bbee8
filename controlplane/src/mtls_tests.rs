use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::model::DocumentRef;

const ROOT: &str = "knit-system";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn workload(namespace: &str, pairs: &[(&str, &str)]) -> Workload {
    Workload {
        name: "pod".to_owned(),
        namespace: namespace.to_owned(),
        address: std::net::IpAddr::from([10, 0, 0, 1]),
        labels: labels(pairs),
        service_account: "default".to_owned(),
        ports: BTreeMap::from([("http".to_owned(), 8080), ("admin".to_owned(), 9090)]),
        mesh_port: Some(crate::model::MESH_PORT),
        token_sha256: None,
        origin: DocumentRef {
            file: "w.yaml".to_owned(),
            index: 1,
            resource: None,
        },
    }
}

/// A policy: `namespace/name`, selector, mode, port modes.
fn policy(
    namespace: &str,
    name: &str,
    selector: &[(&str, &str)],
    mode: Option<MtlsMode>,
    ports: &[(u16, Option<MtlsMode>)],
) -> PeerAuthenticationDef {
    PeerAuthenticationDef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector: labels(selector),
        mode,
        port_modes: ports.iter().copied().collect(),
        created: None,
        origin: DocumentRef {
            file: "pa.yaml".to_owned(),
            index: 1,
            resource: None,
        },
    }
}

fn at(mut policy: PeerAuthenticationDef, rfc3339: &str) -> PeerAuthenticationDef {
    policy.created = Some(Time(rfc3339.parse().unwrap_or_else(|err| panic!("{err}"))));
    policy
}

use MtlsMode::{Disable, Permissive, Strict};

#[test]
fn precedence_table() {
    let app = [("app", "web")];
    let mesh = |mode| policy(ROOT, "mesh", &[], mode, &[]);
    let ns = |mode| policy("shop", "ns", &[], mode, &[]);
    let wl = |name: &str, mode, ports: &[(u16, Option<MtlsMode>)]| {
        policy("shop", name, &app, mode, ports)
    };
    // (what, policies, workload namespace, port, expected)
    let table: Vec<(&str, Vec<PeerAuthenticationDef>, &str, u16, MtlsMode)> = vec![
        (
            "nothing set -> PERMISSIVE",
            vec![],
            "shop",
            8080,
            Permissive,
        ),
        (
            "mesh-wide STRICT",
            vec![mesh(Some(Strict))],
            "shop",
            8080,
            Strict,
        ),
        (
            "mesh-wide applies in the root namespace too",
            vec![mesh(Some(Strict))],
            ROOT,
            8080,
            Strict,
        ),
        (
            "namespace overrides mesh",
            vec![mesh(Some(Strict)), ns(Some(Disable))],
            "shop",
            8080,
            Disable,
        ),
        (
            "namespace policy of another namespace does not apply",
            vec![
                mesh(Some(Strict)),
                policy("other", "ns", &[], Some(Disable), &[]),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "workload overrides namespace",
            vec![
                mesh(Some(Disable)),
                ns(Some(Strict)),
                wl("wl", Some(Permissive), &[]),
            ],
            "shop",
            8080,
            Permissive,
        ),
        (
            "port overrides workload",
            vec![
                ns(Some(Permissive)),
                wl("wl", Some(Strict), &[(8080, Some(Disable))]),
            ],
            "shop",
            8080,
            Disable,
        ),
        (
            "port entry for another port does not apply",
            vec![
                ns(Some(Permissive)),
                wl("wl", Some(Strict), &[(8080, Some(Disable))]),
            ],
            "shop",
            9090,
            Strict,
        ),
        (
            "UNSET mesh -> PERMISSIVE",
            vec![mesh(None)],
            "shop",
            8080,
            Permissive,
        ),
        (
            "UNSET namespace inherits mesh",
            vec![mesh(Some(Strict)), ns(None)],
            "shop",
            8080,
            Strict,
        ),
        (
            "UNSET workload inherits namespace",
            vec![mesh(Some(Disable)), ns(Some(Strict)), wl("wl", None, &[])],
            "shop",
            8080,
            Strict,
        ),
        (
            "UNSET workload and namespace inherit mesh",
            vec![mesh(Some(Strict)), ns(None), wl("wl", None, &[])],
            "shop",
            8080,
            Strict,
        ),
        (
            "portLevelMtls UNSET inherits the workload mode",
            vec![ns(Some(Disable)), wl("wl", Some(Strict), &[(8080, None)])],
            "shop",
            8080,
            Strict,
        ),
        (
            "portLevelMtls UNSET with UNSET workload inherits namespace",
            vec![
                mesh(Some(Disable)),
                ns(Some(Strict)),
                wl("wl", None, &[(8080, None)]),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "selector not matching",
            vec![
                ns(Some(Permissive)),
                policy(
                    "shop",
                    "wl",
                    &[("app", "db")],
                    Some(Strict),
                    &[(8080, Some(Disable))],
                ),
            ],
            "shop",
            8080,
            Permissive,
        ),
        (
            "selector in another namespace does not apply",
            vec![policy("other", "wl", &app, Some(Strict), &[])],
            "shop",
            8080,
            Permissive,
        ),
        (
            "two matching workload policies, no timestamps: first in load order",
            vec![
                wl("zz-first", Some(Disable), &[]),
                wl("aa-second", Some(Strict), &[]),
            ],
            "shop",
            8080,
            Disable,
        ),
        (
            "two matching workload policies: the older timestamp wins",
            vec![
                at(wl("first", Some(Disable), &[]), "2024-02-01T00:00:00Z"),
                at(wl("second", Some(Strict), &[]), "2024-01-01T00:00:00Z"),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "equal timestamps: name breaks the tie",
            vec![
                at(wl("b", Some(Disable), &[]), "2024-01-01T00:00:00Z"),
                at(wl("a", Some(Strict), &[]), "2024-01-01T00:00:00Z"),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "a timestamped policy is older than one without",
            vec![
                wl("file", Some(Disable), &[]),
                at(wl("kube", Some(Strict), &[]), "2024-01-01T00:00:00Z"),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "two mesh-wide policies: first in load order",
            vec![
                mesh(Some(Strict)),
                policy(ROOT, "later", &[], Some(Disable), &[]),
            ],
            "shop",
            8080,
            Strict,
        ),
        (
            "root-namespace selector policy ignored for other namespaces",
            vec![
                mesh(Some(Permissive)),
                policy(ROOT, "sel", &app, Some(Strict), &[]),
            ],
            "shop",
            8080,
            Permissive,
        ),
        (
            "root-namespace selector policy ignored in the root namespace too (Istio)",
            vec![
                mesh(Some(Permissive)),
                policy(ROOT, "sel", &app, Some(Strict), &[(8080, Some(Disable))]),
            ],
            ROOT,
            8080,
            Permissive,
        ),
        (
            "a workload policy in the root namespace's own workloads needs no selector: mesh-wide is it",
            vec![mesh(Some(Disable))],
            ROOT,
            9090,
            Disable,
        ),
    ];
    assert!(table.len() >= 12);
    for (what, policies, namespace, port, expected) in table {
        let workload = workload(namespace, &app);
        assert_eq!(
            effective_mtls(&policies, ROOT, &workload, port),
            expected,
            "{what}"
        );
    }
}

#[test]
fn another_root_namespace_makes_its_policies_mesh_wide() {
    let policies = [policy("istio-system", "mesh", &[], Some(Strict), &[])];
    let workload = workload("shop", &[]);
    assert_eq!(effective_mtls(&policies, ROOT, &workload, 80), Permissive);
    assert_eq!(
        effective_mtls(&policies, "istio-system", &workload, 80),
        Strict
    );
}

#[test]
fn by_port_lists_port_level_settings_and_a_default() {
    let app = [("app", "web")];
    let policies = [
        policy(ROOT, "mesh", &[], Some(Strict), &[]),
        policy(
            "shop",
            "wl",
            &app,
            None,
            &[
                (8080, Some(Disable)),
                (9090, None),
                (7070, Some(Permissive)),
            ],
        ),
    ];
    let modes = effective_mtls_by_port(&policies, ROOT, &workload("shop", &app));
    assert_eq!(modes.default, Strict);
    assert_eq!(
        modes.ports,
        BTreeMap::from([(7070, Permissive), (8080, Disable), (9090, Strict)])
    );
    assert_eq!(modes.mode(1234), Strict);
}

#[test]
fn view_shows_declared_ports_and_the_policies_used() {
    let app = [("app", "web")];
    let inputs = MtlsInputs {
        workloads: vec![workload("shop", &app)],
        policies: vec![
            policy(ROOT, "mesh", &[], Some(Strict), &[]),
            policy("shop", "wl", &app, None, &[(8080, Some(Disable))]),
        ],
    };
    let page = view(&inputs, ROOT);
    let json = serde_json::to_value(&page).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        json,
        serde_json::json!([{
            "namespace": "shop",
            "name": "pod",
            "default": "STRICT",
            "ports": [
                {"name": "http", "port": 8080, "mode": "DISABLE"},
                {"name": "admin", "port": 9090, "mode": "STRICT"},
            ],
            "port_overrides": {"8080": "DISABLE"},
            "mesh_policy": "knit-system/mesh",
            "namespace_policy": null,
            "workload_policy": "shop/wl",
        }])
    );
}
