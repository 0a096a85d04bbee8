//! Root tests of where knit-init acts: `--netns` run from the host namespace,
//! and rules found in the other iptables backend. The host's own tables are
//! only ever read.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{
    BINARY, IPV4_HEADER, IPV6_HEADER, NetNs, dry_run, dry_run_section, expect_success,
    find_in_path, knit_chains, normalise_save, rules_by_chain, run, script, stderr_of,
};

/// The host's nat tables, both families, read-only.
fn host_nat_tables() -> (String, String) {
    common::require_root();
    (
        normalise_save(&expect_success(
            "iptables-save -t nat (host)",
            run("iptables-save", &["-t", "nat"]),
        )),
        normalise_save(&expect_success(
            "ip6tables-save -t nat (host)",
            run("ip6tables-save", &["-t", "nat"]),
        )),
    )
}

/// A restore tool that refuses to run anywhere but in `ns`, then runs the real
/// one. Belt and braces: should entering the namespace ever silently fail,
/// the host's rules are still never written.
fn guarded_restore(dir: &std::path::Path, tool: &str, ns: &NetNs) -> String {
    let inode = std::fs::metadata(ns.path())
        .unwrap_or_else(|err| panic!("{}: {err}", ns.path().display()))
        .ino();
    let real = find_in_path(tool);
    script(
        dir,
        &format!("guarded-{tool}"),
        &format!(
            "if [ \"$(readlink /proc/self/ns/net)\" != 'net:[{inode}]' ]; then\n  \
             echo 'guard: not in the target namespace' >&2; exit 99\nfi\n\
             exec '{}' \"$@\"",
            real.display()
        ),
    )
}

#[test]
fn netns_applies_inside_the_target_and_leaves_the_host_untouched() {
    let ns = NetNs::create();
    ns.add_foreign_rules();
    let (before4, before6) = (ns.nat_table(), ns.nat6_table());
    let host_before = host_nat_tables();
    let tools = tempfile::tempdir().expect("temporary directory");
    let restore4 = guarded_restore(tools.path(), "iptables-restore", &ns);
    let restore6 = guarded_restore(tools.path(), "ip6tables-restore", &ns);
    let path = ns.path();
    let path = path.to_str().expect("UTF-8 path");
    let guards = [
        "--iptables-restore",
        &restore4,
        "--ip6tables-restore",
        &restore6,
    ];

    // Run from this (the host's) namespace, not via `ip netns exec`.
    let apply: Vec<&str> = [&["--netns", path, "--ipv6", "on"][..], &guards].concat();
    let report = expect_success("knit-init --netns", run(BINARY, &apply));
    assert_eq!(
        report.matches("capture rules installed").count(),
        2,
        "{report}"
    );
    let planned = dry_run(&["--ipv6", "on"]);
    for (table, header) in [
        (ns.nat_table(), IPV4_HEADER),
        (ns.nat6_table(), IPV6_HEADER),
    ] {
        assert_eq!(knit_chains(&table).len(), 4, "{header}:\n{table}");
        let knit_rules: Vec<String> = rules_by_chain(&table)
            .into_iter()
            .filter(|(chain, _)| chain.starts_with("KNIT_"))
            .flat_map(|(_, rules)| rules)
            .collect();
        let planned_rules: Vec<String> = rules_by_chain(&dry_run_section(&planned, header))
            .into_iter()
            .filter(|(chain, _)| chain.starts_with("KNIT_"))
            .flat_map(|(_, rules)| rules)
            .collect();
        assert_eq!(knit_rules, planned_rules, "{header}");
    }
    assert_eq!(
        host_nat_tables(),
        host_before,
        "the host's nat tables changed"
    );

    let cleanup: Vec<&str> = [&["--netns", path, "--cleanup"][..], &guards].concat();
    expect_success("knit-init --netns --cleanup", run(BINARY, &cleanup));
    assert_eq!((ns.nat_table(), ns.nat6_table()), (before4, before6));
    assert_eq!(
        host_nat_tables(),
        host_before,
        "the host's nat tables changed"
    );
}

