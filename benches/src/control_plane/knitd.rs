//! knitd as a separate process, so the CPU time and memory read from
//! `/proc/<pid>` are knitd's alone. It listens on loopback only.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs::{ProcMem, proc_cpu, proc_mem, reset_peak};
use crate::{BenchError, Result};

/// knitd's default poll interval of the config directory
/// (`knit_controlplane::DEFAULT_POLL_INTERVAL`, `--poll-interval-ms`).
pub const KNITD_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long knitd gets to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Finds the knitd binary: `$KNIT_BIN_DIR`, then next to the running
/// executable and its parent directory (a test runs from
/// `target/<profile>/deps`), as the lab finds its binaries.
pub fn find_knitd() -> Result<PathBuf> {
    knit_lab::find_binary("knitd").map_err(|e| BenchError::ToolMissing {
        tool: "knitd".to_owned(),
        hint: format!(
            "{e}; build it first with `cargo build --release -p knit-controlplane --bin knitd` \
             (or set KNIT_BIN_DIR)"
        ),
    })
}

/// A free loopback port, found by binding port 0. Another process could
/// take it before knitd binds it; knitd then fails to start and says so.
fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("binding 127.0.0.1:0 to find a free port", e))?;
    listener
        .local_addr()
        .map_err(|e| BenchError::io("reading the address of a free port", e))
}

/// A running knitd.
#[derive(Debug)]
pub struct KnitdProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    log: PathBuf,
}

impl KnitdProcess {
    /// Starts `binary` on `config_dir` with every server on a free
    /// loopback port, its CA root in `state_dir` (as an operator runs it),
    /// logging to `log`; returns once the discovery port accepts
    /// connections.
    pub fn start(
        binary: &Path,
        config_dir: &Path,
        state_dir: &Path,
        log: &Path,
        poll_interval: Duration,
        deadline: Duration,
    ) -> Result<Self> {
        let grpc_addr = free_loopback_port()?;
        let tls_addr = free_loopback_port()?;
        let http_addr = free_loopback_port()?;
        let log_file = File::create(log).map_err(|source| BenchError::Write {
            path: log.to_path_buf(),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--grpc-addr")
            .arg(grpc_addr.to_string())
            .arg("--grpc-tls-addr")
            .arg(tls_addr.to_string())
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--poll-interval-ms")
            .arg(poll_interval.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {}", binary.display()), e))?;
        let mut knitd = KnitdProcess {
            child,
            grpc_addr,
            log: log.to_path_buf(),
        };
        knitd.wait_listening(deadline)?;
        Ok(knitd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Errors if knitd has exited, quoting the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Command {
                command: "knitd".to_owned(),
                status: status.to_string(),
                output: self.log_tail(),
            }),
            Err(e) => Err(BenchError::io("waiting for knitd", e)),
        }
    }

    fn wait_listening(&mut self, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            if TcpStream::connect_timeout(&self.grpc_addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > deadline {
                return Err(BenchError::invalid(
                    "knitd",
                    format!(
                        "not listening on {} after {deadline:?}; log: {}",
                        self.grpc_addr,
                        self.log_tail()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of knitd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Lines of knitd's log at WARN or ERROR level (the log holds one
    /// INFO line per proxy stream, which is not worth keeping).
    pub fn log_problems(&self, at_most: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .take(at_most)
            .map(str::to_owned)
            .collect()
    }

    /// knitd's CPU time so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        Ok(proc_cpu(self.pid())?.own)
    }

    pub fn memory(&self) -> Result<ProcMem> {
        proc_mem(self.pid())
    }

    /// Resets knitd's peak resident size, so VmHWM covers what follows.
    pub fn reset_peak(&self) -> Result<()> {
        reset_peak(self.pid())
    }

    /// SIGTERM, then SIGKILL after a grace time.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KnitdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
