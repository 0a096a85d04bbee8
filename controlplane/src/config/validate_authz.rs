//! Validation of AuthorizationPolicy documents into the model.
//!
//! An authorization policy fails closed: when the document says where it
//! applies (metadata and selector are readable and valid) but its action or
//! rules are invalid, it is reported and replaced by a stand-in that never
//! grants more than the policy could have:
//! - an invalid ALLOW policy becomes an ALLOW policy without rules, which
//!   allows nothing (only other ALLOW policies still let requests in);
//! - an invalid DENY policy, a CUSTOM one, or one whose action cannot be
//!   read becomes a DENY policy with one empty rule, which denies everything;
//! - an invalid AUDIT policy is dropped: auditing never refuses a request,
//!   so dropping it cannot widen access.
//!
//! A document whose metadata or selector is unusable cannot be placed on
//! any workload, so it is only reported, like any other kind.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::kinds::{
    AuthorizationPolicySpec, PeerWorkloadSelector, PolicyAction, PolicyRule, RuleCondition,
    RuleOperation, RuleSource,
};
use super::loader::AuthorizationPolicyDocument;
use super::names::check_dns1123_subdomain;
use super::validate::{FieldError, check_labels, name_and_namespace, valid_port};
use crate::error::Error;
use crate::model::{
    AuthorizationAction, AuthorizationConditionDef, AuthorizationOperationDef,
    AuthorizationPolicyDef, AuthorizationRuleDef, AuthorizationSourceDef, DocumentRef,
};

/// The `when` keys Knit evaluates, as written in YAML.
pub const SUPPORTED_CONDITION_KEYS: &str = "source.ip, source.namespace, source.principal, \
     destination.ip, destination.port, request.headers[<name>]";

/// What one AuthorizationPolicy document contributes: the policy that
/// applies (the valid one, or the fail-closed stand-in of an invalid one)
/// and the error, if any. Both are `Some` for a policy applied fail-closed.
#[derive(Debug)]
pub struct AuthorizationOutcome {
    pub policy: Option<AuthorizationPolicyDef>,
    pub error: Option<Error>,
}

/// How an invalid policy applies until it is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailClosed {
    /// An ALLOW policy without rules.
    AllowNothing,
    /// A DENY policy with one empty rule.
    DenyAll,
    /// Nothing: an invalid AUDIT policy.
    Dropped,
}

impl FailClosed {
    fn for_action(action: Option<PolicyAction>) -> FailClosed {
        match action {
            None | Some(PolicyAction::Allow) => FailClosed::AllowNothing,
            Some(PolicyAction::Deny) | Some(PolicyAction::Custom) => FailClosed::DenyAll,
            Some(PolicyAction::Audit) => FailClosed::Dropped,
        }
    }

    /// From `spec.action` as written, when the spec did not parse. Anything
    /// but a known action is taken as the strictest reading.
    fn for_written_action(action: Option<&Value>) -> FailClosed {
        match action {
            None | Some(Value::Null) => FailClosed::AllowNothing,
            Some(Value::String(action)) => match action.as_str() {
                "ALLOW" => FailClosed::AllowNothing,
                "AUDIT" => FailClosed::Dropped,
                _ => FailClosed::DenyAll,
            },
            Some(_) => FailClosed::DenyAll,
        }
    }

    /// Appended to the error, so the operator knows what applies meanwhile.
    fn consequence(self) -> &'static str {
        match self {
            FailClosed::AllowNothing => {
                "; applied as allow-nothing until fixed (an ALLOW policy with no rules)"
            }
            FailClosed::DenyAll => "; applied as deny-all until fixed",
            FailClosed::Dropped => {
                "; ignored until fixed (an AUDIT policy never refuses a request)"
            }
        }
    }

    fn stand_in(self, placed: Placement, origin: &DocumentRef) -> Option<AuthorizationPolicyDef> {
        let (action, rules) = match self {
            FailClosed::AllowNothing => (AuthorizationAction::Allow, Vec::new()),
            FailClosed::DenyAll => (
                AuthorizationAction::Deny,
                vec![AuthorizationRuleDef::default()],
            ),
            FailClosed::Dropped => return None,
        };
        Some(AuthorizationPolicyDef {
            name: placed.name,
            namespace: placed.namespace,
            selector: placed.selector,
            action,
            rules,
            fail_closed: true,
            origin: origin.clone(),
        })
    }
}

/// Where a policy applies: all that is needed to apply it fail-closed.
struct Placement {
    name: String,
    namespace: String,
    selector: BTreeMap<String, String>,
}

fn placement(
    metadata: &ObjectMeta,
    selector: Option<&PeerWorkloadSelector>,
) -> Result<Placement, FieldError> {
    let (name, namespace) = name_and_namespace(
        metadata.name.as_ref(),
        metadata.namespace.as_ref(),
        check_dns1123_subdomain,
    )?;
    let selector = selector.map(|s| s.match_labels.clone()).unwrap_or_default();
    check_labels("spec.selector.matchLabels", &selector)?;
    Ok(Placement {
        name,
        namespace,
        selector,
    })
}

