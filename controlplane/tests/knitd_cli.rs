//! The `knitd` binary: `--once --print`, bad flags, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BACKEND_SERVICE, DEADLINE, workload_entry, write_config};
use knit_controlplane::SnapshotView;

const KNITD: &str = env!("CARGO_BIN_EXE_knitd");

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"))
}

fn once_print(dir: &std::path::Path) -> (Option<i32>, String, String) {
    let output = Command::new(KNITD)
        .arg("--config-dir")
        .arg(dir)
        .args(["--once", "--print"])
        .output()
        .unwrap_or_else(|err| panic!("run knitd: {err}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn parse_view(stdout: &str) -> SnapshotView {
    serde_json::from_str(stdout)
        .unwrap_or_else(|err| panic!("stdout is not a snapshot ({err}): {stdout}"))
}

#[test]
fn once_print_prints_the_compiled_state_and_exits_0() {
    let dir = temp_dir();
    write_config(
        dir.path(),
        "all.yaml",
        &format!(
            "{BACKEND_SERVICE}---\n{}",
            workload_entry("backend-a", "198.18.0.1")
        ),
    );
    let (code, stdout, stderr) = once_print(dir.path());
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
    let view = parse_view(&stdout);
    assert_eq!(view.version.len(), 16);
    assert_eq!(view.services.len(), 1);
    assert_eq!(
        view.services[0].hostname,
        "backend.default.svc.cluster.local"
    );
    assert_eq!(view.services[0].ports[0].protocol, "HTTP");
    let endpoint = &view.endpoints[0].endpoints[0];
    assert_eq!(endpoint.address, "198.18.0.1");
    assert_eq!(endpoint.ports.get(&80), Some(&8080));

    // Same directory, same version, across processes.
    let (_, again, _) = once_print(dir.path());
    assert_eq!(parse_view(&again).version, view.version);
}

#[test]
fn once_print_reports_errors_and_exits_1() {
    let dir = temp_dir();
    write_config(
        dir.path(),
        "services.yaml",
        &BACKEND_SERVICE.replace("port: 80", "port: 70000"),
    );
    write_config(
        dir.path(),
        "pods.yaml",
        &workload_entry("backend-a", "198.18.0.1"),
    );
    let (code, stdout, stderr) = once_print(dir.path());
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "config error: services.yaml doc 1 (Service default/backend): spec.ports[0].port: 70000 is not a valid port (1-65535)"
    );
    // Everything valid is still compiled.
    let view = parse_view(&stdout);
    assert!(view.services.is_empty());
}

#[test]
fn missing_config_dir_fails_with_a_clear_message() {
    let dir = temp_dir();
    let missing = dir.path().join("nope");
    let (code, stdout, stderr) = once_print(&missing);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert!(stderr.contains("cannot read config dir"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn print_requires_once() {
    let dir = temp_dir();
    let output = Command::new(KNITD)
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--print")
        .output()
        .unwrap_or_else(|err| panic!("run knitd: {err}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--once"));
}

#[test]
fn sigterm_stops_a_serving_knitd_with_exit_0() {
    let dir = temp_dir();
    write_config(dir.path(), "services.yaml", BACKEND_SERVICE);
    let state = dir.path().join("state");
    let mut child = Command::new(KNITD)
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--state-dir")
        .arg(&state)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--grpc-tls-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn knitd: {err}"));
    let stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| panic!("no stderr pipe"));
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let give_up = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("knitd serving")) {
        let left = give_up.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("knitd did not start within {DEADLINE:?}; stderr: {seen:#?}");
            }
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("config version")),
        "{seen:#?}"
    );
    // The CA says where its root came from, with its fingerprint.
    assert!(
        seen.iter().any(|l| l.contains("mesh CA ready")
            && l.contains("source=generated")
            && l.contains("fingerprint=sha256:")),
        "{seen:#?}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|err| panic!("run kill: {err}"));
    assert!(killed.success());
    let give_up = Instant::now() + DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(25)),
            Ok(None) => {
                let _ = child.kill();
                panic!("knitd did not exit within {DEADLINE:?} of SIGTERM");
            }
            Err(err) => panic!("wait for knitd: {err}"),
        }
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Runs a serving knitd with `args` that must fail at start: (exit code,
/// stderr).
fn failing_start(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(KNITD)
        .arg("--config-dir")
        .arg(dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--grpc-tls-addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run knitd: {err}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_ca_flags_fail_with_one_clear_line() {
    let dir = temp_dir();
    let state = dir.path().join("state");
    let state = state.to_string_lossy().into_owned();
    let table: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--ca-cert", "/nonexistent/ca.pem"],
            "Error: invalid --ca-cert: needs --ca-key",
        ),
        (
            vec!["--ca-key", "/nonexistent/key.pem"],
            "Error: invalid --ca-key: needs --ca-cert",
        ),
        (
            vec!["--ca-chain", "/nonexistent/chain.pem"],
            "Error: invalid --ca-chain: needs --ca-cert and --ca-key",
        ),
        (
            vec!["--ca-cert", "/a", "--ca-key", "/b", "--state-dir", &state],
            "Error: invalid --state-dir: cannot be combined with --ca-cert",
        ),
        (
            vec!["--trust-domain", "Cluster.Local"],
            "Error: invalid --trust-domain: \"Cluster.Local\" may only hold",
        ),
        (
            vec!["--max-cert-ttl", "24"],
            "Error: invalid --max-cert-ttl: \"24\" needs a unit",
        ),
        (
            vec!["--default-cert-ttl", "2d", "--max-cert-ttl", "1d"],
            "Error: invalid --default-cert-ttl: 2d is longer than --max-cert-ttl 1d",
        ),
        (vec!["--tls-san", "Bad Name"], "Error: invalid --tls-san: "),
        (
            vec![
                "--ca-cert",
                "/nonexistent/ca.pem",
                "--ca-key",
                "/nonexistent/key.pem",
            ],
            "Error: CA error: /nonexistent/ca.pem: cannot read",
        ),
    ];
    for (args, expected) in table {
        let (code, stderr) = failing_start(dir.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_group_readable_state_dir_key_stops_knitd_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap_or_else(|err| panic!("{err}"));
    let key = state.join("root-key.pem");
    std::fs::write(state.join("root-cert.pem"), "").unwrap_or_else(|err| panic!("{err}"));
    std::fs::write(&key, "").unwrap_or_else(|err| panic!("{err}"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|err| panic!("{err}"));
    let state_arg = state.to_string_lossy().into_owned();
    let (code, stderr) = failing_start(dir.path(), &["--state-dir", &state_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "Error: CA error: {}: the CA key is readable by group or others (mode 0644)",
            key.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_poll_interval_out_of_range_is_refused_by_name() {
    let dir = temp_dir();
    for bad in ["5", "60001", "soon"] {
        let (code, stderr) = failing_start(dir.path(), &["--poll-interval-ms", bad]);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--poll-interval-ms") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
}
