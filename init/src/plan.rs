//! Computes the capture rules for a configuration; pure, no I/O.
//!
//! Inbound: PREROUTING sends TCP into `KNIT_INBOUND`, which lets the proxy's own
//! ports and the excluded ports through and sends the rest to `KNIT_IN_REDIRECT`
//! (REDIRECT to the inbound port). Only packets arriving from the network pass
//! PREROUTING, so this never sees the pod's own connections.
//!
//! Outbound: OUTPUT sends TCP into `KNIT_OUTPUT`, which exempts the proxy's uid
//! and gid (its upstream connections must leave as they are, or they would be
//! captured again and loop) and loopback destinations, and sends the rest to
//! `KNIT_REDIRECT` (REDIRECT to the outbound port).

use crate::config::CaptureConfig;
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

/// The IPv4 nat rules that capture a pod's TCP for its proxy.
///
/// Assumes `config` passed [`CaptureConfig::validate`].
pub fn plan(config: &CaptureConfig) -> Ruleset {
    Ruleset {
        table: Table::Nat,
        chains: vec![
            inbound_chain(config),
            redirect_chain(INBOUND_REDIRECT_CHAIN, config.inbound_port, "inbound"),
            outbound_chain(config),
            redirect_chain(OUTBOUND_REDIRECT_CHAIN, config.outbound_port, "outbound"),
        ],
        jumps: vec![
            Jump {
                from: BuiltinChain::Prerouting,
                to: INBOUND_CHAIN.to_string(),
                matches: vec![Match::Protocol(Protocol::Tcp)],
                comment: "knit: inbound TCP enters knit capture".to_string(),
            },
            Jump {
                from: BuiltinChain::Output,
                to: OUTBOUND_CHAIN.to_string(),
                matches: vec![Match::Protocol(Protocol::Tcp)],
                comment: "knit: outbound TCP enters knit capture".to_string(),
            },
        ],
    }
}

fn inbound_chain(config: &CaptureConfig) -> Chain {
    // The proxy's own listener ports come first: a connection addressed to
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
    ];
    for &port in &config.exclude_inbound_ports {
        if bypassed.iter().all(|(seen, _)| *seen != port) {
            bypassed.push((
                port,
                format!("knit: inbound port {port} is excluded from capture"),
            ));
        }
    }

    let mut rules: Vec<Rule> = bypassed
        .into_iter()
        .map(|(port, comment)| Rule {
            matches: vec![Match::Protocol(Protocol::Tcp), Match::DestinationPort(port)],
            target: Target::Return,
            comment,
        })
        .collect();
    rules.push(Rule {
        matches: vec![Match::Protocol(Protocol::Tcp)],
        target: Target::Jump(INBOUND_REDIRECT_CHAIN.to_string()),
        comment: "knit: capture all other inbound TCP".to_string(),
    });
    Chain {
        name: INBOUND_CHAIN.to_string(),
        rules,
    }
}

fn outbound_chain(config: &CaptureConfig) -> Chain {
    let rules = vec![
        Rule {
            matches: vec![Match::UidOwner(config.proxy_uid)],
            target: Target::Return,
            comment: format!(
                "knit: proxy uid {} is exempt so its upstream connections are not captured again",
                config.proxy_uid
            ),
        },
        Rule {
            matches: vec![Match::GidOwner(config.proxy_gid)],
            target: Target::Return,
            comment: format!(
                "knit: proxy gid {} is exempt so its upstream connections are not captured again",
                config.proxy_gid
            ),
        },
        // Covers everything sent over `lo` to a loopback address too: such
        // packets always carry a 127.0.0.0/8 destination.
        Rule {
            matches: vec![Match::Destination(Cidr::ipv4_loopback())],
            target: Target::Return,
            comment: "knit: loopback destinations are never captured".to_string(),
        },
        Rule {
            matches: vec![Match::Protocol(Protocol::Tcp)],
            target: Target::Jump(OUTBOUND_REDIRECT_CHAIN.to_string()),
            comment: "knit: capture all other outbound TCP".to_string(),
        },
    ];
    Chain {
        name: OUTBOUND_CHAIN.to_string(),
        rules,
    }
}