/// Validates one AuthorizationPolicy document, failing closed (module docs).
pub fn validate_authorization_policy(
    document: &AuthorizationPolicyDocument,
    origin: &DocumentRef,
) -> AuthorizationOutcome {
    let placed = match document {
        AuthorizationPolicyDocument::Parsed(policy) => {
            placement(&policy.metadata, policy.spec.selector.as_ref())
        }
        AuthorizationPolicyDocument::Unparsed(unparsed) => {
            placement(&unparsed.metadata, unparsed.selector.as_ref())
        }
    };
    let placed = match placed {
        Ok(placed) => placed,
        Err(err) => {
            return AuthorizationOutcome {
                policy: None,
                error: Some(err.at(origin)),
            };
        }
    };
    let (fail_closed, field, reason) = match document {
        AuthorizationPolicyDocument::Parsed(policy) => match validate_spec(&policy.spec) {
            Ok((action, rules)) => {
                return AuthorizationOutcome {
                    policy: Some(AuthorizationPolicyDef {
                        name: placed.name,
                        namespace: placed.namespace,
                        selector: placed.selector,
                        action,
                        rules,
                        fail_closed: false,
                        origin: origin.clone(),
                    }),
                    error: None,
                };
            }
            Err(err) => (
                FailClosed::for_action(policy.spec.action),
                Some(err.field),
                err.reason,
            ),
        },
        AuthorizationPolicyDocument::Unparsed(unparsed) => (
            FailClosed::for_written_action(unparsed.action.as_ref()),
            unparsed.field.clone(),
            unparsed.reason.clone(),
        ),
    };
    let reason = format!("{reason}{}", fail_closed.consequence());
    let error = match field {
        Some(field) => Error::Field {
            at: Box::new(origin.clone()),
            field,
            reason,
        },
        None => Error::Document {
            at: Box::new(origin.clone()),
            reason,
        },
    };
    AuthorizationOutcome {
        policy: fail_closed.stand_in(placed, origin),
        error: Some(error),
    }
}

/// The action and rules of a spec whose placement is already checked.
fn validate_spec(
    spec: &AuthorizationPolicySpec,
) -> Result<(AuthorizationAction, Vec<AuthorizationRuleDef>), FieldError> {
    if spec.provider.is_some() {
        return Err(FieldError::new(
            "spec.provider",
            "is not supported by Knit (external authorizers)",
        ));
    }
    let attachment = "is not supported by Knit: select workloads with spec.selector instead";
    if spec.target_ref.is_some() {
        return Err(FieldError::new("spec.targetRef", attachment));
    }
    if !spec.target_refs.is_empty() {
        return Err(FieldError::new("spec.targetRefs", attachment));
    }
    let action = match spec.action {
        None | Some(PolicyAction::Allow) => AuthorizationAction::Allow,
        Some(PolicyAction::Deny) => AuthorizationAction::Deny,
        Some(PolicyAction::Audit) => AuthorizationAction::Audit,
        Some(PolicyAction::Custom) => {
            return Err(FieldError::new(
                "spec.action",
                "CUSTOM is not supported by Knit (external authorizers); use ALLOW, DENY or AUDIT",
            ));
        }
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| validate_rule(&format!("spec.rules[{index}]"), rule))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((action, rules))
}

fn validate_rule(field: &str, rule: &PolicyRule) -> Result<AuthorizationRuleDef, FieldError> {
    let mut from = Vec::with_capacity(rule.from.len());
    for (index, entry) in rule.from.iter().enumerate() {
        let field = format!("{field}.from[{index}].source");
        let Some(source) = &entry.source else {
            return Err(FieldError::new(field, "must be set"));
        };
        from.push(validate_source(&field, source)?);
    }
    let mut to = Vec::with_capacity(rule.to.len());
    for (index, entry) in rule.to.iter().enumerate() {
        let field = format!("{field}.to[{index}].operation");
        let Some(operation) = &entry.operation else {
            return Err(FieldError::new(field, "must be set"));
        };
        to.push(validate_operation(&field, operation)?);
    }
    let when = rule
        .when
        .iter()
        .enumerate()
        .map(|(index, condition)| validate_condition(&format!("{field}.when[{index}]"), condition))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthorizationRuleDef { from, to, when })
}

