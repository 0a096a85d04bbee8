//! The lab itself: one node namespace with a bridge, the processes started in
//! it and in its pods, and the guarantee that all of it goes away again (on
//! drop, on Ctrl-C through a [`ShutdownHandle`], or at the next start after a
//! crash).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::apps::AppSpec;
use crate::cleanup::{self, LAB_PREFIX};
use crate::error::{LabError, Result};
use crate::netns;
use crate::process::{self, Managed, Tools};

/// knitd's discovery address inside the lab.
pub const KNITD_GRPC_ADDR: &str = "198.18.0.1:15010";
/// knitd's TLS gRPC server (discovery and CA), verified with the mesh root.
pub const KNITD_GRPC_TLS_ADDR: &str = "198.18.0.1:15012";
const NODE_IP_TEXT: &str = "198.18.0.1";
/// knitd's HTTP (health, debug) address inside the lab.
pub const KNITD_HTTP_ADDR: &str = "198.18.0.1:15014";

/// How long processes get between SIGTERM and SIGKILL when the lab stops them.
const STOP_GRACE: Duration = Duration::from_millis(1500);
/// Deadline for a component to report healthy; generous for debug builds on 2 busy cores.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Numbers the labs of one process; with the PID it makes every prefix unique.
static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A pod in the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address (2001:2::A:B for 198.18.A.B), in dual-stack labs.
    pub ipv6: Option<Ipv6Addr>,
    /// The pod's network namespace (for `ip netns exec`).
    pub netns: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub app_port: u16,
    /// Apps running besides the echo.
    pub apps: Vec<AppSpec>,
    pub sidecar: bool,
    /// Extra arguments for the pod's knit-init and knit-proxy.
    pub init_args: Vec<String>,
    pub proxy_args: Vec<String>,
    /// Extra environment of the pod's knit-proxy.
    pub proxy_env: Vec<(String, String)>,
    /// What knit-proxy runs under (a profiler), empty for nothing.
    pub proxy_wrapper: Vec<String>,
    /// The proxy's token for the mesh CA (sidecar pods): readable by uid
    /// 1337 only; its SHA-256 is in the pod's WorkloadEntry.
    pub token_file: Option<PathBuf>,
    /// When the pod's WorkloadEntry landed in knitd's config dir. For a
    /// sidecar pod that is before its proxy starts: the CA checks the
    /// proxy's token against the entry.
    pub registered_at: Instant,
}

#[derive(Debug)]
pub(crate) struct PodState {
    pub pod: Pod,
    pub processes: Vec<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct ServiceState {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub vip6: Option<Ipv6Addr>,
    pub file: String,
}

/// State shared with [`ShutdownHandle`]s and [`crate::ClientHandle`]s.
#[derive(Debug)]
pub(crate) struct Shared {
    pub tools: Tools,
    pub prefix: String,
    pub node_ns: String,
    pub dir: PathBuf,
    pub keep: bool,
    pub state: Mutex<State>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub closed: bool,
    pub next_id: u64,
    pub procs: BTreeMap<u64, Managed>,
    /// Every namespace made, node first.
    pub namespaces: Vec<String>,
}

/// Options of a new lab; [`Lab::builder`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabBuilder {
    name: String,
    dual_stack: bool,
}

impl LabBuilder {
    /// IPv6 besides IPv4: the bridge gets 2001:2::1/64, every pod
    /// 2001:2::A:B/64 (for 198.18.A.B) with a default route, and Services a
    /// second cluster IP in 2001:2:0:1::/64. WorkloadEntries keep the IPv4
    /// address (one address per workload in Knit's model).
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Checks for root and the tools, removes leftovers of crashed labs, and
    /// creates the node namespace with its bridge and the lab's certificates.
    pub fn build(self) -> Result<Lab> {
        Lab::create(&self.name, self.dual_stack)
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop cleanup, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Creates and records a namespace, unless the lab is shutting down.
    pub fn create_netns(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Err(LabError::ShutDown);
        }
        netns::add(&self.tools, name)?;
        st.namespaces.push(name.to_string());
        Ok(())
    }

