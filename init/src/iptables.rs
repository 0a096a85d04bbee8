//! Runs the iptables-save / iptables-restore binaries of one address family.

use std::io::{self, Write};
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::backend::{BackendInspection, OtherBackend};
use crate::error::InitError;
use crate::family::{Backend, Family};
use crate::rules::Table;

/// How long iptables-restore waits for the legacy xtables lock held by another writer.
const LOCK_WAIT_SECONDS: u32 = 30;
/// The package that ships every iptables tool knit-init runs.
const IPTABLES_PACKAGE: &str = "iptables";

/// Reads and changes the netfilter rules of one address family; the one
/// place with side effects. One value per family, so each can be replaced
/// on its own (tests force an IPv6 failure this way).
pub trait Netfilter {
    /// The rules of `table` in iptables-save format (without counters).
    fn save(&self, table: Table) -> Result<String, InitError>;

    /// Applies `transaction` with `--noflush` as one atomic transaction.
    fn restore(&self, transaction: &str) -> Result<(), InitError>;

    /// Which backend the tools in use drive, and what the other backend holds.
    fn inspect_backends(&self) -> Result<BackendInspection, InitError>;
}

/// The iptables command-line tools of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    family: Family,
    save_binary: String,
    restore_binary: String,
}

impl Iptables {
    /// The IPv4 tools, looked up in PATH.
    pub fn ipv4() -> Self {
        Iptables::for_family(Family::Ipv4)
    }

    /// The IPv6 tools, looked up in PATH.
    pub fn ipv6() -> Self {
        Iptables::for_family(Family::Ipv6)
    }

    /// The tools of `family`, looked up in PATH.
    pub fn for_family(family: Family) -> Self {
        Iptables::new(family, family.save_tool(), family.restore_tool())
    }

    /// Tools of `family` with the given names or paths.
    pub fn new(
        family: Family,
        save_binary: impl Into<String>,
        restore_binary: impl Into<String>,
    ) -> Self {
        Iptables {
            family,
            save_binary: save_binary.into(),
            restore_binary: restore_binary.into(),
        }
    }

