//! Decision tables per attribute: IP blocks, `when` conditions, hosts,
//! methods, and a rule that needs all of them.

use super::*;

#[test]
fn ip_blocks_v4_and_v6() {
    let policies = [policy(
        "allow-nets",
        Allow,
        vec![from(v1::AuthorizationSource {
            ip_blocks: strs(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]),
            not_ip_blocks: strs(&["10.9.0.0/16"]),
            ..Default::default()
        })],
    )];
    // (source IP, allowed)
    let cases = [
        ("10.1.2.3", true),
        ("::ffff:10.1.2.3", true),
        ("2001:db8::5", true),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
        ("10.9.1.1", false),
        ("::ffff:10.9.1.1", false),
        ("2001:db9::1", false),
    ];
    for (ip, want) in cases {
        assert_eq!(
            allowed(&policies, &get("/").with_source_ip(ip)),
            want,
            "{ip}"
        );
    }
    let deny = [policy(
        "deny-outside",
        Deny,
        vec![from(v1::AuthorizationSource {
            not_ip_blocks: strs(&["10.0.0.0/8"]),
            ..Default::default()
        })],
    )];
    assert!(allowed(&deny, &tcp().with_source_ip("10.1.1.1")));
    assert!(!allowed(&deny, &tcp().with_source_ip("198.51.100.1")));
}

/// (key, values, not_values, request, whether the condition holds)
type ConditionCase = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Req,
    bool,
);

#[test]
fn when_conditions_table() {
    let cases: Vec<ConditionCase> = vec![
        ("source.ip", &["10.1.0.0/16"], &[], get("/"), true),
        ("source.ip", &["10.2.0.0/16"], &[], get("/"), false),
        ("source.ip", &[], &["10.1.0.5"], get("/"), false),
        ("destination.ip", &["10.1.0.9"], &[], get("/"), true),
        ("destination.ip", &["::ffff:10.1.0.9"], &[], get("/"), true),
        ("destination.port", &["8080"], &[], get("/"), true),
        ("destination.port", &["8080"], &[], tcp().port(9090), false),
        ("destination.port", &[], &["9090"], tcp().port(9090), false),
        (
            "source.principal",
            &["cluster.local/ns/shop/sa/web"],
            &[],
            get("/").by(WEB),
            true,
        ),
        (
            "source.principal",
            &["cluster.local/ns/shop/sa/web"],
            &[],
            get("/"),
            false,
        ),
        (
            "source.principal",
            &[],
            &["cluster.local/ns/evil/*"],
            get("/").by(WEB),
            true,
        ),
        (
            "source.principal",
            &[],
            &["cluster.local/ns/evil/*"],
            get("/"),
            false,
        ),
        ("source.namespace", &["shop"], &[], get("/").by(WEB), true),
        ("source.namespace", &["shop"], &[], get("/").by(EVIL), false),
        ("source.namespace", &[], &["evil"], get("/"), false),
        (
            "request.headers[X-Tenant]",
            &["blue"],
            &[],
            get("/").header("x-tenant", "blue"),
            true,
        ),
        (
            "request.headers[x-tenant]",
            &["blue"],
            &[],
            get("/").header("X-TENANT", "blue"),
            true,
        ),
        (
            "request.headers[x-tenant]",
            &["blue"],
            &[],
            get("/").header("x-tenant", "BLUE"),
            false,
        ),
        (
            "request.headers[x-tenant]",
            &["bl*"],
            &[],
            get("/").header("x-tenant", "blue"),
            true,
        ),
        ("request.headers[x-tenant]", &["*"], &[], get("/"), false),
        ("request.headers[x-tenant]", &[], &["red"], get("/"), true),
        (
            "request.headers[x-tenant]",
            &[],
            &["red"],
            get("/").header("x-tenant", "red"),
            false,
        ),
        // Repeated: in ALLOW every value must satisfy the condition.
        (
            "request.headers[x-tenant]",
            &["blue"],
            &[],
            get("/")
                .header("x-tenant", "blue")
                .header("x-tenant", "red"),
            false,
        ),
    ];
    for (key, values, not_values, req, want) in cases {
        let policies = [policy(
            "allow-when",
            Allow,
            vec![when(key, values, not_values)],
        )];
        assert_eq!(
            allowed(&policies, &req),
            want,
            "{key} {values:?} !{not_values:?} for {:?} {:?}",
            req.id,
            req.headers
        );
    }
}

