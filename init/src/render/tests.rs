use super::*;
use crate::config::{CaptureConfig, Selection};
use crate::family::Family;
use crate::plan::plan;
use crate::rules::{Protocol, Table};

const PREROUTING_JUMP: &str = "-A PREROUTING -p tcp -m comment --comment \"knit: inbound TCP enters knit capture\" -j KNIT_INBOUND";
const OUTPUT_JUMP: &str = "-A OUTPUT -p tcp -m comment --comment \"knit: outbound TCP enters knit capture\" -j KNIT_OUTPUT";

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn save_with(rules: &[&str]) -> ExistingState {
    let text = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KNIT_INBOUND - [0:0]\n:KNIT_OUTPUT - [0:0]\n{}COMMIT\n",
        rules.iter().map(|r| format!("{r}\n")).collect::<String>()
    );
    ExistingState::parse_save(Table::Nat, &text).expect("test save output parses")
}

#[test]
fn rule_specs_render_like_iptables_save() {
    let cases: &[(Rule, &str)] = &[
        (
            Rule {
                matches: vec![
                    Match::Protocol(Protocol::Tcp),
                    Match::DestinationPort(15021),
                ],
                target: Target::Return,
                comment: "knit: a b".into(),
            },
            "-p tcp -m tcp --dport 15021 -m comment --comment \"knit: a b\" -j RETURN",
        ),
        (
            Rule {
                matches: vec![Match::UidOwner(1337)],
                target: Target::Return,
                comment: "c".into(),
            },
            "-m owner --uid-owner 1337 -m comment --comment \"c\" -j RETURN",
        ),
        (
            Rule {
                matches: vec![Match::GidOwner(7)],
                target: Target::Jump("KNIT_X".into()),
                comment: "c".into(),
            },
            "-m owner --gid-owner 7 -m comment --comment \"c\" -j KNIT_X",
        ),
        (
            Rule {
                matches: vec![
                    Match::OutInterface("lo".into()),
                    Match::Destination(Family::Ipv4.loopback()),
                ],
                target: Target::Return,
                comment: "c".into(),
            },
            // Save order puts the address before the interface.
            "-d 127.0.0.0/8 -o lo -m comment --comment \"c\" -j RETURN",
        ),
        (
            Rule {
                matches: vec![Match::Protocol(Protocol::Tcp)],
                target: Target::Redirect { to_port: 15001 },
                comment: "say \"hi\" \\o/".into(),
            },
            "-p tcp -m comment --comment \"say \\\"hi\\\" \\\\o/\" -j REDIRECT --to-ports 15001",
        ),
    ];
    for (rule, expected) in cases {
        assert_eq!(render_rule_spec(rule), *expected);
    }
}

#[test]
fn restore_declares_chains_then_rules_then_missing_jumps() {
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv4);
    let text = render_restore(&ruleset, &ExistingState::empty(Table::Nat)).expect("nothing stale");
    let lines = lines(&text);
    assert_eq!(lines.first(), Some(&"*nat"));
    assert_eq!(lines.last(), Some(&"COMMIT"));
    assert_eq!(
        lines[1..5],
        [
            ":KNIT_INBOUND - [0:0]",
            ":KNIT_IN_REDIRECT - [0:0]",
            ":KNIT_OUTPUT - [0:0]",
            ":KNIT_REDIRECT - [0:0]"
        ]
    );
    let rule_count: usize = ruleset.chains.iter().map(|c| c.rules.len()).sum();
    assert_eq!(lines.len(), 1 + 4 + rule_count + 2 + 1);
    assert_eq!(
        lines[lines.len() - 3..lines.len() - 1],
        [PREROUTING_JUMP, OUTPUT_JUMP]
    );
}

#[test]
fn jumps_already_present_are_not_added_again() {
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv4);
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[PREROUTING_JUMP, OUTPUT_JUMP]),
        (&[PREROUTING_JUMP], &[OUTPUT_JUMP]),
        (&[OUTPUT_JUMP], &[PREROUTING_JUMP]),
        (&[PREROUTING_JUMP, OUTPUT_JUMP], &[]),
        // A jump with a different shape still counts: it enters the same chain.
        (&["-A OUTPUT -j KNIT_OUTPUT"], &[PREROUTING_JUMP]),
        // A jump into our chain from the wrong builtin chain does not.
        (
            &["-A INPUT -j KNIT_INBOUND"],
            &[PREROUTING_JUMP, OUTPUT_JUMP],
        ),
    ];
    for (present, expected_jumps) in cases {
        let text = render_restore(&ruleset, &save_with(present)).expect("nothing stale");
        let added: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("-A PREROUTING") || line.starts_with("-A OUTPUT"))
            .collect();
        assert_eq!(added, *expected_jumps, "present: {present:?}");
        // Chain contents are always rewritten in full.
        assert!(
            text.contains(":KNIT_OUTPUT - [0:0]\n"),
            "present: {present:?}"
        );
        assert!(
            text.contains("-j REDIRECT --to-ports 15001\n"),
            "present: {present:?}"
        );
    }
}

