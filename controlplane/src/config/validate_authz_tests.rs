use super::*;
use crate::config::loader::{ParsedFiles, ParsedResource, parse_file};
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

/// An AuthorizationPolicy `shop/p` with `spec` (indented by two).
fn policy(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n{spec}"
    )
}

const AT: &str = "config error: ap.yaml doc 1 (AuthorizationPolicy shop/p)";
const ALLOW_NOTHING: &str =
    "; applied as allow-nothing until fixed (an ALLOW policy with no rules)";
const DENY_ALL: &str = "; applied as deny-all until fixed";
const IGNORED: &str = "; ignored until fixed (an AUDIT policy never refuses a request)";

/// What an invalid policy turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    AllowNothing,
    DenyAll,
    Dropped,
}

fn check_stand_in(config: &MeshConfig, expect: Expect, what: &str) {
    match (expect, config.authorization_policies.as_slice()) {
        (Expect::Dropped, []) => {}
        (Expect::AllowNothing, [stand_in]) => {
            assert_eq!(stand_in.action, AuthorizationAction::Allow, "{what}");
            assert!(stand_in.rules.is_empty(), "{what}");
            assert!(stand_in.fail_closed, "{what}");
        }
        (Expect::DenyAll, [stand_in]) => {
            assert_eq!(stand_in.action, AuthorizationAction::Deny, "{what}");
            assert_eq!(stand_in.rules, [AuthorizationRuleDef::default()], "{what}");
            assert!(stand_in.fail_closed, "{what}");
        }
        (_, policies) => panic!("{what}: expected {expect:?}, got {policies:?}"),
    }
}

#[test]
fn authorization_policy_loads_under_every_api_version() {
    let text = "apiVersion: mesh.knit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - {}\n";
    for api_version in [
        "mesh.knit.dev/v1alpha1",
        "security.istio.io/v1beta1",
        "security.istio.io/v1",
    ] {
        let text = text.replace("mesh.knit.dev/v1alpha1", api_version);
        let (config, errors) = load(&[("ap.yaml", &text)]);
        assert!(errors.is_empty(), "{api_version}: {errors:?}");
        let [policy] = config.authorization_policies.as_slice() else {
            panic!("{api_version}: {:?}", config.authorization_policies);
        };
        assert_eq!(
            policy.origin.to_string(),
            "ap.yaml doc 1 (AuthorizationPolicy shop/p)"
        );
        assert_eq!(policy.action, AuthorizationAction::Deny);
        assert_eq!(policy.rules, [AuthorizationRuleDef::default()]);
        assert!(!policy.fail_closed);
    }
    // Istio's security v1alpha1 never had AuthorizationPolicy.
    let mut parsed = ParsedFiles::default();
    parse_file(
        "ap.yaml",
        &text.replace("mesh.knit.dev/v1alpha1", "security.istio.io/v1alpha1"),
        &mut parsed,
    );
    assert!(parsed.documents.is_empty());
    assert_eq!(parsed.warnings.len(), 1);
}

