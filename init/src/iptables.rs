//! Runs the iptables-save / iptables-restore binaries.

use std::io::{self, Write};
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::error::InitError;
use crate::rules::Table;

/// How long iptables-restore waits for the legacy xtables lock held by another writer.
const LOCK_WAIT_SECONDS: u32 = 30;

/// Reads and changes netfilter rules; the one place with side effects.
pub trait Netfilter {
    /// The rules of `table` in iptables-save format (without counters).
    fn save(&self, table: Table) -> Result<String, InitError>;

    /// Applies `transaction` with `--noflush` as one atomic transaction.
    fn restore(&self, transaction: &str) -> Result<(), InitError>;
}

/// The iptables command-line tools of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    save_binary: String,
    restore_binary: String,
}

impl Iptables {
    /// The IPv4 tools, looked up in PATH.
    pub fn ipv4() -> Self {
        Iptables::new("iptables-save", "iptables-restore")
    }

    /// Tools with the given names or paths (e.g. `ip6tables-save`, `ip6tables-restore`).
    pub fn new(save_binary: impl Into<String>, restore_binary: impl Into<String>) -> Self {
        Iptables {
            save_binary: save_binary.into(),
            restore_binary: restore_binary.into(),
        }
    }
}

impl Netfilter for Iptables {
    fn save(&self, table: Table) -> Result<String, InitError> {
        let binary = &self.save_binary;
        let output = Command::new(binary)
            .args(["-t", table.name()])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error(binary, source))?;
        if output.status.success() {
            return String::from_utf8(output.stdout).map_err(|_| InitError::SaveFailed {
                binary: binary.clone(),
                table: table.name().to_string(),
                status: describe_status(output.status),
                stderr: "its output is not valid UTF-8".to_string(),
            });
        }
        let stderr = trimmed_stderr(&output);
        Err(if is_permission_problem(&stderr) {
            InitError::PermissionDenied {
                binary: binary.clone(),
                stderr,
            }
        } else {
            InitError::SaveFailed {
                binary: binary.clone(),
                table: table.name().to_string(),
                status: describe_status(output.status),
                stderr,
            }
        })
    }

    fn restore(&self, transaction: &str) -> Result<(), InitError> {
        let binary = &self.restore_binary;
        let mut child = Command::new(binary)
            .arg("--noflush")
            .arg(format!("--wait={LOCK_WAIT_SECONDS}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(binary, source))?;
        let stdin = child.stdin.take();
        // Feed stdin from its own thread so a chatty child cannot block on a
        // full stderr pipe while we are still writing.
        let (written, output) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> io::Result<()> {
                match stdin {
                    Some(mut stdin) => stdin.write_all(transaction.as_bytes()),
                    None => Err(io::Error::other("stdin was not captured")),
                }
            });
            let output = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")));
            (written, output)
        });
        let output = output.map_err(|source| spawn_error(binary, source))?;
        let stderr = trimmed_stderr(&output);
        if !output.status.success() {
            return Err(if is_permission_problem(&stderr) {
                InitError::PermissionDenied {
                    binary: binary.clone(),
                    stderr,
                }
            } else {
                InitError::RestoreFailed {
                    binary: binary.clone(),
                    status: describe_status(output.status),
                    stderr,
                }
            });
        }
        // Success after reading only part of the transaction would be a partial apply.
        written.map_err(|err| InitError::RestoreFailed {
            binary: binary.clone(),
            status: describe_status(output.status),
            stderr: format!("it did not read the whole transaction: {err}"),
        })
    }
}

fn spawn_error(binary: &str, source: io::Error) -> InitError {
    if source.kind() == io::ErrorKind::NotFound {
        InitError::BinaryNotFound {
            binary: binary.to_string(),
        }
    } else {
        InitError::Spawn {
            binary: binary.to_string(),
            source,
        }
    }
}

fn trimmed_stderr(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        "(no error output)".to_string()
    } else {
        text
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{status}"),
    }
}

/// Whether iptables' error output says the caller lacks CAP_NET_ADMIN.
fn is_permission_problem(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    [
        "permission denied",
        "you must be root",
        "operation not permitted",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_problems_are_recognised_from_iptables_messages() {
        let cases = [
            (
                "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
                true,
            ),
            (
                "iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)",
                true,
            ),
            (
                "Fatal: can't open lock file /run/xtables.lock: Permission denied",
                true,
            ),
            (
                "iptables-restore: unable to initialize table 'nat': Operation not permitted",
                true,
            ),
            (
                "iptables-restore: line 2 failed: Bad rule (does a matching rule exist in that chain?).",
                false,
            ),
            ("(no error output)", false),
        ];
        for (stderr, expected) in cases {
            assert_eq!(is_permission_problem(stderr), expected, "{stderr}");
        }
    }

    #[test]
    fn missing_binaries_are_named_with_the_package_to_install() {
        let iptables = Iptables::new(
            "knit-test-no-such-iptables-save",
            "knit-test-no-such-iptables-restore",
        );
        let save_error = iptables
            .save(Table::Nat)
            .expect_err("binary does not exist");
        assert!(matches!(save_error, InitError::BinaryNotFound { .. }));
        let message = save_error.to_string();
        assert!(
            message.contains("knit-test-no-such-iptables-save"),
            "{message}"
        );
        assert!(
            message.contains("install the `iptables` package"),
            "{message}"
        );

        let restore_error = iptables
            .restore("*nat\nCOMMIT\n")
            .expect_err("binary does not exist");
        assert!(
            restore_error
                .to_string()
                .contains("knit-test-no-such-iptables-restore"),
            "{restore_error}"
        );
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write test script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make test script executable");
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn tool_failures_are_classified_and_keep_their_stderr() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let rejecting = script(
            dir.path(),
            "rejecting-restore",
            "cat >/dev/null; echo 'iptables-restore: line 2 failed: Bad rule' >&2; exit 1",
        );
        let refused = script(
            dir.path(),
            "refused",
            "cat >/dev/null; echo 'Could not fetch rule set generation id: Permission denied (you must be root)' >&2; exit 4",
        );
        let crashing_save = script(dir.path(), "crashing-save", "echo 'table gone' >&2; exit 3");
        let accepting = script(dir.path(), "accepting", "cat >/dev/null; exit 0");

        match Iptables::new(&crashing_save, &rejecting).save(Table::Nat) {
            Err(InitError::SaveFailed {
                status,
                stderr,
                table,
                ..
            }) => {
                assert_eq!(
                    (status.as_str(), stderr.as_str(), table.as_str()),
                    ("exit status 3", "table gone", "nat")
                );
            }
            other => panic!("expected SaveFailed, got {other:?}"),
        }
        match Iptables::new(&crashing_save, &rejecting).restore("*nat\nCOMMIT\n") {
            Err(err @ InitError::RestoreFailed { .. }) => {
                let message = err.to_string();
                assert!(message.contains("line 2 failed: Bad rule"), "{message}");
                assert!(message.contains("no rule was changed"), "{message}");
            }
            other => panic!("expected RestoreFailed, got {other:?}"),
        }
        for result in [
            Iptables::new(&refused, &refused).save(Table::Nat).map(drop),
            Iptables::new(&refused, &refused).restore("*nat\nCOMMIT\n"),
        ] {
            match result {
                Err(err @ InitError::PermissionDenied { .. }) => {
                    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
                }
                other => panic!("expected PermissionDenied, got {other:?}"),
            }
        }
        Iptables::new(&accepting, &accepting)
            .restore("*nat\nCOMMIT\n")
            .expect("a tool that accepts the transaction");
    }
}
