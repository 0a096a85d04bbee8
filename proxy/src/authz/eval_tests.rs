//! Decision tables: policies built from the wire shape, requests described
//! as a client would send them (paths are normalized first, as the
//! listeners do).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use knit_proto::v1;
use v1::AuthorizationAction::{Allow, Audit, Deny};

use super::*;
use crate::authz::normalize::{normalize_method, normalize_path};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/x";

/// A request as a client sends it.
#[derive(Clone)]
struct Req {
    id: Option<&'static str>,
    source_ip: &'static str,
    destination_ip: &'static str,
    port: u16,
    /// (method, authority, path) as sent; `None` for TCP.
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: Vec<(&'static str, &'static str)>,
}

fn http(method: &'static str, path: &'static str) -> Req {
    Req {
        id: None,
        source_ip: "10.1.0.5",
        destination_ip: "10.1.0.9",
        port: 8080,
        http: Some((method, "backend.shop.svc", path)),
        headers: vec![],
    }
}

fn get(path: &'static str) -> Req {
    http("GET", path)
}

fn tcp() -> Req {
    Req {
        http: None,
        ..get("/")
    }
}

impl Req {
    fn by(self, id: &'static str) -> Req {
        Req {
            id: Some(id),
            ..self
        }
    }
    fn with_source_ip(self, ip: &'static str) -> Req {
        Req {
            source_ip: ip,
            ..self
        }
    }
    fn authority(mut self, authority: &'static str) -> Req {
        if let Some(http) = &mut self.http {
            http.1 = authority;
        }
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.push((name, value));
        self
    }
    fn port(self, port: u16) -> Req {
        Req { port, ..self }
    }
}

/// Evaluates `req` against `policies`: Ok(audited) when allowed, Err(the
/// denying policy) when denied.
fn decide(policies: &[v1::AuthorizationPolicy], req: &Req) -> Result<Vec<String>, String> {
    let compiled = AuthorizationPolicies::from_proto(policies).expect("valid policies");
    let id = req
        .id
        .map(|id| SpiffeId::parse(id).expect("valid SPIFFE ID"));
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_static(value),
        );
    }
    let normal = req.http.map(|(method, authority, path)| {
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        let method = normalize_method(&method).unwrap_or(method);
        let path = normalize_path(path).expect("a valid path").into_owned();
        (method, authority, path)
    });
    let attributes = Attributes {
        source: id.as_ref(),
        source_ip: req.source_ip.parse::<IpAddr>().expect("source IP"),
        destination_ip: req
            .destination_ip
            .parse::<IpAddr>()
            .expect("destination IP"),
        destination_port: req.port,
        http: normal.as_ref().map(|(method, authority, path)| {
            HttpAttributes::new(method.as_str(), authority, path, &headers)
        }),
    };
    let verdict = compiled.evaluate(&attributes);
    let audited = verdict.audited.iter().map(|p| (*p).to_owned()).collect();
    match verdict.decision {
        Decision::Allow => Ok(audited),
        Decision::Deny { policy } => Err(policy.to_owned()),
    }
}

fn allowed(policies: &[v1::AuthorizationPolicy], req: &Req) -> bool {
    decide(policies, req).is_ok()
}

fn policy(
    name: &str,
    action: v1::AuthorizationAction,
    rules: Vec<v1::AuthorizationRule>,
) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        name: name.into(),
        namespace: "shop".into(),
        action: action as i32,
        rules,
    }
}

