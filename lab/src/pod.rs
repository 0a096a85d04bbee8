//! Pods: a namespace wired to the node bridge, the echo app and any other
//! apps, optionally the sidecar (knit-init + knit-proxy as uid 1337, with a
//! token for the mesh CA), a hosts file for service names, and the
//! WorkloadEntry that tells knitd about it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::apps::AppSpec;
use crate::cleanup;
use crate::config::{self, EntryProxy};
use crate::error::{LabError, Result};
use crate::lab::{
    KNITD_GRPC_ADDR, Lab, MAX_INDEX, Pod, PodState, READY_TIMEOUT, default_log_env, index_to_ip,
};
use crate::netns;
use crate::process::{self, run_capture};
use crate::spec::PodSpec;
use crate::token;

/// uid and gid the proxy runs as; the capture rules exempt its traffic.
pub const PROXY_UID: u32 = 1337;
/// The proxy's readiness port (`/healthz/ready`), reachable from the node.
pub const PROXY_READY_PORT: u16 = 15021;
/// The proxy's admin port, on 127.0.0.1 inside the pod.
pub const PROXY_ADMIN_PORT: u16 = 15000;
/// The proxy's Prometheus port (`/metrics`), on every address of the pod.
pub const PROXY_METRICS_PORT: u16 = 15090;

const INIT_TIMEOUT: Duration = Duration::from_secs(60);
const POD_STOP_GRACE: Duration = Duration::from_millis(1500);

