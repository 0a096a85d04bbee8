use std::cell::RefCell;
use std::collections::VecDeque;

use clap::Parser;

use super::*;
use crate::backend::{BackendInspection, OtherBackend};
use crate::family::Backend;
use crate::render::{installed_state, render_save};

const FRESH: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
                     :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

fn installed_text(family: Family) -> String {
    render_save(&installed_state(&plan(&CaptureConfig::default(), family)))
}

fn clean_backends() -> BackendInspection {
    BackendInspection {
        in_use: Ok("iptables-save v1.8.9 (nf_tables)".to_string()),
        other: Some(OtherBackend {
            backend: Backend::Legacy,
            tool: "iptables-legacy-save".to_string(),
            dump: Ok(String::new()),
        }),
    }
}

/// Serves iptables-save texts in order (repeating the last) and records restores.
struct FakeNetfilter {
    saves: RefCell<VecDeque<String>>,
    restored: RefCell<Vec<String>>,
    restore_error: Option<fn() -> InitError>,
    save_error: Option<fn() -> InitError>,
    backends: BackendInspection,
}

impl FakeNetfilter {
    fn with_saves(saves: &[&str]) -> Self {
        FakeNetfilter {
            saves: RefCell::new(saves.iter().map(|s| s.to_string()).collect()),
            restored: RefCell::new(Vec::new()),
            restore_error: None,
            save_error: None,
            backends: clean_backends(),
        }
    }

    fn fresh() -> Self {
        FakeNetfilter::with_saves(&[FRESH])
    }

    fn restored(&self) -> Vec<String> {
        self.restored.borrow().clone()
    }
}

impl Netfilter for FakeNetfilter {
    fn save(&self, table: Table) -> Result<String, InitError> {
        assert_eq!(table, Table::Nat);
        if let Some(error) = self.save_error {
            return Err(error());
        }
        let mut saves = self.saves.borrow_mut();
        if saves.len() > 1 {
            Ok(saves.pop_front().unwrap_or_default())
        } else {
            Ok(saves.front().cloned().unwrap_or_default())
        }
    }

    fn restore(&self, transaction: &str) -> Result<(), InitError> {
        if let Some(error) = self.restore_error {
            return Err(error());
        }
        self.restored.borrow_mut().push(transaction.to_string());
        Ok(())
    }

    fn inspect_backends(&self) -> Result<BackendInspection, InitError> {
        Ok(self.backends.clone())
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

    fn inspect_backends(&self) -> Result<BackendInspection, InitError> {
        panic!("backends must not be inspected after save failed")
    }
}

/// A family that must not be touched at all.
struct UntouchableNetfilter;

impl Netfilter for UntouchableNetfilter {
    fn save(&self, _table: Table) -> Result<String, InitError> {
        panic!("this family must not be read")
    }

    fn restore(&self, _transaction: &str) -> Result<(), InitError> {
        panic!("this family must not be written")
    }

    fn inspect_backends(&self) -> Result<BackendInspection, InitError> {
        panic!("this family must not be inspected")
    }
}

struct Addresses(Result<bool, &'static str>);

impl AddressProbe for Addresses {
    fn has_global_ipv6(&self) -> Result<bool, InitError> {
        self.0.map_err(|stderr| InitError::ProbeFailed {
            command: "ip -6 -o addr show scope global".into(),
            status: "exit status 1".into(),
            stderr: stderr.into(),
        })
    }

    fn ensure_delivery_source_v6(&self) -> Result<(), InitError> {
        Ok(())
    }
}

/// An address probe that must not be asked.
struct NoProbe;

impl AddressProbe for NoProbe {
    fn has_global_ipv6(&self) -> Result<bool, InitError> {
        panic!("the namespace must not be probed")
    }

    fn ensure_delivery_source_v6(&self) -> Result<(), InitError> {
        Ok(())
    }
}

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("knit-init").chain(args.iter().copied()))
        .expect("valid arguments")
}

fn tools<'a>(
    ipv4: &'a dyn Netfilter,
    ipv6: &'a dyn Netfilter,
    addresses: &'a dyn AddressProbe,
) -> Tools<'a> {
    Tools {
        ipv4,
        ipv6,
        addresses,
    }
}

fn expected_restore(family: Family) -> String {
    render_restore(
        &plan(&CaptureConfig::default(), family),
        &ExistingState::empty(Table::Nat),
    )
    .expect("nothing stale")
}