fn validate_source(field: &str, source: &RuleSource) -> Result<AuthorizationSourceDef, FieldError> {
    let request_authentication = "is not supported by Knit (it needs request authentication, \
                                  such as JWT); use principals for peer identities";
    let forwarded = "is not supported by Knit (it trusts forwarding headers); \
                     use ipBlocks for the connection's source";
    let unsupported = [
        (
            "requestPrincipals",
            &source.request_principals,
            request_authentication,
        ),
        (
            "notRequestPrincipals",
            &source.not_request_principals,
            request_authentication,
        ),
        ("remoteIpBlocks", &source.remote_ip_blocks, forwarded),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks, forwarded),
    ];
    if let Some((name, _, reason)) = unsupported.iter().find(|(_, list, _)| !list.is_empty()) {
        return Err(FieldError::new(format!("{field}.{name}"), *reason));
    }
    let list = |name: &str, values: &[String], check: fn(&str) -> Result<String, String>| {
        checked_list(&format!("{field}.{name}"), values, check)
    };
    let source = AuthorizationSourceDef {
        principals: list("principals", &source.principals, principal)?,
        not_principals: list("notPrincipals", &source.not_principals, principal)?,
        namespaces: list("namespaces", &source.namespaces, pattern)?,
        not_namespaces: list("notNamespaces", &source.not_namespaces, pattern)?,
        ip_blocks: list("ipBlocks", &source.ip_blocks, ip_block)?,
        not_ip_blocks: list("notIpBlocks", &source.not_ip_blocks, ip_block)?,
    };
    if source == AuthorizationSourceDef::default() {
        return Err(FieldError::new(
            field,
            "must set at least one of principals, notPrincipals, namespaces, notNamespaces, \
             ipBlocks, notIpBlocks",
        ));
    }
    Ok(source)
}

fn validate_operation(
    field: &str,
    operation: &RuleOperation,
) -> Result<AuthorizationOperationDef, FieldError> {
    let list =
        |name: &str, values: &[String]| checked_list(&format!("{field}.{name}"), values, pattern);
    let paths = |name: &str, values: &[String]| {
        checked_list(&format!("{field}.{name}"), values, path_pattern)
    };
    let ports = |name: &str, values: &[IntOrString]| {
        values
            .iter()
            .enumerate()
            .map(|(index, value)| operation_port(&format!("{field}.{name}[{index}]"), value))
            .collect::<Result<Vec<u16>, FieldError>>()
    };
    let operation = AuthorizationOperationDef {
        hosts: list("hosts", &operation.hosts)?,
        not_hosts: list("notHosts", &operation.not_hosts)?,
        ports: ports("ports", &operation.ports)?,
        not_ports: ports("notPorts", &operation.not_ports)?,
        methods: list("methods", &operation.methods)?,
        not_methods: list("notMethods", &operation.not_methods)?,
        paths: paths("paths", &operation.paths)?,
        not_paths: paths("notPaths", &operation.not_paths)?,
    };
    if operation == AuthorizationOperationDef::default() {
        return Err(FieldError::new(
            field,
            "must set at least one of hosts, notHosts, ports, notPorts, methods, notMethods, \
             paths, notPaths",
        ));
    }
    Ok(operation)
}

/// A `when` key Knit evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConditionKey {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// The header name, lowercase.
    RequestHeader(String),
}

impl ConditionKey {
    fn parse(key: &str) -> Result<ConditionKey, String> {
        match key {
            "source.ip" => return Ok(ConditionKey::SourceIp),
            "source.namespace" => return Ok(ConditionKey::SourceNamespace),
            "source.principal" => return Ok(ConditionKey::SourcePrincipal),
            "destination.ip" => return Ok(ConditionKey::DestinationIp),
            "destination.port" => return Ok(ConditionKey::DestinationPort),
            _ => {}
        }
        let header = key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'));
        match header {
            Some("") => Err(format!("{key:?} names no header")),
            Some(name) if name.bytes().all(is_token_byte) => {
                Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase()))
            }
            Some(name) => Err(format!("{name:?} is not a valid HTTP header name")),
            None => Err(format!(
                "{key:?} is not supported; supported keys: {SUPPORTED_CONDITION_KEYS}"
            )),
        }
    }

    /// The key as sent to proxies: header names in lowercase, since HTTP
    /// header names are case-insensitive.
    fn canonical(&self) -> String {
        match self {
            ConditionKey::SourceIp => "source.ip".to_owned(),
            ConditionKey::SourceNamespace => "source.namespace".to_owned(),
            ConditionKey::SourcePrincipal => "source.principal".to_owned(),
            ConditionKey::DestinationIp => "destination.ip".to_owned(),
            ConditionKey::DestinationPort => "destination.port".to_owned(),
            ConditionKey::RequestHeader(name) => format!("request.headers[{name}]"),
        }
    }

    fn value_check(&self) -> fn(&str) -> Result<String, String> {
        match self {
            ConditionKey::SourceIp | ConditionKey::DestinationIp => ip_block,
            ConditionKey::SourcePrincipal => principal,
            ConditionKey::DestinationPort => port_value,
            ConditionKey::SourceNamespace | ConditionKey::RequestHeader(_) => pattern,
        }
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn validate_condition(
    field: &str,
    condition: &RuleCondition,
) -> Result<AuthorizationConditionDef, FieldError> {
    if condition.key.is_empty() {
        return Err(FieldError::new(format!("{field}.key"), "must be set"));
    }
    let key = ConditionKey::parse(&condition.key)
        .map_err(|reason| FieldError::new(format!("{field}.key"), reason))?;
    if condition.values.is_empty() && condition.not_values.is_empty() {
        return Err(FieldError::new(field, "must set values or notValues"));
    }
    let check = key.value_check();
    Ok(AuthorizationConditionDef {
        key: key.canonical(),
        values: checked_list(&format!("{field}.values"), &condition.values, check)?,
        not_values: checked_list(&format!("{field}.notValues"), &condition.not_values, check)?,
    })
}

/// Each value checked and written canonically, naming `field[index]` on
/// the first bad one.
fn checked_list(
    field: &str,
    values: &[String],
    check: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, FieldError> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            check(value).map_err(|reason| FieldError::new(format!("{field}[{index}]"), reason))
        })
        .collect()
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (present).
fn pattern(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let stars = value.matches('*').count();
    let well_placed = stars == 0
        || value == "*"
        || (stars == 1 && (value.starts_with('*') || value.ends_with('*')));
    if !well_placed {
        return Err(format!(
            "{value:?} has '*' in the wrong place: a pattern is exact, \"prefix*\", \"*suffix\" \
             or \"*\""
        ));
    }
    Ok(value.to_owned())
}

