//! Leftovers of crashed runs. Every namespace a lab makes is named
//! `knl-<pid>-<n>-...` after the process that made it, so one whose process
//! is gone can be recognised and removed along with anything still in it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{LabError, Result};
use crate::netns;
use crate::process::{Tools, pid_exists};

/// Prefix of every lab namespace name.
pub const LAB_PREFIX: &str = "knl-";

const ETC_NETNS: &str = "/etc/netns";

/// What [`remove_leftovers`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    /// Processes that were still running in them (killed).
    pub killed: Vec<u32>,
    /// `/etc/netns` entries removed.
    pub etc_entries: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.killed.is_empty() && self.etc_entries.is_empty()
    }
}

/// The PID in a lab name (`knl-<pid>-...`, or `.knl-<pid>-...` for temp files).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.trim_start_matches('.').strip_prefix(LAB_PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Whether a lab name belongs to a process that no longer exists.
fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| pid != std::process::id() && !pid_exists(pid))
}

/// Removes every lab namespace (and `/etc/netns` entry) whose creating
/// process is gone, killing whatever still runs in it. Needs root.
pub fn remove_leftovers() -> Result<Leftovers> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    remove_leftovers_with(&Tools::find()?)
}

pub(crate) fn remove_leftovers_with(tools: &Tools) -> Result<Leftovers> {
    // Labs started in parallel in one process take turns; another process
    // cleaning at the same time is tolerated below.
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut found = Leftovers::default();
    let stale: Vec<String> = netns::list(tools)?
        .into_iter()
        .filter(|n| is_stale(n))
        .collect();
    for ns in &stale {
        match netns::kill_all_in(tools, ns) {
            Ok(killed) => found.killed.extend(killed),
            // Someone else removed it meanwhile: nothing left to do.
            Err(_) if !netns::list(tools)?.contains(ns) => {}
            Err(e) => return Err(e),
        }
    }
    for ns in stale {
        netns::delete(tools, &ns)?;
        found.namespaces.push(ns);
    }
    // Also entries whose namespace is already gone (a crash between steps).
    if let Ok(entries) = std::fs::read_dir(ETC_NETNS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_stale(&name) {
                let path = entry.path();
                remove_path(&path)?;
                found.etc_entries.push(path);
            }
        }
    }
    Ok(found)
}

/// `/etc/netns/<ns>`: files in it are bind-mounted over `/etc` by `ip netns exec`.
pub(crate) fn etc_netns_dir(ns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(ns)
}

/// Temp file for a pod's `/etc/netns` files: in `/etc/netns` (same filesystem, so the
/// rename is atomic) but outside the pod's own dir.
pub(crate) fn hosts_tmp_path(ns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(format!(".{ns}.hosts.tmp"))
}

/// Removes a namespace's `/etc/netns` dir and temp file, if present.
pub(crate) fn remove_etc_netns(ns: &str) -> Result<()> {
    remove_path(&etc_netns_dir(ns))?;
    remove_path(&hosts_tmp_path(ns))
}

fn remove_path(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("knl-1234-0-node"), Some(1234));
        assert_eq!(owner_pid("knl-1234-7-pod-backend-1"), Some(1234));
        assert_eq!(owner_pid(".knl-99-0-pod-a.hosts.tmp"), Some(99));
        assert_eq!(owner_pid("knl-1234"), None);
        assert_eq!(owner_pid("knl-1234-"), None);
        assert_eq!(owner_pid("knl-x-0-node"), None);
        assert_eq!(owner_pid("cni-1234-0"), None);
    }

    #[test]
    fn own_and_live_pids_are_not_stale() {
        let own = format!("knl-{}-0-node", std::process::id());
        assert!(!is_stale(&own));
        // PID 1 always exists.
        assert!(!is_stale("knl-1-0-node"));
        assert!(!is_stale("other-name"));
    }
}
