//! Computes the capture rules for a configuration and an address family; pure, no I/O.
//!
//! Inbound: PREROUTING sends TCP into `KNIT_INBOUND`, which lets excluded
//! interfaces, the proxy's own ports and the excluded ports through and sends
//! the included ports to `KNIT_IN_REDIRECT` (REDIRECT to the inbound port).
//! Only packets arriving from the network pass PREROUTING.
//!
//! Outbound: OUTPUT sends TCP into `KNIT_OUTPUT`. Packets the pod sends to
//! itself never pass PREROUTING, so this chain also decides which local
//! connections belong to the inbound side (see [`outbound_chain`]); the rest
//! is exempted or sent to `KNIT_REDIRECT` (REDIRECT to the outbound port).
//!
//! Both families get the same model; only the loopback block, the proxy's
//! inbound delivery source and which CIDRs apply differ.

use crate::config::{CaptureConfig, DNS_PORT, Selection};
use crate::family::Family;
use crate::rules::{
    BuiltinChain, Chain, Cidr, Jump, Match, Protocol, Rule, Ruleset, Table, Target,
};

/// Entry chain for traffic arriving at the pod.
pub const INBOUND_CHAIN: &str = "KNIT_INBOUND";
/// Chain that redirects captured inbound traffic to the proxy.
pub const INBOUND_REDIRECT_CHAIN: &str = "KNIT_IN_REDIRECT";
/// Entry chain for traffic the pod sends.
pub const OUTBOUND_CHAIN: &str = "KNIT_OUTPUT";
/// Chain that redirects captured outbound traffic to the proxy.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "KNIT_REDIRECT";

/// The nat rules of `family` that capture a pod's TCP for its proxy.
///
/// A chain is only created when something refers to it, so the set of chains
/// depends on the options (no inbound capture → no `KNIT_INBOUND`; nothing to
/// capture outbound in this family → no `KNIT_REDIRECT`).
/// Assumes `config` passed [`CaptureConfig::validate`].
pub fn plan(config: &CaptureConfig, family: Family) -> Ruleset {
    let inbound = inbound_chain(config);
    let outbound = outbound_chain(config, family);
    let captures_outbound = outbound
        .rules
        .iter()
        .any(|rule| rule.target == Target::Jump(OUTBOUND_REDIRECT_CHAIN.to_string()));

    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    if let Some(inbound) = inbound {
        chains.push(inbound);
        jumps.push(Jump {
            from: BuiltinChain::Prerouting,
            to: INBOUND_CHAIN.to_string(),
            matches: vec![Match::Protocol(Protocol::Tcp)],
            comment: "knit: inbound TCP enters knit capture".to_string(),
        });
    }
    // Always present: the outbound chain sends the proxy's calls to its own
    // pod here even when no inbound port is captured from the network.
    chains.push(redirect_chain(
        INBOUND_REDIRECT_CHAIN,
        config.inbound_port,
        "inbound",
    ));
    chains.push(outbound);
    if captures_outbound {
        chains.push(redirect_chain(
            OUTBOUND_REDIRECT_CHAIN,
            config.outbound_port,
            "outbound",
        ));
    }
    jumps.push(Jump {
        from: BuiltinChain::Output,
        to: OUTBOUND_CHAIN.to_string(),
        matches: vec![Match::Protocol(Protocol::Tcp)],
        comment: "knit: outbound TCP enters knit capture".to_string(),
    });
    Ruleset {
        family,
        table: Table::Nat,
        chains,
        jumps,
    }
}

fn rule(matches: Vec<Match>, target: Target, comment: String) -> Rule {
    Rule {
        matches,
        target,
        comment,
    }
}

fn tcp_port(port: u16) -> Vec<Match> {
    vec![Match::Protocol(Protocol::Tcp), Match::DestinationPort(port)]
}