/// A path pattern, in the terms proxies compare normalized paths in:
/// ASCII without control characters, well-formed escapes, no query or
/// fragment (those are never matched).
fn path_pattern(value: &str) -> Result<String, String> {
    let value = pattern(value)?;
    let bytes = value.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        match byte {
            b'?' | b'#' => {
                return Err(format!(
                    "{value:?} contains {:?}: paths are matched without the query and fragment",
                    char::from(*byte)
                ));
            }
            b'%' => {
                let hex = bytes.get(at + 1..at + 3).and_then(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                });
                match hex {
                    None => {
                        return Err(format!(
                            "{value:?} has a '%' not followed by two hex digits"
                        ));
                    }
                    Some(decoded) if decoded < 0x20 || decoded == 0x7f => {
                        return Err(format!("{value:?} escapes a control character"));
                    }
                    Some(_) => {}
                }
            }
            b if !b.is_ascii() || b.is_ascii_control() => {
                return Err(format!(
                    "{value:?} must be ASCII without control characters (percent-encode the rest)"
                ));
            }
            _ => {}
        }
    }
    Ok(value)
}

/// A principal pattern: a SPIFFE ID without its scheme.
fn principal(value: &str) -> Result<String, String> {
    let value = pattern(value)?;
    if value
        .get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://"))
    {
        return Err(format!(
            "{value:?} must be written without the spiffe:// scheme: {:?}",
            &value[9..]
        ));
    }
    Ok(value)
}

/// An IP address or CIDR block, written canonically: the address as Rust
/// prints it, a block with its host bits cleared (`10.1.2.3/8` is
/// `10.0.0.0/8`, the range it matches).
fn ip_block(value: &str) -> Result<String, String> {
    canonical_ip_block(value).ok_or_else(|| {
        format!("{value:?} is not an IP address or CIDR block (such as 10.0.0.0/8 or fd00::/8)")
    })
}

fn canonical_ip_block(value: &str) -> Option<String> {
    let Some((address, prefix)) = value.split_once('/') else {
        return value.parse::<IpAddr>().ok().map(|ip| ip.to_string());
    };
    let address: IpAddr = address.parse().ok()?;
    // Digits only: `parse` would also take a sign.
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u32 = prefix.parse().ok()?;
    let network = match address {
        IpAddr::V4(v4) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
        _ => return None,
    };
    Some(format!("{network}/{prefix}"))
}

/// A port written as a string (`when` values, Istio's `ports`).
fn port_number(value: &str) -> Result<u16, String> {
    let digits = !value.is_empty() && value.len() <= 5 && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u16>() {
        Ok(port) if digits && port != 0 => Ok(port),
        _ => Err(format!("{value:?} is not a port number (1-65535)")),
    }
}

fn port_value(value: &str) -> Result<String, String> {
    port_number(value).map(|port| port.to_string())
}

fn operation_port(field: &str, value: &IntOrString) -> Result<u16, FieldError> {
    match value {
        IntOrString::Int(number) => valid_port(field, i64::from(*number)),
        IntOrString::String(text) => {
            port_number(text).map_err(|reason| FieldError::new(field, reason))
        }
    }
}

#[cfg(test)]
#[path = "validate_authz_tests.rs"]
mod tests;
