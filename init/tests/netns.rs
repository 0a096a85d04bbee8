//! Root tests: the real `knit-init` binary against the real kernel, each in a
//! throwaway network namespace the test creates and deletes: what is
//! installed, idempotence, cleanup and failure handling of the IPv4 rules.
//! (IPv6 and both families together: `ipv6.rs`; traffic: `capture.rs`;
//! `--netns` and backends: `target.rs`.)
//!
//! They need root (to create namespaces and change netfilter rules) and fail,
//! never skip, without it.

mod common;

use common::{
    BINARY, IPV4_HEADER, NetNs, dry_run, dry_run_section, expect_success, find_in_path,
    rules_by_chain, stderr_of,
};

#[test]
fn apply_installs_exactly_the_planned_chains_and_jumps() {
    let ns = NetNs::create();
    let report = ns.knit_init_ok(&[]);
    assert!(
        report.contains("added jumps PREROUTING -> KNIT_INBOUND, OUTPUT -> KNIT_OUTPUT"),
        "{report}"
    );
    let table = ns.nat_table();
    let planned = dry_run_section(&dry_run(&[]), IPV4_HEADER);
    for declaration in planned.lines().filter(|line| line.starts_with(':')) {
        assert!(
            table.lines().any(|line| line == declaration),
            "{declaration} missing in\n{table}"
        );
    }
    // The kernel prints back exactly the rules rendered, chain by chain, in order.
    assert_eq!(
        rules_by_chain(&table),
        rules_by_chain(&planned),
        "installed:\n{table}"
    );
}

#[test]
fn applying_twice_gives_the_same_table() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        ns.knit_init_ok(&[]);
        let once = ns.nat_table();
        let report = ns.knit_init_ok(&[]);
        assert!(report.contains("jumps already present"), "{report}");
        let twice = ns.nat_table();
        assert_eq!(once, twice, "foreign rules: {with_foreign_rules}");
    }
}

#[test]
fn reapplying_with_new_options_replaces_the_chain_contents() {
    let ns = NetNs::create();
    ns.knit_init_ok(&[]);
    let options = ["--exclude-inbound-ports", "22", "--outbound-port", "16001"];
    ns.knit_init_ok(&options);
    assert_eq!(
        rules_by_chain(&ns.nat_table()),
        rules_by_chain(&dry_run_section(&dry_run(&options), IPV4_HEADER))
    );
}

#[test]
fn cleanup_restores_the_table_as_it_was_before_apply() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        let before = ns.nat_table();
        ns.knit_init_ok(&[]);
        assert_ne!(ns.nat_table(), before, "apply changed nothing");
        let report = ns.knit_init_ok(&["--cleanup"]);
        assert!(
            report.contains("removed from table nat: 2 jump(s)"),
            "{report}"
        );
        assert_eq!(
            ns.nat_table(),
            before,
            "foreign rules: {with_foreign_rules}"
        );

        let again = ns.knit_init_ok(&["--cleanup"]);
        assert!(again.contains("nothing to remove"), "{again}");
        assert_eq!(
            ns.nat_table(),
            before,
            "foreign rules: {with_foreign_rules}"
        );
    }
}

#[test]
fn cleanup_with_nothing_installed_succeeds_and_changes_nothing() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        let before = ns.nat_table();
        let report = ns.knit_init_ok(&["--cleanup"]);
        assert!(report.contains("nothing to remove"), "{report}");
        assert_eq!(ns.nat_table(), before);
    }
}

#[test]
fn without_privileges_it_fails_clearly_and_dry_run_still_works() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BINARY,
    ];
    for extra in [&[][..], &["--cleanup"][..]] {
        let args: Vec<&str> = as_nobody.iter().chain(extra).copied().collect();
        let output = ns.exec(&args);
        let stderr = stderr_of(&output);
        assert!(
            !output.status.success(),
            "{extra:?} succeeded without privileges"
        );
        assert!(
            stderr.starts_with("knit-init: error: `iptables-save`"),
            "{stderr}"
        );
        assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one message: {stderr}"
        );
    }
    assert_eq!(ns.nat_table(), before);

    let dry: Vec<&str> = as_nobody.iter().copied().chain(["--dry-run"]).collect();
    assert_eq!(
        expect_success("dry run as nobody", ns.exec(&dry)),
        dry_run(&[])
    );
}

