//! `knit-init --dry-run` output, compared byte for byte with `tests/golden/*.txt`.
//!
//! Set `KNIT_UPDATE_GOLDEN=1` to rewrite the files from the current output
//! instead; review the diff before checking it in.

use std::path::PathBuf;
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_knit-init");

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(format!("{name}.txt"))
}

/// Runs a dry run with an empty environment: no PATH, so no iptables binary
/// is reachable, proving a dry run never needs one.
fn dry_run(args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .env_clear()
        .arg("--dry-run")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {BINARY}: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "knit-init --dry-run {args:?} failed ({}): {stderr}",
        output.status
    );
    assert!(stderr.is_empty(), "dry run wrote to stderr: {stderr}");
    String::from_utf8(output.stdout).expect("dry-run output is UTF-8")
}

fn check_golden(name: &str, args: &[&str]) {
    let actual = dry_run(args);
    let path = golden_path(name);
    if std::env::var_os("KNIT_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        eprintln!("rewrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; run with KNIT_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if actual != expected {
        let first_difference = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map_or_else(
                || "one output is a prefix of the other".to_string(),
                |index| format!("first difference at line {}", index + 1),
            );
        panic!(
            "dry-run output for {args:?} differs from {} ({first_difference}); \
             if the change is intended, rerun with KNIT_UPDATE_GOLDEN=1\n\
             --- expected\n{expected}--- actual\n{actual}",
            path.display()
        );
    }
}

#[test]
fn defaults() {
    check_golden("defaults", &[]);
}

#[test]
fn custom_ports_uid_gid() {
    check_golden(
        "custom_ports_uid_gid",
        &[
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--outbound-port",
            "16001",
            "--inbound-port",
            "16006",
            "--exclude-inbound-ports",
            "22,8443,16006",
        ],
    );
}

#[test]
fn empty_exclude_list() {
    check_golden("empty_exclude", &["--exclude-inbound-ports", ""]);
}

#[test]
fn cleanup() {
    check_golden("cleanup", &["--cleanup"]);
}

#[test]
fn cleanup_ipv6_on() {
    check_golden("cleanup_ipv6_on", &["--cleanup", "--ipv6", "on"]);
}

#[test]
fn ipv6_on() {
    check_golden("ipv6_on", &["--ipv6", "on"]);
}

#[test]
fn ipv6_off() {
    check_golden("ipv6_off", &["--ipv6", "off"]);
}

#[test]
fn include_inbound_ports_none() {
    check_golden("include_inbound_none", &["--include-inbound-ports", ""]);
}

#[test]
fn include_inbound_ports_list() {
    // 15021 is also excluded by default, and exclusion wins.
    check_golden(
        "include_inbound_list",
        &["--include-inbound-ports", "8080,9090,15021"],
    );
}

#[test]
fn include_outbound_cidrs() {
    check_golden(
        "include_outbound_cidrs",
        &[
            "--ipv6",
            "on",
            "--include-outbound-cidrs",
            "10.0.0.0/8,198.19.0.0/16,2001:db8::/32",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,2001:db8:ffff::/48",
        ],
    );
}

#[test]
fn exclude_outbound_ports_and_interfaces() {
    check_golden(
        "exclude_outbound_ports_interfaces",
        &[
            "--exclude-outbound-ports",
            "5432,6379",
            "--exclude-interfaces",
            "eth1,tun+",
        ],
    );
}

#[test]
fn capture_dns() {
    check_golden("capture_dns", &["--capture-dns"]);
}

#[test]
fn dry_run_ignores_netns_and_never_probes_for_ipv6() {
    // No PATH: neither `ip` nor iptables could run, and the namespace does not exist.
    let defaults = dry_run(&[]);
    assert_eq!(dry_run(&["--netns", "/nonexistent/netns"]), defaults);
    assert_eq!(dry_run(&["--ipv6", "auto"]), defaults);
}

#[test]
fn dry_run_is_stable_across_runs() {
    assert_eq!(dry_run(&[]), dry_run(&[]));
}

#[test]
fn invalid_options_fail_with_one_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--exclude-inbound-ports", "80,web"],
            "`web` is not a port number",
        ),
        (
            &["--inbound-port", "15001"],
            "knit-init: error: invalid configuration: --inbound-port",
        ),
        (&["--outbound-port", "0"], "--outbound-port"),
        (
            &["--include-outbound-cidrs", "10.0.0.1/8"],
            "10.0.0.1/8: address has bits set beyond the prefix",
        ),
        (
            &["--exclude-interfaces", "eth0,bad name"],
            "item 2: interface name `bad name` contains ` `",
        ),
        (
            &["--ipv6", "sometimes"],
            "invalid value 'sometimes' for '--ipv6",
        ),
    ];
    for (args, fragment) in cases {
        let output = Command::new(BINARY)
            .env_clear()
            .arg("--dry-run")
            .args(*args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {BINARY}: {err}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(fragment),
            "{args:?}: stderr lacks `{fragment}`: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed rules despite the error"
        );
    }
}

#[test]
fn missing_iptables_save_is_named_with_the_package_to_install() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("PATH", "/knit-init-test-nonexistent")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {BINARY}: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim_end(),
        "knit-init: error: `iptables-save` was not found in PATH; install the `iptables` package"
    );
}
