//! Turns rules into iptables-restore / ip6tables-restore input; pure, no I/O.
//!
//! Both renderers produce one `*table ... COMMIT` block for
//! `iptables-restore --noflush`, so the kernel applies all of it or nothing.
//! The text is the same for both families; the ruleset decides the addresses.

use std::fmt::Write as _;

use crate::error::InitError;
use crate::rules::{Match, Rule, Ruleset, Target};
use crate::state::{ExistingRule, ExistingState};

/// The transaction that installs `ruleset` on top of `existing`.
///
/// Every planned chain is declared, which in a `--noflush` restore creates it
/// or, if it exists, empties it; its rules are then appended afresh. Jumps
/// from builtin chains are only appended when `existing` lacks them, so
/// running twice leaves the same rules as running once. knit-init chains that
/// an earlier run with other options created but this plan does not use
/// (e.g. `KNIT_INBOUND` once no inbound port is captured) are removed, with
/// the builtin-chain jumps into them, in the same transaction.
///
/// Fails, before anything is run, when a chain knit-init does not own refers
/// to such a stale chain: that rule is not knit-init's to delete.
pub fn render_restore(ruleset: &Ruleset, existing: &ExistingState) -> Result<String, InitError> {
    let table = ruleset.table;
    let planned: Vec<&str> = ruleset.chains.iter().map(|c| c.name.as_str()).collect();
    let stale_chains: Vec<&str> = existing
        .knit_chains()
        .filter(|name| !planned.contains(name))
        .collect();
    let stale_jumps: Vec<&ExistingRule> = existing
        .rules_entering_knit_chains()
        .filter(|rule| {
            rule.target
                .as_deref()
                .is_some_and(|target| stale_chains.contains(&target))
        })
        .collect();
    if let Some(foreign) = stale_jumps
        .iter()
        .find(|rule| !table.is_builtin(&rule.chain))
    {
        return Err(InitError::ForeignReference {
            table: table.name().to_string(),
            chain: foreign.chain.clone(),
            target: foreign.target.clone().unwrap_or_default(),
        });
    }

    let mut text = String::new();
    push_line(&mut text, format_args!("*{}", table.name()));
    for chain in &ruleset.chains {
        push_line(&mut text, format_args!(":{} - [0:0]", chain.name));
    }
    // Stale chains go before the new rules are added: declaring the planned
    // chains above already emptied any old rule of theirs that referred to them.
    for jump in &stale_jumps {
        push_line(&mut text, format_args!("-D {} {}", jump.chain, jump.spec));
    }
    for chain in &stale_chains {
        push_line(&mut text, format_args!("-F {chain}"));
    }
    for chain in &stale_chains {
        push_line(&mut text, format_args!("-X {chain}"));
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
    Ok(text)
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

/// A table as iptables-save would print `state` (without counters); what the
/// tests and a `--cleanup` dry run use in place of the kernel's output.
pub fn render_save(state: &ExistingState) -> String {
    let table = state.table();
    let mut text = String::new();
    push_line(&mut text, format_args!("*{}", table.name()));
    for chain in state.chains() {
        let policy = if table.is_builtin(chain) {
            "ACCEPT"
        } else {
            "-"
        };
        push_line(&mut text, format_args!(":{chain} {policy} [0:0]"));
    }
    for rule in state.rules() {
        push_line(&mut text, format_args!("-A {} {}", rule.chain, rule.spec));
    }
    text.push_str("COMMIT\n");
    text
}

/// A rule's matches, comment and target, in the order iptables-save prints
/// them (addresses, interfaces, protocol, then match modules), whatever the
/// order of `rule.matches`: what the kernel prints back then compares equal.
pub fn render_rule_spec(rule: &Rule) -> String {
    let mut matches: Vec<&Match> = rule.matches.iter().collect();
    matches.sort_by_key(|m| save_position(m));
    let mut words: Vec<String> = Vec::new();
    for condition in matches {
        match condition {
            Match::Source(cidr) => words.extend(["-s".into(), cidr.to_string()]),
            Match::Destination(cidr) => words.extend(["-d".into(), cidr.to_string()]),
            Match::NotDestination(cidr) => {
                words.extend(["!".into(), "-d".into(), cidr.to_string()])
            }
            Match::InInterface(name) => words.extend(["-i".into(), name.clone()]),
            Match::OutInterface(name) => words.extend(["-o".into(), name.clone()]),
            Match::Protocol(protocol) => words.extend(["-p".into(), protocol.name().into()]),
            Match::DestinationPort(port) => words.extend([
                "-m".into(),
                "tcp".into(),
                "--dport".into(),
                port.to_string(),
            ]),
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

/// Where iptables-save puts a match: the fixed header fields in their
/// struct order, then the match modules in the order they were added.
fn save_position(condition: &Match) -> u8 {
    match condition {
        Match::Source(_) => 0,
        Match::Destination(_) | Match::NotDestination(_) => 1,
        Match::InInterface(_) => 2,
        Match::OutInterface(_) => 3,
        Match::Protocol(_) => 4,
        Match::DestinationPort(_) => 5,
        Match::UidOwner(_) | Match::GidOwner(_) => 6,
    }
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
mod tests;
