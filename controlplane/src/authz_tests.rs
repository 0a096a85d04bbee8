use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::model::{DocumentRef, Workload};
use crate::mtls::MtlsInputs;

const ROOT: &str = "knit-system";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn doc() -> DocumentRef {
    DocumentRef {
        file: "t.yaml".to_owned(),
        index: 1,
        resource: None,
    }
}

fn workload(namespace: &str, name: &str, app: &str) -> Workload {
    Workload {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        address: IpAddr::from([10, 0, 0, 1]),
        labels: labels(&[("app", app)]),
        service_account: "default".to_owned(),
        ports: BTreeMap::new(),
        mesh_port: Some(crate::model::MESH_PORT),
        token_sha256: None,
        origin: doc(),
    }
}

/// A DENY-everything policy `namespace/name` with `selector`.
fn policy(namespace: &str, name: &str, selector: &[(&str, &str)]) -> AuthorizationPolicyDef {
    AuthorizationPolicyDef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        selector: labels(selector),
        action: AuthorizationAction::Deny,
        rules: vec![AuthorizationRuleDef::default()],
        fail_closed: false,
        origin: doc(),
    }
}

fn node(namespace: &str, pod: &str, claimed: &[(&str, &str)]) -> pb::Node {
    pb::Node {
        pod_name: pod.to_owned(),
        namespace: namespace.to_owned(),
        labels: claimed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn snapshot(policies: Vec<AuthorizationPolicyDef>, root: &str) -> Snapshot {
    let workloads = vec![
        workload("shop", "web", "web"),
        workload("shop", "db", "db"),
        workload(ROOT, "admin", "web"),
        workload("misc", "other", "web"),
    ];
    Snapshot::with_policies(
        Vec::new(),
        Vec::new(),
        MtlsInputs {
            workloads,
            policies: Vec::new(),
        },
        policies,
        root,
    )
}

/// Given out of order on purpose: the output order must not depend on it.
fn mixed_policies() -> Vec<AuthorizationPolicyDef> {
    vec![
        policy("shop", "zz-db", &[("app", "db")]),
        policy("misc", "ns", &[]),
        policy("shop", "web-only", &[("app", "web")]),
        policy(ROOT, "mesh-web", &[("app", "web")]),
        policy("shop", "ns-wide", &[]),
        policy(ROOT, "mesh-wide", &[]),
    ]
}

fn names(policies: &[pb::AuthorizationPolicy]) -> Vec<String> {
    policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

#[test]
fn selection_table() {
    let mesh = "knit-system/mesh-wide";
    let mesh_web = "knit-system/mesh-web";
    // (what, root namespace, node, expected policies in order)
    let table: Vec<(&str, &str, pb::Node, Vec<&str>)> = vec![
        (
            "workload: mesh-wide, root selector, namespace, own selector",
            ROOT,
            node("shop", "web", &[]),
            vec![mesh_web, mesh, "shop/ns-wide", "shop/web-only"],
        ),
        (
            "another workload of the namespace: its own selector only",
            ROOT,
            node("shop", "db", &[]),
            vec![mesh, "shop/ns-wide", "shop/zz-db"],
        ),
        (
            "a workload of the root namespace: both root policies",
            ROOT,
            node(ROOT, "admin", &[]),
            vec![mesh_web, mesh],
        ),
        (
            "root selector reaches every namespace; other namespaces' do not",
            ROOT,
            node("misc", "other", &[]),
            vec![mesh_web, mesh, "misc/ns"],
        ),
        (
            "unknown node: mesh-wide and its namespace's unselected",
            ROOT,
            node("shop", "ghost", &[]),
            vec![mesh, "shop/ns-wide"],
        ),
        (
            "unknown node in a namespace without policies: mesh-wide only",
            ROOT,
            node("elsewhere", "ghost", &[]),
            vec![mesh],
        ),
        (
            "labels a node claims are not used (unknown node)",
            ROOT,
            node("shop", "ghost", &[("app", "web")]),
            vec![mesh, "shop/ns-wide"],
        ),
        (
            "labels a node claims are not used (known node)",
            ROOT,
            node("shop", "db", &[("app", "web")]),
            vec![mesh, "shop/ns-wide", "shop/zz-db"],
        ),
        (
            "another root namespace: knit-system is an ordinary namespace",
            "mesh-root",
            node("shop", "web", &[]),
            vec!["shop/ns-wide", "shop/web-only"],
        ),
        (
            "another root namespace, knit-system's own workload",
            "mesh-root",
            node(ROOT, "admin", &[]),
            vec![mesh_web, mesh],
        ),
    ];
    for (what, root, node, expected) in table {
        let snapshot = snapshot(mixed_policies(), root);
        assert_eq!(
            names(&authorization_for(&node, &snapshot)),
            expected,
            "{what}"
        );
    }
    assert!(authorization_for(&node("shop", "web", &[]), &Snapshot::empty()).is_empty());
}

#[test]
fn scopes() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let table = [
        (
            policy(ROOT, "p", &[]),
            "shop",
            Some(AuthorizationScope::Mesh),
        ),
        (
            policy(ROOT, "p", &[("app", "web")]),
            "shop",
            Some(AuthorizationScope::MeshSelected),
        ),
        (policy(ROOT, "p", &[("app", "db")]), "shop", None),
        (
            policy("shop", "p", &[]),
            "shop",
            Some(AuthorizationScope::Namespace),
        ),
        (
            policy("shop", "p", &[("app", "web"), ("tier", "front")]),
            "shop",
            Some(AuthorizationScope::Workload),
        ),
        (
            policy("shop", "p", &[("app", "web"), ("tier", "back")]),
            "shop",
            None,
        ),
        (policy("shop", "p", &[]), "misc", None),
        (policy("shop", "p", &[("app", "web")]), "misc", None),
    ];
    for (policy, namespace, expected) in table {
        assert_eq!(
            scope_of(&policy, ROOT, namespace, &web),
            expected,
            "{policy:?} in {namespace}"
        );
    }
}

#[test]
fn wire_form_carries_every_field() {
    let strings = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    let def = AuthorizationPolicyDef {
        name: "p".to_owned(),
        namespace: "shop".to_owned(),
        selector: labels(&[("app", "web")]),
        action: AuthorizationAction::Audit,
        rules: vec![
            AuthorizationRuleDef {
                from: vec![AuthorizationSourceDef {
                    principals: strings(&["a"]),
                    not_principals: strings(&["b"]),
                    namespaces: strings(&["c"]),
                    not_namespaces: strings(&["d"]),
                    ip_blocks: strings(&["10.0.0.0/8"]),
                    not_ip_blocks: strings(&["10.0.0.1"]),
                }],
                to: vec![AuthorizationOperationDef {
                    hosts: strings(&["h"]),
                    not_hosts: strings(&["nh"]),
                    ports: vec![80],
                    not_ports: vec![81],
                    methods: strings(&["GET"]),
                    not_methods: strings(&["POST"]),
                    paths: strings(&["/a"]),
                    not_paths: strings(&["/b"]),
                }],
                when: vec![AuthorizationConditionDef {
                    key: "source.ip".to_owned(),
                    values: strings(&["10.0.0.1"]),
                    not_values: strings(&["10.0.0.2"]),
                }],
            },
            AuthorizationRuleDef::default(),
        ],
        fail_closed: false,
        origin: doc(),
    };
    let wire = to_wire(&def);
    assert_eq!(
        wire,
        pb::AuthorizationPolicy {
            name: "p".to_owned(),
            namespace: "shop".to_owned(),
            action: pb::AuthorizationAction::Audit as i32,
            rules: vec![
                pb::AuthorizationRule {
                    from: vec![pb::AuthorizationSource {
                        principals: strings(&["a"]),
                        not_principals: strings(&["b"]),
                        namespaces: strings(&["c"]),
                        not_namespaces: strings(&["d"]),
                        ip_blocks: strings(&["10.0.0.0/8"]),
                        not_ip_blocks: strings(&["10.0.0.1"]),
                    }],
                    to: vec![pb::AuthorizationOperation {
                        hosts: strings(&["h"]),
                        not_hosts: strings(&["nh"]),
                        ports: vec![80],
                        not_ports: vec![81],
                        methods: strings(&["GET"]),
                        not_methods: strings(&["POST"]),
                        paths: strings(&["/a"]),
                        not_paths: strings(&["/b"]),
                    }],
                    when: vec![pb::AuthorizationCondition {
                        key: "source.ip".to_owned(),
                        values: strings(&["10.0.0.1"]),
                        not_values: strings(&["10.0.0.2"]),
                    }],
                },
                pb::AuthorizationRule::default(),
            ],
        }
    );
    for (action, expected) in [
        (AuthorizationAction::Allow, pb::AuthorizationAction::Allow),
        (AuthorizationAction::Deny, pb::AuthorizationAction::Deny),
    ] {
        let def = AuthorizationPolicyDef {
            action,
            ..def.clone()
        };
        assert_eq!(to_wire(&def).action, expected as i32);
    }
}

#[test]
fn a_policy_change_changes_the_version() {
    let base = || snapshot(mixed_policies(), ROOT);
    let version = base().version;
    assert_eq!(version, base().version, "same config, same version");
    let mut reversed = mixed_policies();
    reversed.reverse();
    assert_eq!(
        version,
        snapshot(reversed, ROOT).version,
        "load order does not matter: policies are sorted"
    );
    assert_ne!(version, snapshot(Vec::new(), ROOT).version);
    assert_ne!(version, snapshot(mixed_policies(), "mesh-root").version);
    type Change = fn(&mut AuthorizationPolicyDef);
    let changes: [(&str, Change); 7] = [
        ("action", |p| p.action = AuthorizationAction::Allow),
        ("rules dropped", |p| p.rules.clear()),
        ("a rule changed", |p| {
            p.rules[0].from.push(AuthorizationSourceDef {
                namespaces: vec!["a".to_owned()],
                ..Default::default()
            })
        }),
        ("selector", |p| {
            p.selector.insert("tier".to_owned(), "x".to_owned());
        }),
        ("name", |p| p.name.push('x')),
        ("namespace", |p| p.namespace = "other".to_owned()),
        ("fail-closed flag", |p| p.fail_closed = true),
    ];
    for (what, change) in changes {
        let mut policies = mixed_policies();
        change(&mut policies[0]);
        assert_ne!(version, snapshot(policies, ROOT).version, "{what}");
    }
    let mut moved = mixed_policies();
    moved[0].origin.file = "elsewhere.yaml".to_owned();
    assert_eq!(
        version,
        snapshot(moved, ROOT).version,
        "where a policy is written does not matter"
    );
}

#[test]
fn view_lists_each_known_workload_with_its_policies_and_scopes() {
    let mut policies = vec![
        policy(ROOT, "mesh-wide", &[]),
        policy("shop", "web-only", &[("app", "web")]),
    ];
    policies[1].fail_closed = true;
    policies[1].action = AuthorizationAction::Allow;
    let page = view(&snapshot(policies, ROOT));
    let json = serde_json::to_value(&page).unwrap_or_else(|err| panic!("{err}"));
    let mesh = serde_json::json!({
        "namespace": "knit-system", "name": "mesh-wide", "action": "DENY", "scope": "mesh",
    });
    assert_eq!(
        json,
        serde_json::json!([
            {"namespace": "shop", "name": "web", "policies": [
                mesh,
                {"namespace": "shop", "name": "web-only", "action": "ALLOW",
                 "scope": "workload", "fail_closed": true},
            ]},
            {"namespace": "shop", "name": "db", "policies": [mesh]},
            {"namespace": "knit-system", "name": "admin", "policies": [mesh]},
            {"namespace": "misc", "name": "other", "policies": [mesh]},
        ])
    );
}

/// An invalid policy in a config directory reaches proxies in its
/// fail-closed form, next to the error that says so.
#[test]
fn invalid_policies_compile_fail_closed() {
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
    let yaml = "\
apiVersion: mesh.knit.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: web
  namespace: shop
spec:
  address: 10.0.0.1
  labels:
    app: web
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: block-evil
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  action: DENY
  rules:
  - from:
    - source:
        requestPrincipals: [\"*\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: shop
spec:
  rules:
  - to:
    - operation:
        ports: [http]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: watch
  namespace: shop
spec:
  action: AUDIT
  rules:
  - when:
    - key: request.auth.claims[iss]
      values: [x]
";
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap_or_else(|err| panic!("{err}"));
    let compiled = crate::watch::compile_dir(dir.path()).unwrap_or_else(|err| panic!("{err}"));
    let errors: Vec<String> = compiled.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("config error: mesh.yaml doc 2 (AuthorizationPolicy shop/block-evil): spec.rules[0].from[0].source.requestPrincipals: ")
            && errors[0].ends_with("; applied as deny-all until fixed"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with("config error: mesh.yaml doc 3 (AuthorizationPolicy shop/allow-frontend): spec.rules[0].to[0].operation.ports[0]: ")
            && errors[1].ends_with("; applied as allow-nothing until fixed (an ALLOW policy with no rules)"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with("config error: mesh.yaml doc 4 (AuthorizationPolicy shop/watch): spec.rules[0].when[0].key: ")
            && errors[2].ends_with("; ignored until fixed (an AUDIT policy never refuses a request)"),
        "{}",
        errors[2]
    );
    let sent = authorization_for(&node("shop", "web", &[]), &compiled.snapshot);
    assert_eq!(
        sent,
        [
            pb::AuthorizationPolicy {
                name: "allow-frontend".to_owned(),
                namespace: "shop".to_owned(),
                action: pb::AuthorizationAction::Allow as i32,
                rules: Vec::new(),
            },
            pb::AuthorizationPolicy {
                name: "block-evil".to_owned(),
                namespace: "shop".to_owned(),
                action: pb::AuthorizationAction::Deny as i32,
                rules: vec![pb::AuthorizationRule::default()],
            },
        ]
    );
    // The snapshot view says which policies stand in for invalid ones.
    let view = serde_json::to_value(compiled.snapshot.view()).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        view["authorization"],
        serde_json::json!([
            {"namespace": "shop", "name": "allow-frontend", "action": "ALLOW",
             "rules": [], "fail_closed": true},
            {"namespace": "shop", "name": "block-evil", "selector": {"app": "web"},
             "action": "DENY", "rules": [{}], "fail_closed": true},
        ])
    );
}
