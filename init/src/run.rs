//! What one invocation does: plan, read the current state, apply or clean up.

use std::fmt;

use crate::cli::Cli;
use crate::error::InitError;
use crate::iptables::Netfilter;
use crate::plan::plan;
use crate::render::{installed_state, render_cleanup, render_restore};
use crate::rules::{Ruleset, Table};
use crate::state::ExistingState;

/// What an invocation did, printed by the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was changed; this is the transaction that would run.
    DryRun(String),
    /// The capture rules are installed.
    Applied {
        /// The table written.
        table: Table,
        /// The chains (re)written.
        chains: Vec<String>,
        /// Jumps appended to builtin chains, as `FROM -> TO`; empty when all were present.
        added_jumps: Vec<String>,
    },
    /// Everything knit-init had installed was removed.
    Removed {
        /// The table written.
        table: Table,
        /// The chains deleted.
        chains: Vec<String>,
        /// How many jump rules were deleted from builtin chains.
        jumps: usize,
    },
    /// `--cleanup` found nothing of knit-init's; nothing was run.
    NothingToRemove {
        /// The table inspected.
        table: Table,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::DryRun(transaction) => f.write_str(transaction),
            Outcome::Applied {
                table,
                chains,
                added_jumps,
            } => {
                let jumps = if added_jumps.is_empty() {
                    "jumps already present".to_string()
                } else {
                    format!("added jumps {}", added_jumps.join(", "))
                };
                writeln!(
                    f,
                    "knit-init: capture rules installed in table {}: chains {}; {jumps}",
                    table.name(),
                    chains.join(", ")
                )
            }
            Outcome::Removed {
                table,
                chains,
                jumps,
            } => writeln!(
                f,
                "knit-init: capture rules removed from table {}: {jumps} jump(s), chains {}",
                table.name(),
                chains.join(", ")
            ),
            Outcome::NothingToRemove { table } => writeln!(
                f,
                "knit-init: no capture rules installed in table {}; nothing to remove",
                table.name()
            ),
        }
    }
}

/// Runs the invocation `cli` describes against `netfilter`.
pub fn run<N: Netfilter + ?Sized>(cli: &Cli, netfilter: &N) -> Result<Outcome, InitError> {
    let ruleset = plan(&cli.capture_config()?);
    match (cli.dry_run, cli.cleanup) {
        (true, false) => Ok(Outcome::DryRun(render_restore(
            &ruleset,
            &ExistingState::empty(ruleset.table),
        ))),
        // Without access to the kernel, show the removal of what this configuration installs.
        (true, true) => Ok(Outcome::DryRun(
            render_cleanup(&installed_state(&ruleset))?.unwrap_or_default(),
        )),
        (false, false) => apply(netfilter, &ruleset),
        (false, true) => cleanup(netfilter, ruleset.table),
    }
}

/// Installs `ruleset` in one transaction, adding only the jumps that are missing.
pub fn apply<N: Netfilter + ?Sized>(
    netfilter: &N,
    ruleset: &Ruleset,
) -> Result<Outcome, InitError> {
    let existing = ExistingState::parse_save(ruleset.table, &netfilter.save(ruleset.table)?)?;
    let added_jumps = ruleset
        .jumps
        .iter()
        .filter(|jump| !existing.has_jump(jump.from.name(), &jump.to))
        .map(|jump| format!("{} -> {}", jump.from.name(), jump.to))
        .collect();
    netfilter.restore(&render_restore(ruleset, &existing))?;
    Ok(Outcome::Applied {
        table: ruleset.table,
        chains: ruleset.chains.iter().map(|c| c.name.clone()).collect(),
        added_jumps,
    })
}

