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
