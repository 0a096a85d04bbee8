//! Root tests of both families together, each in a throwaway namespace:
//! the IPv6 rules, `--ipv6 auto`, and fail-closed handling when IPv6 fails
//! after IPv4 was applied.

mod common;

use common::{
    IPV4_HEADER, IPV6_HEADER, NetNs, dry_run, dry_run_section, find_in_path, knit_chains,
    rules_by_chain, script, stderr_of,
};

#[test]
fn both_families_apply_idempotently_and_clean_up_to_what_was_there() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules_with("iptables");
            ns.add_foreign_rules_with("ip6tables");
        }
        let (before4, before6) = (ns.nat_table(), ns.nat6_table());

        let report = ns.knit_init_ok(&["--ipv6", "on"]);
        for family in ["IPv4", "IPv6"] {
            assert!(
                report.contains(&format!(
                    "knit-init: {family} capture rules installed in table nat: chains \
                     KNIT_INBOUND, KNIT_IN_REDIRECT, KNIT_OUTPUT, KNIT_REDIRECT; added jumps \
                     PREROUTING -> KNIT_INBOUND, OUTPUT -> KNIT_OUTPUT"
                )),
                "{report}"
            );
        }
        // The proxy's IPv6 delivery source is on lo, so it can be bound.
        let lo = ns.exec_ok(&["ip", "-6", "addr", "show", "dev", "lo"]);
        assert!(lo.contains("inet6 ::6/128"), "{lo}");
        let planned = dry_run(&["--ipv6", "on"]);
        let (once4, once6) = (ns.nat_table(), ns.nat6_table());
        for (table, header, before) in [
            (&once4, IPV4_HEADER, &before4),
            (&once6, IPV6_HEADER, &before6),
        ] {
            let mut expected = rules_by_chain(&dry_run_section(&planned, header));
            for (chain, rules) in rules_by_chain(before) {
                expected.entry(chain).or_default().splice(0..0, rules);
            }
            // The kernel prints back exactly the rules rendered, chain by chain, in order.
            assert_eq!(rules_by_chain(table), expected, "{header}:\n{table}");
        }
        assert!(
            once6.contains("-A KNIT_OUTPUT -s ::6/128 -o lo "),
            "{once6}"
        );
        assert!(
            once6.contains("-A KNIT_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 "),
            "{once6}"
        );

        let again = ns.knit_init_ok(&["--ipv6", "on"]);
        assert_eq!(again.matches("jumps already present").count(), 2, "{again}");
        assert_eq!((ns.nat_table(), ns.nat6_table()), (once4, once6));

        let removed = ns.knit_init_ok(&["--cleanup"]);
        for family in ["IPv4", "IPv6"] {
            assert!(
                removed.contains(&format!(
                    "knit-init: {family} capture rules removed from table nat: 2 jump(s)"
                )),
                "{removed}"
            );
        }
        assert_eq!(
            ns.nat_table(),
            before4,
            "foreign rules: {with_foreign_rules}"
        );
        assert_eq!(
            ns.nat6_table(),
            before6,
            "foreign rules: {with_foreign_rules}"
        );
        let nothing = ns.knit_init_ok(&["--cleanup"]);
        assert_eq!(nothing.matches("nothing to remove").count(), 2, "{nothing}");
    }
}

