//! The decision for one request or connection, with Istio's semantics:
//!
//! 1. AUDIT policies that match are reported; they never refuse anything.
//! 2. Any matching DENY policy denies.
//! 3. If there is an ALLOW policy, one of them must match, else the
//!    request is denied. Without ALLOW policies it is allowed.
//!
//! A policy matches when one of its rules does; a policy without rules
//! matches nothing (so an ALLOW policy without rules denies everything).
//!
//! Some attributes can be missing: the identity of a plaintext client,
//! and everything HTTP on a TCP connection or tunnel. A field that needs
//! a missing attribute is decided so that the gap never helps a client:
//! - `principals` and `namespaces` (and the `source.principal` and
//!   `source.namespace` values) never match a missing identity, whatever
//!   the action: a plaintext client is nobody;
//! - every other field needing a missing attribute — `not_principals`,
//!   `not_namespaces` and their `not_values`, and the HTTP fields, plain
//!   or `not_` — does not match in ALLOW and AUDIT policies (a gap never
//!   becomes an allow) and matches in DENY policies (fail closed).
//!
//! A header that appears more than once satisfies a condition in a DENY
//! policy when one of its values does, and in the others only when all of
//! them do, for the same reason. A missing header fails `values` and
//! satisfies `not_values`.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::matchers::{IpBlock, StringMatch};
use super::normalize::split_authority;
use super::policy::{
    Attribute, AuthorizationPolicies, Condition, Operation, Policy, Rule, Source, Values,
};
use crate::identity::SpiffeId;

/// What a denial names when the request matched no ALLOW policy.
pub const NO_ALLOW_POLICY_MATCHED: &str = "no ALLOW policy matched";

/// Everything a decision may look at.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// The peer's verified identity (mutual TLS); never taken from headers.
    pub source: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    /// This pod's address the client reached.
    pub destination_ip: IpAddr,
    /// The app (target) port.
    pub destination_port: u16,
    /// `None` for TCP connections and tunnels.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP side of a request, already normalized.
#[derive(Debug)]
pub struct HttpAttributes<'a> {
    method: &'a str,
    /// The authority as sent, without a trailing dot on the host.
    authority: Cow<'a, str>,
    /// The host alone.
    host: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
}

impl<'a> HttpAttributes<'a> {
    /// `path` is the normalized path without the query; `authority` the
    /// request's (see `normalize::request_authority`).
    pub fn new(method: &'a str, authority: &'a str, path: &'a str, headers: &'a HeaderMap) -> Self {
        let (authority, host) = split_authority(authority);
        HttpAttributes {
            method,
            authority,
            host,
            path,
            headers,
        }
    }

    pub fn method(&self) -> &str {
        self.method
    }

    pub fn path(&self) -> &str {
        self.path
    }

    fn host_matches(&self, pattern: &StringMatch) -> bool {
        pattern.matches_ignore_ascii_case(&self.authority)
            || pattern.matches_ignore_ascii_case(self.host)
    }
}

impl Attributes<'_> {
    /// The SPIFFE ID without its scheme, as policies write principals.
    fn principal(&self) -> Option<&str> {
        self.source
            .map(|id| id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str()))
    }

    fn namespace(&self) -> Option<&str> {
        self.source.map(SpiffeId::namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow,
    /// `policy` is the `namespace/name` of the DENY policy that matched,
    /// or [`NO_ALLOW_POLICY_MATCHED`].
    Deny {
        policy: &'p str,
    },
}

#[derive(Debug)]
pub struct Verdict<'p> {
    pub decision: Decision<'p>,
    /// AUDIT policies that matched, by `namespace/name`.
    pub audited: Vec<&'p str>,
}

impl AuthorizationPolicies {
    /// Decides on `request`. Without policies this is one check and no
    /// allocation.
    pub fn evaluate<'p>(&'p self, request: &Attributes<'_>) -> Verdict<'p> {
        let mut audited = Vec::new();
        if self.is_empty() {
            return Verdict {
                decision: Decision::Allow,
                audited,
            };
        }
        // AUDIT reads gaps as ALLOW does: a report never rests on a guess.
        let as_allow = Matcher {
            request,
            fail_closed: false,
        };
        let as_deny = Matcher {
            request,
            fail_closed: true,
        };
        for policy in &self.audit {
            if as_allow.policy(policy) {
                audited.push(policy.name.as_str());
            }
        }
        let decision = if let Some(policy) = self.deny.iter().find(|p| as_deny.policy(p)) {
            Decision::Deny {
                policy: &policy.name,
            }
        } else if self.allow.is_empty() || self.allow.iter().any(|p| as_allow.policy(p)) {
            Decision::Allow
        } else {
            Decision::Deny {
                policy: NO_ALLOW_POLICY_MATCHED,
            }
        };
        Verdict { decision, audited }
    }
}

/// Matches one request against the policies of one action.
struct Matcher<'r, 'a> {
    request: &'r Attributes<'a>,
    /// Whether a field needing a missing attribute counts as a match
    /// (DENY), or not (ALLOW, AUDIT).
    fail_closed: bool,
}

impl Matcher<'_, '_> {
    fn policy(&self, policy: &Policy) -> bool {
        policy.rules.iter().any(|rule| self.rule(rule))
    }

    fn rule(&self, rule: &Rule) -> bool {
        (rule.from.is_empty() || rule.from.iter().any(|s| self.source(s)))
            && (rule.to.is_empty() || rule.to.iter().any(|o| self.operation(o)))
            && rule.when.iter().all(|c| self.condition(c))
    }

