//! Turns rules into iptables-restore input; pure, no I/O.
//!
//! Both renderers produce one `*table ... COMMIT` block for
//! `iptables-restore --noflush`, so the kernel applies all of it or nothing.

use std::fmt::Write as _;

use crate::error::InitError;
use crate::rules::{Match, Rule, Ruleset, Target};
use crate::state::{ExistingRule, ExistingState};

/// The transaction that installs `ruleset` on top of `existing`.
///
/// Every knit-init chain is declared, which in a `--noflush` restore creates
/// it or, if it exists, empties it; its rules are then appended afresh. Jumps
/// from builtin chains are only appended when `existing` lacks them, so
/// running twice leaves the same rules as running once.
pub fn render_restore(ruleset: &Ruleset, existing: &ExistingState) -> String {
    let mut text = String::new();
    push_line(&mut text, format_args!("*{}", ruleset.table.name()));
    for chain in &ruleset.chains {
        push_line(&mut text, format_args!(":{} - [0:0]", chain.name));
    }
    for chain in &ruleset.chains {
        for rule in &chain.rules {
            push_line(
                &mut text,
                format_args!("-A {} {}", chain.name, render_rule_spec(rule)),
            );
        }
    }
    for jump in &ruleset.jumps {
        if !existing.has_jump(jump.from.name(), &jump.to) {
            push_line(
                &mut text,
                format_args!("-A {} {}", jump.from.name(), render_rule_spec(&jump.rule())),
            );
        }
    }
    text.push_str("COMMIT\n");
    text
}

/// The transaction that removes every knit-init chain in `existing` and every
/// jump into them; `None` when there is nothing to remove.
///
/// Jumps are deleted first (a referenced chain cannot be deleted), then all
/// knit-init chains are flushed (they refer to each other), then deleted.
/// Fails when a chain knit-init does not own refers to a knit-init chain:
/// that rule is not knit-init's to delete.
pub fn render_cleanup(existing: &ExistingState) -> Result<Option<String>, InitError> {
    let table = existing.table();
    let jumps: Vec<&ExistingRule> = existing.rules_entering_knit_chains().collect();
    if let Some(foreign) = jumps.iter().find(|rule| !table.is_builtin(&rule.chain)) {
        return Err(InitError::ForeignReference {
            table: table.name().to_string(),
            chain: foreign.chain.clone(),
            target: foreign.target.clone().unwrap_or_default(),
        });
    }
    let chains: Vec<&str> = existing.knit_chains().collect();
    if jumps.is_empty() && chains.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    push_line(&mut text, format_args!("*{}", table.name()));
    for jump in &jumps {
        push_line(&mut text, format_args!("-D {} {}", jump.chain, jump.spec));
    }
    for chain in &chains {
        push_line(&mut text, format_args!("-F {chain}"));
    }
    for chain in &chains {
        push_line(&mut text, format_args!("-X {chain}"));
    }
    text.push_str("COMMIT\n");
    Ok(Some(text))
}

/// The state `ruleset` leaves in a table that held nothing else; what a
/// `--cleanup` dry run shows the removal of.
pub fn installed_state(ruleset: &Ruleset) -> ExistingState {
    let table = ruleset.table;
    let chains = table
        .builtin_chains()
        .iter()
        .map(|name| name.to_string())
        .chain(ruleset.chains.iter().map(|chain| chain.name.clone()))
        .collect();
    let jumps = ruleset.jumps.iter().map(|jump| ExistingRule {
        chain: jump.from.name().to_string(),
        spec: render_rule_spec(&jump.rule()),
        target: Some(jump.to.clone()),
    });
    let chain_rules = ruleset.chains.iter().flat_map(|chain| {
        chain.rules.iter().map(|rule| ExistingRule {
            chain: chain.name.clone(),
            spec: render_rule_spec(rule),
            target: match &rule.target {
                Target::Return => Some("RETURN".to_string()),
                Target::Jump(to) => Some(to.clone()),
                Target::Redirect { .. } => Some("REDIRECT".to_string()),
            },
        })
    });
    ExistingState::new(table, chains, jumps.chain(chain_rules).collect())
}