    /// The family these tools write.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The first line `SAVE --version` prints, e.g. `iptables-save v1.8.9 (nf_tables)`.
    fn version_line(&self) -> Result<Result<String, String>, InitError> {
        let binary = &self.save_binary;
        let output = retry_if_busy(|| {
            Command::new(binary)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
        })
        .map_err(|source| spawn_error(binary, IPTABLES_PACKAGE, source))?;
        if !output.status.success() {
            return Ok(Err(format!(
                "`{binary} --version` failed ({}): {}",
                describe_status(output.status),
                trimmed_stderr(&output)
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(Ok(stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()))
    }
}

impl Netfilter for Iptables {
    fn save(&self, table: Table) -> Result<String, InitError> {
        let binary = &self.save_binary;
        let output = retry_if_busy(|| {
            Command::new(binary)
                .args(["-t", table.name()])
                .stdin(Stdio::null())
                .output()
        })
        .map_err(|source| spawn_error(binary, IPTABLES_PACKAGE, source))?;
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
        let mut child = retry_if_busy(|| {
            Command::new(binary)
                .arg("--noflush")
                .arg(format!("--wait={LOCK_WAIT_SECONDS}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .map_err(|source| spawn_error(binary, IPTABLES_PACKAGE, source))?;
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
        let output = output.map_err(|source| spawn_error(binary, IPTABLES_PACKAGE, source))?;
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

    /// Reads the other backend with its own save tool and no `-t`: that
    /// prints only tables which already exist, so looking never creates a
    /// table or loads a kernel module.
    fn inspect_backends(&self) -> Result<BackendInspection, InitError> {
        let in_use = self.version_line()?;
        let backend = match &in_use {
            Ok(line) => Backend::from_version_line(line),
            Err(_) => None,
        };
        let Some(backend) = backend else {
            return Ok(BackendInspection {
                in_use,
                other: None,
            });
        };
        let other_backend = backend.other();
        let tool = self.family.backend_save_tool(other_backend);
        let dump = match retry_if_busy(|| Command::new(tool).stdin(Stdio::null()).output()) {
            // Without the tool nothing here can have written to that backend.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(BackendInspection {
                    in_use,
                    other: None,
                });
            }
            Err(err) => Err(format!("could not run `{tool}`: {err}")),
            Ok(output) if output.status.success() => {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Ok(output) => Err(format!(
                "`{tool}` failed ({}): {}",
                describe_status(output.status),
                trimmed_stderr(&output)
            )),
        };
        Ok(BackendInspection {
            in_use,
            other: Some(OtherBackend {
                backend: other_backend,
                tool: tool.to_string(),
                dump,
            }),
        })
    }
}

/// Runs `start` again while exec fails with ETXTBSY ("text file busy"):
/// a binary just written or replaced (a package upgrade, or a file another
/// thread of this process has open while it forks) is briefly not
/// executable. Bounded: about half a second in all.
pub(crate) fn retry_if_busy<T>(mut start: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 0;
    loop {
        match start() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The error for a tool that could not be started; a missing one names its package.
pub(crate) fn spawn_error(binary: &str, package: &'static str, source: io::Error) -> InitError {
    if source.kind() == io::ErrorKind::NotFound {
        InitError::BinaryNotFound {
            binary: binary.to_string(),
            package,
        }
    } else {
        InitError::Spawn {
            binary: binary.to_string(),
            source,
        }
    }
}

pub(crate) fn trimmed_stderr(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        "(no error output)".to_string()
    } else {
        text
    }
}

pub(crate) fn describe_status(status: ExitStatus) -> String {
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
            Family::Ipv4,
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

        match Iptables::new(Family::Ipv4, &crashing_save, &rejecting).save(Table::Nat) {
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
        match Iptables::new(Family::Ipv4, &crashing_save, &rejecting).restore("*nat\nCOMMIT\n") {
            Err(err @ InitError::RestoreFailed { .. }) => {
                let message = err.to_string();
                assert!(message.contains("line 2 failed: Bad rule"), "{message}");
                assert!(message.contains("no rule was changed"), "{message}");
            }
            other => panic!("expected RestoreFailed, got {other:?}"),
        }
        for result in [
            Iptables::new(Family::Ipv4, &refused, &refused)
                .save(Table::Nat)
                .map(drop),
            Iptables::new(Family::Ipv4, &refused, &refused).restore("*nat\nCOMMIT\n"),
        ] {
            match result {
                Err(err @ InitError::PermissionDenied { .. }) => {
                    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
                }
                other => panic!("expected PermissionDenied, got {other:?}"),
            }
        }
        Iptables::new(Family::Ipv6, &accepting, &accepting)
            .restore("*nat\nCOMMIT\n")
            .expect("a tool that accepts the transaction");
    }

    #[test]
    fn busy_executables_are_retried_a_bounded_number_of_times() {
        let busy = || io::Error::from(io::ErrorKind::ExecutableFileBusy);
        let mut calls = 0;
        let ok = retry_if_busy(|| {
            calls += 1;
            if calls < 3 { Err(busy()) } else { Ok(calls) }
        });
        assert_eq!(ok.expect("succeeds once not busy"), 3);

        let mut calls = 0;
        let missing = retry_if_busy(|| -> io::Result<()> {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::NotFound))
        });
        assert_eq!(
            (missing.expect_err("not found").kind(), calls),
            (io::ErrorKind::NotFound, 1)
        );

        let mut calls = 0;
        let stuck = retry_if_busy(|| -> io::Result<()> {
            calls += 1;
            Err(busy())
        });
        assert_eq!(
            stuck.expect_err("gives up").kind(),
            io::ErrorKind::ExecutableFileBusy
        );
        assert_eq!(calls, 51, "one try plus 50 retries");
    }

    #[test]
    fn unrecognised_tools_report_an_unknown_backend_without_looking_further() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wrapper = script(dir.path(), "wrapper-save", "echo 'wrapper 2.0'");
        let failing = script(dir.path(), "failing-save", "echo nope >&2; exit 2");
        let inspection = Iptables::new(Family::Ipv4, &wrapper, &wrapper)
            .inspect_backends()
            .expect("the tool runs");
        assert_eq!(
            inspection,
            BackendInspection {
                in_use: Ok("wrapper 2.0".to_string()),
                other: None
            }
        );
        let inspection = Iptables::new(Family::Ipv6, &failing, &failing)
            .inspect_backends()
            .expect("a failing --version is reported, not fatal");
        match inspection.in_use {
            Err(why) => assert!(
                why.contains("exit status 2") && why.contains("nope"),
                "{why}"
            ),
            Ok(line) => panic!("expected a failure, got {line}"),
        }
        let missing = Iptables::new(Family::Ipv4, "/knit-test/no-such-save", "x")
            .inspect_backends()
            .expect_err("missing tool");
        assert_eq!(
            missing.to_string(),
            "`/knit-test/no-such-save` does not exist; install the `iptables` package or fix the path"
        );
    }
}
