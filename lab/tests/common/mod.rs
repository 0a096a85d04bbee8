//! Shared code of the lab's root tests.
#![allow(dead_code)]

use std::process::Command;

use knit_lab::Lab;

/// A new lab, or a failure with the lab's one-line reason (e.g. not root).
pub fn new_lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Unwraps a lab result, printing the lab's process logs on failure.
pub trait OrLogs<T> {
    fn or_logs(self, lab: &Lab) -> T;
}

impl<T> OrLogs<T> for knit_lab::Result<T> {
    fn or_logs(self, lab: &Lab) -> T {
        self.unwrap_or_else(|e| panic!("{e}\n\nlab logs:\n{}", lab.logs_tail(30)))
    }
}

/// Names from `ip netns list` on the host.
pub fn netns_list() -> Vec<String> {
    let out = Command::new(knit_lab::find_tool("ip").unwrap())
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Output of an `ip` command run in the host's namespace (read-only use).
pub fn host_ip(args: &[&str]) -> String {
    let out = Command::new(knit_lab::find_tool("ip").unwrap())
        .args(args)
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A proxy counter from `/stats`; 0 when it was never counted.
pub fn stat(lab: &Lab, pod: &str, name: &str) -> u64 {
    lab.proxy_stats(pod)
        .or_logs(lab)
        .get(name)
        .copied()
        .unwrap_or(0)
}

/// Sum of `knit_requests_total` samples whose labels include every pair.
pub fn requests_with(metrics: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("knit_requests_total{"))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
