//! The benchmark's lab: knitd and one client→server pod pair per
//! contender, the server answering `/bytes/<n>` with a fixed body.

use std::time::Duration;

use knit_lab::{Lab, PodSpec, ServiceSpec, wait_until};
use serde::{Deserialize, Serialize};

use crate::{BenchError, Result, procfs};

/// The port of every server app.
pub const APP_PORT: u16 = 8080;
/// How long the client proxy may take to apply the plaintext rule.
const CONFIG_PATIENCE: Duration = Duration::from_secs(60);

/// One way of carrying the client's requests to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// No sidecars: the client calls the server pod's address.
    Direct,
    /// Knit sidecars, the mesh hop in plaintext (DestinationRule DISABLE).
    KnitPlain,
    /// Knit sidecars, the mesh hop in mutual TLS.
    KnitMtls,
}

impl Contender {
    pub const ALL: [Contender; 3] = [Contender::Direct, Contender::KnitPlain, Contender::KnitMtls];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::KnitPlain => "knit-plain",
            Contender::KnitMtls => "knit-mtls",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Contender::Direct => "no proxies (baseline)",
            Contender::KnitPlain => "Knit sidecar pair, plaintext mesh hop",
            Contender::KnitMtls => "Knit sidecar pair, mutual TLS mesh hop",
        }
    }

    /// Whether the pods have sidecars.
    pub fn meshed(self) -> bool {
        self != Contender::Direct
    }

    /// The short name used for pods and the service (`plain`, ...).
    fn tag(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::KnitPlain => "plain",
            Contender::KnitMtls => "mtls",
        }
    }

    pub fn client_pod(self) -> String {
        format!("{}-client", self.tag())
    }

    pub fn server_pod(self) -> String {
        format!("{}-server", self.tag())
    }

    pub fn service(self) -> String {
        format!("{}-svc", self.tag())
    }

    /// The `connection_security_policy` the server proxy must report.
    pub fn expected_security(self) -> Option<&'static str> {
        match self {
            Contender::Direct => None,
            Contender::KnitPlain => Some("none"),
            Contender::KnitMtls => Some("mutual_tls"),
        }
    }
}

/// How the lab is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySpec {
    /// `TOKIO_WORKER_THREADS` of every knit-proxy.
    pub proxy_workers: u32,
    /// Size of every response body.
    pub body_bytes: u64,
}

/// A lab with every contender's pods, ready for load.
pub struct Topology {
    pub lab: Lab,
    pub spec: TopologySpec,
}

/// A proxy process of a contender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProcess {
    /// `client` or `server`.
    pub side: &'static str,
    pub pod: String,
    pub pid: u32,
}

impl Topology {
    /// Builds the lab: knitd, a Service per contender, the pods (servers
    /// first), and for `knit-plain` the DestinationRule; waits until the
    /// plain client's proxy applies it.
    pub fn build(name: &str, spec: TopologySpec) -> Result<Topology> {
        if spec.proxy_workers == 0 {
            return Err(BenchError::invalid("proxy workers", "must be at least 1"));
        }
        let mut lab = Lab::new(name)?;
        lab.start_knitd()?;
        for c in Contender::ALL {
            lab.add_service(
                ServiceSpec::new(&c.service())
                    .port("http", 80, APP_PORT)
                    .selector("app", &c.server_pod()),
            )?;
        }
        let workers = spec.proxy_workers.to_string();
        for c in Contender::ALL {
            for (pod, labels) in [(c.server_pod(), true), (c.client_pod(), false)] {
                let mut p = PodSpec::new(&pod)
                    .app_port(APP_PORT)
                    .sidecar(c.meshed())
                    .service_account(&pod);
                if labels {
                    p = p.label("app", &pod);
                }
                if c.meshed() {
                    p = p.proxy_env("TOKIO_WORKER_THREADS", &workers);
                }
                lab.add_pod(p)?;
            }
        }
        let plain = Contender::KnitPlain.service();
        lab.write_config(
            "dr-bench-plain.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: {plain}, namespace: default}}\n\
                 spec:\n  host: {plain}\n  trafficPolicy:\n    tls: {{mode: DISABLE}}\n"
            ),
        )?;
        let client = Contender::KnitPlain.client_pod();
        wait_until(
            &format!("{client}'s proxy to send plaintext to {plain}"),
            CONFIG_PATIENCE,
            || {
                let dump = lab.proxy_config_dump(&client)?;
                Ok(
                    dump["services"][format!("default/{plain}")][0]["client_tls"]["mode"]
                        == "disable",
                )
            },
        )?;
        Ok(Topology { lab, spec })
    }

    /// The URL the contender's client calls.
    pub fn url(&self, c: Contender) -> Result<String> {
        let path = format!("/bytes/{}", self.spec.body_bytes);
        Ok(match c {
            Contender::Direct => {
                let ip = self.lab.pod(&c.server_pod())?.ip;
                format!("http://{ip}:{APP_PORT}{path}")
            }
            _ => format!("http://{}{path}", c.service()),
        })
    }

    /// The contender's knit-proxy processes, client side first.
    pub fn proxies(&self, c: Contender) -> Result<Vec<ProxyProcess>> {
        if !c.meshed() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (side, pod) in [("client", c.client_pod()), ("server", c.server_pod())] {
            let pid = self
                .lab
                .pod_pids(&pod)?
                .into_iter()
                .find(|pid| procfs::comm(*pid).is_some_and(|n| n == "knit-proxy"))
                .ok_or_else(|| {
                    BenchError::invalid("topology", format!("no knit-proxy in {pod}"))
                })?;
            out.push(ProxyProcess { side, pod, pid });
        }
        Ok(out)
    }

    /// Requests the server proxy counted, by `connection_security_policy`
    /// (empty for the direct path).
    pub fn server_security(&self, c: Contender) -> Result<Vec<(String, u64)>> {
        if !c.meshed() {
            return Ok(Vec::new());
        }
        let samples = self.lab.proxy_metrics(&c.server_pod())?;
        let mut out: Vec<(String, u64)> = Vec::new();
        for s in samples.matching("knit_requests_total", &[("reporter", "destination")]) {
            let policy = s
                .labels
                .get("connection_security_policy")
                .cloned()
                .unwrap_or_default();
            // Counters are whole numbers.
            let n = s.value.max(0.0) as u64;
            match out.iter_mut().find(|(p, _)| *p == policy) {
                Some((_, total)) => *total += n,
                None => out.push((policy, n)),
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_valid() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Contender::ALL {
            for n in [c.client_pod(), c.server_pod(), c.service()] {
                assert!(n.len() <= 63 && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
                assert!(seen.insert(n));
            }
        }
        assert_eq!(Contender::KnitMtls.expected_security(), Some("mutual_tls"));
        assert!(!Contender::Direct.meshed());
    }
}
