//! What one invocation did, as the binary prints it.

use std::fmt;

use crate::family::Family;
use crate::rules::Table;

/// Everything a run reports: one outcome per family (or the dry-run text),
/// plus warnings, which the binary prints to stderr.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// What happened, in order; printed to stdout.
    pub outcomes: Vec<Outcome>,
    /// Problems that did not stop the run.
    pub warnings: Vec<String>,
}

impl Report {
    /// The outcome for `family`, if the run got that far.
    pub fn outcome(&self, family: Family) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|outcome| outcome.family() == Some(family))
    }
}

/// What happened to one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was changed; this text shows what would run, for every family.
    DryRun(String),
    /// The capture rules are installed.
    Applied {
        /// The family written.
        family: Family,
        /// The table written.
        table: Table,
        /// The chains (re)written.
        chains: Vec<String>,
        /// Jumps appended to builtin chains, as `FROM -> TO`; empty when all were present.
        added_jumps: Vec<String>,
        /// knit-init chains of an earlier run these options no longer use, now deleted.
        removed_chains: Vec<String>,
    },
    /// Everything knit-init had installed was removed.
    Removed {
        /// The family written.
        family: Family,
        /// The table written.
        table: Table,
        /// The chains deleted.
        chains: Vec<String>,
        /// How many jump rules were deleted from builtin chains.
        jumps: usize,
    },
    /// `--cleanup` found nothing of knit-init's; nothing was run.
    NothingToRemove {
        /// The family inspected.
        family: Family,
        /// The table inspected.
        table: Table,
    },
    /// The family was deliberately not touched.
    Skipped {
        /// The family left alone.
        family: Family,
        /// Why, in words an operator can act on.
        reason: String,
    },
}

impl Outcome {
    /// The family the outcome is about; `None` for a dry run, which covers all.
    pub fn family(&self) -> Option<Family> {
        match self {
            Outcome::DryRun(_) => None,
            Outcome::Applied { family, .. }
            | Outcome::Removed { family, .. }
            | Outcome::NothingToRemove { family, .. }
            | Outcome::Skipped { family, .. } => Some(*family),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.outcomes.iter().try_for_each(|outcome| outcome.fmt(f))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::DryRun(text) => f.write_str(text),
            Outcome::Applied {
                family,
                table,
                chains,
                added_jumps,
                removed_chains,
            } => {
                let jumps = if added_jumps.is_empty() {
                    "jumps already present".to_string()
                } else {
                    format!("added jumps {}", added_jumps.join(", "))
                };
                let removed = if removed_chains.is_empty() {
                    String::new()
                } else {
                    format!("; removed unused chains {}", removed_chains.join(", "))
                };
                writeln!(
                    f,
                    "knit-init: {family} capture rules installed in table {}: chains {}; {jumps}{removed}",
                    table.name(),
                    chains.join(", ")
                )
            }
            Outcome::Removed {
                family,
                table,
                chains,
                jumps,
            } => writeln!(
                f,
                "knit-init: {family} capture rules removed from table {}: {jumps} jump(s), chains {}",
                table.name(),
                chains.join(", ")
            ),
            Outcome::NothingToRemove { family, table } => writeln!(
                f,
                "knit-init: no {family} capture rules installed in table {}; nothing to remove",
                table.name()
            ),
            Outcome::Skipped { family, reason } => {
                writeln!(f, "knit-init: {family} left alone: {reason}")
            }
        }
    }
}