fn strs(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn from(source: v1::AuthorizationSource) -> v1::AuthorizationRule {
    v1::AuthorizationRule {
        from: vec![source],
        ..Default::default()
    }
}

fn to(op: v1::AuthorizationOperation) -> v1::AuthorizationRule {
    v1::AuthorizationRule {
        to: vec![op],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> v1::AuthorizationRule {
    v1::AuthorizationRule {
        when: vec![v1::AuthorizationCondition {
            key: key.into(),
            values: strs(values),
            not_values: strs(not_values),
        }],
        ..Default::default()
    }
}

fn paths(paths: &[&str]) -> v1::AuthorizationOperation {
    v1::AuthorizationOperation {
        paths: strs(paths),
        ..Default::default()
    }
}

fn principals(p: &[&str]) -> v1::AuthorizationSource {
    v1::AuthorizationSource {
        principals: strs(p),
        ..Default::default()
    }
}

#[test]
fn no_policies_allow_everything_and_audit_nothing() {
    for req in [get("/admin"), tcp(), get("/").by(EVIL)] {
        assert_eq!(decide(&[], &req), Ok(vec![]));
    }
}

#[test]
fn allow_by_principal() {
    let policies = [policy(
        "allow-web",
        Allow,
        vec![from(principals(&["cluster.local/ns/shop/sa/web"]))],
    )];
    assert!(allowed(&policies, &get("/").by(WEB)));
    assert!(allowed(&policies, &tcp().by(WEB)));
    let refused = Err(NO_ALLOW_POLICY_MATCHED.to_owned());
    assert_eq!(decide(&policies, &get("/").by(EVIL)), refused);
    // A plaintext client is nobody, even for `*`.
    assert_eq!(decide(&policies, &get("/")), refused);
    let anyone = [policy("any", Allow, vec![from(principals(&["*"]))])];
    assert!(allowed(&anyone, &get("/").by(EVIL)));
    assert!(!allowed(&anyone, &get("/")));
    let prefix = [policy(
        "prefix",
        Allow,
        vec![from(principals(&["cluster.local/ns/shop/*"]))],
    )];
    assert!(allowed(&prefix, &get("/").by(WEB)));
    assert!(!allowed(&prefix, &get("/").by(EVIL)));
}

#[test]
fn deny_by_path_catches_every_spelling_of_admin() {
    let policies = [policy(
        "deny-admin",
        Deny,
        vec![to(paths(&["/admin", "/admin/*"]))],
    )];
    for path in [
        "/admin",
        "/a/../admin",
        "//admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/%5Cadmin",
        "/\\admin",
        "/%2e%2e/admin",
        "/./admin",
        "/%61dmin",
        "/admin/",
        "/admin//x",
        "/x/..%2fadmin/y",
    ] {
        assert_eq!(
            decide(&policies, &get(path)),
            Err("shop/deny-admin".to_owned()),
            "{path:?}"
        );
    }
    // Other resources: paths are case-sensitive, and exact means exact.
    for path in ["/ADMIN", "/Admin", "/administrator", "/x/admin", "/"] {
        assert!(allowed(&policies, &get(path)), "{path:?}");
    }
}

#[test]
fn deny_by_namespace() {
    let policies = [policy(
        "deny-evil",
        Deny,
        vec![from(v1::AuthorizationSource {
            namespaces: strs(&["evil"]),
            ..Default::default()
        })],
    )];
    assert_eq!(
        decide(&policies, &get("/").by(EVIL)),
        Err("shop/deny-evil".into())
    );
    assert!(allowed(&policies, &get("/").by(WEB)));
    // `namespaces` never matches a missing identity, even in DENY.
    assert!(allowed(&policies, &get("/")));
}

#[test]
fn allow_policy_without_rules_denies_everything() {
    let policies = [policy("nothing", Allow, vec![])];
    for req in [get("/"), get("/").by(WEB), tcp().by(WEB)] {
        assert_eq!(decide(&policies, &req), Err(NO_ALLOW_POLICY_MATCHED.into()));
    }
    // An empty rule matches everything.
    let everything = [policy("all", Allow, vec![v1::AuthorizationRule::default()])];
    assert!(allowed(&everything, &tcp()));
    // DENY without rules denies nothing.
    assert!(allowed(&[policy("no-op", Deny, vec![])], &get("/")));
}

#[test]
fn deny_is_decided_before_allow() {
    let policies = [
        policy("allow-all", Allow, vec![v1::AuthorizationRule::default()]),
        policy("deny-admin", Deny, vec![to(paths(&["/admin"]))]),
    ];
    assert_eq!(
        decide(&policies, &get("/admin").by(WEB)),
        Err("shop/deny-admin".into())
    );
    assert!(allowed(&policies, &get("/x").by(WEB)));
}

#[test]
fn audit_is_reported_and_never_decides() {
    let policies = [
        policy("audit-admin", Audit, vec![to(paths(&["/admin"]))]),
        policy("audit-all", Audit, vec![v1::AuthorizationRule::default()]),
        policy("deny-admin", Deny, vec![to(paths(&["/admin"]))]),
    ];
    assert_eq!(
        decide(&policies, &get("/x")),
        Ok(vec!["shop/audit-all".to_owned()])
    );
    assert_eq!(
        decide(&policies, &get("/admin")),
        Err("shop/deny-admin".into())
    );
    // Audit alone allows; a TCP connection does not match HTTP fields there.
    let audit_only = [policy("audit-admin", Audit, vec![to(paths(&["/admin"]))])];
    assert_eq!(
        decide(&audit_only, &get("/%61dmin")),
        Ok(vec!["shop/audit-admin".to_owned()])
    );
    assert_eq!(decide(&audit_only, &tcp()), Ok(vec![]));
}

#[test]
fn not_principals_with_a_plaintext_client_fails_closed() {
    let source = || v1::AuthorizationSource {
        not_principals: strs(&["cluster.local/ns/shop/sa/web"]),
        ..Default::default()
    };
    let allow = [policy("allow-not-web", Allow, vec![from(source())])];
    assert!(allowed(&allow, &get("/").by(EVIL)));
    assert!(!allowed(&allow, &get("/").by(WEB)));
    // A missing identity never becomes an allow...
    assert!(!allowed(&allow, &get("/")));
    let deny = [policy("deny-not-web", Deny, vec![from(source())])];
    assert!(allowed(&deny, &get("/").by(WEB)));
    assert!(!allowed(&deny, &get("/").by(EVIL)));
    // ...and is denied where only some identity would be let through.
    assert_eq!(decide(&deny, &get("/")), Err("shop/deny-not-web".into()));
    let not_ns = [policy(
        "deny-not-shop",
        Deny,
        vec![from(v1::AuthorizationSource {
            not_namespaces: strs(&["shop"]),
            ..Default::default()
        })],
    )];
    assert!(allowed(&not_ns, &get("/").by(WEB)));
    assert!(!allowed(&not_ns, &get("/")));
}

#[test]
fn tcp_with_http_only_fields_fails_closed() {
    let http_fields: Vec<v1::AuthorizationOperation> = vec![
        paths(&["/admin"]),
        v1::AuthorizationOperation {
            not_paths: strs(&["/admin"]),
            ..Default::default()
        },
        v1::AuthorizationOperation {
            methods: strs(&["GET"]),
            ..Default::default()
        },
        v1::AuthorizationOperation {
            not_methods: strs(&["DELETE"]),
            ..Default::default()
        },
        v1::AuthorizationOperation {
            hosts: strs(&["*"]),
            ..Default::default()
        },
        v1::AuthorizationOperation {
            not_hosts: strs(&["evil.example"]),
            ..Default::default()
        },
    ];
    for op in http_fields {
        let shown = format!("{op:?}");
        let allow = [policy("allow-http", Allow, vec![to(op.clone())])];
        assert!(!allowed(&allow, &tcp().by(WEB)), "ALLOW {shown}");
        let deny = [policy("deny-http", Deny, vec![to(op)])];
        assert_eq!(
            decide(&deny, &tcp().by(WEB)),
            Err("shop/deny-http".into()),
            "DENY {shown}"
        );
    }
    // A header condition is HTTP-only too.
    let allow = [policy(
        "allow-h",
        Allow,
        vec![when("request.headers[x-a]", &["1"], &[])],
    )];
    assert!(!allowed(&allow, &tcp()));
    let deny = [policy(
        "deny-h",
        Deny,
        vec![when("request.headers[x-a]", &[], &["1"])],
    )];
    assert!(!allowed(&deny, &tcp()));
    // Ports are not: a port rule works for TCP under either action.
    let ports = |action| {
        [policy(
            "ports",
            action,
            vec![to(v1::AuthorizationOperation {
                ports: vec![5432],
                ..Default::default()
            })],
        )]
    };
    assert!(allowed(&ports(Allow), &tcp().port(5432)));
    assert!(!allowed(&ports(Allow), &tcp().port(8080)));
    assert!(!allowed(&ports(Deny), &tcp().port(5432)));
    assert!(allowed(&ports(Deny), &tcp().port(8080)));
}

#[path = "eval_attribute_tests.rs"]
mod attributes;