/// `None` when no inbound port is captured, so PREROUTING is left alone.
fn inbound_chain(config: &CaptureConfig) -> Option<Chain> {
    // The proxy's own listener ports always pass: a connection addressed to
    // them must reach them untouched, never be redirected onto themselves.
    let mut bypassed: Vec<(u16, String)> = vec![
        (
            config.inbound_port,
            format!(
                "knit: proxy inbound port {} is never redirected to itself",
                config.inbound_port
            ),
        ),
        (
            config.outbound_port,
            format!(
                "knit: proxy outbound port {} is never captured as inbound",
                config.outbound_port
            ),
        ),
        (
            config.mesh_port,
            format!(
                "knit: proxy mesh port {} carries connections from peer proxies untouched",
                config.mesh_port
            ),
        ),
    ];
    for &port in &config.exclude_inbound_ports {
        if bypassed.iter().all(|(seen, _)| *seen != port) {
            bypassed.push((
                port,
                format!("knit: inbound port {port} is excluded from capture"),
            ));
        }
    }
    let is_bypassed = |port: u16| bypassed.iter().any(|(seen, _)| *seen == port);

    let captured_ports: Option<Vec<u16>> = match &config.include_inbound_ports {
        Selection::All => None,
        // Exclusions win over the include list, so excluded ports get no rule.
        Selection::Only(ports) => Some(
            ports
                .iter()
                .copied()
                .filter(|&port| !is_bypassed(port))
                .collect(),
        ),
    };
    if captured_ports.as_ref().is_some_and(Vec::is_empty) {
        return None;
    }

    let mut rules: Vec<Rule> = config
        .exclude_interfaces
        .iter()
        .map(|name| {
            rule(
                vec![Match::InInterface(name.clone())],
                Target::Return,
                format!("knit: traffic arriving on interface {name} is excluded from capture"),
            )
        })
        .collect();
    let capture = Target::Jump(INBOUND_REDIRECT_CHAIN.to_string());
    match captured_ports {
        None => {
            rules.extend(
                bypassed
                    .into_iter()
                    .map(|(port, comment)| rule(tcp_port(port), Target::Return, comment)),
            );
            rules.push(rule(
                vec![Match::Protocol(Protocol::Tcp)],
                capture,
                "knit: capture all other inbound TCP".to_string(),
            ));
        }
        // With a list nothing else is captured, so the bypass rules would be dead.
        Some(ports) => rules.extend(ports.into_iter().map(|port| {
            rule(
                tcp_port(port),
                capture.clone(),
                format!("knit: inbound port {port} is captured"),
            )
        })),
    }
    Some(Chain {
        name: INBOUND_CHAIN.to_string(),
        rules,
    })
}

