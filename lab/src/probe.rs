//! Looking into a running lab: HTTP from inside a pod or the node, the
//! proxy's admin API, knitd's debug API, iptables counters, and load clients.
//! Everything runs as a process in the right namespace (`ip netns exec`), so
//! no thread of the caller ever switches namespace.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::apps::AppClient;
use crate::client::{ClientReport, ClientSpec, HttpResponse};
use crate::error::{LabError, Result};
use crate::iptables::{self, NatRule};
use crate::lab::{KNITD_HTTP_ADDR, Lab, Shared};
use crate::netns;
use crate::pod::{PROXY_ADMIN_PORT, PROXY_METRICS_PORT};
use crate::process::{self, run_checked};
use crate::prometheus::Samples;

/// Time a client may run past its own `--duration-ms` before it is killed.
const CLIENT_MARGIN: Duration = Duration::from_secs(15);
/// Per-request timeout of the lab's own probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

impl Lab {
    fn client_command<C: AppClient>(&self, ns: &str, spec: &C) -> std::process::Command {
        let mut cmd = netns::exec_in(&self.shared.tools, ns, &self.knit_lab);
        cmd.arg(spec.subcommand()).args(spec.to_args());
        cmd
    }

    pub(crate) fn run_client_in<C: AppClient>(&self, ns: &str, spec: &C) -> Result<C::Report> {
        let cmd = self.client_command(ns, spec);
        let command = process::describe(&cmd);
        let out = run_checked(cmd, spec.max_duration() + CLIENT_MARGIN)?;
        parse_report(&command, &out)
    }