#[test]
fn valid_policy_becomes_the_model_written_canonically() {
    let spec = r#"  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/web", "cluster.local/ns/ops/*"]
        notNamespaces: ["kube-*"]
        ipBlocks: ["10.1.2.3/8", "198.18.0.7", "FD00::1/8"]
        notIpBlocks: ["0.0.0.0/0"]
    - source:
        namespaces: ["*"]
    to:
    - operation:
        hosts: ["*.example.com"]
        ports: ["8080", 9090]
        notPorts: [15000]
        methods: ["GET", "HEAD"]
        paths: ["/api/*", "*"]
        notPaths: ["/api/admin"]
    when:
    - key: request.headers[X-Tenant]
      values: ["blue"]
    - key: destination.port
      notValues: ["9091"]
    - key: source.ip
      values: ["10.0.0.9/24"]
  - {}
"#;
    let (config, errors) = load(&[("ap.yaml", &policy(spec))]);
    assert!(errors.is_empty(), "{errors:?}");
    let [p] = config.authorization_policies.as_slice() else {
        panic!("{:?}", config.authorization_policies);
    };
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", "p"));
    assert_eq!(
        p.selector,
        BTreeMap::from([("app".to_owned(), "web".to_owned())])
    );
    assert_eq!(p.action, AuthorizationAction::Allow);
    let strings = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        p.rules,
        [
            AuthorizationRuleDef {
                from: vec![
                    AuthorizationSourceDef {
                        principals: strings(&[
                            "cluster.local/ns/shop/sa/web",
                            "cluster.local/ns/ops/*"
                        ]),
                        not_namespaces: strings(&["kube-*"]),
                        ip_blocks: strings(&["10.0.0.0/8", "198.18.0.7", "fd00::/8"]),
                        not_ip_blocks: strings(&["0.0.0.0/0"]),
                        ..Default::default()
                    },
                    AuthorizationSourceDef {
                        namespaces: strings(&["*"]),
                        ..Default::default()
                    },
                ],
                to: vec![AuthorizationOperationDef {
                    hosts: strings(&["*.example.com"]),
                    ports: vec![8080, 9090],
                    not_ports: vec![15000],
                    methods: strings(&["GET", "HEAD"]),
                    paths: strings(&["/api/*", "*"]),
                    not_paths: strings(&["/api/admin"]),
                    ..Default::default()
                }],
                when: vec![
                    AuthorizationConditionDef {
                        key: "request.headers[x-tenant]".to_owned(),
                        values: strings(&["blue"]),
                        not_values: Vec::new(),
                    },
                    AuthorizationConditionDef {
                        key: "destination.port".to_owned(),
                        values: Vec::new(),
                        not_values: strings(&["9091"]),
                    },
                    AuthorizationConditionDef {
                        key: "source.ip".to_owned(),
                        values: strings(&["10.0.0.0/24"]),
                        not_values: Vec::new(),
                    },
                ],
            },
            AuthorizationRuleDef::default(),
        ]
    );
    assert!(!p.fail_closed);
}

#[test]
fn empty_spec_is_an_allow_policy_without_rules() {
    let (config, errors) = load(&[("ap.yaml", &policy("  {}\n"))]);
    assert!(errors.is_empty(), "{errors:?}");
    let [p] = config.authorization_policies.as_slice() else {
        panic!("{:?}", config.authorization_policies);
    };
    assert_eq!(p.action, AuthorizationAction::Allow);
    assert!(p.rules.is_empty() && p.selector.is_empty() && !p.fail_closed);
}

/// One rule with `from` / `to` / `when` written as YAML under `rules:`.
fn rule(body: &str) -> String {
    format!("  rules:\n  - {body}\n")
}

