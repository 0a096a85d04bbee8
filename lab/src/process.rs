//! Finding tools and Knit binaries, running short commands with a deadline,
//! and stopping the long-running processes the lab starts.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, Result};

/// Where tools are looked for besides `$PATH`: root's sbin dirs are often
/// missing from the PATH of non-login shells and CI runners.
const EXTRA_TOOL_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Absolute paths of the system tools the lab drives.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub iptables_save: PathBuf,
    pub iptables_restore: PathBuf,
    pub setpriv: PathBuf,
}

impl Tools {
    /// Finds every required tool or names the first one missing.
    pub fn find() -> Result<Tools> {
        Ok(Tools {
            ip: find_tool("ip")?,
            iptables_save: find_tool("iptables-save")?,
            iptables_restore: find_tool("iptables-restore")?,
            setpriv: find_tool("setpriv")?,
        })
    }
}

fn tool_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in EXTRA_TOOL_DIRS {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    dirs
}

/// Finds an executable system tool by name in `$PATH` and the sbin dirs.
pub fn find_tool(name: &str) -> Result<PathBuf> {
    let dirs = tool_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| LabError::ToolMissing {
            tool: name.to_string(),
            searched: "$PATH and /usr/local/sbin:/usr/sbin:/sbin".to_string(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directories Knit binaries are looked for in, in order: `$KNIT_BIN_DIR`,
/// the current executable's directory and its parent (integration tests run
/// from `target/<profile>/deps`).
pub fn binary_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("KNIT_BIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs
}

/// Finds a Knit binary (`knitd`, `knit-proxy`, `knit-init`, `knit-lab`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let dirs = binary_dirs();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| LabError::BinaryNotFound {
            name: name.to_string(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A command line rendered for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![short(cmd.get_program())];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn short(program: &OsStr) -> String {
    // Tool paths are absolute; the file name reads better in messages.
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    fn combined(&self) -> String {
        let mut text = self.stderr.trim().to_string();
        let out = self.stdout.trim();
        if !out.is_empty() {
            if !text.is_empty() {
                text.push_str(" | stdout: ");
            }
            text.push_str(out);
        }
        if text.is_empty() {
            text.push_str("(no output)");
        }
        text
    }
}

/// Runs a command to completion, killing it if it outlives `timeout`.
/// A non-zero exit is not an error here; see [`run_checked`].
pub(crate) fn run_capture(mut cmd: Command, timeout: Duration) -> Result<Captured> {
    let command = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(reader_thread);
    let stderr = child.stderr.take().map(reader_thread);
    let status = match wait_deadline(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            // The readers are left detached: a grandchild may still hold the pipes.
            return Err(LabError::CommandTimeout {
                command,
                after: timeout,
            });
        }
        Err(e) => return Err(LabError::io(format!("waiting for `{command}`"), e)),
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(Captured {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

/// Runs a command and returns its stdout; a non-zero exit is an error that
/// carries the command line and what it printed.
pub(crate) fn run_checked(cmd: Command, timeout: Duration) -> Result<String> {
    let command = describe(&cmd);
    let out = run_capture(cmd, timeout)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(LabError::CommandFailed {
            command,
            status: out.status.to_string(),
            output: out.combined(),
        })
    }
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for a child until `timeout`; `Ok(None)` means it is still running.
pub(crate) fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// A long-running process started by the lab, with its output in a log file.
#[derive(Debug)]
pub(crate) struct Managed {
    pub label: String,
    pub child: Child,
    pub log: PathBuf,
    pub exited: Option<ExitStatus>,
}

impl Managed {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended (and was reaped).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }
}

/// Opens (appending) a log file and returns handles for a child's stdout and stderr.
pub(crate) fn log_stdio(path: &Path, banner: &str) -> Result<(Stdio, Stdio)> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| LabError::io(format!("opening log {}", path.display()), e))?;
    // A banner separates restarts of the same process in one log.
    writeln!(file, "=== knit-lab: {banner} ===")
        .map_err(|e| LabError::io(format!("writing log {}", path.display()), e))?;
    let err = file
        .try_clone()
        .map_err(|e| LabError::io(format!("duplicating log {}", path.display()), e))?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

/// Sends SIGTERM to every process still running, waits up to `grace` for them
/// all, then SIGKILLs the rest; every process is reaped on return. A zero
/// grace means SIGKILL alone, as a crash would.
pub(crate) fn terminate_all(procs: &mut [&mut Managed], grace: Duration) {
    if grace.is_zero() {
        for p in procs.iter_mut() {
            kill_and_reap(p);
        }
        return;
    }
    for p in procs.iter_mut() {
        if p.poll_exit().is_none() {
            signal(p.pid(), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && procs.iter_mut().any(|p| p.poll_exit().is_none()) {
        thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter_mut() {
        kill_and_reap(p);
    }
}

/// SIGKILLs a process (if still running) and reaps it.
pub(crate) fn kill_and_reap(p: &mut Managed) {
    if p.poll_exit().is_none() {
        signal(p.pid(), Signal::SIGKILL);
        p.exited = p.child.wait().ok();
    }
}

/// Sends a signal, ignoring a process that is already gone.
pub(crate) fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// True while `/proc/<pid>` exists (running or zombie).
pub(crate) fn pid_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The last `n` lines of a file, or a note saying why there are none.
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