#[test]
fn restore_contains_exclusions_exemptions_and_redirects() {
    let config = CaptureConfig {
        proxy_uid: 2000,
        proxy_gid: 3000,
        outbound_port: 16001,
        inbound_port: 16006,
        exclude_inbound_ports: vec![22, 8443],
        ..CaptureConfig::default()
    };
    let text = render_restore(
        &plan(&config, Family::Ipv4),
        &ExistingState::empty(Table::Nat),
    )
    .expect("nothing stale");
    for fragment in [
        "-A KNIT_INBOUND -p tcp -m tcp --dport 16006 ",
        "-A KNIT_INBOUND -p tcp -m tcp --dport 16001 ",
        "-A KNIT_INBOUND -p tcp -m tcp --dport 22 ",
        "-A KNIT_INBOUND -p tcp -m tcp --dport 8443 ",
        "-A KNIT_IN_REDIRECT -p tcp -m comment --comment \"knit: redirect to the proxy inbound listener on port 16006\" -j REDIRECT --to-ports 16006\n",
        "-A KNIT_OUTPUT -m owner --uid-owner 2000 ",
        "-A KNIT_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 2000 ",
        "-A KNIT_OUTPUT -s 127.0.0.6/32 -o lo ",
        "-A KNIT_OUTPUT -m owner --gid-owner 3000 ",
        "-A KNIT_OUTPUT -d 127.0.0.0/8 ",
        "-A KNIT_REDIRECT -p tcp -m comment --comment \"knit: redirect to the proxy outbound listener on port 16001\" -j REDIRECT --to-ports 16001\n",
    ] {
        assert!(text.contains(fragment), "missing `{fragment}` in\n{text}");
    }
    assert!(
        !text.contains("15000"),
        "default exclusions leaked into\n{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("-A ")) {
        assert!(
            line.contains(" -m comment --comment \"knit: "),
            "uncommented: {line}"
        );
    }
}

#[test]
fn cleanup_of_nothing_is_none() {
    let cases = [
        ExistingState::empty(Table::Nat),
        ExistingState::parse_save(
            Table::Nat,
            "*nat\n:OUTPUT ACCEPT [0:0]\n:OTHER - [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n",
        )
        .expect("valid"),
    ];
    for state in cases {
        assert_eq!(render_cleanup(&state).expect("no foreign references"), None);
    }
}

#[test]
fn cleanup_removes_jumps_then_flushes_then_deletes_only_knit_chains() {
    let state = ExistingState::parse_save(
        Table::Nat,
        &format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KNIT_INBOUND - [0:0]\n\
             :OTHER - [0:0]\n:KNIT_IN_REDIRECT - [0:0]\n\
             -A PREROUTING -p udp -j OTHER\n{PREROUTING_JUMP}\n{PREROUTING_JUMP}\n\
             -A KNIT_INBOUND -p tcp -j KNIT_IN_REDIRECT\n-A OTHER -j RETURN\nCOMMIT\n"
        ),
    )
    .expect("valid");
    let text = render_cleanup(&state)
        .expect("no foreign references")
        .expect("work to do");
    let jump_spec = PREROUTING_JUMP.trim_start_matches("-A PREROUTING ");
    let delete = format!("-D PREROUTING {jump_spec}");
    assert_eq!(
        lines(&text),
        [
            "*nat",
            delete.as_str(),
            delete.as_str(),
            "-F KNIT_INBOUND",
            "-F KNIT_IN_REDIRECT",
            "-X KNIT_INBOUND",
            "-X KNIT_IN_REDIRECT",
            "COMMIT"
        ]
    );
}

#[test]
fn cleanup_refuses_to_touch_foreign_references() {
    let state = ExistingState::parse_save(
        Table::Nat,
        "*nat\n:OUTPUT ACCEPT [0:0]\n:OTHER - [0:0]\n:KNIT_OUTPUT - [0:0]\n\
         -A OTHER -j KNIT_OUTPUT\nCOMMIT\n",
    )
    .expect("valid");
    match render_cleanup(&state) {
        Err(InitError::ForeignReference { chain, target, .. }) => {
            assert_eq!((chain.as_str(), target.as_str()), ("OTHER", "KNIT_OUTPUT"));
        }
        other => panic!("expected a foreign reference error, got {other:?}"),
    }
}