#[test]
fn missing_iptables_restore_is_named_and_nothing_changes() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    // A PATH holding iptables-save but not iptables-restore.
    let tools = tempfile::tempdir().expect("temporary directory");
    std::os::unix::fs::symlink(
        find_in_path("iptables-save"),
        tools.path().join("iptables-save"),
    )
    .expect("link iptables-save");
    let path = format!("PATH={}", tools.path().display());
    // IPv6 off: without `ip` in PATH, auto-detection would fail first.
    let output = ns.exec(&["env", &path, BINARY, "--ipv6", "off"]);
    assert!(!output.status.success());
    assert_eq!(
        stderr_of(&output).trim_end(),
        "knit-init: error: `iptables-restore` was not found in PATH; install the `iptables` package"
    );
    assert_eq!(ns.nat_table(), before);
}

#[test]
fn ipv6_auto_without_iproute2_says_how_to_skip_detection() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    // A PATH with the iptables tools but without `ip`.
    let tools = tempfile::tempdir().expect("temporary directory");
    for tool in ["iptables-save", "iptables-restore"] {
        std::os::unix::fs::symlink(find_in_path(tool), tools.path().join(tool))
            .expect("link an iptables tool");
    }
    let path = format!("PATH={}", tools.path().display());
    let output = ns.exec(&["env", &path, BINARY]);
    assert!(!output.status.success());
    assert_eq!(
        stderr_of(&output).trim_end(),
        "knit-init: error: cannot resolve --ipv6 auto (pass --ipv6 on or --ipv6 off to skip \
         the detection): `ip` was not found in PATH; install the `iproute2` package"
    );
    assert_eq!(ns.nat_table(), before);
}

#[test]
fn a_rejected_transaction_reports_stderr_and_applies_nothing() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    // Line 3 is valid and line 4 is not; atomicity means line 3 must not stick.
    let transaction = "*nat\n:KNIT_PARTIAL - [0:0]\n-A KNIT_PARTIAL -j RETURN\n\
                       -A KNIT_NO_SUCH_CHAIN -j RETURN\nCOMMIT\n";
    let result =
        ns.enter(|| knit_init::Netfilter::restore(&knit_init::Iptables::ipv4(), transaction));
    match result {
        Err(err @ knit_init::InitError::RestoreFailed { .. }) => {
            let message = err.to_string();
            assert!(message.contains("line 4"), "{message}");
            assert!(message.contains("no rule was changed"), "{message}");
        }
        other => panic!("expected RestoreFailed, got {other:?}"),
    }
    assert_eq!(ns.nat_table(), before);
}

#[test]
fn reapplying_with_fewer_chains_removes_the_unused_ones_in_the_kernel() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        let before = ns.nat_table();
        ns.knit_init_ok(&["--ipv6", "off"]);
        let narrow = [
            "--include-inbound-ports",
            "",
            "--include-outbound-cidrs",
            "",
        ];
        let report = ns.knit_init_ok(&[&narrow[..], &["--ipv6", "off"]].concat());
        assert!(
            report.contains("removed unused chains KNIT_INBOUND, KNIT_REDIRECT"),
            "{report}"
        );
        let table = ns.nat_table();
        assert_eq!(
            common::knit_chains(&table),
            ["KNIT_IN_REDIRECT", "KNIT_OUTPUT"],
            "{table}"
        );
        // Exactly the narrow plan plus whatever was there before knit-init.
        let mut expected = rules_by_chain(&dry_run_section(&dry_run(&narrow), IPV4_HEADER));
        for (chain, rules) in rules_by_chain(&before) {
            let planned = expected.entry(chain).or_default();
            planned.splice(0..0, rules);
        }
        assert_eq!(rules_by_chain(&table), expected, "{table}");

        // Back to the defaults, then cleanup leaves the table as it was.
        ns.knit_init_ok(&["--ipv6", "off"]);
        assert_eq!(common::knit_chains(&ns.nat_table()).len(), 4);
        ns.knit_init_ok(&["--cleanup", "--ipv6", "off"]);
        assert_eq!(
            ns.nat_table(),
            before,
            "foreign rules: {with_foreign_rules}"
        );
    }
}
