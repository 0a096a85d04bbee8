use super::*;
use crate::render::render_rule_spec;
use crate::rules::{CHAIN_PREFIX, MAX_COMMENT_LEN};

fn cidr(text: &str) -> Cidr {
    text.parse().expect("test CIDR is valid")
}

fn chain<'a>(ruleset: &'a Ruleset, name: &str) -> &'a Chain {
    find_chain(ruleset, name).unwrap_or_else(|| panic!("chain {name} missing from {ruleset:#?}"))
}

fn find_chain<'a>(ruleset: &'a Ruleset, name: &str) -> Option<&'a Chain> {
    ruleset.chains.iter().find(|chain| chain.name == name)
}

fn chain_names(ruleset: &Ruleset) -> Vec<&str> {
    ruleset.chains.iter().map(|c| c.name.as_str()).collect()
}

/// A rule as iptables would print it, without its comment: compact enough for tables.
fn spec(rule: &Rule) -> String {
    let bare = Rule {
        comment: String::new(),
        ..rule.clone()
    };
    render_rule_spec(&bare).replace("-m comment --comment \"\" ", "")
}

fn specs(ruleset: &Ruleset, name: &str) -> Vec<String> {
    chain(ruleset, name).rules.iter().map(spec).collect()
}

#[test]
fn outbound_order_handles_local_traffic_before_any_exemption_v4() {
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv4);
    assert_eq!(
        specs(&ruleset, OUTBOUND_CHAIN),
        [
            "-s 127.0.0.6/32 -o lo -j RETURN",
            "! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j KNIT_IN_REDIRECT",
            "! -d 127.0.0.0/8 -o lo -m owner --gid-owner 1337 -j KNIT_IN_REDIRECT",
            "-m owner --uid-owner 1337 -j RETURN",
            "-m owner --gid-owner 1337 -j RETURN",
            "-d 127.0.0.0/8 -j RETURN",
            "-p tcp -m tcp --dport 53 -j RETURN",
            "-p tcp -j KNIT_REDIRECT",
        ]
    );
}

#[test]
fn ipv6_uses_the_same_model_with_ipv6_loopback_and_delivery_source() {
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv6);
    assert_eq!(ruleset.family, Family::Ipv6);
    assert_eq!(
        specs(&ruleset, OUTBOUND_CHAIN),
        [
            "-s ::6/128 -o lo -j RETURN",
            "! -d ::1/128 -o lo -m owner --uid-owner 1337 -j KNIT_IN_REDIRECT",
            "! -d ::1/128 -o lo -m owner --gid-owner 1337 -j KNIT_IN_REDIRECT",
            "-m owner --uid-owner 1337 -j RETURN",
            "-m owner --gid-owner 1337 -j RETURN",
            "-d ::1/128 -j RETURN",
            "-p tcp -m tcp --dport 53 -j RETURN",
            "-p tcp -j KNIT_REDIRECT",
        ]
    );
    let v4 = plan(&CaptureConfig::default(), Family::Ipv4);
    assert_eq!(chain_names(&ruleset), chain_names(&v4));
    assert_eq!(
        specs(&ruleset, INBOUND_CHAIN),
        specs(&v4, INBOUND_CHAIN),
        "inbound rules are family-neutral"
    );
}

#[test]
fn no_rule_returns_an_apps_own_pod_ip_traffic_before_capture() {
    // Istio's `-o lo -m owner ! --uid-owner UID -j RETURN` would send an app's
    // call to its own pod IP past the proxy; Knit captures it (see outbound_chain).
    for family in Family::ALL {
        let ruleset = plan(&CaptureConfig::default(), family);
        for rule in &chain(&ruleset, OUTBOUND_CHAIN).rules {
            let lo_only = rule
                .matches
                .iter()
                .any(|m| *m == Match::OutInterface("lo".into()))
                && !rule
                    .matches
                    .iter()
                    .any(|m| matches!(m, Match::Source(_) | Match::NotDestination(_)));
            assert!(!lo_only, "{family}: {rule:?}");
        }
    }
}