#[test]
fn a_repeated_header_denies_when_any_value_matches() {
    let policies = [policy(
        "deny-red",
        Deny,
        vec![when("request.headers[x-tenant]", &["red"], &[])],
    )];
    let req = get("/")
        .header("x-tenant", "blue")
        .header("x-tenant", "red");
    assert_eq!(decide(&policies, &req), Err("shop/deny-red".into()));
    assert!(allowed(&policies, &get("/").header("x-tenant", "blue")));
    assert!(allowed(&policies, &get("/")));
}

#[test]
fn hosts_match_without_case_trailing_dot_or_port() {
    let host_rule = |hosts: &[&str]| {
        [policy(
            "allow-host",
            Allow,
            vec![to(v1::AuthorizationOperation {
                hosts: strs(hosts),
                ..Default::default()
            })],
        )]
    };
    let bare = host_rule(&["api.example.com"]);
    let with_port = host_rule(&["API.example.com:8080"]);
    let wildcard = host_rule(&["*.example.com"]);
    // (authority, bare, with port, wildcard)
    let cases = [
        ("api.example.com", true, false, true),
        ("API.Example.COM", true, false, true),
        ("api.example.com.", true, false, true),
        ("api.example.com:8080", true, true, true),
        ("Api.Example.Com.:8080", true, true, true),
        ("api.example.com:9090", true, false, true),
        ("other.example.com", false, false, true),
        ("api.example.com.evil", false, false, false),
        ("", false, false, false),
    ];
    for (authority, want_bare, want_port, want_wild) in cases {
        let req = get("/").authority(authority);
        assert_eq!(allowed(&bare, &req), want_bare, "bare vs {authority:?}");
        assert_eq!(
            allowed(&with_port, &req),
            want_port,
            "port vs {authority:?}"
        );
        assert_eq!(
            allowed(&wildcard, &req),
            want_wild,
            "wildcard vs {authority:?}"
        );
    }
}

#[test]
fn methods_standard_ones_in_any_case_extensions_exactly() {
    let policies = [policy(
        "allow-methods",
        Allow,
        vec![to(v1::AuthorizationOperation {
            methods: strs(&["get", "PURGE"]),
            ..Default::default()
        })],
    )];
    // (method as sent, allowed)
    let cases = [
        ("GET", true),
        ("get", true),
        ("gEt", true),
        ("PURGE", true),
        ("purge", false),
        ("POST", false),
    ];
    for (method, want) in cases {
        assert_eq!(allowed(&policies, &http(method, "/")), want, "{method}");
    }
}

#[test]
fn a_rule_needs_from_to_and_when_together() {
    let policies = [policy(
        "allow-web-reads",
        Allow,
        vec![v1::AuthorizationRule {
            from: vec![principals(&["cluster.local/ns/shop/sa/web"])],
            to: vec![v1::AuthorizationOperation {
                methods: strs(&["GET"]),
                paths: strs(&["/api/*"]),
                ..Default::default()
            }],
            when: vec![v1::AuthorizationCondition {
                key: "request.headers[x-tenant]".into(),
                values: strs(&["blue"]),
                not_values: vec![],
            }],
        }],
    )];
    let good = || get("/api/items").by(WEB).header("x-tenant", "blue");
    assert!(allowed(&policies, &good()));
    assert!(!allowed(
        &policies,
        &Req {
            id: Some(EVIL),
            ..good()
        }
    ));
    assert!(!allowed(
        &policies,
        &http("POST", "/api/items")
            .by(WEB)
            .header("x-tenant", "blue")
    ));
    assert!(!allowed(
        &policies,
        &get("/other").by(WEB).header("x-tenant", "blue")
    ));
    assert!(!allowed(&policies, &get("/api/items").by(WEB)));
}