    /// One GET from namespace `ns`; no response at all is an error.
    pub(crate) fn get_in(&self, ns: &str, url: &str, place: &str) -> Result<HttpResponse> {
        let spec = ClientSpec::new(url).timeout(PROBE_TIMEOUT);
        let report = self.run_client_in(ns, &spec)?;
        report.last.ok_or_else(|| LabError::Http {
            url: url.to_string(),
            place: place.to_string(),
            reason: report
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "no response".to_string()),
        })
    }

    /// One GET from inside a pod (as root, so captured by the pod's iptables
    /// rules like any app traffic). Any status is returned; only a request
    /// without response is an error.
    pub fn http_get_in_pod(&self, pod: &str, url: &str) -> Result<HttpResponse> {
        let pod = self.pod(pod)?;
        self.get_in(&pod.netns, url, &format!("pod {}", pod.name))
    }

    /// One GET from the node namespace.
    pub fn http_get_in_node(&self, url: &str) -> Result<HttpResponse> {
        self.get_in(&self.shared.node_ns, url, "node namespace")
    }

    /// GET `path` on knitd's HTTP port; the body of a 2xx, else an error.
    pub fn knitd_get(&self, path: &str) -> Result<String> {
        if !path.starts_with('/') {
            return Err(LabError::invalid(
                "knitd path",
                format!("{path:?} must start with '/'"),
            ));
        }
        let url = format!("http://{KNITD_HTTP_ADDR}{path}");
        let resp = self.http_get_in_node(&url)?;
        expect_2xx(&url, "node namespace", resp)
    }

    /// [`Lab::knitd_get`] parsed as JSON.
    pub fn knitd_get_json(&self, path: &str) -> Result<serde_json::Value> {
        let body = self.knitd_get(path)?;
        serde_json::from_str(&body).map_err(|e| LabError::parse(format!("knitd {path}"), e))
    }

    /// GET `path` on the proxy's admin port (127.0.0.1:15000 inside the pod).
    pub fn proxy_admin_get(&self, pod: &str, path: &str) -> Result<String> {
        if !path.starts_with('/') {
            return Err(LabError::invalid(
                "admin path",
                format!("{path:?} must start with '/'"),
            ));
        }
        let url = format!("http://127.0.0.1:{PROXY_ADMIN_PORT}{path}");
        let resp = self.http_get_in_pod(pod, &url)?;
        expect_2xx(&url, &format!("pod {pod}"), resp)
    }

    /// The proxy's Prometheus text from `/metrics`, fetched on loopback
    /// inside the pod (which capture leaves alone), parsed.
    pub fn proxy_metrics(&self, pod: &str) -> Result<Samples> {
        let url = format!("http://127.0.0.1:{PROXY_METRICS_PORT}/metrics");
        let resp = self.http_get_in_pod(pod, &url)?;
        let body = expect_2xx(&url, &format!("pod {pod}"), resp)?;
        Ok(Samples::parse(&body))
    }

    /// The proxy's counters from `/stats` (`{"counters": {name: n}}`).
    pub fn proxy_stats(&self, pod: &str) -> Result<BTreeMap<String, u64>> {
        let body = self.proxy_admin_get(pod, "/stats")?;
        parse_stats(&body)
            .map_err(|reason| LabError::parse(format!("/stats of the proxy in pod {pod}"), reason))
    }

    /// The proxy's `/config_dump` as JSON.
    pub fn proxy_config_dump(&self, pod: &str) -> Result<serde_json::Value> {
        let body = self.proxy_admin_get(pod, "/config_dump")?;
        serde_json::from_str(&body)
            .map_err(|e| LabError::parse(format!("/config_dump of the proxy in pod {pod}"), e))
    }

    /// The rules of the pod's nat table with counters.
    pub fn iptables_nat_rules(&self, pod: &str) -> Result<Vec<NatRule>> {
        let netns = self.pod(pod)?.netns.clone();
        let mut cmd = netns::exec_in(&self.shared.tools, &netns, &self.shared.tools.iptables_save);
        cmd.args(["-t", "nat", "-c"]);
        let out = run_checked(cmd, EXEC_TIMEOUT)?;
        iptables::parse_rules(&out)
    }

    /// Packet counters of the pod's nat rules, keyed `chain/comment` (or
    /// `chain/rule` for rules without a comment). The nat table sees the first
    /// packet of each connection, so these count connections.
    pub fn iptables_nat_counters(&self, pod: &str) -> Result<BTreeMap<String, u64>> {
        Ok(iptables::counters(&self.iptables_nat_rules(pod)?))
    }

    /// Runs a command inside a pod (with its hosts file) and returns stdout.
    pub fn exec_in_pod(&self, pod: &str, program: &str, args: &[&str]) -> Result<String> {
        let netns = self.pod(pod)?.netns.clone();
        let mut cmd = netns::exec_in(&self.shared.tools, &netns, program);
        cmd.args(args);
        run_checked(cmd, EXEC_TIMEOUT)
    }

    /// Runs `knit-lab client` inside a pod as root (so its traffic is
    /// captured like an app's) and returns its report.
    pub fn run_client(&self, pod: &str, spec: &ClientSpec) -> Result<ClientReport> {
        let netns = self.pod(pod)?.netns.clone();
        self.run_client_in(&netns, spec)
    }

    /// Starts a client in the background, e.g. to keep load on while config
    /// changes; [`ClientHandle::join`] returns its report.
    pub fn spawn_client(&self, pod: &str, spec: &ClientSpec) -> Result<ClientHandle> {
        self.spawn_client_in(pod, spec)
    }

    pub(crate) fn spawn_client_in<C: AppClient>(
        &self,
        pod: &str,
        spec: &C,
    ) -> Result<ClientHandle<C::Report>> {
        let netns = self.pod(pod)?.netns.clone();
        let n = self.client_seq.fetch_add(1, Ordering::Relaxed);
        let sub = spec.subcommand();
        let stdout = self.logs_dir().join(format!("{sub}-{n}.{pod}.json"));
        let log = self.logs_dir().join(format!("{sub}-{n}.{pod}.log"));
        let cmd = self.client_command(&netns, spec);
        let command = process::describe(&cmd);
        let id = self
            .shared
            .spawn(&format!("{sub} {n} in pod {pod}"), cmd, &log, Some(&stdout))?;
        let limit = spec.max_duration() + CLIENT_MARGIN;
        Ok(ClientHandle {
            shared: self.shared.clone(),
            id: Some(id),
            command,
            stdout,
            log,
            limit,
            deadline: Instant::now() + limit,
            report: PhantomData,
        })
    }
}

