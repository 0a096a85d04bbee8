//! Mesh tests: traffic through real sidecars (knit-init capture +
//! knit-proxy) configured by a real knitd. Needs root and the workspace's
//! binaries (`cargo build --workspace`).

mod common;

use std::time::Duration;

use common::{OrLogs, new_lab};
use knit_lab::{ServiceSpec, wait_until};

/// Every string in a JSON tree: the config dump's shape is the proxy's
/// business, but endpoint addresses appear in it as strings.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn knitd_lifecycle_and_debug_api() {
    let mut lab = new_lab("knitd");
    lab.start_knitd().or_logs(&lab);
    assert!(lab.knitd_running());
    assert!(
        lab.start_knitd()
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    lab.knitd_get("/healthz").or_logs(&lab);

    lab.add_service(
        ServiceSpec::new("backend")
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    wait_until(
        "knitd's snapshot to show the backend service",
        Duration::from_secs(30),
        || {
            let snap = lab.knitd_get_json("/debug/snapshot")?;
            let mut found = Vec::new();
            strings(&snap["services"], &mut found);
            Ok(snap.get("version").is_some() && found.iter().any(|s| s.contains("backend")))
        },
    )
    .or_logs(&lab);
    let proxies = lab.knitd_get_json("/debug/proxies").or_logs(&lab);
    assert!(proxies.is_array(), "{proxies}");

    // A crash: knitd is gone and says nothing; a restart brings it back
    // with the same config dir.
    lab.stop_knitd().or_logs(&lab);
    assert!(!lab.knitd_running());
    assert!(lab.knitd_get("/healthz").is_err());
    assert!(lab.stop_knitd().is_err(), "stopping twice is an error");
    lab.restart_knitd().or_logs(&lab);
    lab.knitd_get("/healthz").or_logs(&lab);
    let snap = lab.knitd_get_json("/debug/snapshot").or_logs(&lab);
    let mut found = Vec::new();
    strings(&snap["services"], &mut found);
    assert!(found.iter().any(|s| s.contains("backend")), "{snap}");
}

/// `knit-lab demo` as a newcomer runs it (without `cargo run`, so it does
/// not rebuild from inside the test run).
fn demo_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_knit-lab"));
    cmd.arg("demo").env_remove("CARGO");
    cmd
}

/// Whatever a finished demo (pid `pid`) could have left: its namespaces,
/// its temp dir, and any process whose command line names either.
fn demo_leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("knl-{pid}-");
    let tmp = format!("knit-lab-demo-{pid}-");
    let mut left: Vec<String> = common::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        left.extend(
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&tmp)),
        );
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.filter_map(Result::ok) {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&prefix) || cmdline.contains(&tmp) {
                left.push(format!(
                    "process {}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    left
}

#[test]
fn demo_succeeds_and_cleans_up() {
    let child = demo_command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running knit-lab demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for knit-lab demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("✔ 50/50 requests through the mesh; 3 replicas"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{:<36} +20", "outbound.http.requests"))
            && stdout.contains(&format!("{:<36} +10", "mesh.requests"))
            && stdout.contains(&format!(
                "{:<36} +2",
                "upstream.mesh.tls_connections_opened"
            )),
        "{stdout}"
    );
    let left = demo_leftovers(pid);
    assert!(left.is_empty(), "the demo left behind: {left:?}");
}

#[test]
fn demo_interrupted_cleans_up_and_exits_130() {
    use std::io::BufRead;
    use std::sync::mpsc;

    let mut child = demo_command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting knit-lab demo");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Interrupt once the mesh is up and traffic is about to flow.
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let step = line.contains("==> Step 1");
                seen.push(line);
                if step {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("demo never reached step 1 ({e}):\n{}", seen.join("\n"));
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("demo did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{status}; stderr:\n{stderr}");
    assert!(stderr.contains("SIGINT received"), "{stderr}");
    let prefix = format!("knl-{pid}-");
    let left: Vec<String> = common::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let etc: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !etc.iter().any(|n| n.contains(&prefix)),
        "/etc/netns left behind: {etc:?}"
    );
}