#[test]
fn apply_with_ipv6_on_writes_one_transaction_per_family() {
    let (v4, v6) = (FakeNetfilter::fresh(), FakeNetfilter::fresh());
    let report = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect("applies");
    assert_eq!(v4.restored(), [expected_restore(Family::Ipv4)]);
    assert_eq!(v6.restored(), [expected_restore(Family::Ipv6)]);
    for family in Family::ALL {
        match report.outcome(family) {
            Some(Outcome::Applied { added_jumps, .. }) => assert_eq!(
                added_jumps,
                &["PREROUTING -> KNIT_INBOUND", "OUTPUT -> KNIT_OUTPUT"]
            ),
            other => panic!("{family}: expected Applied, got {other:?}"),
        }
    }
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let text = report.to_string();
    assert!(
        text.starts_with("knit-init: IPv4 capture rules installed in table nat: chains "),
        "{text}"
    );
    assert!(
        text.contains("\nknit-init: IPv6 capture rules installed"),
        "{text}"
    );
}

#[test]
fn ipv6_auto_follows_the_namespace_and_off_never_touches_ipv6() {
    let v4 = FakeNetfilter::fresh();
    let report = run(
        &cli(&[]),
        &tools(&v4, &UntouchableNetfilter, &Addresses(Ok(false))),
    )
    .expect("applies IPv4 only");
    assert_eq!(v4.restored().len(), 1);
    assert_eq!(
        report.outcome(Family::Ipv6),
        Some(&Outcome::Skipped {
            family: Family::Ipv6,
            reason: "--ipv6 auto found no global-scope IPv6 address in this network namespace"
                .into()
        })
    );

    let (v4, v6) = (FakeNetfilter::fresh(), FakeNetfilter::fresh());
    run(&cli(&[]), &tools(&v4, &v6, &Addresses(Ok(true)))).expect("applies both");
    assert_eq!(v6.restored(), [expected_restore(Family::Ipv6)]);

    let v4 = FakeNetfilter::fresh();
    let report = run(
        &cli(&["--ipv6", "off"]),
        &tools(&v4, &UntouchableNetfilter, &NoProbe),
    )
    .expect("applies IPv4 only");
    assert!(
        report
            .to_string()
            .contains("knit-init: IPv6 left alone: --ipv6 off"),
        "{report}"
    );

    let v4 = FakeNetfilter::fresh();
    let err = run(
        &cli(&[]),
        &tools(&v4, &UntouchableNetfilter, &Addresses(Err("boom"))),
    )
    .expect_err("an unanswerable auto is an error");
    let message = format!("{:#}", anyhow::Error::new(err));
    assert!(
        message.starts_with("cannot resolve --ipv6 auto (pass --ipv6 on or --ipv6 off")
            && message.contains("`ip -6 -o addr show scope global` failed"),
        "{message}"
    );
    assert!(v4.restored().is_empty());
}

#[test]
fn reapply_rewrites_chains_but_adds_no_jump() {
    let v4 = FakeNetfilter::with_saves(&[&installed_text(Family::Ipv4)]);
    let v6 = FakeNetfilter::with_saves(&[&installed_text(Family::Ipv6)]);
    let report = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect("applies");
    for restored in [v4.restored(), v6.restored()] {
        assert_eq!(restored.len(), 1);
        assert!(!restored[0].contains("-A PREROUTING") && !restored[0].contains("-A OUTPUT"));
        assert!(restored[0].contains(":KNIT_OUTPUT - [0:0]"));
    }
    assert_eq!(
        report.to_string().matches("jumps already present").count(),
        2
    );
}

#[test]
fn a_failed_ipv6_apply_removes_the_ipv4_rules_again() {
    // IPv4 reads the fresh table, then (for the rollback) what the apply left.
    let v4 = FakeNetfilter::with_saves(&[FRESH, &installed_text(Family::Ipv4)]);
    let v6 = FakeNetfilter {
        restore_error: Some(|| InitError::RestoreFailed {
            binary: "ip6tables-restore".into(),
            status: "exit status 1".into(),
            stderr: "forced".into(),
        }),
        ..FakeNetfilter::fresh()
    };
    let err = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect_err("fails");
    let restored = v4.restored();
    assert_eq!(restored.len(), 2, "apply, then cleanup: {restored:#?}");
    assert_eq!(restored[0], expected_restore(Family::Ipv4));
    assert_eq!(
        Some(restored[1].clone()),
        render_cleanup(&installed_state(&plan(
            &CaptureConfig::default(),
            Family::Ipv4
        )))
        .expect("ours only")
    );
    match &err {
        InitError::Ipv6FailedRolledBack { source } => {
            assert!(source.to_string().contains("forced"), "{source}")
        }
        other => panic!("expected Ipv6FailedRolledBack, got {other:?}"),
    }
    let chain = format!("{:#}", anyhow::Error::new(err));
    assert!(
        chain.contains("the IPv4 rules were removed again") && chain.ends_with("forced"),
        "{chain}"
    );
}