/// A client running in the background. Dropping it without `join` kills it.
#[derive(Debug)]
pub struct ClientHandle<R = ClientReport> {
    shared: Arc<Shared>,
    id: Option<u64>,
    command: String,
    stdout: PathBuf,
    log: PathBuf,
    limit: Duration,
    deadline: Instant,
    report: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> ClientHandle<R> {
    /// Whether the client has exited.
    pub fn is_finished(&self) -> bool {
        let Some(id) = self.id else { return true };
        let mut st = self.shared.lock();
        st.procs
            .get_mut(&id)
            .is_none_or(|p| p.poll_exit().is_some())
    }

    /// Waits for the client (bounded by its duration plus a margin) and
    /// returns its report.
    pub fn join(mut self) -> Result<R> {
        let id = self.id.take().ok_or(LabError::ShutDown)?;
        let status = loop {
            let status = {
                let mut st = self.shared.lock();
                let p = st.procs.get_mut(&id).ok_or(LabError::ShutDown)?;
                p.poll_exit()
            };
            if let Some(status) = status {
                break status;
            }
            if Instant::now() >= self.deadline {
                self.shared.stop(&[id], Duration::ZERO);
                return Err(LabError::CommandTimeout {
                    command: self.command.clone(),
                    after: self.limit,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        // Already exited: this only forgets it.
        self.shared.stop(&[id], Duration::ZERO);
        if !status.success() {
            return Err(LabError::CommandFailed {
                command: self.command.clone(),
                status: status.to_string(),
                output: process::tail_file(&self.log, 20),
            });
        }
        let out = std::fs::read_to_string(&self.stdout)
            .map_err(|e| LabError::io(format!("reading {}", self.stdout.display()), e))?;
        parse_report(&self.command, &out)
    }
}

impl<R> Drop for ClientHandle<R> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.stop(&[id], Duration::ZERO);
        }
    }
}

fn parse_report<R: DeserializeOwned>(command: &str, stdout: &str) -> Result<R> {
    serde_json::from_str(stdout.trim()).map_err(|e| {
        LabError::parse(
            format!("report of `{command}` ({:?})", truncate(stdout, 300)),
            e,
        )
    })
}

fn expect_2xx(url: &str, place: &str, resp: HttpResponse) -> Result<String> {
    if (200..300).contains(&resp.status) {
        Ok(resp.body)
    } else {
        Err(LabError::Http {
            url: url.to_string(),
            place: place.to_string(),
            reason: format!("status {}: {}", resp.status, truncate(&resp.body, 300)),
        })
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `{"counters": {"name": n, ...}}` → map; anything else names the problem.
pub(crate) fn parse_stats(body: &str) -> std::result::Result<BTreeMap<String, u64>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let counters = v
        .get("counters")
        .and_then(|c| c.as_object())
        .ok_or_else(|| "no \"counters\" object".to_string())?;
    counters
        .iter()
        .map(|(k, v)| {
            v.as_u64()
                .map(|n| (k.clone(), n))
                .ok_or_else(|| format!("counter {k:?} is {v}, not a non-negative integer"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parsing() {
        let m = parse_stats(r#"{"counters": {"outbound.http.requests": 20, "inbound.http.requests": 0}, "gauges": {}}"#)
            .unwrap();
        assert_eq!(m["outbound.http.requests"], 20);
        assert_eq!(m.len(), 2);
        assert!(
            parse_stats(r#"{"counters": {"x": -1}}"#)
                .unwrap_err()
                .contains("\"x\"")
        );
        assert!(parse_stats(r#"{"other": 1}"#).is_err());
        assert!(parse_stats("not json").is_err());
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("äbcdef", 2), "äb...");
    }
}
