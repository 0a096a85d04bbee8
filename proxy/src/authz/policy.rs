//! The compiled AuthorizationPolicies of this workload: validated once when
//! a snapshot is built, so the data path only compares.
//!
//! Anything the proxy could not enforce exactly as written is invalid
//! config (the whole response is NACKed), named by policy, rule and field:
//! an unknown action, a bad CIDR or port, a `*` inside a pattern, an
//! unknown `when` key.

use std::collections::HashSet;

use http::HeaderName;
use knit_proto::v1;
use serde::Serialize;

use super::matchers::{IpBlock, StringMatch};
use super::normalize::{normalize_method, normalize_path_pattern};
use crate::error::Error;

/// Every policy that applies to this workload, grouped by action in the
/// order they are evaluated.
#[derive(Debug, Default, Serialize)]
pub struct AuthorizationPolicies {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) audit: Vec<Policy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) deny: Vec<Policy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) allow: Vec<Policy>,
}

#[derive(Debug, Serialize)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub rules: Vec<Rule>,
}

/// Matches when some source matches (or there is none), some operation
/// matches (or there is none), and every condition holds.
#[derive(Debug, Default, Serialize)]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// Who sends. Every non-empty field must match.
#[derive(Debug, Default, Serialize)]
pub struct Source {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
}

/// What is asked for. Every non-empty field must match. Hosts are lower
/// case, paths and methods in normal form (see `normalize`).
#[derive(Debug, Default, Serialize)]
pub struct Operation {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<StringMatch>,
}

impl Operation {
    /// Whether the operation names anything only an HTTP request has.
    pub fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

/// Holds when the attribute matches one of `values` (if any) and none of
/// `not_values`.
#[derive(Debug, Serialize)]
pub struct Condition {
    /// As written, for the config dump.
    pub key: String,
    #[serde(skip)]
    pub attribute: Attribute,
    #[serde(skip_serializing_if = "Values::is_empty")]
    pub values: Values,
    #[serde(skip_serializing_if = "Values::is_empty")]
    pub not_values: Values,
}

/// The request attributes a `when` condition can test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// `request.headers[<name>]`; the name is matched case-insensitively.
    RequestHeader(HeaderName),
}

/// The values of a condition, typed by its attribute.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Values {
    Ips(Vec<IpBlock>),
    Ports(Vec<u16>),
    Strings(Vec<StringMatch>),
}

impl Values {
    pub fn is_empty(&self) -> bool {
        match self {
            Values::Ips(v) => v.is_empty(),
            Values::Ports(v) => v.is_empty(),
            Values::Strings(v) => v.is_empty(),
        }
    }
}

impl AuthorizationPolicies {
    /// Compiles the policies the control plane selected for this workload.
    pub fn from_proto(policies: &[v1::AuthorizationPolicy]) -> Result<Self, Error> {
        let mut compiled = AuthorizationPolicies::default();
        let mut seen = HashSet::new();
        for proto in policies {
            let name = format!("{}/{}", proto.namespace, proto.name);
            let invalid = |detail: String| {
                Error::InvalidConfig(format!("authorization policy {name}: {detail}"))
            };
            if proto.name.is_empty() || proto.namespace.is_empty() {
                return Err(invalid("name and namespace must be set".into()));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid("listed twice".into()));
            }
            let mut rules = Vec::with_capacity(proto.rules.len());
            for (i, rule) in proto.rules.iter().enumerate() {
                rules.push(compile_rule(rule).map_err(|e| invalid(format!("rules[{i}]: {e}")))?);
            }
            let list = match v1::AuthorizationAction::try_from(proto.action) {
                Ok(v1::AuthorizationAction::Allow) => &mut compiled.allow,
                Ok(v1::AuthorizationAction::Deny) => &mut compiled.deny,
                Ok(v1::AuthorizationAction::Audit) => &mut compiled.audit,
                Ok(v1::AuthorizationAction::Unspecified) => {
                    return Err(invalid("action: must be ALLOW, DENY or AUDIT".into()));
                }
                Err(_) => return Err(invalid(format!("action: unknown action {}", proto.action))),
            };
            list.push(Policy { name, rules });
        }
        Ok(compiled)
    }

    /// No policy at all: every request is allowed and nothing is audited.
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.deny.is_empty() && self.allow.is_empty()
    }

    pub fn len(&self) -> usize {
        self.audit.len() + self.deny.len() + self.allow.len()
    }
}