impl Lab {
    /// Creates a pod and starts what runs in it; returns once the echo (and,
    /// with a sidecar, the proxy) is ready and the WorkloadEntry is written.
    /// On failure nothing of the pod is left behind.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<Pod> {
        spec.validate()?;
        if self.pods.contains_key(&spec.name) {
            return Err(LabError::AlreadyExists {
                kind: "pod",
                name: spec.name,
            });
        }
        // A missing binary fails before anything is created.
        let sidecar = if spec.sidecar {
            Some((
                process::find_binary("knit-init")?,
                process::find_binary("knit-proxy")?,
            ))
        } else {
            None
        };
        let named_ports = spec.named_ports();
        let (index, ip) = self.allocate_pod_ip()?;
        let pod = Pod {
            netns: format!("{}-pod-{}", self.shared.prefix, spec.name),
            name: spec.name,
            namespace: spec.namespace,
            ip,
            ipv6: self.dual_stack.then(|| netns::pod_ipv6(ip)),
            labels: spec.labels,
            service_account: spec.service_account,
            app_port: spec.app_port,
            apps: spec.apps,
            sidecar: spec.sidecar,
            init_args: spec.init_args,
            proxy_args: spec.proxy_args,
            proxy_env: spec.proxy_env,
            proxy_wrapper: spec.proxy_wrapper,
            token_file: None,
            registered_at: Instant::now(),
        };
        let name = pod.name.clone();
        self.shared.create_netns(&pod.netns)?;
        self.pods.insert(
            name.clone(),
            PodState {
                pod,
                processes: Vec::new(),
            },
        );
        match self.bring_up_pod(&name, index, sidecar, &named_ports) {
            Ok(pod) => Ok(pod),
            Err(e) => {
                let _ = self.remove_pod(&name);
                Err(e)
            }
        }
    }

    fn bring_up_pod(
        &mut self,
        name: &str,
        index: u32,
        sidecar: Option<(PathBuf, PathBuf)>,
        named_ports: &BTreeMap<String, u16>,
    ) -> Result<Pod> {
        let pod = self.pod(name)?.clone();
        let tools = self.shared.tools.clone();
        netns::setup_pod(
            &tools,
            &self.shared.node_ns,
            &pod.netns,
            &format!("vh{index}"),
            pod.ip,
            pod.ipv6,
        )?;
        if let Some(ip6) = pod.ipv6 {
            // DAD is off, but the address must be usable before anyone
            // calls the pod ready.
            crate::wait::wait_until(
                &format!("{ip6} to be usable in pod {name}"),
                READY_TIMEOUT,
                || netns::ipv6_ready(&tools, &pod.netns, "eth0", ip6),
            )?;
        }
        self.write_hosts(&pod)?;

        let mut cmd = netns::exec_in(&tools, &pod.netns, &self.knit_lab);
        cmd.args(["echo", "--pod-name", name, "--listen"])
            .arg(format!("{}:{}", self.listen_host(), pod.app_port));
        default_log_env(&mut cmd);
        let log = self.logs_dir().join(format!("{name}.echo.log"));
        let echo = self
            .shared
            .spawn(&format!("echo in pod {name}"), cmd, &log, None)?;
        self.track(name, echo);
        // Probed on loopback, which the capture rules never redirect.
        let url = format!("http://127.0.0.1:{}/", pod.app_port);
        let what = format!("echo in pod {name} to listen on port {}", pod.app_port);
        self.wait_process_ready(echo, &what, READY_TIMEOUT, |lab| {
            Ok(lab.get_in(&pod.netns, &url, &format!("pod {name}"))?.status == 200)
        })?;
        for app in &pod.apps {
            self.start_app(&pod, app)?;
        }

        match sidecar {
            Some((init, proxy)) => {
                self.run_init(&pod, &init)?;
                // knitd signs the proxy's certificate only for a token whose
                // digest a WorkloadEntry carries, so the entry goes first
                // and the proxy starts after it.
                let token = token::create(self.dir(), name, PROXY_UID)?;
                self.register(
                    &pod,
                    named_ports,
                    EntryProxy::Knit {
                        token_sha256: Some(&token.sha256_hex),
                    },
                )?;
                let state = self.pods.get_mut(name).ok_or_else(|| not_found(name))?;
                state.pod.token_file = Some(token.path.clone());
                let pod = state.pod.clone();
                self.start_proxy(&pod, &proxy, &token.path)?;
            }
            None => self.register(&pod, named_ports, EntryProxy::None)?,
        }
        self.pod(name).cloned()
    }

    /// Writes the pod's WorkloadEntry; `registered_at` is when it landed.
    fn register(
        &mut self,
        pod: &Pod,
        named_ports: &BTreeMap<String, u16>,
        proxy: EntryProxy<'_>,
    ) -> Result<()> {
        let entry = config::workload_entry_yaml(
            &pod.name,
            &pod.namespace,
            pod.ip,
            &pod.labels,
            &pod.service_account,
            named_ports,
            proxy,
        );
        self.write_config(&workload_entry_file(&pod.name), &entry)?;
        let state = self
            .pods
            .get_mut(&pod.name)
            .ok_or_else(|| not_found(&pod.name))?;
        state.pod.registered_at = Instant::now();
        Ok(())
    }

    /// Starts one app and waits until its port listens in the pod.
    fn start_app(&mut self, pod: &Pod, app: &AppSpec) -> Result<()> {
        let tools = &self.shared.tools;
        let mut cmd = netns::exec_in(tools, &pod.netns, &self.knit_lab);
        cmd.arg(app.subcommand())
            .args(app.args(&pod.name, self.listen_host(), &self.tls_dir()));
        default_log_env(&mut cmd);
        let log = self
            .logs_dir()
            .join(format!("{}.{}.log", pod.name, app.subcommand()));
        let label = format!("{} in pod {}", app.subcommand(), pod.name);
        let id = self.shared.spawn(&label, cmd, &log, None)?;
        self.track(&pod.name, id);
        let what = format!("{label} to listen on port {}", app.port());
        // `ip netns exec` execs the app, so the PID is the app's and its
        // /proc/<pid>/net is the pod's.
        self.wait_process_ready(id, &what, READY_TIMEOUT, |lab| {
            Ok(lab
                .shared
                .pid_of(id)
                .is_some_and(|pid| crate::apps::listening(pid, app.port())))
        })
    }

    /// Starts `program args` in `pod`'s network namespace as the proxy's
    /// uid and gid (1337), so `knit-init`'s capture exempts its traffic the
    /// way it exempts knit-proxy's, and waits until it listens on
    /// `listen_port` in the pod. For another proxy measured beside Knit's;
    /// it is stopped with the pod. Returns its PID.
    pub fn spawn_as_proxy_uid(
        &mut self,
        pod: &str,
        label: &str,
        program: &std::path::Path,
        args: &[String],
        listen_port: u16,
    ) -> Result<u32> {
        crate::spec::validate_dns_label("process label", label)?;
        let pod = self.pod(pod)?.clone();
        let tools = &self.shared.tools;
        let mut cmd = netns::exec_in(tools, &pod.netns, &tools.setpriv);
        cmd.arg(format!("--reuid={PROXY_UID}"))
            .arg(format!("--regid={PROXY_UID}"))
            .args(["--clear-groups", "--"])
            .arg(program)
            .args(args);
        let log = self.logs_dir().join(format!("{}.{label}.log", pod.name));
        let what = format!("{label} in pod {}", pod.name);
        let id = self.shared.spawn(&what, cmd, &log, None)?;
        self.track(&pod.name, id);
        // `ip netns exec` and `setpriv` both exec, so the PID is the
        // program's.
        self.wait_process_ready(
            id,
            &format!("{what} to listen on port {listen_port}"),
            READY_TIMEOUT,
            |lab| {
                Ok(lab
                    .shared
                    .pid_of(id)
                    .is_some_and(|pid| crate::apps::listening(pid, listen_port)))
            },
        )?;
        self.shared
            .pid_of(id)
            .ok_or_else(|| LabError::invalid(&what, "exited right after it started"))
    }

    fn run_init(&self, pod: &Pod, init: &std::path::Path) -> Result<()> {
        let mut cmd = netns::exec_in(&self.shared.tools, &pod.netns, init);
        cmd.args(&pod.init_args);
        let command = process::describe(&cmd);
        let out = run_capture(cmd, INIT_TIMEOUT)?;
        let log = self.logs_dir().join(format!("{}.init.log", pod.name));
        let text = format!(
            "=== knit-lab: {command} ===\n{}{}=== exit: {} ===\n",
            out.stdout, out.stderr, out.status
        );
        std::fs::write(&log, text)
            .map_err(|e| LabError::io(format!("writing {}", log.display()), e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::CommandFailed {
                command: format!("{command} (in pod {})", pod.name),
                status: out.status.to_string(),
                output: format!("{}{}", out.stderr.trim(), out.stdout.trim()),
            })
        }
    }

    fn start_proxy(
        &mut self,
        pod: &Pod,
        proxy: &std::path::Path,
        token_file: &std::path::Path,
    ) -> Result<()> {
        let tools = &self.shared.tools;
        let mut cmd = netns::exec_in(tools, &pod.netns, &tools.setpriv);
        cmd.arg(format!("--reuid={PROXY_UID}"))
            .arg(format!("--regid={PROXY_UID}"))
            .args(["--clear-groups", "--"])
            .args(&pod.proxy_wrapper)
            .arg(proxy)
            .arg("--control-plane")
            .arg(format!("http://{KNITD_GRPC_ADDR}"))
            .args([
                "--pod-name",
                &pod.name,
                "--namespace",
                &pod.namespace,
                "--pod-ips",
            ])
            .arg(match pod.ipv6 {
                Some(ip6) => format!("{},{ip6}", pod.ip),
                None => pod.ip.to_string(),
            })
            .args(["--service-account", &pod.service_account])
            .arg("--token-file")
            .arg(token_file)
            .args(&pod.proxy_args);
        default_log_env(&mut cmd);
        cmd.envs(pod.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = self.logs_dir().join(format!("{}.proxy.log", pod.name));
        let id = self
            .shared
            .spawn(&format!("knit-proxy in pod {}", pod.name), cmd, &log, None)?;
        self.track(&pod.name, id);
        let url = format!("http://{}:{PROXY_READY_PORT}/healthz/ready", pod.ip);
        let node = self.shared.node_ns.clone();
        let what = format!("knit-proxy in pod {} to be ready ({url})", pod.name);
        let result = self.wait_process_ready(id, &what, READY_TIMEOUT, |lab| {
            Ok(lab.get_in(&node, &url, "node namespace")?.status == 200)
        });
        match result {
            Err(LabError::Timeout { what, after, last }) if !self.knitd_running() => {
                Err(LabError::Timeout {
                    what,
                    after,
                    last: format!(
                        "{last} (knitd is not running; call start_knitd() before adding sidecar pods)"
                    ),
                })
            }
            other => other,
        }
    }

    /// The next never-used pod address (never reused, so no stale ARP or
    /// conntrack entry can point at a new pod) and its index.
    pub(crate) fn allocate_pod_ip(&mut self) -> Result<(u32, Ipv4Addr)> {
        while self.next_pod_index <= MAX_INDEX {
            let index = self.next_pod_index;
            self.next_pod_index += 1;
            if let Some(ip) = index_to_ip(18, index) {
                return Ok((index, ip));
            }
        }
        Err(LabError::AddressesExhausted {
            range: "198.18.0.0/16",
        })
    }

    fn track(&mut self, pod: &str, id: u64) {
        if let Some(state) = self.pods.get_mut(pod) {
            state.processes.push(id);
        }
    }

    /// Removes a pod: its WorkloadEntry first (so knitd withdraws the
    /// endpoint, as Kubernetes does on deletion), then its processes,
    /// namespace and `/etc/netns` dir.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let state = self.pods.remove(name).ok_or_else(|| not_found(name))?;
        let entry = self.config_dir().join(workload_entry_file(name));
        let entry_removed = match std::fs::remove_file(&entry) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io(format!("removing {}", entry.display()), e))
            }
            _ => Ok(()),
        };
        self.shared.stop(&state.processes, POD_STOP_GRACE);
        // The entry is gone, so knitd no longer accepts the token anyway.
        token::remove(self.dir(), name)?;
        let ns = &state.pod.netns;
        netns::kill_all_in(&self.shared.tools, ns)?;
        netns::delete(&self.shared.tools, ns)?;
        self.shared.lock().namespaces.retain(|n| n != ns);
        cleanup::remove_etc_netns(ns)?;
        entry_removed
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .get(name)
            .map(|s| &s.pod)
            .ok_or_else(|| not_found(name))
    }

    /// Every pod, by name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().map(|s| &s.pod)
    }

    /// PIDs of a pod's echo, apps and proxy (those still running).
    pub fn pod_pids(&self, name: &str) -> Result<Vec<u32>> {
        let state = self.pods.get(name).ok_or_else(|| not_found(name))?;
        let mut st = self.shared.lock();
        let mut pids = Vec::new();
        for id in &state.processes {
            if let Some(p) = st.procs.get_mut(id)
                && p.poll_exit().is_none()
            {
                pids.push(p.pid());
            }
        }
        Ok(pids)
    }

    /// Path of a pod's hosts file (bind-mounted over /etc/hosts by `ip netns exec`).
    pub fn hosts_file_path(&self, pod: &str) -> Result<PathBuf> {
        Ok(cleanup::etc_netns_dir(&self.pod(pod)?.netns).join("hosts"))
    }

    fn write_hosts(&self, pod: &Pod) -> Result<()> {
        let dir = cleanup::etc_netns_dir(&pod.netns);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let text = config::hosts_file(
            &pod.name,
            &pod.namespace,
            pod.ip,
            pod.ipv6,
            &self.hosts_services(),
        );
        // The temp file sits beside the pod's dir, not in it: `ip netns exec`
        // bind-mounts every file in the dir over /etc.
        let tmp = cleanup::hosts_tmp_path(&pod.netns);
        config::write_atomic(&tmp, &dir.join("hosts"), &text)?;
        let resolv = dir.join("resolv.conf");
        if !resolv.exists() {
            config::write_atomic(&tmp, &resolv, config::RESOLV_CONF)?;
        }
        Ok(())
    }

    pub(crate) fn write_all_hosts(&self) -> Result<()> {
        for state in self.pods.values() {
            self.write_hosts(&state.pod)?;
        }
        Ok(())
    }
}

/// The WorkloadEntry file of a pod.
pub fn workload_entry_file(pod: &str) -> String {
    format!("we-{pod}.yaml")
}

fn not_found(name: &str) -> LabError {
    LabError::NotFound {
        kind: "pod",
        name: name.to_string(),
    }
}