#[test]
fn each_invalid_policy_names_file_document_and_field_and_fails_closed() {
    use Expect::{AllowNothing, DenyAll, Dropped};
    let source = |fields: &str| rule(&format!("from:\n    - source: {{{fields}}}"));
    let operation = |fields: &str| rule(&format!("to:\n    - operation: {{{fields}}}"));
    let when = |condition: &str| rule(&format!("when:\n    - {{{condition}}}"));
    let deny = |body: String| format!("  action: DENY\n{body}");
    let audit = |body: String| format!("  action: AUDIT\n{body}");
    let s = "spec.rules[0].from[0].source";
    let o = "spec.rules[0].to[0].operation";
    let w = "spec.rules[0].when[0]";
    let pattern_reason = |value: &str| {
        format!(
            "{value:?} has '*' in the wrong place: a pattern is exact, \"prefix*\", \"*suffix\" or \"*\""
        )
    };
    // (spec, field: reason, what applies meanwhile)
    let table: Vec<(String, String, Expect)> = vec![
        (
            "  action: CUSTOM\n  provider:\n    name: ext-authz\n".to_owned(),
            "spec.provider: is not supported by Knit (external authorizers)".to_owned(),
            DenyAll,
        ),
        (
            "  action: CUSTOM\n".to_owned(),
            "spec.action: CUSTOM is not supported by Knit (external authorizers); use ALLOW, DENY or AUDIT".to_owned(),
            DenyAll,
        ),
        (
            "  targetRef:\n    kind: Gateway\n    name: gw\n".to_owned(),
            "spec.targetRef: is not supported by Knit: select workloads with spec.selector instead".to_owned(),
            AllowNothing,
        ),
        (
            deny("  targetRefs:\n  - kind: Service\n    name: web\n".to_owned()),
            "spec.targetRefs: is not supported by Knit: select workloads with spec.selector instead".to_owned(),
            DenyAll,
        ),
        (
            source("requestPrincipals: [\"*\"]"),
            format!("{s}.requestPrincipals: is not supported by Knit (it needs request authentication, such as JWT); use principals for peer identities"),
            AllowNothing,
        ),
        (
            deny(source("notRequestPrincipals: [\"*\"], namespaces: [shop]")),
            format!("{s}.notRequestPrincipals: is not supported by Knit (it needs request authentication, such as JWT); use principals for peer identities"),
            DenyAll,
        ),
        (
            source("remoteIpBlocks: [10.0.0.0/8]"),
            format!("{s}.remoteIpBlocks: is not supported by Knit (it trusts forwarding headers); use ipBlocks for the connection's source"),
            AllowNothing,
        ),
        (
            audit(source("notRemoteIpBlocks: [10.0.0.0/8]")),
            format!("{s}.notRemoteIpBlocks: is not supported by Knit (it trusts forwarding headers); use ipBlocks for the connection's source"),
            Dropped,
        ),
        (
            deny(source("")),
            format!("{s}: must set at least one of principals, notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks"),
            DenyAll,
        ),
        (
            source("principals: []"),
            format!("{s}: must set at least one of principals, notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks"),
            AllowNothing,
        ),
        (
            rule("from:\n    - {}"),
            format!("{s}: must be set"),
            AllowNothing,
        ),
        (
            deny(operation("")),
            format!("{o}: must set at least one of hosts, notHosts, ports, notPorts, methods, notMethods, paths, notPaths"),
            DenyAll,
        ),
        (
            rule("to:\n    - {}"),
            format!("{o}: must be set"),
            AllowNothing,
        ),
        (
            source("ipBlocks: [10.0.0.0/33]"),
            format!("{s}.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR block (such as 10.0.0.0/8 or fd00::/8)"),
            AllowNothing,
        ),
        (
            deny(source("notIpBlocks: [10.0.0.1, 10.0.0]")),
            format!("{s}.notIpBlocks[1]: \"10.0.0\" is not an IP address or CIDR block (such as 10.0.0.0/8 or fd00::/8)"),
            DenyAll,
        ),
        (
            source("ipBlocks: [\"10.0.0.0/+8\"]"),
            format!("{s}.ipBlocks[0]: \"10.0.0.0/+8\" is not an IP address or CIDR block (such as 10.0.0.0/8 or fd00::/8)"),
            AllowNothing,
        ),
        (
            operation("ports: [70000]"),
            format!("{o}.ports[0]: 70000 is not a valid port (1-65535)"),
            AllowNothing,
        ),
        (
            deny(operation("ports: [\"8080\", \"http\"]")),
            format!("{o}.ports[1]: \"http\" is not a port number (1-65535)"),
            DenyAll,
        ),
        (
            operation("notPorts: [\"0\"]"),
            format!("{o}.notPorts[0]: \"0\" is not a port number (1-65535)"),
            AllowNothing,
        ),
        (
            operation("notPorts: [0]"),
            format!("{o}.notPorts[0]: 0 is not a valid port (1-65535)"),
            AllowNothing,
        ),
        (
            deny(operation("paths: [\"\"]")),
            format!("{o}.paths[0]: must not be empty"),
            DenyAll,
        ),
        (
            operation("paths: [\"/api/*/v1\"]"),
            format!("{o}.paths[0]: {}", pattern_reason("/api/*/v1")),
            AllowNothing,
        ),
        (
            operation("paths: [\"/a?b=1\"]"),
            format!(
                "{o}.paths[0]: \"/a?b=1\" contains '?': paths are matched without the query and fragment"
            ),
            AllowNothing,
        ),
        (
            deny(operation("notPaths: [\"/a%zz\"]")),
            format!("{o}.notPaths[0]: \"/a%zz\" has a '%' not followed by two hex digits"),
            DenyAll,
        ),
        (
            operation("paths: [\"/a%00\"]"),
            format!("{o}.paths[0]: \"/a%00\" escapes a control character"),
            AllowNothing,
        ),
        (
            operation("paths: [\"/caf\u{e9}\"]"),
            format!(
                "{o}.paths[0]: \"/caf\u{e9}\" must be ASCII without control characters (percent-encode the rest)"
            ),
            AllowNothing,
        ),
        (
            operation("hosts: [\"*.example.*\"]"),
            format!("{o}.hosts[0]: {}", pattern_reason("*.example.*")),
            AllowNothing,
        ),
        (
            operation("methods: [\"**\"]"),
            format!("{o}.methods[0]: {}", pattern_reason("**")),
            AllowNothing,
        ),
        (
            source("namespaces: [\"\"]"),
            format!("{s}.namespaces[0]: must not be empty"),
            AllowNothing,
        ),
        (
            deny(source("principals: [\"spiffe://cluster.local/ns/shop/sa/web\"]")),
            format!("{s}.principals[0]: \"spiffe://cluster.local/ns/shop/sa/web\" must be written without the spiffe:// scheme: \"cluster.local/ns/shop/sa/web\""),
            DenyAll,
        ),
        (
            source("notPrincipals: [\"SPIFFE://cluster.local/*\"]"),
            format!("{s}.notPrincipals[0]: \"SPIFFE://cluster.local/*\" must be written without the spiffe:// scheme: \"cluster.local/*\""),
            AllowNothing,
        ),
        (
            when("key: \"request.auth.claims[iss]\", values: [x]"),
            format!("{w}.key: \"request.auth.claims[iss]\" is not supported; supported keys: source.ip, source.namespace, source.principal, destination.ip, destination.port, request.headers[<name>]"),
            AllowNothing,
        ),
        (
            deny(when("key: remote.ip, values: [10.0.0.1]")),
            format!("{w}.key: \"remote.ip\" is not supported; supported keys: source.ip, source.namespace, source.principal, destination.ip, destination.port, request.headers[<name>]"),
            DenyAll,
        ),
        (
            when("key: source.ip"),
            format!("{w}: must set values or notValues"),
            AllowNothing,
        ),
        (
            when("key: \"\", values: [x]"),
            format!("{w}.key: must be set"),
            AllowNothing,
        ),
        (
            when("key: \"request.headers[]\", values: [x]"),
            format!("{w}.key: \"request.headers[]\" names no header"),
            AllowNothing,
        ),
        (
            when("key: \"request.headers[x tenant]\", values: [x]"),
            format!("{w}.key: \"x tenant\" is not a valid HTTP header name"),
            AllowNothing,
        ),
        (
            deny(when("key: destination.ip, values: [nope]")),
            format!("{w}.values[0]: \"nope\" is not an IP address or CIDR block (such as 10.0.0.0/8 or fd00::/8)"),
            DenyAll,
        ),
        (
            when("key: destination.port, notValues: [http]"),
            format!("{w}.notValues[0]: \"http\" is not a port number (1-65535)"),
            AllowNothing,
        ),
        (
            when("key: source.principal, values: [\"spiffe://cluster.local/ns/a/sa/b\"]"),
            format!("{w}.values[0]: \"spiffe://cluster.local/ns/a/sa/b\" must be written without the spiffe:// scheme: \"cluster.local/ns/a/sa/b\""),
            AllowNothing,
        ),
        (
            when("key: \"request.headers[x-tenant]\", values: [\"a*b\"]"),
            format!("{w}.values[0]: {}", pattern_reason("a*b")),
            AllowNothing,
        ),
        (
            audit(format!("{}  - to:\n    - operation: {{paths: [\"\"]}}\n", rule("{}"))),
            "spec.rules[1].to[0].operation.paths[0]: must not be empty".to_owned(),
            Dropped,
        ),
    ];
    for (spec, problem, expect) in table {
        let (config, errors) = load(&[("ap.yaml", &policy(&spec))]);
        let consequence = match expect {
            AllowNothing => ALLOW_NOTHING,
            DenyAll => DENY_ALL,
            Dropped => IGNORED,
        };
        assert_eq!(errors, [format!("{AT}: {problem}{consequence}")], "{spec}");
        check_stand_in(&config, expect, &spec);
    }
}