#[test]
fn inbound_bypasses_proxy_ports_then_excluded_ports_then_captures_the_rest() {
    let cases: &[(CaptureConfig, &[&str])] = &[
        (
            CaptureConfig::default(),
            &[
                "-p tcp -m tcp --dport 15006 -j RETURN",
                "-p tcp -m tcp --dport 15001 -j RETURN",
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -m tcp --dport 15000 -j RETURN",
                "-p tcp -m tcp --dport 15021 -j RETURN",
                "-p tcp -m tcp --dport 15090 -j RETURN",
                "-p tcp -j KNIT_IN_REDIRECT",
            ],
        ),
        (
            CaptureConfig {
                exclude_inbound_ports: vec![],
                ..CaptureConfig::default()
            },
            &[
                "-p tcp -m tcp --dport 15006 -j RETURN",
                "-p tcp -m tcp --dport 15001 -j RETURN",
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -j KNIT_IN_REDIRECT",
            ],
        ),
        (
            CaptureConfig {
                inbound_port: 16006,
                outbound_port: 16001,
                exclude_inbound_ports: vec![22, 16006, 8443, 16001],
                ..CaptureConfig::default()
            },
            &[
                "-p tcp -m tcp --dport 16006 -j RETURN",
                "-p tcp -m tcp --dport 16001 -j RETURN",
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -m tcp --dport 22 -j RETURN",
                "-p tcp -m tcp --dport 8443 -j RETURN",
                "-p tcp -j KNIT_IN_REDIRECT",
            ],
        ),
        // A list captures exactly its ports; exclusions and the proxy's own ports win.
        (
            CaptureConfig {
                include_inbound_ports: Selection::Only(vec![8080, 15021, 15006, 9090]),
                ..CaptureConfig::default()
            },
            &[
                "-p tcp -m tcp --dport 8080 -j KNIT_IN_REDIRECT",
                "-p tcp -m tcp --dport 9090 -j KNIT_IN_REDIRECT",
            ],
        ),
        (
            CaptureConfig {
                include_inbound_ports: Selection::Only(vec![8080]),
                exclude_interfaces: vec!["eth9".into()],
                ..CaptureConfig::default()
            },
            &[
                "-i eth9 -j RETURN",
                "-p tcp -m tcp --dport 8080 -j KNIT_IN_REDIRECT",
            ],
        ),
    ];
    for (config, expected) in cases {
        for family in Family::ALL {
            let ruleset = plan(config, family);
            assert_eq!(specs(&ruleset, INBOUND_CHAIN), *expected, "{config:?}");
        }
    }
}

#[test]
fn capturing_no_inbound_port_leaves_prerouting_alone_but_keeps_self_calls() {
    for include in [
        Selection::Only(vec![]),
        // Every listed port is excluded, which also leaves nothing to capture.
        Selection::Only(vec![15000, 15006]),
    ] {
        let config = CaptureConfig {
            include_inbound_ports: include,
            ..CaptureConfig::default()
        };
        let ruleset = plan(&config, Family::Ipv4);
        assert_eq!(
            chain_names(&ruleset),
            [
                INBOUND_REDIRECT_CHAIN,
                OUTBOUND_CHAIN,
                OUTBOUND_REDIRECT_CHAIN
            ],
            "{config:?}"
        );
        let jumps: Vec<BuiltinChain> = ruleset.jumps.iter().map(|j| j.from).collect();
        assert_eq!(jumps, [BuiltinChain::Output]);
        assert!(
            specs(&ruleset, OUTBOUND_CHAIN)
                .iter()
                .any(|s| s.ends_with("--uid-owner 1337 -j KNIT_IN_REDIRECT"))
        );
    }
}

