//! The `--dry-run` text: every family's transaction, under a header line each.
//!
//! Stable and reviewable (golden files pin it): it depends on the options
//! only, never on the system, so `--ipv6 auto` is shown as off.

use crate::cli::Ipv6Mode;
use crate::config::CaptureConfig;
use crate::error::InitError;
use crate::family::Family;
use crate::plan::plan;
use crate::render::{installed_state, render_cleanup, render_restore};
use crate::rules::Table;
use crate::state::ExistingState;

/// The transactions an apply (or, with `cleanup`, a cleanup) would run on
/// tables holding nothing but what these options install.
pub fn dry_run_text(
    config: &CaptureConfig,
    ipv6: Ipv6Mode,
    cleanup: bool,
) -> Result<String, InitError> {
    let mut text = String::new();
    for family in Family::ALL {
        let header = format!("# {} ({})", family.restore_tool(), family.label());
        let left_out = match (family, ipv6) {
            (Family::Ipv4, _) | (Family::Ipv6, Ipv6Mode::On) => None,
            (Family::Ipv6, Ipv6Mode::Off) => Some("left out: --ipv6 off"),
            (Family::Ipv6, Ipv6Mode::Auto) => Some(
                "left out: --ipv6 auto counts as off in a dry run, which never probes \
                 the system; pass --ipv6 on to include it",
            ),
        };
        if let Some(reason) = left_out {
            text.push_str(&format!("{header}: {reason}\n"));
            continue;
        }
        text.push_str(&header);
        text.push('\n');
        let ruleset = plan(config, family);
        if cleanup {
            // Without access to the kernel, show the removal of what this configuration installs.
            let transaction = render_cleanup(&installed_state(&ruleset))?;
            text.push_str(&transaction.unwrap_or_default());
        } else {
            text.push_str(&render_restore(
                &ruleset,
                &ExistingState::empty(Table::Nat),
            )?);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_gets_a_header_and_ipv6_appears_only_when_on() {
        let config = CaptureConfig::default();
        for cleanup in [false, true] {
            let on = dry_run_text(&config, Ipv6Mode::On, cleanup).expect("renders");
            let headers: Vec<&str> = on.lines().filter(|l| l.starts_with('#')).collect();
            assert_eq!(
                headers,
                ["# iptables-restore (IPv4)", "# ip6tables-restore (IPv6)"]
            );
            assert_eq!(on.matches("*nat\n").count(), 2, "{on}");
            assert_eq!(on.matches("COMMIT\n").count(), 2, "{on}");

            for (mode, reason) in [
                (Ipv6Mode::Off, "--ipv6 off"),
                (Ipv6Mode::Auto, "--ipv6 auto counts as off in a dry run"),
            ] {
                let text = dry_run_text(&config, mode, cleanup).expect("renders");
                assert_eq!(text.matches("*nat\n").count(), 1, "{text}");
                let last = text.lines().last().expect("has lines");
                assert!(
                    last.starts_with("# ip6tables-restore (IPv6): left out: ")
                        && last.contains(reason),
                    "{last}"
                );
                assert!(!text.contains("::1/128"), "{text}");
            }
        }
    }
}