#[test]
fn installed_state_round_trips_through_the_save_parser() {
    // What apply installs, printed the way iptables-save prints it, must parse
    // back to the same state; cleanup then removes exactly those parts.
    let ruleset = plan(&CaptureConfig::default(), Family::Ipv4);
    let installed = installed_state(&ruleset);
    let save = render_save(&installed);
    assert_eq!(
        ExistingState::parse_save(Table::Nat, &save).expect("valid"),
        installed
    );

    let text = render_restore(&ruleset, &installed).expect("nothing stale");
    assert!(!text.contains("-A PREROUTING") && !text.contains("-A OUTPUT"));
    let cleanup = render_cleanup(&installed)
        .expect("ours only")
        .expect("work to do");
    assert_eq!(cleanup.lines().filter(|l| l.starts_with("-D ")).count(), 2);
    assert_eq!(
        cleanup
            .lines()
            .filter(|l| l.starts_with("-X KNIT_"))
            .count(),
        4
    );
}

#[test]
fn matches_render_in_save_order_whatever_their_order_in_the_rule() {
    let rule = Rule {
        matches: vec![
            Match::UidOwner(1337),
            Match::OutInterface("lo".into()),
            Match::NotDestination(Family::Ipv6.loopback()),
        ],
        target: Target::Jump("KNIT_IN_REDIRECT".into()),
        comment: "c".into(),
    };
    assert_eq!(
        render_rule_spec(&rule),
        "! -d ::1/128 -o lo -m owner --uid-owner 1337 -m comment --comment \"c\" -j KNIT_IN_REDIRECT"
    );
    let rule = Rule {
        matches: vec![
            Match::OutInterface("lo".into()),
            Match::Source(Family::Ipv4.inbound_delivery_source()),
        ],
        target: Target::Return,
        comment: "c".into(),
    };
    assert_eq!(
        render_rule_spec(&rule),
        "-s 127.0.0.6/32 -o lo -m comment --comment \"c\" -j RETURN"
    );
    let rule = Rule {
        matches: vec![Match::InInterface("eth1".into())],
        target: Target::Return,
        comment: "c".into(),
    };
    assert_eq!(
        render_rule_spec(&rule),
        "-i eth1 -m comment --comment \"c\" -j RETURN"
    );
}

#[test]
fn reapplying_with_fewer_chains_removes_the_stale_ones_and_their_jumps() {
    // Installed with defaults, then re-applied capturing no inbound port and
    // no outbound destination: KNIT_INBOUND and KNIT_REDIRECT must go.
    let installed = installed_state(&plan(&CaptureConfig::default(), Family::Ipv4));
    let narrower = plan(
        &CaptureConfig {
            include_inbound_ports: Selection::Only(vec![]),
            include_outbound_cidrs: Selection::Only(vec![]),
            ..CaptureConfig::default()
        },
        Family::Ipv4,
    );
    let text = render_restore(&narrower, &installed).expect("only our own references");
    let jump_spec = PREROUTING_JUMP.trim_start_matches("-A PREROUTING ");
    let structural: Vec<&str> = text.lines().filter(|l| !l.starts_with("-A ")).collect();
    let delete = format!("-D PREROUTING {jump_spec}");
    assert_eq!(
        structural,
        [
            "*nat",
            ":KNIT_IN_REDIRECT - [0:0]",
            ":KNIT_OUTPUT - [0:0]",
            delete.as_str(),
            "-F KNIT_INBOUND",
            "-F KNIT_REDIRECT",
            "-X KNIT_INBOUND",
            "-X KNIT_REDIRECT",
            "COMMIT"
        ]
    );
    // The removals come before any rule is appended.
    let first_append = text.find("\n-A ").expect("rules are appended");
    assert!(text.find("-X KNIT_REDIRECT").expect("deleted") < first_append);
    assert!(!text.contains("-j KNIT_REDIRECT"), "{text}");
    assert!(
        !text.contains("-A OUTPUT"),
        "the OUTPUT jump is still there"
    );

    // Back to the defaults: the chains and the jump come back; nothing is stale.
    let narrow_installed = installed_state(&narrower);
    let text = render_restore(
        &plan(&CaptureConfig::default(), Family::Ipv4),
        &narrow_installed,
    )
    .expect("nothing foreign");
    assert!(!text.contains("-X ") && !text.contains("-D "), "{text}");
    assert!(text.contains(PREROUTING_JUMP), "{text}");
}

#[test]
fn restore_refuses_to_remove_a_stale_chain_someone_else_uses() {
    let state = ExistingState::parse_save(
        Table::Nat,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n:KNIT_INBOUND - [0:0]\n\
         -A OTHER -j KNIT_INBOUND\nCOMMIT\n",
    )
    .expect("valid");
    let narrower = plan(
        &CaptureConfig {
            include_inbound_ports: Selection::Only(vec![]),
            ..CaptureConfig::default()
        },
        Family::Ipv4,
    );
    match render_restore(&narrower, &state) {
        Err(InitError::ForeignReference { chain, target, .. }) => {
            assert_eq!((chain.as_str(), target.as_str()), ("OTHER", "KNIT_INBOUND"));
        }
        other => panic!("expected a foreign reference error, got {other:?}"),
    }
}