fn compile_rule(rule: &v1::AuthorizationRule) -> Result<Rule, String> {
    let from = rule
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| compile_source(s).map_err(|e| format!("from[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    let to = rule
        .to
        .iter()
        .enumerate()
        .map(|(i, o)| compile_operation(o).map_err(|e| format!("to[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    let when = rule
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| compile_condition(c).map_err(|e| format!("when[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

fn compile_source(source: &v1::AuthorizationSource) -> Result<Source, String> {
    Ok(Source {
        principals: strings("principals", &source.principals)?,
        not_principals: strings("not_principals", &source.not_principals)?,
        namespaces: strings("namespaces", &source.namespaces)?,
        not_namespaces: strings("not_namespaces", &source.not_namespaces)?,
        ip_blocks: ip_blocks("ip_blocks", &source.ip_blocks)?,
        not_ip_blocks: ip_blocks("not_ip_blocks", &source.not_ip_blocks)?,
    })
}

fn compile_operation(op: &v1::AuthorizationOperation) -> Result<Operation, String> {
    Ok(Operation {
        hosts: hosts("hosts", &op.hosts)?,
        not_hosts: hosts("not_hosts", &op.not_hosts)?,
        ports: ports("ports", &op.ports)?,
        not_ports: ports("not_ports", &op.not_ports)?,
        methods: methods("methods", &op.methods)?,
        not_methods: methods("not_methods", &op.not_methods)?,
        paths: paths("paths", &op.paths)?,
        not_paths: paths("not_paths", &op.not_paths)?,
    })
}

fn compile_condition(cond: &v1::AuthorizationCondition) -> Result<Condition, String> {
    let key = cond.key.as_str();
    let attribute = match key {
        "source.ip" => Attribute::SourceIp,
        "source.namespace" => Attribute::SourceNamespace,
        "source.principal" => Attribute::SourcePrincipal,
        "destination.ip" => Attribute::DestinationIp,
        "destination.port" => Attribute::DestinationPort,
        _ => match key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            Some(name) => HeaderName::from_bytes(name.as_bytes())
                .map(Attribute::RequestHeader)
                .map_err(|_| format!("key {key:?}: {name:?} is not a header name"))?,
            None => {
                return Err(format!(
                    "key {key:?} is not supported (source.ip, source.namespace, \
                     source.principal, destination.ip, destination.port, request.headers[<name>])"
                ));
            }
        },
    };
    let typed = |field: &str, raw: &[String]| -> Result<Values, String> {
        let field = format!("{key}: {field}");
        Ok(match &attribute {
            Attribute::SourceIp | Attribute::DestinationIp => Values::Ips(ip_blocks(&field, raw)?),
            Attribute::DestinationPort => Values::Ports(
                raw.iter()
                    .map(|text| {
                        text.parse::<u32>()
                            .ok()
                            .and_then(valid_port)
                            .ok_or_else(|| format!("{field}: {text:?} is not a valid port"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => Values::Strings(strings(&field, raw)?),
        })
    };
    let values = typed("values", &cond.values)?;
    let not_values = typed("not_values", &cond.not_values)?;
    if values.is_empty() && not_values.is_empty() {
        return Err(format!("key {key:?}: needs values or not_values"));
    }
    Ok(Condition {
        key: key.to_owned(),
        attribute,
        values,
        not_values,
    })
}

fn strings(field: &str, raw: &[String]) -> Result<Vec<StringMatch>, String> {
    raw.iter()
        .map(|text| StringMatch::parse(text).map_err(|e| format!("{field}: {e}")))
        .collect()
}

/// Hosts compare case-insensitively and without a trailing dot.
fn hosts(field: &str, raw: &[String]) -> Result<Vec<StringMatch>, String> {
    strings(field, raw)?
        .into_iter()
        .map(|m| {
            m.try_map(|text, _| {
                let lower = text.to_ascii_lowercase();
                Ok(match lower.strip_suffix('.') {
                    Some(bare) => bare.to_owned(),
                    None => lower,
                })
            })
        })
        .collect()
}

/// A standard method written in another case means the standard method,
/// as it does in a request.
fn methods(field: &str, raw: &[String]) -> Result<Vec<StringMatch>, String> {
    strings(field, raw)?
        .into_iter()
        .map(|m| {
            m.try_map(|text, exact| {
                let standard = http::Method::from_bytes(text.as_bytes())
                    .ok()
                    .filter(|_| exact)
                    .and_then(|method| normalize_method(&method));
                Ok(standard.map_or(text, |method| method.as_str().to_owned()))
            })
        })
        .collect()
}

fn paths(field: &str, raw: &[String]) -> Result<Vec<StringMatch>, String> {
    strings(field, raw)?
        .into_iter()
        .map(|m| {
            m.try_map(normalize_path_pattern)
                .map_err(|e| format!("{field}: {e}"))
        })
        .collect()
}

fn ports(field: &str, raw: &[u32]) -> Result<Vec<u16>, String> {
    raw.iter()
        .map(|port| valid_port(*port).ok_or_else(|| format!("{field}: {port} is not a valid port")))
        .collect()
}

fn ip_blocks(field: &str, raw: &[String]) -> Result<Vec<IpBlock>, String> {
    raw.iter()
        .map(|text| IpBlock::parse(text).map_err(|e| format!("{field}: {e}")))
        .collect()
}

fn valid_port(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        action: v1::AuthorizationAction,
        rules: Vec<v1::AuthorizationRule>,
    ) -> v1::AuthorizationPolicy {
        v1::AuthorizationPolicy {
            name: "p".into(),
            namespace: "shop".into(),
            action: action as i32,
            rules,
        }
    }

    fn rule_from(source: v1::AuthorizationSource) -> v1::AuthorizationRule {
        v1::AuthorizationRule {
            from: vec![source],
            ..Default::default()
        }
    }

    fn rule_to(op: v1::AuthorizationOperation) -> v1::AuthorizationRule {
        v1::AuthorizationRule {
            to: vec![op],
            ..Default::default()
        }
    }

    fn rule_when(key: &str, values: &[&str]) -> v1::AuthorizationRule {
        v1::AuthorizationRule {
            when: vec![v1::AuthorizationCondition {
                key: key.into(),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
                not_values: vec![],
            }],
            ..Default::default()
        }
    }

    fn strs(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn invalid_policies_are_named_by_policy_rule_and_field() {
        use v1::AuthorizationAction::{Allow, Deny, Unspecified};
        let mut unknown_action = policy(Allow, vec![]);
        unknown_action.action = 7;
        let cases: Vec<(v1::AuthorizationPolicy, &str)> = vec![
            (
                unknown_action,
                "authorization policy shop/p: action: unknown action 7",
            ),
            (
                policy(Unspecified, vec![]),
                "shop/p: action: must be ALLOW, DENY or AUDIT",
            ),
            (
                policy(
                    Deny,
                    vec![
                        v1::AuthorizationRule::default(),
                        rule_from(v1::AuthorizationSource {
                            ip_blocks: strs(&["10.0.0.0/8", "10.0.0/8"]),
                            ..Default::default()
                        }),
                    ],
                ),
                "shop/p: rules[1]: from[0]: ip_blocks: \"10.0.0/8\" is not an IP address or CIDR",
            ),
            (
                policy(
                    Allow,
                    vec![rule_from(v1::AuthorizationSource {
                        not_ip_blocks: strs(&["::/200"]),
                        ..Default::default()
                    })],
                ),
                "rules[0]: from[0]: not_ip_blocks: \"::/200\": prefix length must be at most 128",
            ),
            (
                policy(
                    Allow,
                    vec![rule_to(v1::AuthorizationOperation {
                        ports: vec![70000],
                        ..Default::default()
                    })],
                ),
                "rules[0]: to[0]: ports: 70000 is not a valid port",
            ),
            (
                policy(
                    Allow,
                    vec![rule_to(v1::AuthorizationOperation {
                        paths: strs(&["/a/*/b"]),
                        ..Default::default()
                    })],
                ),
                "rules[0]: to[0]: paths: \"/a/*/b\": '*' may only",
            ),
            (
                policy(
                    Allow,
                    vec![rule_to(v1::AuthorizationOperation {
                        not_paths: strs(&["/%zz"]),
                        ..Default::default()
                    })],
                ),
                "to[0]: not_paths: \"/%zz\": invalid percent-encoding",
            ),
            (
                policy(Allow, vec![rule_when("request.auth.claims[iss]", &["x"])]),
                "rules[0]: when[0]: key \"request.auth.claims[iss]\" is not supported",
            ),
            (
                policy(Allow, vec![rule_when("request.headers[bad name]", &["x"])]),
                "when[0]: key \"request.headers[bad name]\": \"bad name\" is not a header name",
            ),
            (
                policy(Allow, vec![rule_when("destination.port", &["http"])]),
                "when[0]: destination.port: values: \"http\" is not a valid port",
            ),
            (
                policy(Allow, vec![rule_when("source.ip", &["nope"])]),
                "when[0]: source.ip: values: \"nope\" is not an IP address or CIDR",
            ),
            (
                policy(Allow, vec![rule_when("source.principal", &[])]),
                "when[0]: key \"source.principal\": needs values or not_values",
            ),
        ];
        for (proto, want) in cases {
            let err = AuthorizationPolicies::from_proto(&[proto])
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(
                err.starts_with("invalid config: authorization policy shop/p: "),
                "{err}"
            );
        }
        let twice =
            AuthorizationPolicies::from_proto(&[policy(Allow, vec![]), policy(Deny, vec![])])
                .expect_err("duplicate");
        assert!(
            twice.to_string().contains("shop/p: listed twice"),
            "{twice}"
        );
    }

    #[test]
    fn patterns_compile_to_the_form_requests_are_compared_in() {
        let proto = policy(
            v1::AuthorizationAction::Deny,
            vec![
                rule_to(v1::AuthorizationOperation {
                    hosts: strs(&["API.Example.com.", "*.Example.COM", "*"]),
                    methods: strs(&["get", "purge", "Po*"]),
                    paths: strs(&["//admin/./x", "/api/%2a*", "*.PHP"]),
                    ..Default::default()
                }),
                rule_when("request.headers[X-Tenant]", &["a*"]),
            ],
        );
        let compiled = AuthorizationPolicies::from_proto(&[proto]).expect("valid");
        assert_eq!(compiled.len(), 1);
        let dump = serde_json::to_value(&compiled).expect("serializable");
        assert_eq!(
            dump,
            serde_json::json!({
                "deny": [{
                    "name": "shop/p",
                    "rules": [
                        {"to": [{
                            "hosts": ["api.example.com", "*.example.com", "*"],
                            "methods": ["GET", "purge", "Po*"],
                            "paths": ["/admin/x", "/api/%2A*", "*.PHP"],
                        }]},
                        {"when": [{"key": "request.headers[X-Tenant]", "values": ["a*"]}]},
                    ],
                }],
            })
        );
        let Some(rule) = compiled.deny.first().and_then(|p| p.rules.get(1)) else {
            panic!("the when rule was compiled");
        };
        assert_eq!(
            rule.when.first().map(|c| &c.attribute),
            Some(&Attribute::RequestHeader(HeaderName::from_static(
                "x-tenant"
            )))
        );
    }

    #[test]
    fn no_policies_is_empty() {
        let compiled = AuthorizationPolicies::from_proto(&[]).expect("valid");
        assert!(compiled.is_empty());
        assert_eq!(
            serde_json::to_value(&compiled).expect("json"),
            serde_json::json!({})
        );
    }
}