    fn source(&self, source: &Source) -> bool {
        let principal = self.request.principal();
        let namespace = self.request.namespace();
        let text = |m: &StringMatch, value: &str| m.matches(value);
        let ip = self.request.source_ip;
        let within = |block: &IpBlock| block.contains(ip);
        any_of(&source.principals, principal, false, text)
            && none_of(&source.not_principals, principal, self.fail_closed, text)
            && any_of(&source.namespaces, namespace, false, text)
            && none_of(&source.not_namespaces, namespace, self.fail_closed, text)
            && required(&source.ip_blocks, within)
            && excluded(&source.not_ip_blocks, within)
    }

    fn operation(&self, op: &Operation) -> bool {
        let port = self.request.destination_port;
        let is_port = |p: &u16| *p == port;
        if !(required(&op.ports, is_port) && excluded(&op.not_ports, is_port)) {
            return false;
        }
        if !op.has_http_fields() {
            return true;
        }
        // Every HTTP field needs what a TCP connection does not have.
        let Some(http) = &self.request.http else {
            return self.fail_closed;
        };
        let host = |m: &StringMatch| http.host_matches(m);
        let method = |m: &StringMatch| m.matches(http.method);
        let path = |m: &StringMatch| m.matches(http.path);
        required(&op.hosts, host)
            && excluded(&op.not_hosts, host)
            && required(&op.methods, method)
            && excluded(&op.not_methods, method)
            && required(&op.paths, path)
            && excluded(&op.not_paths, path)
    }

    fn condition(&self, cond: &Condition) -> bool {
        let request = self.request;
        match &cond.attribute {
            Attribute::SourceIp => self.holds(cond, Some(Value::Ip(request.source_ip))),
            Attribute::DestinationIp => self.holds(cond, Some(Value::Ip(request.destination_ip))),
            Attribute::DestinationPort => {
                self.holds(cond, Some(Value::Port(request.destination_port)))
            }
            Attribute::SourcePrincipal => self.holds(cond, request.principal().map(Value::Text)),
            Attribute::SourceNamespace => self.holds(cond, request.namespace().map(Value::Text)),
            Attribute::RequestHeader(name) => self.header_holds(cond, name),
        }
    }

    /// `value` is `None` when the attribute is missing (no identity).
    fn holds(&self, cond: &Condition, value: Option<Value<'_>>) -> bool {
        let values = cond.values.is_empty() || value.is_some_and(|v| cond.values.any_matches(v));
        let not_values = cond.not_values.is_empty()
            || value.map_or(self.fail_closed, |v| !cond.not_values.any_matches(v));
        values && not_values
    }

    fn header_holds(&self, cond: &Condition, name: &HeaderName) -> bool {
        let Some(http) = &self.request.http else {
            return self.fail_closed;
        };
        let holds_for = |value: Option<&HeaderValue>| {
            let values = cond.values.is_empty()
                || value.is_some_and(|v| header_value_matches(&cond.values, v));
            let not_values = cond.not_values.is_empty()
                || !value.is_some_and(|v| header_value_matches(&cond.not_values, v));
            values && not_values
        };
        let mut present = http.headers.get_all(name).iter().peekable();
        if present.peek().is_none() {
            holds_for(None)
        } else if self.fail_closed {
            present.any(|v| holds_for(Some(v)))
        } else {
            present.all(|v| holds_for(Some(v)))
        }
    }
}

/// A typed attribute value for a condition.
#[derive(Debug, Clone, Copy)]
enum Value<'v> {
    Ip(IpAddr),
    Port(u16),
    Text(&'v str),
}

impl Values {
    fn any_matches(&self, value: Value<'_>) -> bool {
        match (self, value) {
            (Values::Ips(blocks), Value::Ip(ip)) => blocks.iter().any(|b| b.contains(ip)),
            (Values::Ports(ports), Value::Port(port)) => ports.contains(&port),
            (Values::Strings(patterns), Value::Text(text)) => {
                patterns.iter().any(|m| m.matches(text))
            }
            // Compilation types values by their key; no other pair exists.
            _ => false,
        }
    }
}

/// A header value that is not UTF-8 matches only presence.
fn header_value_matches(values: &Values, value: &HeaderValue) -> bool {
    let Values::Strings(patterns) = values else {
        return false;
    };
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => patterns.iter().any(|m| m.matches(text)),
        Err(_) => patterns.contains(&StringMatch::Presence),
    }
}

/// A field whose attribute every request has: empty, or some pattern
/// matches.
fn required<P>(patterns: &[P], matches: impl Fn(&P) -> bool) -> bool {
    patterns.is_empty() || patterns.iter().any(matches)
}

/// A `not_` field whose attribute every request has: no pattern matches.
fn excluded<P>(patterns: &[P], matches: impl Fn(&P) -> bool) -> bool {
    !patterns.iter().any(matches)
}

/// A field on the identity: empty matches anything; a missing identity
/// counts as `when_missing`; otherwise some pattern must match.
fn any_of<P>(
    patterns: &[P],
    value: Option<&str>,
    when_missing: bool,
    matches: impl Fn(&P, &str) -> bool,
) -> bool {
    if patterns.is_empty() {
        return true;
    }
    match value {
        None => when_missing,
        Some(value) => patterns.iter().any(|p| matches(p, value)),
    }
}

/// A `not_` field on the identity: empty matches anything; a missing
/// identity counts as `when_missing`; otherwise no pattern may match.
fn none_of<P>(
    patterns: &[P],
    value: Option<&str>,
    when_missing: bool,
    matches: impl Fn(&P, &str) -> bool,
) -> bool {
    if patterns.is_empty() {
        return true;
    }
    match value {
        None => when_missing,
        Some(value) => !patterns.iter().any(|p| matches(p, value)),
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