    /// Starts and records a process with stderr (and stdout, unless
    /// `stdout_to` names a file for it) in `log`.
    pub fn spawn(
        &self,
        label: &str,
        mut cmd: Command,
        log: &Path,
        stdout_to: Option<&Path>,
    ) -> Result<u64> {
        let mut st = self.lock();
        if st.closed {
            return Err(LabError::ShutDown);
        }
        let (out, err) = process::log_stdio(log, &format!("starting {}", process::describe(&cmd)))?;
        let out = match stdout_to {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?,
            ),
            None => out,
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: process::describe(&cmd),
            source,
        })?;
        let id = st.next_id;
        st.next_id += 1;
        st.procs.insert(
            id,
            Managed {
                label: label.to_string(),
                child,
                log: log.to_path_buf(),
                exited: None,
            },
        );
        Ok(id)
    }

    /// Stops recorded processes (SIGTERM, `grace`, SIGKILL) and forgets them.
    pub fn stop(&self, ids: &[u64], grace: Duration) {
        let mut st = self.lock();
        let mut taken: Vec<Managed> = ids.iter().filter_map(|id| st.procs.remove(id)).collect();
        let mut refs: Vec<&mut Managed> = taken.iter_mut().collect();
        process::terminate_all(&mut refs, grace);
    }

    /// The PID of a recorded process that is still running.
    pub fn pid_of(&self, id: u64) -> Option<u32> {
        let mut st = self.lock();
        let p = st.procs.get_mut(&id)?;
        p.poll_exit().is_none().then(|| p.pid())
    }

    /// If a recorded process has exited: its name, status and log tail.
    pub fn exited(&self, id: u64) -> Option<LabError> {
        let mut st = self.lock();
        let p = st.procs.get_mut(&id)?;
        let status = p.poll_exit()?;
        Some(LabError::ProcessExited {
            name: p.label.clone(),
            status: status.to_string(),
            log: p.log.clone(),
            tail: process::tail_file(&p.log, 20),
        })
    }

    /// Kills everything, deletes every namespace and `/etc/netns` dir, and
    /// removes the lab's directory. Idempotent; reports the first failure.
    pub fn shutdown(&self) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        let mut procs: Vec<Managed> = std::mem::take(&mut st.procs).into_values().collect();
        let mut refs: Vec<&mut Managed> = procs.iter_mut().collect();
        process::terminate_all(&mut refs, STOP_GRACE);
        let mut first_error = None;
        // Pods before the node, and strays (processes not started as tracked
        // children) killed before their namespace goes.
        for ns in st.namespaces.iter().rev() {
            if let Err(e) = netns::kill_all_in(&self.tools, ns) {
                first_error.get_or_insert(e);
            }
        }
        for ns in st.namespaces.iter().rev() {
            if let Err(e) = netns::delete(&self.tools, ns) {
                first_error.get_or_insert(e);
            }
            if let Err(e) = cleanup::remove_etc_netns(ns) {
                first_error.get_or_insert(e);
            }
        }
        st.namespaces.clear();
        if self.keep {
            eprintln!("knit-lab: KNIT_LAB_KEEP=1, kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_error.get_or_insert(LabError::io(format!("removing {}", self.dir.display()), e));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Tears a lab down from another thread, e.g. a Ctrl-C handler. Cloneable;
/// the first shutdown wins, later ones (and the lab's drop) do nothing.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) -> Result<()> {
        self.shared.shutdown()
    }
}

/// A Knit mesh on this machine. See the crate docs for an example.
#[derive(Debug)]
pub struct Lab {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) knit_lab: PathBuf,
    pub(crate) pods: BTreeMap<String, PodState>,
    pub(crate) services: BTreeMap<(String, String), ServiceState>,
    pub(crate) knitd: Option<u64>,
    /// The CA flags knitd starts with.
    pub(crate) knitd_ca: crate::knitd::KnitdCa,
    pub(crate) dual_stack: bool,
    pub(crate) next_pod_index: u32,
    pub(crate) next_vip_index: u32,
    pub(crate) client_seq: AtomicU64,
}