#[test]
fn a_failed_rollback_says_ipv4_may_be_captured_alone() {
    struct FailsSecondRestore(FakeNetfilter);
    impl Netfilter for FailsSecondRestore {
        fn save(&self, table: Table) -> Result<String, InitError> {
            self.0.save(table)
        }
        fn restore(&self, transaction: &str) -> Result<(), InitError> {
            if self.0.restored().is_empty() {
                return self.0.restore(transaction);
            }
            Err(InitError::RestoreFailed {
                binary: "iptables-restore".into(),
                status: "exit status 4".into(),
                stderr: "resource busy".into(),
            })
        }
        fn inspect_backends(&self) -> Result<BackendInspection, InitError> {
            self.0.inspect_backends()
        }
    }
    let v4 = FailsSecondRestore(FakeNetfilter::with_saves(&[
        FRESH,
        &installed_text(Family::Ipv4),
    ]));
    let v6 = FakeNetfilter {
        restore_error: Some(|| InitError::BinaryNotFound {
            binary: "ip6tables-restore".into(),
            package: "iptables",
        }),
        ..FakeNetfilter::fresh()
    };
    let err = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect_err("fails");
    let message = format!("{:#}", anyhow::Error::new(err));
    for fragment in [
        "`ip6tables-restore` was not found in PATH",
        "IPv4 may be captured while IPv6 is not",
        "knit-init --cleanup",
        "resource busy",
    ] {
        assert!(message.contains(fragment), "{message}");
    }
}

#[test]
fn ipv6_problems_found_before_any_change_leave_ipv4_untouched() {
    let v4 = FakeNetfilter::fresh();
    let v6 = FakeNetfilter {
        save_error: Some(|| InitError::BinaryNotFound {
            binary: "ip6tables-save".into(),
            package: "iptables",
        }),
        ..FakeNetfilter::fresh()
    };
    let err = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect_err("fails");
    assert!(matches!(err, InitError::BinaryNotFound { .. }), "{err:?}");
    assert!(v4.restored().is_empty());
}

#[test]
fn backend_mismatch_fails_before_any_change_unless_allowed() {
    let mismatched = || BackendInspection {
        other: Some(OtherBackend {
            backend: Backend::Legacy,
            tool: "ip6tables-legacy-save".into(),
            dump: Ok("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n".into()),
        }),
        ..clean_backends()
    };
    let v4 = FakeNetfilter::fresh();
    let v6 = FakeNetfilter {
        backends: mismatched(),
        ..FakeNetfilter::fresh()
    };
    let err = run(&cli(&["--ipv6", "on"]), &tools(&v4, &v6, &NoProbe)).expect_err("mismatch");
    let message = err.to_string();
    for fragment in [
        "iptables backend mismatch (IPv6)",
        "iptables-save v1.8.9 (nf_tables)",
        "the legacy backend (`ip6tables-legacy-save`) holds 1 rule(s) in its nat table",
        "--allow-backend-mismatch",
    ] {
        assert!(message.contains(fragment), "{message}");
    }
    assert!(v4.restored().is_empty() && v6.restored().is_empty());

    let v4 = FakeNetfilter::fresh();
    let v6 = FakeNetfilter {
        backends: mismatched(),
        ..FakeNetfilter::fresh()
    };
    let report = run(
        &cli(&["--ipv6", "on", "--allow-backend-mismatch"]),
        &tools(&v4, &v6, &NoProbe),
    )
    .expect("downgraded to a warning");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("continuing"),
        "{:?}",
        report.warnings
    );
    assert_eq!((v4.restored().len(), v6.restored().len()), (1, 1));
}

#[test]
fn an_unknown_backend_is_a_warning_not_a_silent_pass() {
    let v4 = FakeNetfilter {
        backends: BackendInspection {
            in_use: Err("`iptables-save --version` failed".into()),
            other: None,
        },
        ..FakeNetfilter::fresh()
    };
    let report = run(
        &cli(&["--ipv6", "off"]),
        &tools(&v4, &UntouchableNetfilter, &NoProbe),
    )
    .expect("applies");
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].contains("cannot tell which IPv4 iptables backend"));
}