#[test]
fn a_netns_that_cannot_be_entered_fails_before_anything_runs() {
    let host_before = host_nat_tables();
    let dir = tempfile::tempdir().expect("temporary directory");
    let regular = dir.path().join("not-a-namespace");
    std::fs::write(&regular, "").expect("write a plain file");
    let missing = dir.path().join("missing");
    // Any tool run by mistake would fail loudly instead of touching the host.
    let refuse = script(dir.path(), "refuse", "echo 'must not run' >&2; exit 99");
    let guards = [
        "--iptables-save",
        &refuse,
        "--iptables-restore",
        &refuse,
        "--ip6tables-save",
        &refuse,
        "--ip6tables-restore",
        &refuse,
    ];
    for (path, reason) in [
        (&regular, "it is not a network namespace"),
        (
            &missing,
            "cannot open it: No such file or directory (os error 2)",
        ),
    ] {
        let path = path.to_str().expect("UTF-8 path");
        let args: Vec<&str> = [&["--netns", path][..], &guards].concat();
        let output = run(BINARY, &args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{path}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("knit-init: error: cannot enter the network namespace {path}: {reason}")
        );
    }
    assert_eq!(host_nat_tables(), host_before);
}

/// The backend the iptables tools in PATH use, and the other one's command.
fn backends() -> (&'static str, &'static str, &'static str) {
    let version = expect_success(
        "iptables-save --version",
        run("iptables-save", &["--version"]),
    );
    if version.contains("(nf_tables)") {
        ("nf_tables", "legacy", "iptables-legacy")
    } else if version.contains("(legacy)") {
        ("legacy", "nf_tables", "iptables-nft")
    } else {
        panic!("`iptables-save --version` names no backend: {version}")
    }
}

#[test]
fn rules_in_the_other_backend_are_an_error_unless_allowed() {
    let (in_use, other, other_tool) = backends();
    let ns = NetNs::create();
    ns.exec_ok(&[
        other_tool, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN",
    ]);
    let before = ns.nat_table();

    let output = ns.knit_init(&["--ipv6", "off"]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    for fragment in [
        "knit-init: error: iptables backend mismatch (IPv4): knit-init writes through \
         iptables-save v",
        &format!("({in_use})"),
        &format!("but the {other} backend (`{other_tool}-save`) holds 1 rule(s) in its nat table"),
        "--allow-backend-mismatch",
    ] {
        assert!(stderr.contains(fragment), "lacks `{fragment}`: {stderr}");
    }
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(ns.nat_table(), before, "nothing may change on a mismatch");

    let output = ns.knit_init(&["--ipv6", "off", "--allow-backend-mismatch"]);
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("knit-init: warning: iptables backend mismatch (IPv4)")
            && stderr.contains("(continuing: --allow-backend-mismatch)"),
        "{stderr}"
    );
    assert_eq!(knit_chains(&ns.nat_table()).len(), 4);
}

#[test]
fn knit_chains_left_in_the_other_backend_are_reported_the_other_way_round() {
    let (in_use, other, other_tool) = backends();
    let ns = NetNs::create();
    // Install with the tools in PATH, then run as if the other variant were in use.
    ns.knit_init_ok(&["--ipv6", "off"]);
    let output = ns.knit_init(&[
        "--ipv6",
        "off",
        "--iptables-save",
        &format!("{other_tool}-save"),
        "--iptables-restore",
        &format!("{other_tool}-restore"),
    ]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    for fragment in [
        format!("({other})"),
        format!("the {in_use} backend (`"),
        "knit-init chain(s) nat/KNIT_INBOUND, nat/KNIT_IN_REDIRECT, nat/KNIT_OUTPUT, \
         nat/KNIT_REDIRECT"
            .to_string(),
    ] {
        assert!(stderr.contains(&fragment), "lacks `{fragment}`: {stderr}");
    }
}