impl Lab {
    /// Checks for root and the tools, removes leftovers of crashed labs, and
    /// creates a fresh node namespace with bridge `knit0` at 198.18.0.1/16.
    /// IPv4 only; [`Lab::builder`] has the options.
    pub fn new(name: &str) -> Result<Lab> {
        Lab::builder(name).build()
    }

    /// A lab with options, e.g. `Lab::builder("v6").dual_stack(true).build()`.
    pub fn builder(name: &str) -> LabBuilder {
        LabBuilder {
            name: name.to_string(),
            dual_stack: false,
        }
    }

    fn create(name: &str, dual_stack: bool) -> Result<Lab> {
        crate::spec::validate_dns_label("lab name", name)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let tools = Tools::find()?;
        let knit_lab = process::find_binary("knit-lab")?;
        cleanup::remove_leftovers_with(&tools)?;

        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{LAB_PREFIX}{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("knit-lab-{name}-{pid}-{n}"));
        // A directory of an earlier process that had the same PID is stale.
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["config", "logs"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        }
        let shared = Arc::new(Shared {
            tools,
            node_ns: format!("{prefix}-node"),
            prefix,
            dir,
            keep: std::env::var("KNIT_LAB_KEEP").is_ok_and(|v| v == "1"),
            state: Mutex::new(State::default()),
        });
        let lab = Lab {
            shared,
            name: name.to_string(),
            knit_lab,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            knitd: None,
            knitd_ca: crate::knitd::KnitdCa::default(),
            dual_stack,
            next_pod_index: 11,
            next_vip_index: 10,
            client_seq: AtomicU64::new(0),
        };
        // From here on, dropping `lab` on an error undoes what was made.
        crate::tls::write_lab_certs(&lab.tls_dir())?;
        lab.shared.create_netns(&lab.shared.node_ns)?;
        netns::setup_node(&lab.shared.tools, &lab.shared.node_ns, dual_stack)?;
        Ok(lab)
    }