#[test]
fn a_spec_that_does_not_parse_fails_closed_by_its_written_action() {
    use Expect::{AllowNothing, DenyAll, Dropped};
    // (spec, start of the error after AT, what applies meanwhile)
    let table = [
        (
            "  rules:\n  - to:\n    - operation:\n        notPath: [/admin]\n",
            "spec.rules[0].to[0].operation.notPath: unknown field `notPath`",
            AllowNothing,
        ),
        (
            "  action: DENY\n  rules:\n  - to:\n    - operation:\n        ports: [true]\n",
            "spec.rules[0].to[0].operation.ports[0]: ",
            DenyAll,
        ),
        (
            "  action: deny\n  rules:\n  - {}\n",
            "spec.action: unknown variant `deny`",
            DenyAll,
        ),
        ("  action: 7\n", "spec.action: ", DenyAll),
        (
            "  action: AUDIT\n  rule:\n  - {}\n",
            "spec.rule: unknown field `rule`",
            Dropped,
        ),
        (
            "  action: DENY\n  rules: {from: []}\n",
            "spec.rules: invalid type: map, expected a sequence",
            DenyAll,
        ),
    ];
    for (spec, problem, expect) in table {
        let (config, errors) = load(&[("ap.yaml", &policy(spec))]);
        let consequence = match expect {
            AllowNothing => ALLOW_NOTHING,
            DenyAll => DENY_ALL,
            Dropped => IGNORED,
        };
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert!(
            errors[0].starts_with(&format!("{AT}: {problem}")),
            "{spec}: {}",
            errors[0]
        );
        assert!(errors[0].ends_with(consequence), "{spec}: {}", errors[0]);
        check_stand_in(&config, expect, spec);
    }
    // The stand-in keeps the selector, so it applies where the policy would.
    let spec = "  selector:\n    matchLabels:\n      app: web\n  action: DENY\n  rules: 5\n";
    let (config, errors) = load(&[("ap.yaml", &policy(spec))]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    check_stand_in(&config, Expect::DenyAll, spec);
    assert_eq!(
        config.authorization_policies[0].selector,
        BTreeMap::from([("app".to_owned(), "web".to_owned())])
    );
    // No spec at all: the document as a whole is named.
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\n";
    let (config, errors) = load(&[("ap.yaml", text)]);
    assert_eq!(
        errors,
        [format!("{AT}: missing field `spec`{ALLOW_NOTHING}")]
    );
    check_stand_in(&config, Expect::AllowNothing, text);
}

#[test]
fn a_policy_that_cannot_be_placed_is_only_an_error() {
    let deny_all = "  action: DENY\n  rules:\n  - {}\n";
    let table = [
        (
            policy(deny_all).replace("name: p", "name: Bad_Name"),
            "config error: ap.yaml doc 1 (AuthorizationPolicy shop/Bad_Name): metadata.name: ",
        ),
        (
            policy(deny_all).replace("  name: p\n", ""),
            "config error: ap.yaml doc 1 (AuthorizationPolicy): metadata.name: must be set",
        ),
        (
            policy(&format!(
                "  selector:\n    matchLabels:\n      \"bad key!\": web\n{deny_all}"
            )),
            "config error: ap.yaml doc 1 (AuthorizationPolicy shop/p): spec.selector.matchLabels: ",
        ),
        (
            policy("  selector: [app]\n  action: DENY\n  rules: 5\n"),
            "config error: ap.yaml doc 1 (AuthorizationPolicy shop/p): spec.selector[0]: invalid type",
        ),
        (
            // Broken spec and broken name: the name is what is reported.
            policy("  action: DENY\n  rules: 5\n").replace("name: p", "name: Bad_Name"),
            "config error: ap.yaml doc 1 (AuthorizationPolicy shop/Bad_Name): metadata.name: ",
        ),
    ];
    for (text, start) in table {
        let (config, errors) = load(&[("ap.yaml", &text)]);
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        assert!(errors[0].starts_with(start), "{text}: {}", errors[0]);
        assert!(!errors[0].contains("until fixed"), "{}", errors[0]);
        assert!(config.authorization_policies.is_empty(), "{text}");
    }
}

#[test]
fn an_invalid_policy_costs_only_itself() {
    let good = policy("  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [evil]}\n")
        .replace("name: p", "name: good");
    let bad = policy(&rule("to:\n    - operation: {ports: [http]}"));
    let (config, errors) = load(&[("ap.yaml", &format!("{bad}---\n{good}"))]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let kept: Vec<(&str, bool)> = config
        .authorization_policies
        .iter()
        .map(|p| (p.name.as_str(), p.fail_closed))
        .collect();
    assert_eq!(kept, [("p", true), ("good", false)]);
}

#[test]
fn duplicate_authorization_policies_are_reported_and_the_first_wins() {
    let first = policy("  action: DENY\n  rules:\n  - {}\n");
    let second = policy("  action: ALLOW\n");
    let broken = policy("  action: DENY\n  rules: 5\n");
    let other_ns = second.replace("namespace: shop", "namespace: other");
    let (config, errors) = load(&[
        ("a.yaml", &first),
        ("b.yaml", &format!("{second}---\n{broken}---\n{other_ns}")),
    ]);
    assert_eq!(
        errors,
        [
            "config error: b.yaml doc 1 (AuthorizationPolicy shop/p): metadata.name: duplicate AuthorizationPolicy shop/p, already defined in a.yaml doc 1",
            "config error: b.yaml doc 2 (AuthorizationPolicy shop/p): metadata.name: duplicate AuthorizationPolicy shop/p, already defined in a.yaml doc 1",
        ]
    );
    let kept: Vec<(&str, AuthorizationAction)> = config
        .authorization_policies
        .iter()
        .map(|p| (p.namespace.as_str(), p.action))
        .collect();
    assert_eq!(
        kept,
        [
            ("shop", AuthorizationAction::Deny),
            ("other", AuthorizationAction::Allow)
        ]
    );
}

#[test]
fn patterns_ip_blocks_and_ports() {
    for good in ["a", "*", "prefix*", "*suffix", "/api/v1", "GET"] {
        assert_eq!(pattern(good), Ok(good.to_owned()), "{good}");
    }
    for bad in ["", "a*b", "**", "*a*", "a**", "*.*"] {
        assert!(pattern(bad).is_err(), "{bad}");
    }
    let blocks = [
        ("10.0.0.1", Some("10.0.0.1")),
        ("10.1.2.3/8", Some("10.0.0.0/8")),
        ("10.1.2.3/32", Some("10.1.2.3/32")),
        ("0.0.0.0/0", Some("0.0.0.0/0")),
        ("255.255.255.255/0", Some("0.0.0.0/0")),
        ("FD00:0::1", Some("fd00::1")),
        ("fd00::1/64", Some("fd00::/64")),
        ("::/0", Some("::/0")),
        ("fd00::1/128", Some("fd00::1/128")),
        ("fd00::/129", None),
        ("10.0.0.0/33", None),
        ("10.0.0.0/", None),
        ("10.0.0.0/-1", None),
        ("10.0.0.0/0008", None),
        ("/8", None),
        ("10.0.0.0/8/8", None),
        ("010.0.0.1", None),
        ("example.com", None),
        ("", None),
    ];
    for (input, expected) in blocks {
        assert_eq!(canonical_ip_block(input).as_deref(), expected, "{input:?}");
    }
    let ports = [
        ("1", Some(1)),
        ("8080", Some(8080)),
        ("65535", Some(65535)),
        ("65536", None),
        ("0", None),
        ("+80", None),
        (" 80", None),
        ("", None),
        ("http", None),
        ("123456", None),
    ];
    for (input, expected) in ports {
        assert_eq!(port_number(input).ok(), expected, "{input:?}");
    }
}

#[test]
fn parsed_document_keeps_what_places_it_when_the_spec_is_broken() {
    let mut parsed = ParsedFiles::default();
    parse_file(
        "ap.yaml",
        &policy("  selector:\n    matchLabels: {app: web}\n  action: DENY\n  rules: 5\n"),
        &mut parsed,
    );
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let [document] = parsed.documents.as_slice() else {
        panic!("{:?}", parsed.documents);
    };
    match &document.resource {
        ParsedResource::AuthorizationPolicy(document) => match document.as_ref() {
            AuthorizationPolicyDocument::Unparsed(unparsed) => {
                assert_eq!(unparsed.metadata.name.as_deref(), Some("p"));
                assert_eq!(
                    unparsed.selector.as_ref().map(|s| s.match_labels.len()),
                    Some(1)
                );
                assert_eq!(unparsed.action, Some(Value::from("DENY")));
                assert_eq!(unparsed.field.as_deref(), Some("spec.rules"));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}
