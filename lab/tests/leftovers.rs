//! Leftovers of a crashed lab (namespaces named after a PID that no longer
//! exists, processes in them, /etc/netns entries) are removed by the next
//! `Lab::new` and by `knit-lab cleanup`. Its own test binary, so no other
//! test's lab start sweeps the fake leftovers away first. Needs root.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{netns_list, new_lab};

fn ip(args: &[&str]) {
    let out = Command::new(knit_lab::find_tool("ip").unwrap())
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PID no process has now, so namespaces named after it look crashed.
fn dead_pid(skip: &[u32]) -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (1000..max)
        .rev()
        .find(|p| !skip.contains(p) && !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free PID")
}

/// Makes a crashed lab's leftovers for `pid`: a node and a pod namespace with
/// a process in the pod, its /etc/netns dir, and an orphan /etc/netns dir.
fn fake_crashed_lab(pid: u32) -> (Vec<String>, Vec<String>, Child) {
    let node = format!("knl-{pid}-0-node");
    let pod = format!("knl-{pid}-0-pod-web");
    for ns in [&node, &pod] {
        if netns_list().contains(ns) {
            ip(&["netns", "delete", ns]);
        }
        ip(&["netns", "add", ns]);
    }
    let etc = vec![
        format!("/etc/netns/{pod}"),
        format!("/etc/netns/knl-{pid}-1-pod-orphan"),
    ];
    for d in &etc {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(Path::new(d).join("hosts"), "127.0.0.1 localhost\n").unwrap();
    }
    let child = Command::new(knit_lab::find_tool("ip").unwrap())
        .args(["netns", "exec", &pod, "sleep", "300"])
        .spawn()
        .expect("starting sleep in the fake pod");
    // Wait until the process has entered the namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(knit_lab::find_tool("ip").unwrap())
            .args(["netns", "pids", &pod])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == child.id().to_string())
        {
            break;
        }
        assert!(Instant::now() < deadline, "sleep never showed up in {pod}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (vec![node, pod], etc, child)
}

fn assert_gone(namespaces: &[String], etc: &[String], mut child: Child) {
    let listed = netns_list();
    for ns in namespaces {
        assert!(!listed.contains(ns), "{ns} survived: {listed:?}");
    }
    for d in etc {
        assert!(!Path::new(d).exists(), "{d} survived");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process in the crashed lab's pod was not killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(9), "expected SIGKILL, got {status}");
}

#[test]
fn leftovers_of_crashed_labs_are_removed() {
    // By Lab::new...
    let pid = dead_pid(&[]);
    let (namespaces, etc, child) = fake_crashed_lab(pid);
    let lab = new_lab("leftovers");
    assert_gone(&namespaces, &etc, child);
    // ...which leaves live labs (this one) alone.
    assert!(lab.namespaces().iter().all(|n| netns_list().contains(n)));

    // ...and by `knit-lab cleanup`.
    let pid = dead_pid(&[pid]);
    let (namespaces, etc, child) = fake_crashed_lab(pid);
    let out = Command::new(env!("CARGO_BIN_EXE_knit-lab"))
        .arg("cleanup")
        .output()
        .expect("running knit-lab cleanup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ns in &namespaces {
        assert!(
            stdout.contains(&format!("deleted namespace {ns}")),
            "{stdout}"
        );
    }
    assert_gone(&namespaces, &etc, child);
    assert!(
        lab.namespaces().iter().all(|n| netns_list().contains(n)),
        "cleanup removed a live lab"
    );
}