#[test]
fn include_outbound_cidrs_capture_only_their_family_and_destinations() {
    let config = CaptureConfig {
        include_outbound_cidrs: Selection::Only(vec![
            cidr("10.0.0.0/8"),
            cidr("2001:db8::/32"),
            cidr("198.19.0.0/16"),
        ]),
        ..CaptureConfig::default()
    };
    let tail = |family| {
        let all = specs(&plan(&config, family), OUTBOUND_CHAIN);
        all[7..].to_vec()
    };
    assert_eq!(
        tail(Family::Ipv4),
        [
            "-d 10.0.0.0/8 -j KNIT_REDIRECT",
            "-d 198.19.0.0/16 -j KNIT_REDIRECT",
            "-j RETURN"
        ]
    );
    assert_eq!(
        tail(Family::Ipv6),
        ["-d 2001:db8::/32 -j KNIT_REDIRECT", "-j RETURN"]
    );

    // A family without included destinations gets no KNIT_REDIRECT chain at all.
    let v4_only = CaptureConfig {
        include_outbound_cidrs: Selection::Only(vec![cidr("10.0.0.0/8")]),
        ..CaptureConfig::default()
    };
    let v6 = plan(&v4_only, Family::Ipv6);
    assert!(
        find_chain(&v6, OUTBOUND_REDIRECT_CHAIN).is_none(),
        "{v6:#?}"
    );
    assert_eq!(
        specs(&v6, OUTBOUND_CHAIN).last().map(String::as_str),
        Some("-j RETURN")
    );
    let nothing = CaptureConfig {
        include_outbound_cidrs: Selection::Only(vec![]),
        ..CaptureConfig::default()
    };
    for family in Family::ALL {
        assert!(find_chain(&plan(&nothing, family), OUTBOUND_REDIRECT_CHAIN).is_none());
    }
}

#[test]
fn outbound_exclusions_come_after_local_rules_and_before_capture() {
    let config = CaptureConfig {
        exclude_outbound_cidrs: vec![cidr("10.96.0.0/12"), cidr("fd00::/8")],
        exclude_outbound_ports: vec![5432, 53, 6379],
        exclude_interfaces: vec!["eth1".into(), "tun+".into()],
        ..CaptureConfig::default()
    };
    let expected_v4 = [
        "-o eth1 -j RETURN",
        "-o tun+ -j RETURN",
        "-p tcp -m tcp --dport 53 -j RETURN",
        "-p tcp -m tcp --dport 5432 -j RETURN",
        "-p tcp -m tcp --dport 6379 -j RETURN",
        "-d 10.96.0.0/12 -j RETURN",
        "-p tcp -j KNIT_REDIRECT",
    ];
    let v4 = specs(&plan(&config, Family::Ipv4), OUTBOUND_CHAIN);
    assert_eq!(v4[6..], expected_v4);
    let v6 = specs(&plan(&config, Family::Ipv6), OUTBOUND_CHAIN);
    assert_eq!(v6[11], "-d fd00::/8 -j RETURN");
    assert_eq!(v6.len(), v4.len());

    // Excluded interfaces also bypass inbound capture, before anything else.
    let inbound = specs(&plan(&config, Family::Ipv4), INBOUND_CHAIN);
    assert_eq!(inbound[..2], ["-i eth1 -j RETURN", "-i tun+ -j RETURN"]);
}