#[test]
fn ipv6_auto_follows_global_ipv6_addresses() {
    let ns = NetNs::create();
    ns.setup(&["ip link set lo up"]);
    let report = ns.knit_init_ok(&[]);
    assert!(
        report
            .contains("knit-init: IPv6 left alone: --ipv6 auto found no global-scope IPv6 address"),
        "{report}"
    );
    assert!(knit_chains(&ns.nat6_table()).is_empty());

    // ::6 is the proxy's delivery source, not IPv6 connectivity.
    ns.setup(&["ip -6 addr add ::6/128 dev lo nodad"]);
    ns.knit_init_ok(&[]);
    assert!(knit_chains(&ns.nat6_table()).is_empty());

    ns.setup(&["ip -6 addr add 2001:2:0:fe::1/64 dev lo nodad"]);
    let report = ns.knit_init_ok(&[]);
    assert!(
        report.contains("knit-init: IPv6 capture rules installed"),
        "{report}"
    );
    assert_eq!(knit_chains(&ns.nat6_table()).len(), 4);

    // Cleanup removes IPv6 rules whether or not the address is still there.
    ns.setup(&["ip -6 addr del 2001:2:0:fe::1/64 dev lo"]);
    ns.knit_init_ok(&["--cleanup"]);
    assert!(knit_chains(&ns.nat6_table()).is_empty());
    assert!(knit_chains(&ns.nat_table()).is_empty());
}

/// A stand-in for iptables-restore that logs each call, then runs the real one.
fn logging_restore(dir: &std::path::Path, log: &std::path::Path) -> String {
    let real = find_in_path("iptables-restore");
    script(
        dir,
        "logging-iptables-restore",
        &format!(
            "echo call >> '{}'\nexec '{}' \"$@\"",
            log.display(),
            real.display()
        ),
    )
}

#[test]
fn a_failing_ipv6_apply_exits_non_zero_and_rolls_ipv4_back() {
    let tools = tempfile::tempdir().expect("temporary directory");
    let failing = script(
        tools.path(),
        "failing-ip6tables-restore",
        "cat >/dev/null; echo 'forced IPv6 failure' >&2; exit 1",
    );
    let missing = tools.path().join("no-such-ip6tables-restore");
    let missing = missing.to_string_lossy().into_owned();
    let cases: [(&str, &str); 2] = [
        (&failing, "forced IPv6 failure"),
        (&missing, "no-such-ip6tables-restore` does not exist"),
    ];
    for (index, (ip6tables_restore, cause)) in cases.into_iter().enumerate() {
        for with_foreign_rules in [false, true] {
            let ns = NetNs::create();
            if with_foreign_rules {
                ns.add_foreign_rules_with("iptables");
                ns.add_foreign_rules_with("ip6tables");
            }
            let (before4, before6) = (ns.nat_table(), ns.nat6_table());
            let log = tools
                .path()
                .join(format!("calls-{index}-{with_foreign_rules}"));
            let restore4 = logging_restore(tools.path(), &log);
            let output = ns.knit_init(&[
                "--ipv6",
                "on",
                "--iptables-restore",
                &restore4,
                "--ip6tables-restore",
                ip6tables_restore,
            ]);
            let stderr = stderr_of(&output);
            assert!(!output.status.success(), "succeeded: {stderr}");
            assert!(
                stderr.starts_with(
                    "knit-init: error: IPv6 capture failed after IPv4 capture was applied; \
                     the IPv4 rules were removed again"
                ),
                "{stderr}"
            );
            assert!(stderr.contains(cause), "{stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            // IPv4 really was applied and then removed: two restore calls.
            let calls = std::fs::read_to_string(&log).expect("restore was called");
            assert_eq!(calls.lines().count(), 2, "apply + cleanup");
            assert_eq!(
                ns.nat_table(),
                before4,
                "foreign rules: {with_foreign_rules}"
            );
            assert_eq!(
                ns.nat6_table(),
                before6,
                "foreign rules: {with_foreign_rules}"
            );
        }
    }
}

#[test]
fn a_missing_ip6tables_save_stops_the_run_before_ipv4_changes() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    let output = ns.knit_init(&[
        "--ipv6",
        "on",
        "--ip6tables-save",
        "/nonexistent/ip6tables-save",
    ]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim_end(),
        "knit-init: error: `/nonexistent/ip6tables-save` does not exist; install the \
         `iptables` package or fix the path"
    );
    assert_eq!(ns.nat_table(), before);
}