/// Removes every knit-init chain of `table` and the jumps into them, in one
/// transaction; succeeds without running anything when none are installed.
pub fn cleanup<N: Netfilter + ?Sized>(netfilter: &N, table: Table) -> Result<Outcome, InitError> {
    let existing = ExistingState::parse_save(table, &netfilter.save(table)?)?;
    let Some(transaction) = render_cleanup(&existing)? else {
        return Ok(Outcome::NothingToRemove { table });
    };
    netfilter.restore(&transaction)?;
    Ok(Outcome::Removed {
        table,
        chains: existing.knit_chains().map(str::to_string).collect(),
        jumps: existing.rules_entering_knit_chains().count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::cell::RefCell;

    /// Serves a fixed iptables-save text and records restore transactions.
    struct RecordingNetfilter {
        saved: String,
        restored: RefCell<Vec<String>>,
    }

    impl RecordingNetfilter {
        fn with_saved(saved: &str) -> Self {
            RecordingNetfilter {
                saved: saved.to_string(),
                restored: RefCell::new(Vec::new()),
            }
        }
    }

    impl Netfilter for RecordingNetfilter {
        fn save(&self, table: Table) -> Result<String, InitError> {
            assert_eq!(table, Table::Nat);
            Ok(self.saved.clone())
        }

        fn restore(&self, transaction: &str) -> Result<(), InitError> {
            self.restored.borrow_mut().push(transaction.to_string());
            Ok(())
        }
    }

    /// Fails every call, as iptables does without CAP_NET_ADMIN.
    struct DeniedNetfilter;

    impl Netfilter for DeniedNetfilter {
        fn save(&self, _table: Table) -> Result<String, InitError> {
            Err(InitError::PermissionDenied {
                binary: "iptables-save".into(),
                stderr: "Permission denied (you must be root)".into(),
            })
        }

        fn restore(&self, _transaction: &str) -> Result<(), InitError> {
            panic!("restore must not run after save failed")
        }
    }

    const FRESH: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
                         :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("knit-init").chain(args.iter().copied()))
            .expect("valid arguments")
    }

    /// iptables-save output of a fresh table after the default rules were applied.
    fn installed_save_text() -> String {
        let ruleset = plan(&crate::config::CaptureConfig::default());
        let state = installed_state(&ruleset);
        let mut text = String::from("*nat\n");
        for chain in state.chains() {
            let policy = if Table::Nat.is_builtin(chain) {
                "ACCEPT"
            } else {
                "-"
            };
            text.push_str(&format!(":{chain} {policy} [0:0]\n"));
        }
        for rule in state.rules() {
            text.push_str(&format!("-A {} {}\n", rule.chain, rule.spec));
        }
        text.push_str("COMMIT\n");
        text
    }

    #[test]
    fn apply_on_a_fresh_table_adds_both_jumps_in_one_transaction() {
        let netfilter = RecordingNetfilter::with_saved(FRESH);
        let outcome = run(&cli(&[]), &netfilter).expect("apply succeeds");
        let restored = netfilter.restored.borrow();
        assert_eq!(restored.len(), 1, "exactly one transaction");
        assert_eq!(
            restored[0],
            render_restore(
                &plan(&Default::default()),
                &ExistingState::empty(Table::Nat)
            )
        );
        match outcome {
            Outcome::Applied { added_jumps, .. } => assert_eq!(
                added_jumps,
                ["PREROUTING -> KNIT_INBOUND", "OUTPUT -> KNIT_OUTPUT"]
            ),
            other => panic!("expected Applied, got {other:?}"),
        }
    }

    #[test]
    fn reapply_rewrites_chains_but_adds_no_jump() {
        let netfilter = RecordingNetfilter::with_saved(&installed_save_text());
        let outcome = run(&cli(&[]), &netfilter).expect("apply succeeds");
        let restored = netfilter.restored.borrow();
        assert_eq!(restored.len(), 1);
        assert!(!restored[0].contains("-A PREROUTING") && !restored[0].contains("-A OUTPUT"));
        assert!(restored[0].contains(":KNIT_OUTPUT - [0:0]"));
        assert!(
            outcome.to_string().contains("jumps already present"),
            "{outcome}"
        );
    }

    #[test]
    fn cleanup_with_nothing_installed_runs_nothing() {
        let netfilter = RecordingNetfilter::with_saved(FRESH);
        let outcome = run(&cli(&["--cleanup"]), &netfilter).expect("cleanup succeeds");
        assert_eq!(outcome, Outcome::NothingToRemove { table: Table::Nat });
        assert!(netfilter.restored.borrow().is_empty());
    }

    #[test]
    fn cleanup_removes_what_apply_installed_in_one_transaction() {
        let netfilter = RecordingNetfilter::with_saved(&installed_save_text());
        let outcome = run(&cli(&["--cleanup"]), &netfilter).expect("cleanup succeeds");
        let restored = netfilter.restored.borrow();
        assert_eq!(restored.len(), 1);
        assert_eq!(
            restored[0].lines().filter(|l| l.starts_with("-D ")).count(),
            2
        );
        match outcome {
            Outcome::Removed { chains, jumps, .. } => {
                assert_eq!(jumps, 2);
                assert_eq!(
                    chains,
                    [
                        "KNIT_INBOUND",
                        "KNIT_IN_REDIRECT",
                        "KNIT_OUTPUT",
                        "KNIT_REDIRECT"
                    ]
                );
            }
            other => panic!("expected Removed, got {other:?}"),
        }
    }

    #[test]
    fn dry_runs_touch_nothing() {
        for args in [&["--dry-run"][..], &["--dry-run", "--cleanup"][..]] {
            let outcome = run(&cli(args), &DeniedNetfilter).expect("dry run needs no access");
            match outcome {
                Outcome::DryRun(text) => {
                    assert!(
                        text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
                        "{text}"
                    )
                }
                other => panic!("{args:?}: expected DryRun, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_stop_before_any_change() {
        for args in [&[][..], &["--cleanup"][..]] {
            let err = run(&cli(args), &DeniedNetfilter).expect_err("no access");
            assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        }
        let invalid = run(&cli(&["--inbound-port", "15001"]), &DeniedNetfilter)
            .expect_err("invalid config is caught before touching netfilter");
        assert!(matches!(invalid, InitError::InvalidConfig { .. }));
    }
}
