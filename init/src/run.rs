//! What one invocation does: plan, read the current state, check, apply or clean up.
//!
//! Applying is fail-closed across families: IPv4 first, then IPv6; if IPv6
//! cannot be applied, the IPv4 rules are removed again and the run fails, so
//! a pod never starts with IPv4 captured and IPv6 open. Everything that can
//! be checked without changing anything (permissions, both families' tools,
//! backends) is checked before the first change.

use crate::backend::{BackendCheck, check_backends};
use crate::cli::{Cli, Ipv6Mode};
use crate::config::CaptureConfig;
use crate::dry_run::dry_run_text;
use crate::error::InitError;
use crate::family::Family;
use crate::iptables::Netfilter;
use crate::outcome::{Outcome, Report};
use crate::plan::plan;
use crate::probe::AddressProbe;
use crate::render::{render_cleanup, render_restore};
use crate::rules::{Ruleset, Table};
use crate::state::ExistingState;

/// The side-effecting parts a run uses, one executor per family so either
/// can be replaced on its own.
#[derive(Clone, Copy)]
pub struct Tools<'a> {
    /// The IPv4 iptables tools.
    pub ipv4: &'a dyn Netfilter,
    /// The IPv6 ip6tables tools.
    pub ipv6: &'a dyn Netfilter,
    /// Resolves `--ipv6 auto`.
    pub addresses: &'a dyn AddressProbe,
}

/// Runs the invocation `cli` describes. `--netns` is not handled here: the
/// binary enters the namespace before calling this (see [`crate::netns`]).
pub fn run(cli: &Cli, tools: &Tools<'_>) -> Result<Report, InitError> {
    let config = cli.capture_config()?;
    if cli.dry_run {
        return Ok(Report {
            outcomes: vec![Outcome::DryRun(dry_run_text(
                &config,
                cli.ipv6,
                cli.cleanup,
            )?)],
            warnings: Vec::new(),
        });
    }
    if cli.cleanup {
        cleanup_all(cli.ipv6, cli.allow_backend_mismatch, tools)
    } else {
        apply_all(&config, cli.ipv6, cli.allow_backend_mismatch, tools)
    }
}

/// Installs the rules of IPv4 and, when IPv6 is on, IPv6; fail-closed as the
/// module docs describe.
pub fn apply_all(
    config: &CaptureConfig,
    ipv6: Ipv6Mode,
    allow_backend_mismatch: bool,
    tools: &Tools<'_>,
) -> Result<Report, InitError> {
    let mut report = Report::default();
    // Reading first means a missing privilege is the first and only error.
    let ipv4_before = read_state(tools.ipv4, Table::Nat)?;
    let ipv6_skip_reason = match ipv6 {
        Ipv6Mode::On => None,
        Ipv6Mode::Off => Some("--ipv6 off".to_string()),
        Ipv6Mode::Auto => {
            let has_ipv6 = tools.addresses.has_global_ipv6().map_err(|source| {
                InitError::Ipv6AutoDetection {
                    source: Box::new(source),
                }
            })?;
            (!has_ipv6).then(|| {
                "--ipv6 auto found no global-scope IPv6 address in this network namespace"
                    .to_string()
            })
        }
    };
    check_backend(
        Family::Ipv4,
        tools.ipv4,
        allow_backend_mismatch,
        &mut report,
    )?;
    let ipv6_before = match &ipv6_skip_reason {
        Some(_) => None,
        None => {
            check_backend(
                Family::Ipv6,
                tools.ipv6,
                allow_backend_mismatch,
                &mut report,
            )?;
            // A missing ip6tables-save or IPv6 nat support fails here, before IPv4 changes.
            Some(read_state(tools.ipv6, Table::Nat)?)
        }
    };

    let ipv4_outcome = apply_ruleset(tools.ipv4, &plan(config, Family::Ipv4), &ipv4_before)?;
    report.outcomes.push(ipv4_outcome);
    match (ipv6_before, ipv6_skip_reason) {
        (Some(before), _) => {
            match apply_ruleset(tools.ipv6, &plan(config, Family::Ipv6), &before) {
                Ok(outcome) => report.outcomes.push(outcome),
                Err(ipv6_error) => return Err(roll_back_ipv4(tools.ipv4, ipv6_error)),
            }
            if let Err(address_error) = tools.addresses.ensure_delivery_source_v6() {
                // Without ::6 the proxy cannot deliver IPv6 to its app: fail
                // closed, as for any other IPv6 failure.
                let _ = cleanup(tools.ipv6, Family::Ipv6, Table::Nat);
                return Err(roll_back_ipv4(tools.ipv4, address_error));
            }
        }
        (None, reason) => report.outcomes.push(Outcome::Skipped {
            family: Family::Ipv6,
            reason: reason.unwrap_or_default(),
        }),
    }
    Ok(report)
}