#[test]
fn dns_over_tcp_is_exempt_unless_captured_on_request() {
    let dns_rules = |config: &CaptureConfig| -> usize {
        specs(&plan(config, Family::Ipv4), OUTBOUND_CHAIN)
            .iter()
            .filter(|s| s.contains("--dport 53 "))
            .count()
    };
    let cases = [
        (CaptureConfig::default(), 1),
        (
            CaptureConfig {
                capture_dns: true,
                ..CaptureConfig::default()
            },
            0,
        ),
        // An explicit exclusion still wins over --capture-dns.
        (
            CaptureConfig {
                capture_dns: true,
                exclude_outbound_ports: vec![53],
                ..CaptureConfig::default()
            },
            1,
        ),
        (
            CaptureConfig {
                exclude_outbound_ports: vec![53],
                ..CaptureConfig::default()
            },
            1,
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(dns_rules(&config), expected, "{config:?}");
    }
}

#[test]
fn redirect_chains_point_at_the_configured_ports() {
    let config = CaptureConfig {
        inbound_port: 17006,
        outbound_port: 17001,
        ..CaptureConfig::default()
    };
    for family in Family::ALL {
        let ruleset = plan(&config, family);
        assert_eq!(
            specs(&ruleset, INBOUND_REDIRECT_CHAIN),
            ["-p tcp -j REDIRECT --to-ports 17006"]
        );
        assert_eq!(
            specs(&ruleset, OUTBOUND_REDIRECT_CHAIN),
            ["-p tcp -j REDIRECT --to-ports 17001"]
        );
    }
}

#[test]
fn proxy_uid_and_gid_appear_where_the_options_put_them() {
    for (uid, gid) in [(1337, 1337), (2000, 3000), (0, 65534)] {
        let config = CaptureConfig {
            proxy_uid: uid,
            proxy_gid: gid,
            ..CaptureConfig::default()
        };
        let outbound = specs(&plan(&config, Family::Ipv4), OUTBOUND_CHAIN);
        assert_eq!(
            outbound[1..5],
            [
                format!("! -d 127.0.0.0/8 -o lo -m owner --uid-owner {uid} -j KNIT_IN_REDIRECT"),
                format!("! -d 127.0.0.0/8 -o lo -m owner --gid-owner {gid} -j KNIT_IN_REDIRECT"),
                format!("-m owner --uid-owner {uid} -j RETURN"),
                format!("-m owner --gid-owner {gid} -j RETURN"),
            ]
        );
    }
}

#[test]
fn jumps_enter_the_entry_chains_for_tcp_only() {
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv4);
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
            mesh_port: u16::MAX - 2,
            include_inbound_ports: Selection::Only(vec![1, 80]),
            exclude_inbound_ports: vec![1, 65535],
            include_outbound_cidrs: Selection::Only(vec![cidr("0.0.0.0/0"), cidr("::/0")]),
            exclude_outbound_cidrs: vec![cidr("10.0.0.0/8"), cidr("fd00::/8")],
            exclude_outbound_ports: vec![1, 65535],
            exclude_interfaces: vec!["abcdefghijklmn+".into()],
            capture_dns: true,
        },
    ];
    for config in configs {
        for family in Family::ALL {
            let ruleset = plan(&config, family);
            let names = chain_names(&ruleset);
            for chain in &ruleset.chains {
                assert!(chain.name.starts_with(CHAIN_PREFIX), "{}", chain.name);
                for rule in &chain.rules {
                    // -i is meaningless where OUTPUT leads, -o where PREROUTING leads.
                    let has = |f: fn(&Match) -> bool| rule.matches.iter().any(f);
                    if chain.name == OUTBOUND_CHAIN {
                        assert!(!has(|m| matches!(m, Match::InInterface(_))), "{rule:?}");
                    } else {
                        assert!(!has(|m| matches!(m, Match::OutInterface(_))), "{rule:?}");
                    }
                }
            }
            let rules = ruleset
                .chains
                .iter()
                .flat_map(|c| c.rules.iter().cloned())
                .chain(ruleset.jumps.iter().map(Jump::rule));
            for rule in rules {
                // Comments are quoted verbatim in the restore text and kept by the kernel.
                assert!(rule.comment.starts_with("knit: "), "{rule:?}");
                assert!(rule.comment.len() <= MAX_COMMENT_LEN, "{rule:?}");
                assert!(!rule.comment.contains(['"', '\\', '\'', '\n']), "{rule:?}");
                if let Target::Jump(to) = &rule.target {
                    assert!(
                        names.contains(&to.as_str()),
                        "{rule:?} jumps outside the ruleset"
                    );
                }
                let needs_tcp = matches!(rule.target, Target::Redirect { .. })
                    || rule
                        .matches
                        .iter()
                        .any(|m| matches!(m, Match::DestinationPort(_)));
                if needs_tcp {
                    assert!(
                        rule.matches.contains(&Match::Protocol(Protocol::Tcp)),
                        "{rule:?} needs -p tcp"
                    );
                }
                for m in &rule.matches {
                    if let Match::Source(c) | Match::Destination(c) | Match::NotDestination(c) = m {
                        assert_eq!(c.family(), family, "{rule:?} in the {family} ruleset");
                    }
                }
            }
        }
    }
}
