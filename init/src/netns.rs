//! `--netns PATH`: doing the whole run inside another network namespace.
//!
//! The process switches itself with `setns(CLONE_NEWNET)` rather than wrapping
//! every tool in `nsenter --net=PATH`. That is safe because of when it happens:
//!
//! - `setns` moves only the calling thread. [`enter`] is called by `main` on
//!   the main thread before anything else runs, and refuses when any other
//!   thread exists, so no thread is left behind in the old namespace.
//! - Every later thread and child process (iptables-save/-restore,
//!   ip6tables-*, `ip`) inherits the namespace of the thread that creates it,
//!   so all of them run inside PATH — there is no moment at which a tool
//!   could act on the caller's own namespace, and no per-command wrapper that
//!   could be forgotten.
//! - Only the network namespace changes. The mount namespace stays, so PATH
//!   lookups, the xtables lock file and `/proc/self/net` (which follows the
//!   reading process's network namespace) all behave as in a pod.
//! - A failure to enter is an error before anything is read or written; the
//!   run never falls back to the current namespace.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use crate::error::InitError;

/// Moves this process into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME` or `/proc/PID/ns/net`).
///
/// Must be called while the process has a single thread; see the module docs.
pub fn enter(path: &Path) -> Result<(), InitError> {
    let error = |reason: String| InitError::Netns {
        path: path.to_path_buf(),
        reason,
    };
    let threads = thread_count().map_err(&error)?;
    if threads != 1 {
        return Err(error(format!(
            "the process already runs {threads} threads; setns moves only the calling \
             thread, so it must happen before any other thread exists"
        )));
    }
    let namespace = File::open(path).map_err(|err| error(format!("cannot open it: {err}")))?;
    setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(|errno| {
        error(match errno {
            Errno::EINVAL => "it is not a network namespace".to_string(),
            Errno::EPERM => "setns was not permitted: knit-init needs CAP_SYS_ADMIN \
                             (run it as root) to enter another namespace"
                .to_string(),
            other => format!("setns failed: {other}"),
        })
    })
}

/// The `Threads:` count of `/proc/self/status`.
fn thread_count() -> Result<usize, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|err| format!("cannot read /proc/self/status to count threads: {err}"))?;
    parse_thread_count(&status)
        .ok_or_else(|| "/proc/self/status has no readable `Threads:` line".to_string())
}

fn parse_thread_count(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_read_from_proc_status() {
        assert_eq!(
            parse_thread_count("Name:\tknit-init\nThreads:\t1\nSigQ:\t0/1\n"),
            Some(1)
        );
        assert_eq!(parse_thread_count("Threads:  12\n"), Some(12));
        assert_eq!(parse_thread_count("Name: x\n"), None);
        // The test harness runs tests on worker threads, so this process has several.
        assert!(thread_count().expect("readable") >= 1);
    }

    #[test]
    fn entering_refuses_while_other_threads_exist() {
        // Held open so at least two threads exist whatever the harness does.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || rx.recv());
        let err = enter(Path::new("/proc/self/ns/net")).expect_err("several threads");
        assert!(
            err.to_string()
                .contains("must happen before any other thread exists"),
            "{err}"
        );
        drop(tx);
        let _ = helper.join();
    }
}