fn redirect_chain(name: &str, port: u16, direction: &str) -> Chain {
    Chain {
        name: name.to_string(),
        rules: vec![Rule {
            // REDIRECT's --to-ports is only valid together with -p tcp.
            matches: vec![Match::Protocol(Protocol::Tcp)],
            target: Target::Redirect { to_port: port },
            comment: format!("knit: redirect to the proxy {direction} listener on port {port}"),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{CHAIN_PREFIX, MAX_COMMENT_LEN};

    fn chain<'a>(ruleset: &'a Ruleset, name: &str) -> &'a Chain {
        ruleset
            .chains
            .iter()
            .find(|chain| chain.name == name)
            .unwrap_or_else(|| panic!("chain {name} missing from {ruleset:#?}"))
    }

    fn returned_ports(chain: &Chain) -> Vec<u16> {
        chain
            .rules
            .iter()
            .filter(|rule| rule.target == Target::Return)
            .filter_map(|rule| {
                rule.matches.iter().find_map(|m| match m {
                    Match::DestinationPort(port) => Some(*port),
                    _ => None,
                })
            })
            .collect()
    }

    #[test]
    fn inbound_bypasses_proxy_ports_then_excluded_ports_then_captures_the_rest() {
        let cases: &[(CaptureConfig, &[u16])] = &[
            (
                CaptureConfig::default(),
                &[15006, 15001, 15000, 15021, 15090],
            ),
            (
                CaptureConfig {
                    exclude_inbound_ports: vec![],
                    ..CaptureConfig::default()
                },
                &[15006, 15001],
            ),
            (
                CaptureConfig {
                    inbound_port: 16006,
                    outbound_port: 16001,
                    exclude_inbound_ports: vec![22, 16006, 8443, 16001],
                    ..CaptureConfig::default()
                },
                &[16006, 16001, 22, 8443],
            ),
        ];
        for (config, expected) in cases {
            let ruleset = plan(config);
            let inbound = chain(&ruleset, INBOUND_CHAIN);
            assert_eq!(returned_ports(inbound), *expected, "{config:?}");
            let last = inbound.rules.last().expect("inbound chain has rules");
            assert_eq!(
                last.target,
                Target::Jump(INBOUND_REDIRECT_CHAIN.to_string())
            );
            assert_eq!(last.matches, vec![Match::Protocol(Protocol::Tcp)]);
        }
    }

    #[test]
    fn redirect_chains_point_at_the_configured_ports() {
        let config = CaptureConfig {
            inbound_port: 17006,
            outbound_port: 17001,
            ..CaptureConfig::default()
        };
        let ruleset = plan(&config);
        for (name, port) in [
            (INBOUND_REDIRECT_CHAIN, 17006),
            (OUTBOUND_REDIRECT_CHAIN, 17001),
        ] {
            let rules = &chain(&ruleset, name).rules;
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0].target, Target::Redirect { to_port: port });
            assert_eq!(rules[0].matches, vec![Match::Protocol(Protocol::Tcp)]);
        }
    }

    #[test]
    fn outbound_exempts_proxy_uid_gid_and_loopback_before_capturing() {
        let cases = [(1337, 1337), (2000, 3000), (0, 65534)];
        for (uid, gid) in cases {
            let config = CaptureConfig {
                proxy_uid: uid,
                proxy_gid: gid,
                ..CaptureConfig::default()
            };
            let ruleset = plan(&config);
            let outbound = chain(&ruleset, OUTBOUND_CHAIN);
            let exemptions: Vec<&Match> = outbound
                .rules
                .iter()
                .filter(|rule| rule.target == Target::Return)
                .flat_map(|rule| &rule.matches)
                .collect();
            assert_eq!(
                exemptions,
                vec![
                    &Match::UidOwner(uid),
                    &Match::GidOwner(gid),
                    &Match::Destination(Cidr::ipv4_loopback())
                ]
            );
            let last = outbound.rules.last().expect("outbound chain has rules");
            assert_eq!(
                last.target,
                Target::Jump(OUTBOUND_REDIRECT_CHAIN.to_string())
            );
        }
    }

    #[test]
    fn jumps_enter_the_entry_chains_for_tcp_only() {
        let ruleset = plan(&CaptureConfig::default());
        let jumps: Vec<(BuiltinChain, &str, &[Match])> = ruleset
            .jumps
            .iter()
            .map(|jump| (jump.from, jump.to.as_str(), jump.matches.as_slice()))
            .collect();
        let tcp = [Match::Protocol(Protocol::Tcp)];
        assert_eq!(
            jumps,
            vec![
                (BuiltinChain::Prerouting, INBOUND_CHAIN, &tcp[..]),
                (BuiltinChain::Output, OUTBOUND_CHAIN, &tcp[..]),
            ]
        );
    }

    #[test]
    fn every_rule_is_well_formed() {
        let configs = [
            CaptureConfig::default(),
            CaptureConfig {
                proxy_uid: u32::MAX,
                proxy_gid: u32::MAX,
                outbound_port: u16::MAX,
                inbound_port: u16::MAX - 1,
                exclude_inbound_ports: vec![1, 65535],
            },
        ];
        for config in configs {
            let ruleset = plan(&config);
            let names: Vec<&str> = ruleset.chains.iter().map(|c| c.name.as_str()).collect();
            let rules = ruleset
                .chains
                .iter()
                .flat_map(|c| c.rules.iter().cloned())
                .chain(ruleset.jumps.iter().map(Jump::rule));
            for rule in rules {
                // Comments are quoted verbatim in the restore text and kept by the kernel.
                assert!(rule.comment.starts_with("knit: "), "{rule:?}");
                assert!(rule.comment.len() <= MAX_COMMENT_LEN, "{rule:?}");
                assert!(!rule.comment.contains(['"', '\\', '\n']), "{rule:?}");
                if let Target::Jump(to) = &rule.target {
                    assert!(
                        names.contains(&to.as_str()),
                        "{rule:?} jumps outside the ruleset"
                    );
                }
                if matches!(rule.target, Target::Redirect { .. })
                    || rule
                        .matches
                        .iter()
                        .any(|m| matches!(m, Match::DestinationPort(_)))
                {
                    assert_eq!(
                        rule.matches.first(),
                        Some(&Match::Protocol(Protocol::Tcp)),
                        "{rule:?} needs -p tcp first"
                    );
                }
            }
            for name in names {
                assert!(name.starts_with(CHAIN_PREFIX), "{name}");
            }
        }
    }
}