#[test]
fn cleanup_with_nothing_installed_runs_nothing() {
    let (v4, v6) = (FakeNetfilter::fresh(), FakeNetfilter::fresh());
    let report = run(&cli(&["--cleanup"]), &tools(&v4, &v6, &NoProbe)).expect("cleans");
    assert_eq!(
        report.outcomes,
        [
            Outcome::NothingToRemove {
                family: Family::Ipv4,
                table: Table::Nat
            },
            Outcome::NothingToRemove {
                family: Family::Ipv6,
                table: Table::Nat
            }
        ]
    );
    assert!(v4.restored().is_empty() && v6.restored().is_empty());
}

#[test]
fn cleanup_removes_both_families_whatever_auto_detection_would_say() {
    let v4 = FakeNetfilter::with_saves(&[&installed_text(Family::Ipv4)]);
    let v6 = FakeNetfilter::with_saves(&[&installed_text(Family::Ipv6)]);
    // The probe is never asked: the rules may outlive the address.
    let report = run(&cli(&["--cleanup"]), &tools(&v4, &v6, &NoProbe)).expect("cleans");
    for (family, netfilter) in [(Family::Ipv4, &v4), (Family::Ipv6, &v6)] {
        let restored = netfilter.restored();
        assert_eq!(restored.len(), 1, "{family}");
        assert_eq!(
            restored[0].lines().filter(|l| l.starts_with("-D ")).count(),
            2
        );
        match report.outcome(family) {
            Some(Outcome::Removed { chains, jumps, .. }) => {
                assert_eq!(*jumps, 2);
                assert_eq!(
                    chains,
                    &[
                        "KNIT_INBOUND",
                        "KNIT_IN_REDIRECT",
                        "KNIT_OUTPUT",
                        "KNIT_REDIRECT"
                    ]
                );
            }
            other => panic!("{family}: expected Removed, got {other:?}"),
        }
    }
}

#[test]
fn cleanup_skips_ipv6_only_when_off_or_without_ip6tables() {
    let v4 = FakeNetfilter::fresh();
    let report = run(
        &cli(&["--cleanup", "--ipv6", "off"]),
        &tools(&v4, &UntouchableNetfilter, &NoProbe),
    )
    .expect("cleans IPv4");
    assert!(
        report.to_string().contains("IPv6 left alone: --ipv6 off"),
        "{report}"
    );

    let missing = || FakeNetfilter {
        save_error: Some(|| InitError::BinaryNotFound {
            binary: "ip6tables-save".into(),
            package: "iptables",
        }),
        ..FakeNetfilter::fresh()
    };
    let report = run(
        &cli(&["--cleanup"]),
        &tools(&FakeNetfilter::fresh(), &missing(), &NoProbe),
    )
    .expect("auto: nothing of ours can exist without ip6tables");
    assert!(
        report
            .to_string()
            .contains("`ip6tables-save` is not installed"),
        "{report}"
    );
    let err = run(
        &cli(&["--cleanup", "--ipv6", "on"]),
        &tools(&FakeNetfilter::fresh(), &missing(), &NoProbe),
    )
    .expect_err("on: IPv6 must be cleaned");
    assert!(matches!(err, InitError::BinaryNotFound { .. }));
}

#[test]
fn dry_runs_touch_nothing() {
    for args in [
        &["--dry-run"][..],
        &["--dry-run", "--cleanup"][..],
        &["--dry-run", "--ipv6", "on"][..],
        &["--dry-run", "--netns", "/nonexistent"][..],
    ] {
        let report = run(
            &cli(args),
            &tools(&DeniedNetfilter, &DeniedNetfilter, &NoProbe),
        )
        .expect("dry run needs no access");
        match report.outcomes.as_slice() {
            [Outcome::DryRun(text)] => assert!(
                text.starts_with("# iptables-restore (IPv4)\n*nat\n"),
                "{text}"
            ),
            other => panic!("{args:?}: expected one DryRun, got {other:?}"),
        }
    }
}

#[test]
fn errors_stop_before_any_change() {
    for args in [&[][..], &["--cleanup"][..], &["--ipv6", "on"][..]] {
        let err = run(
            &cli(args),
            &tools(&DeniedNetfilter, &UntouchableNetfilter, &NoProbe),
        )
        .expect_err("no access");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    }
    let invalid = run(
        &cli(&["--inbound-port", "15001"]),
        &tools(&DeniedNetfilter, &DeniedNetfilter, &NoProbe),
    )
    .expect_err("invalid config is caught before touching netfilter");
    assert!(matches!(invalid, InitError::InvalidConfig { .. }));
}