/// The outbound chain. Rules are evaluated in order, and the order is the
/// design: the first five decide every connection that stays inside the pod
/// (leaves via `lo`), the rest only see traffic that may leave it.
///
/// 1. Source 127.0.0.6 (::6) over lo → RETURN: the proxy delivering an inbound
///    connection to the app. It runs as the proxy's uid, so without this rule
///    rule 2 would send it back to the inbound port, forever.
/// 2. Proxy uid, over lo, to a non-loopback address → inbound side: the
///    proxy calling its own pod's IP after balancing (a pod calling its own
///    service). Local packets never pass PREROUTING, so this is the only way
///    the connection reaches the inbound listener and gets inbound policy.
/// 3. The same for the proxy's gid.
/// 4. Any other traffic of the proxy uid → RETURN: its upstream connections
///    must leave as they are, or they would be captured again.
/// 5. The same for the proxy's gid.
/// 6. Loopback destinations → RETURN (container-to-container over localhost
///    and anything talking to the proxy's admin ports).
/// 7. Excluded interfaces, DNS, excluded ports, excluded CIDRs → RETURN;
///    then included destinations → `KNIT_REDIRECT`, and nothing else.
///
/// Istio additionally returns `-o lo -m owner ! --uid-owner UID` right after
/// rule 2, which sends an app's connection to its own pod IP straight to the
/// app, bypassing the proxy on both sides. Knit deliberately omits it: a pod
/// calling its own pod IP is captured like any other destination (outbound
/// side), the proxy's onward connection to the pod IP is caught by rule 2
/// (inbound side), and the inbound delivery from 127.0.0.6 is released by
/// rule 1 — through the proxy both ways, without a loop.
fn outbound_chain(config: &CaptureConfig, family: Family) -> Chain {
    let loopback = family.loopback();
    let lo = || Match::OutInterface("lo".to_string());
    let in_redirect = Target::Jump(INBOUND_REDIRECT_CHAIN.to_string());
    let uid = config.proxy_uid;
    let gid = config.proxy_gid;
    let source = family.inbound_delivery_source();
    let mut rules = vec![
        rule(
            vec![Match::Source(source), lo()],
            Target::Return,
            format!(
                "knit: the proxy delivers inbound connections to the app from {}; \
                 never capture them again",
                source.address()
            ),
        ),
        rule(
            vec![Match::NotDestination(loopback), lo(), Match::UidOwner(uid)],
            in_redirect.clone(),
            format!(
                "knit: proxy uid {uid} calling its own pod IP enters the inbound side; \
                 local packets never pass PREROUTING"
            ),
        ),
        rule(
            vec![Match::NotDestination(loopback), lo(), Match::GidOwner(gid)],
            in_redirect,
            format!(
                "knit: proxy gid {gid} calling its own pod IP enters the inbound side; \
                 local packets never pass PREROUTING"
            ),
        ),
        rule(
            vec![Match::UidOwner(uid)],
            Target::Return,
            format!(
                "knit: proxy uid {uid} is exempt so its upstream connections are not captured again"
            ),
        ),
        rule(
            vec![Match::GidOwner(gid)],
            Target::Return,
            format!(
                "knit: proxy gid {gid} is exempt so its upstream connections are not captured again"
            ),
        ),
        rule(
            vec![Match::Destination(loopback)],
            Target::Return,
            "knit: loopback destinations are never captured".to_string(),
        ),
    ];
    for name in &config.exclude_interfaces {
        rules.push(rule(
            vec![Match::OutInterface(name.clone())],
            Target::Return,
            format!("knit: traffic leaving through interface {name} is excluded from capture"),
        ));
    }
    let mut exempt_ports: Vec<(u16, String)> = Vec::new();
    if !config.capture_dns {
        exempt_ports.push((
            DNS_PORT,
            "knit: DNS over TCP port 53 is not captured (pass --capture-dns to capture it)"
                .to_string(),
        ));
    }
    for &port in &config.exclude_outbound_ports {
        if exempt_ports.iter().all(|(seen, _)| *seen != port) {
            exempt_ports.push((
                port,
                format!("knit: outbound port {port} is excluded from capture"),
            ));
        }
    }
    rules.extend(
        exempt_ports
            .into_iter()
            .map(|(port, comment)| rule(tcp_port(port), Target::Return, comment)),
    );
    let of_family = |cidr: &&Cidr| cidr.family() == family;
    for cidr in config.exclude_outbound_cidrs.iter().filter(of_family) {
        rules.push(rule(
            vec![Match::Destination(*cidr)],
            Target::Return,
            format!("knit: destination {cidr} is excluded from capture"),
        ));
    }
    let redirect = Target::Jump(OUTBOUND_REDIRECT_CHAIN.to_string());
    match &config.include_outbound_cidrs {
        Selection::All => rules.push(rule(
            vec![Match::Protocol(Protocol::Tcp)],
            redirect,
            "knit: capture all other outbound TCP".to_string(),
        )),
        Selection::Only(cidrs) => {
            for cidr in cidrs.iter().filter(of_family) {
                rules.push(rule(
                    vec![Match::Destination(*cidr)],
                    redirect.clone(),
                    format!("knit: destination {cidr} is included in capture"),
                ));
            }
            // Falling off the end of the chain would return too; the explicit
            // rule makes the include-list semantics visible in the rule dump.
            rules.push(rule(
                vec![],
                Target::Return,
                "knit: destinations outside --include-outbound-cidrs are not captured".to_string(),
            ));
        }
    }
    Chain {
        name: OUTBOUND_CHAIN.to_string(),
        rules,
    }
}

fn redirect_chain(name: &str, port: u16, direction: &str) -> Chain {
    Chain {
        name: name.to_string(),
        rules: vec![rule(
            // REDIRECT's --to-ports is only valid together with -p tcp.
            vec![Match::Protocol(Protocol::Tcp)],
            Target::Redirect { to_port: port },
            format!("knit: redirect to the proxy {direction} listener on port {port}"),
        )],
    }
}

#[cfg(test)]
mod tests;
