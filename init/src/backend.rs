//! Detects rules in the iptables backend knit-init does not write to; pure.
//!
//! The kernel runs the rules of both backends (x_tables "legacy" and
//! nf_tables), but each tool family only shows its own. If the pod's rules
//! (from a CNI plugin, an older init, another mesh) live in the other
//! backend, the capture knit-init installs and verifies is not the whole story.

use crate::family::{Backend, Family};
use crate::rules::{CHAIN_PREFIX, Table};
use crate::state::ExistingState;

/// What the executor learned about the two backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInspection {
    /// The `--version` line of the save tool in use, or why it could not be read.
    pub in_use: Result<String, String>,
    /// The other backend; `None` when there is nothing to compare against
    /// (backend in use unknown, or the other backend's tool not installed).
    pub other: Option<OtherBackend>,
}

/// The other backend as its own save tool shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherBackend {
    /// Which backend it is.
    pub backend: Backend,
    /// The save tool that was run.
    pub tool: String,
    /// Its output (all existing tables), or why it could not be read.
    pub dump: Result<String, String>,
}

/// The verdict on one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendCheck {
    /// Nothing in the other backend that concerns capture.
    Clean,
    /// The check could not be done; the reason, for a warning.
    Unchecked(String),
    /// The other backend holds rules; `finding` names its tool and what it holds.
    Mismatch {
        /// The tool in use and its backend.
        in_use: String,
        /// What the other backend holds.
        finding: String,
    },
}

/// Judges an inspection: a mismatch is any rule in the other backend's nat
/// table, or any knit-init chain in any of its tables.
pub fn check_backends(family: Family, inspection: &BackendInspection) -> BackendCheck {
    let in_use = match &inspection.in_use {
        Ok(line) => line.clone(),
        Err(reason) => {
            return BackendCheck::Unchecked(format!(
                "cannot tell which {family} iptables backend is in use ({reason}); \
                 rules in the other backend were not looked for"
            ));
        }
    };
    let Some(other) = &inspection.other else {
        if Backend::from_version_line(&in_use).is_none() {
            return BackendCheck::Unchecked(format!(
                "`{in_use}` does not name its backend (legacy or nf_tables); \
                 rules in the other {family} backend were not looked for"
            ));
        }
        return BackendCheck::Clean;
    };
    let dump = match &other.dump {
        Ok(dump) => dump,
        Err(reason) => {
            return BackendCheck::Unchecked(format!(
                "could not read the {} backend: {reason}",
                other.backend.name()
            ));
        }
    };
    let nat_rules = match ExistingState::parse_save(Table::Nat, dump) {
        Ok(state) => state.rules().len(),
        Err(err) => {
            return BackendCheck::Unchecked(format!(
                "could not parse what `{}` printed: {err}",
                other.tool
            ));
        }
    };
    let knit_chains = knit_chains_in_any_table(dump);
    if nat_rules == 0 && knit_chains.is_empty() {
        return BackendCheck::Clean;
    }
    let mut held = Vec::new();
    if nat_rules > 0 {
        held.push(format!("{nat_rules} rule(s) in its nat table"));
    }
    if !knit_chains.is_empty() {
        held.push(format!("knit-init chain(s) {}", knit_chains.join(", ")));
    }
    BackendCheck::Mismatch {
        in_use,
        finding: format!(
            "the {} backend (`{}`) holds {}",
            other.backend.name(),
            other.tool,
            held.join(" and ")
        ),
    }
}

/// `TABLE/CHAIN` for every chain named like knit-init's, in dump order.
fn knit_chains_in_any_table(dump: &str) -> Vec<String> {
    let mut table = "";
    let mut found = Vec::new();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
        } else if let Some(declaration) = line.strip_prefix(':') {
            let chain = declaration.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(CHAIN_PREFIX) {
                found.push(format!("{table}/{chain}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = "iptables-save v1.8.9 (nf_tables)";

    fn inspection(dump: Result<&str, &str>) -> BackendInspection {
        BackendInspection {
            in_use: Ok(NFT.to_string()),
            other: Some(OtherBackend {
                backend: Backend::Legacy,
                tool: "iptables-legacy-save".to_string(),
                dump: dump.map(str::to_string).map_err(str::to_string),
            }),
        }
    }

    #[test]
    fn empty_or_untouched_other_backends_are_clean() {
        let cases = [
            "",
            "# Generated by iptables-save v1.8.9 on x\n*nat\n:PREROUTING ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\nCOMMIT\n",
            // Rules outside nat do not redirect anything.
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\nCOMMIT\n",
        ];
        for dump in cases {
            assert_eq!(
                check_backends(Family::Ipv4, &inspection(Ok(dump))),
                BackendCheck::Clean,
                "{dump:?}"
            );
        }
    }

    #[test]
    fn nat_rules_or_knit_chains_in_the_other_backend_are_a_mismatch() {
        let cases: &[(&str, &str)] = &[
            (
                "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n",
                "the legacy backend (`iptables-legacy-save`) holds 1 rule(s) in its nat table",
            ),
            (
                "*nat\n:OUTPUT ACCEPT [0:0]\n:KNIT_OUTPUT - [0:0]\n\
                 -A OUTPUT -p tcp -j KNIT_OUTPUT\nCOMMIT\n",
                "holds 1 rule(s) in its nat table and knit-init chain(s) nat/KNIT_OUTPUT",
            ),
            (
                "*mangle\n:KNIT_OLD - [0:0]\nCOMMIT\n",
                "holds knit-init chain(s) mangle/KNIT_OLD",
            ),
        ];
        for (dump, expected) in cases {
            match check_backends(Family::Ipv4, &inspection(Ok(dump))) {
                BackendCheck::Mismatch { in_use, finding } => {
                    assert_eq!(in_use, NFT);
                    assert!(finding.contains(expected), "{dump:?}: {finding}");
                }
                other => panic!("{dump:?}: expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn what_cannot_be_checked_is_said_not_assumed_clean() {
        let unreadable = check_backends(Family::Ipv6, &inspection(Err("exit status 1: boom")));
        assert!(
            matches!(&unreadable, BackendCheck::Unchecked(why) if why.contains("boom")),
            "{unreadable:?}"
        );
        let garbled = check_backends(Family::Ipv4, &inspection(Ok("*nat\n-A OUTPUT\n")));
        assert!(matches!(garbled, BackendCheck::Unchecked(_)), "{garbled:?}");
        let unknown = BackendInspection {
            in_use: Ok("some-wrapper 2.0".to_string()),
            other: None,
        };
        assert!(matches!(
            check_backends(Family::Ipv4, &unknown),
            BackendCheck::Unchecked(why) if why.contains("does not name its backend")
        ));
        let absent_tool = BackendInspection {
            in_use: Ok(NFT.to_string()),
            other: None,
        };
        assert_eq!(
            check_backends(Family::Ipv4, &absent_tool),
            BackendCheck::Clean
        );
    }
}