    /// Whether pods and Services get IPv6 too.
    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// The address apps listen on: every IPv4 address, or in a dual-stack
    /// lab every address of both families (one `[::]` socket).
    pub(crate) fn listen_host(&self) -> &'static str {
        if self.dual_stack { "[::]" } else { "0.0.0.0" }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unique prefix of every namespace of this lab (`knl-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The node namespace (bridge, knitd).
    pub fn node_netns(&self) -> &str {
        &self.shared.node_ns
    }

    /// The lab's directory: `config/` (knitd's), `logs/`, `tls/`,
    /// `tokens/` (the proxies' CA tokens), `knitd-state/` (the CA root) and
    /// `roots/` (roots made by [`Lab::create_root_ca`]).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config_dir(&self) -> PathBuf {
        self.shared.dir.join("config")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.shared.logs_dir()
    }

    /// Every network namespace of the lab, node first.
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.lock().namespaces.clone()
    }

    /// `(label, pid)` of every process the lab has running.
    pub fn process_pids(&self) -> Vec<(String, u32)> {
        let mut st = self.shared.lock();
        st.procs
            .values_mut()
            .filter_map(|p| p.poll_exit().is_none().then(|| (p.label.clone(), p.pid())))
            .collect()
    }

    /// A handle that tears the lab down from elsewhere (Ctrl-C handlers).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// Tears the lab down now and reports problems (drop does the same silently).
    pub fn shutdown(self) -> Result<()> {
        self.shared.shutdown()
    }

    /// The last `n` lines of every process log, each under a heading.
    pub fn logs_tail(&self, n: usize) -> String {
        let dir = self.logs_dir();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return format!("(cannot list {}: {e})", dir.display()),
        };
        files.sort();
        let mut out = String::new();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push_str(&format!("==> {name} <==\n{}\n", process::tail_file(&f, n)));
        }
        out
    }

    // ---- knitd ----

    /// Where knitd keeps its CA root, so the root (and with it every
    /// proxy's trust bundle) survives knitd restarts within the lab.
    pub fn knitd_state_dir(&self) -> PathBuf {
        self.shared.dir.join("knitd-state")
    }

    /// Starts knitd in the node namespace and waits for `/healthz`. Its CA
    /// is the persisted root in [`Lab::knitd_state_dir`] unless
    /// [`Lab::start_knitd_with`] said otherwise.
    pub fn start_knitd(&mut self) -> Result<()> {
        if self.knitd_running() {
            return Err(LabError::AlreadyExists {
                kind: "process",
                name: "knitd".to_string(),
            });
        }
        let knitd = process::find_binary("knitd")?;
        let mut cmd = netns::exec_in(&self.shared.tools, &self.shared.node_ns, &knitd);
        cmd.arg("--config-dir")
            .arg(self.config_dir())
            .args(self.knitd_ca.args(&self.knitd_state_dir()))
            .args([
                "--grpc-addr",
                KNITD_GRPC_ADDR,
                "--grpc-tls-addr",
                KNITD_GRPC_TLS_ADDR,
                // Proxies dial knitd by address in the lab.
                "--tls-san",
                NODE_IP_TEXT,
                "--http-addr",
                KNITD_HTTP_ADDR,
            ]);
        default_log_env(&mut cmd);
        let log = self.logs_dir().join("knitd.log");
        let id = self.shared.spawn("knitd", cmd, &log, None)?;
        self.knitd = Some(id);
        let url = format!("http://{KNITD_HTTP_ADDR}/healthz");
        let node = self.shared.node_ns.clone();
        self.wait_process_ready(id, "knitd /healthz", READY_TIMEOUT, |lab| {
            Ok(lab.get_in(&node, &url, "node namespace")?.status == 200)
        })
    }

    /// Kills knitd with SIGKILL, as a crash would.
    pub fn stop_knitd(&mut self) -> Result<()> {
        let id = self.knitd.take().ok_or_else(|| LabError::NotFound {
            kind: "process",
            name: "knitd".to_string(),
        })?;
        self.shared.stop(&[id], Duration::ZERO);
        Ok(())
    }

    /// Stops knitd (if running) and starts it again.
    pub fn restart_knitd(&mut self) -> Result<()> {
        if self.knitd.is_some() {
            self.stop_knitd()?;
        }
        self.start_knitd()
    }

    /// Whether knitd was started and has not exited.
    pub fn knitd_running(&self) -> bool {
        self.knitd.is_some_and(|id| {
            let mut st = self.shared.lock();
            st.procs
                .get_mut(&id)
                .is_some_and(|p| p.poll_exit().is_none())
        })
    }

    /// Polls `probe` until true, failing at once if process `id` exits.
    pub(crate) fn wait_process_ready(
        &self,
        id: u64,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Lab) -> Result<bool>,
    ) -> Result<()> {
        let mut exited = None;
        let result = crate::wait::wait_until(what, timeout, || {
            if let Some(e) = self.shared.exited(id) {
                exited = Some(e);
                return Ok(true);
            }
            probe(self)
        });
        match exited {
            Some(e) => Err(e),
            None => result,
        }
    }
}
impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.shared.shutdown() {
            eprintln!("knit-lab: cleaning up lab {}: {e}", self.shared.prefix);
        }
    }
}

/// Knit processes log at info unless the caller chose a level, and without
/// colours: their output goes to files.
pub(crate) fn default_log_env(cmd: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("NO_COLOR", "1");
}

/// Highest address index in a /16.
pub(crate) const MAX_INDEX: u32 = 0xffff;

/// Address number `index` of 198.`second`.0.0/16; `None` for .0 and .255
/// host bytes (valid in a /16, but confusing to read).
pub(crate) fn index_to_ip(second: u8, index: u32) -> Option<Ipv4Addr> {
    let (hi, lo) = (index >> 8, index & 0xff);
    if hi > 255 || lo == 0 || lo == 255 {
        return None;
    }
    Some(Ipv4Addr::new(198, second, hi as u8, lo as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_indexes() {
        assert_eq!(index_to_ip(18, 11), Some(Ipv4Addr::new(198, 18, 0, 11)));
        assert_eq!(index_to_ip(18, 255), None);
        assert_eq!(index_to_ip(18, 256), None);
        assert_eq!(index_to_ip(19, 257), Some(Ipv4Addr::new(198, 19, 1, 1)));
        assert_eq!(index_to_ip(18, 0x10000), None);
    }
}