/// A rule's matches, comment and target, in the order iptables-save prints them.
pub fn render_rule_spec(rule: &Rule) -> String {
    let mut words: Vec<String> = Vec::new();
    for condition in &rule.matches {
        match condition {
            Match::Protocol(protocol) => words.extend(["-p".into(), protocol.name().into()]),
            Match::DestinationPort(port) => words.extend([
                "-m".into(),
                "tcp".into(),
                "--dport".into(),
                port.to_string(),
            ]),
            Match::Destination(cidr) => words.extend(["-d".into(), cidr.to_string()]),
            Match::OutInterface(name) => words.extend(["-o".into(), name.clone()]),
            Match::UidOwner(uid) => words.extend([
                "-m".into(),
                "owner".into(),
                "--uid-owner".into(),
                uid.to_string(),
            ]),
            Match::GidOwner(gid) => words.extend([
                "-m".into(),
                "owner".into(),
                "--gid-owner".into(),
                gid.to_string(),
            ]),
        }
    }
    words.extend([
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        quote(&rule.comment),
    ]);
    match &rule.target {
        Target::Return => words.extend(["-j".into(), "RETURN".into()]),
        Target::Jump(chain) => words.extend(["-j".into(), chain.clone()]),
        Target::Redirect { to_port } => words.extend([
            "-j".into(),
            "REDIRECT".into(),
            "--to-ports".into(),
            to_port.to_string(),
        ]),
    }
    words.join(" ")
}

/// Double-quotes `text` for iptables-restore, escaping quotes and backslashes.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

fn push_line(text: &mut String, line: std::fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = text.write_fmt(line);
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CaptureConfig;
    use crate::plan::plan;
    use crate::rules::{Cidr, Protocol, Table};

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
                        Match::Destination(Cidr::ipv4_loopback()),
                    ],
                    target: Target::Return,
                    comment: "c".into(),
                },
                "-o lo -d 127.0.0.0/8 -m comment --comment \"c\" -j RETURN",
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
        let ruleset = plan(&CaptureConfig::default());
        let text = render_restore(&ruleset, &ExistingState::empty(Table::Nat));
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
        let ruleset = plan(&CaptureConfig::default());
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
            let text = render_restore(&ruleset, &save_with(present));
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
        };
        let text = render_restore(&plan(&config), &ExistingState::empty(Table::Nat));
        for fragment in [
            "-A KNIT_INBOUND -p tcp -m tcp --dport 16006 ",
            "-A KNIT_INBOUND -p tcp -m tcp --dport 16001 ",
            "-A KNIT_INBOUND -p tcp -m tcp --dport 22 ",
            "-A KNIT_INBOUND -p tcp -m tcp --dport 8443 ",
            "-A KNIT_IN_REDIRECT -p tcp -m comment --comment \"knit: redirect to the proxy inbound listener on port 16006\" -j REDIRECT --to-ports 16006\n",
            "-A KNIT_OUTPUT -m owner --uid-owner 2000 ",
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
        let ruleset = plan(&CaptureConfig::default());
        let installed = installed_state(&ruleset);
        let mut save = String::from("*nat\n");
        for chain in installed.chains() {
            let policy = if Table::Nat.is_builtin(chain) {
                "ACCEPT"
            } else {
                "-"
            };
            save.push_str(&format!(":{chain} {policy} [0:0]\n"));
        }
        for rule in installed.rules() {
            save.push_str(&format!("-A {} {}\n", rule.chain, rule.spec));
        }
        save.push_str("COMMIT\n");
        assert_eq!(
            ExistingState::parse_save(Table::Nat, &save).expect("valid"),
            installed
        );

        let text = render_restore(&ruleset, &installed);
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
}