/// Removes the IPv4 rules after IPv6 failed, with the cleanup transaction.
fn roll_back_ipv4(ipv4: &dyn Netfilter, ipv6_error: InitError) -> InitError {
    match cleanup(ipv4, Family::Ipv4, Table::Nat) {
        Ok(_) => InitError::Ipv6FailedRolledBack {
            source: Box::new(ipv6_error),
        },
        Err(rollback_error) => InitError::RollbackFailed {
            ipv6: Box::new(ipv6_error),
            rollback: Box::new(rollback_error),
        },
    }
}

/// Removes knit-init's rules from IPv4 and, unless `--ipv6 off`, IPv6 — not
/// only when auto-detection would say IPv6 is on: the address may be gone
/// while the rules stay.
pub fn cleanup_all(
    ipv6: Ipv6Mode,
    allow_backend_mismatch: bool,
    tools: &Tools<'_>,
) -> Result<Report, InitError> {
    let mut report = Report::default();
    read_state(tools.ipv4, Table::Nat)?;
    check_backend(
        Family::Ipv4,
        tools.ipv4,
        allow_backend_mismatch,
        &mut report,
    )?;
    let skip = |reason: String| Outcome::Skipped {
        family: Family::Ipv6,
        reason,
    };
    let ipv6_skipped = match ipv6 {
        Ipv6Mode::Off => Some(skip("--ipv6 off".to_string())),
        Ipv6Mode::On => {
            read_state(tools.ipv6, Table::Nat)?;
            None
        }
        // Without ip6tables nothing can have installed IPv6 rules through it.
        Ipv6Mode::Auto => match read_state(tools.ipv6, Table::Nat) {
            Ok(_) => None,
            Err(InitError::BinaryNotFound { binary, .. }) => Some(skip(format!(
                "`{binary}` is not installed, so no IPv6 rules can be ours"
            ))),
            Err(other) => return Err(other),
        },
    };
    if ipv6_skipped.is_none() {
        check_backend(
            Family::Ipv6,
            tools.ipv6,
            allow_backend_mismatch,
            &mut report,
        )?;
    }
    report
        .outcomes
        .push(cleanup(tools.ipv4, Family::Ipv4, Table::Nat)?);
    match ipv6_skipped {
        None => report
            .outcomes
            .push(cleanup(tools.ipv6, Family::Ipv6, Table::Nat)?),
        Some(skipped) => report.outcomes.push(skipped),
    }
    Ok(report)
}

fn read_state(netfilter: &dyn Netfilter, table: Table) -> Result<ExistingState, InitError> {
    ExistingState::parse_save(table, &netfilter.save(table)?)
}

fn check_backend(
    family: Family,
    netfilter: &dyn Netfilter,
    allow_mismatch: bool,
    report: &mut Report,
) -> Result<(), InitError> {
    match check_backends(family, &netfilter.inspect_backends()?) {
        BackendCheck::Clean => Ok(()),
        BackendCheck::Unchecked(why) => {
            report.warnings.push(why);
            Ok(())
        }
        BackendCheck::Mismatch { in_use, finding } => {
            let error = InitError::BackendMismatch {
                family,
                in_use,
                finding,
            };
            if !allow_mismatch {
                return Err(error);
            }
            report
                .warnings
                .push(format!("{error} (continuing: --allow-backend-mismatch)"));
            Ok(())
        }
    }
}

/// Installs `ruleset` on top of `existing` in one transaction.
pub fn apply_ruleset(
    netfilter: &dyn Netfilter,
    ruleset: &Ruleset,
    existing: &ExistingState,
) -> Result<Outcome, InitError> {
    let transaction = render_restore(ruleset, existing)?;
    let added_jumps = ruleset
        .jumps
        .iter()
        .filter(|jump| !existing.has_jump(jump.from.name(), &jump.to))
        .map(|jump| format!("{} -> {}", jump.from.name(), jump.to))
        .collect();
    let chains: Vec<String> = ruleset.chains.iter().map(|c| c.name.clone()).collect();
    let removed_chains = existing
        .knit_chains()
        .filter(|name| !chains.iter().any(|planned| planned == name))
        .map(str::to_string)
        .collect();
    netfilter.restore(&transaction)?;
    Ok(Outcome::Applied {
        family: ruleset.family,
        table: ruleset.table,
        chains,
        added_jumps,
        removed_chains,
    })
}

/// Removes every knit-init chain of `table` and the jumps into them, in one
/// transaction; succeeds without running anything when none are installed.
pub fn cleanup(
    netfilter: &dyn Netfilter,
    family: Family,
    table: Table,
) -> Result<Outcome, InitError> {
    let existing = read_state(netfilter, table)?;
    let Some(transaction) = render_cleanup(&existing)? else {
        return Ok(Outcome::NothingToRemove { family, table });
    };
    netfilter.restore(&transaction)?;
    Ok(Outcome::Removed {
        family,
        table,
        chains: existing.knit_chains().map(str::to_string).collect(),
        jumps: existing.rules_entering_knit_chains().count(),
    })
}

#[cfg(test)]
mod tests;
