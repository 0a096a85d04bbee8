//! The control-plane benchmark's smoke mode against the built knitd: every
//! simulated proxy connects, decodes and ACKs every change, and the counts
//! add up. No timing thresholds: performance is the benchmark's business,
//! not the test suite's.
//!
//! knitd belongs to another package, so Cargo does not build it for this
//! test; it is looked for in `target/<profile>/` (this test runs from
//! `target/<profile>/deps/`). Build it first:
//! `cargo build -p knit-controlplane --bin knitd`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// `target/<profile>/knitd`, next to the directory this test runs from.
fn knitd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("knitd"))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "knitd not found at {candidates:?}; build it first with \
                 `cargo build -p knit-controlplane --bin knitd` (same profile as this test)"
            )
        })
}

#[test]
fn smoke_mode_reaches_every_proxy_with_every_change() {
    let knitd = knitd_binary();
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_knit-bench-control-plane"))
        .arg("--smoke")
        .arg("--knitd")
        .arg(&knitd)
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .expect("running knit-bench-control-plane");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "--smoke failed:\n{stderr}");

    let json = std::fs::read_to_string(out.path().join("control-plane-smoke.json"))
        .expect("control-plane-smoke.json");
    let report: Value = serde_json::from_str(&json).expect("valid JSON");
    let md = std::fs::read_to_string(out.path().join("control-plane-smoke.md"))
        .expect("control-plane-smoke.md");

    let settings = &report["settings"];
    assert_eq!(settings["services"].as_u64(), Some(20), "{json}");
    assert_eq!(settings["endpoints"].as_u64(), Some(100), "{json}");
    assert_eq!(settings["config_files"].as_u64(), Some(20), "{json}");
    assert!(
        report["startup_to_first_push_ms"].as_f64().is_some(),
        "{json}"
    );
    assert_eq!(
        report["knitd_log_problems"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );

    let scales = report["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 1, "{json}");
    let scale = &scales[0];
    assert!(scale["error"].is_null(), "{json}");
    assert_eq!(scale["proxies"].as_u64(), Some(20), "{json}");
    assert_eq!(scale["connected"].as_u64(), Some(20), "{json}");
    assert!(md.contains("\n| 20 |"), "{md}");
    assert_eq!(scale["mismatched_responses"].as_u64(), Some(0), "{json}");
    assert_eq!(scale["stream_errors"].as_u64(), Some(0), "{json}");
    assert!(scale["response_bytes"].as_u64().unwrap_or(0) > 0, "{json}");
    assert_eq!(scale["full_push"]["count"].as_u64(), Some(3), "{json}");

    // One at a time: 3 changes, each ACKed by all 20 proxies.
    let latency = &scale["latency"];
    assert_eq!(latency["changes"].as_u64(), Some(3), "{json}");
    assert_eq!(latency["fully_acked"].as_u64(), Some(3), "{json}");
    assert_eq!(latency["acks_expected"].as_u64(), Some(60), "{json}");
    assert_eq!(latency["acks_received"].as_u64(), Some(60), "{json}");
    for key in [
        "written_to_last_ack",
        "first_seen_to_last_ack",
        "written_to_first_seen",
    ] {
        assert_eq!(latency[key]["count"].as_u64(), Some(3), "{key}: {json}");
    }

    // Churn: 5 changes/s for 1 s, every one ACKed by every proxy.
    let churn = &scale["churn"];
    assert_eq!(churn["changes"].as_u64(), Some(5), "{json}");
    assert_eq!(churn["fully_acked"].as_u64(), Some(5), "{json}");
    assert_eq!(churn["acks_expected"].as_u64(), Some(100), "{json}");
    assert_eq!(churn["acks_received"].as_u64(), Some(100), "{json}");
    assert!(churn["drain_s"].as_f64().is_some(), "{json}");

    for usage in [&scale["rest"], &churn["usage"]] {
        assert!(
            usage["knitd_cores"].as_f64().unwrap_or(-1.0) >= 0.0,
            "{usage}"
        );
        assert!(
            usage["knitd_rss_mib"].as_f64().unwrap_or(0.0) > 0.0,
            "{usage}"
        );
        assert!(
            usage["knitd_peak_rss_mib"].as_f64().unwrap_or(0.0) > 0.0,
            "{usage}"
        );
    }
    // Every response was counted: at least a first config per proxy and
    // per probe.
    assert!(
        scale["responses_decoded"].as_u64().unwrap_or(0) >= 24,
        "{json}"
    );
}
