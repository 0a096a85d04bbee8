//! The benchmark's lab: knitd and one client→server pod pair per
//! contender, the server answering `/bytes/<n>` with a fixed body.

use std::time::Duration;

use std::path::{Path, PathBuf};

use knit_lab::apps::AppSpec;
use knit_lab::{KnitdCa, Lab, PodSpec, RootCa, ServiceSpec, wait_until};
use rcgen::{Issuer, KeyPair};
use serde::{Deserialize, Serialize};

use crate::envoy::{self, EnvoyBinary};
use crate::handshake::HandshakeSpec;
use crate::{BenchError, Result, procfs};

/// The port of every server app.
pub const APP_PORT: u16 = 8080;
/// The port of the server pods' gRPC echo (scenario g).
pub const GRPC_PORT: u16 = knit_lab::apps::GRPC_PORT;
/// knit-proxy's mesh port, its ALPN protocol, and the header naming the
/// app port a mesh request is for.
const MESH_PORT: u16 = 15008;
const KNIT_MESH_ALPN: &str = "knit/h2";
const TARGET_PORT_HEADER: &str = "x-knit-target-port";
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
    /// An Envoy pair, TLS 1.3 mutual TLS between them (see [`crate::envoy`]).
    EnvoyMtls,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::Direct,
        Contender::KnitPlain,
        Contender::KnitMtls,
        Contender::EnvoyMtls,
    ];

    /// Parses a contender's [`name`](Contender::name).
    pub fn from_name(name: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::KnitPlain => "knit-plain",
            Contender::KnitMtls => "knit-mtls",
            Contender::EnvoyMtls => "envoy-mtls",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Contender::Direct => "no proxies (baseline)",
            Contender::KnitPlain => "Knit sidecar pair, plaintext mesh hop",
            Contender::KnitMtls => "Knit sidecar pair, mutual TLS mesh hop",
            Contender::EnvoyMtls => "Envoy sidecar pair, TLS 1.3 mutual TLS, h2 between proxies",
        }
    }

    /// Whether the pods have proxies.
    pub fn meshed(self) -> bool {
        self != Contender::Direct
    }

    /// Whether the pods have Knit's sidecars (capture and knit-proxy).
    pub fn knit(self) -> bool {
        matches!(self, Contender::KnitPlain | Contender::KnitMtls)
    }

    /// The short name used for pods and the service (`plain`, ...).
    fn tag(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::KnitPlain => "plain",
            Contender::KnitMtls => "mtls",
            Contender::EnvoyMtls => "envoy",
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
            // Envoy's server side requires a client certificate; its
            // handshake counter is read instead.
            Contender::EnvoyMtls => None,
        }
    }
}

/// How the lab is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySpec {
    /// Worker threads of every proxy: knit-proxy's `TOKIO_WORKER_THREADS`
    /// and Envoy's `--concurrency`.
    pub proxy_workers: u32,
    /// Size of every response body.
    pub body_bytes: u64,
    /// Whether the server pods also run the gRPC echo on [`GRPC_PORT`].
    #[serde(default)]
    pub grpc: bool,
    /// The contenders to build pods for.
    pub contenders: Vec<Contender>,
    /// What every knit-proxy runs under (a profiler), empty for nothing.
    pub proxy_wrapper: Vec<String>,
}

/// A lab with every contender's pods, ready for load.
pub struct Topology {
    pub lab: Lab,
    pub spec: TopologySpec,
    /// Envoy's processes, client side first (empty without `envoy-mtls`).
    envoy: Vec<ProxyProcess>,
    /// The Envoy pair's client certificate and CA (with `envoy-mtls`).
    envoy_client: Option<(envoy::SideFiles, PathBuf)>,
    /// knitd's root, whose key the harness holds to sign the handshake
    /// client's workload certificate.
    root: RootCa,
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
    /// first), for `knit-plain` the DestinationRule (waiting until the
    /// plain client's proxy applies it), and for `envoy-mtls` the Envoy
    /// pair (its bootstraps validated first).
    pub fn build(name: &str, spec: TopologySpec, envoy: Option<&EnvoyBinary>) -> Result<Topology> {
        if spec.proxy_workers == 0 {
            return Err(BenchError::invalid("proxy workers", "must be at least 1"));
        }
        if spec.contenders.is_empty() {
            return Err(BenchError::invalid("contenders", "none chosen"));
        }
        let envoy = match (spec.contenders.contains(&Contender::EnvoyMtls), envoy) {
            (true, None) => {
                return Err(BenchError::invalid(
                    "contenders",
                    "envoy-mtls needs an Envoy binary",
                ));
            }
            (true, Some(e)) => Some(e),
            (false, _) => None,
        };
        let mut lab = Lab::new(name)?;
        let root = lab.create_root_ca("bench")?;
        lab.start_knitd_with(KnitdCa::plug_in(&root))?;
        for &c in &spec.contenders {
            let mut svc = ServiceSpec::new(&c.service())
                .port("http", 80, APP_PORT)
                .selector("app", &c.server_pod());
            if spec.grpc {
                svc = svc.port_with_protocol("grpc", GRPC_PORT, GRPC_PORT, "grpc");
            }
            lab.add_service(svc)?;
        }
        let workers = spec.proxy_workers.to_string();
        for &c in &spec.contenders {
            for (pod, labels) in [(c.server_pod(), true), (c.client_pod(), false)] {
                let mut p = PodSpec::new(&pod)
                    .app_port(APP_PORT)
                    .sidecar(c.knit())
                    .service_account(&pod);
                if labels {
                    p = p.label("app", &pod);
                    if spec.grpc {
                        p = p.app(AppSpec::GrpcEcho { port: GRPC_PORT });
                    }
                }
                if c.knit() {
                    p = p
                        .proxy_env("TOKIO_WORKER_THREADS", &workers)
                        .proxy_wrapper(&spec.proxy_wrapper);
                }
                lab.add_pod(p)?;
            }
        }
        if spec.contenders.contains(&Contender::KnitPlain) {
            plaintext_rule(&lab)?;
        }
        let (envoy, envoy_client) = match envoy {
            Some(binary) => {
                let (procs, client) = start_envoy_pair(&mut lab, binary, spec.proxy_workers)?;
                (procs, Some(client))
            }
            None => (Vec::new(), None),
        };
        Ok(Topology {
            lab,
            spec,
            envoy,
            envoy_client,
            root,
        })
    }

    /// The URL the contender's client calls.
    pub fn url(&self, c: Contender) -> Result<String> {
        let path = format!("/bytes/{}", self.spec.body_bytes);
        Ok(match c {
            Contender::Direct => {
                let ip = self.lab.pod(&c.server_pod())?.ip;
                format!("http://{ip}:{APP_PORT}{path}")
            }
            Contender::EnvoyMtls => {
                format!("http://127.0.0.1:{}{path}", envoy::CLIENT_LISTEN_PORT)
            }
            Contender::KnitPlain | Contender::KnitMtls => format!("http://{}{path}", c.service()),
        })
    }

    /// The URL of the gRPC echo through contender `c` (its unary method's
    /// path is the client's to add).
    pub fn grpc_url(&self, c: Contender) -> Result<String> {
        Ok(match c {
            Contender::Direct => {
                let ip = self.lab.pod(&c.server_pod())?.ip;
                format!("http://{ip}:{GRPC_PORT}/")
            }
            // Envoy's server side routes the Echo service to the gRPC app.
            Contender::EnvoyMtls => format!("http://127.0.0.1:{}/", envoy::CLIENT_LISTEN_PORT),
            Contender::KnitPlain | Contender::KnitMtls => {
                format!("http://{}:{GRPC_PORT}/", c.service())
            }
        })
    }

    /// Scenario (e)'s client for contender `c`: new mutual-TLS connections
    /// straight to its server proxy's mesh port, with a client certificate
    /// from the contender's CA, from the lab's node namespace (outside any
    /// pod's capture).
    pub fn handshake_spec(
        &self,
        c: Contender,
        concurrency: u64,
        duration: std::time::Duration,
    ) -> Result<HandshakeSpec> {
        let server = self.lab.pod(&c.server_pod())?;
        let path = format!("/bytes/{}", self.spec.body_bytes);
        match c {
            Contender::KnitMtls => {
                let dir = self.lab.dir().join("handshake");
                let client_id = envoy::spiffe_id(&c.client_pod());
                let (cert, key) = sign_workload_leaf(&self.root, &dir, "knit-client", &client_id)?;
                Ok(HandshakeSpec {
                    addr: std::net::SocketAddr::from((server.ip, MESH_PORT)),
                    cert,
                    key,
                    ca: self.root.cert.clone(),
                    server_id: envoy::spiffe_id(&c.server_pod()),
                    alpn: KNIT_MESH_ALPN.to_string(),
                    path,
                    header: Some((TARGET_PORT_HEADER.to_string(), APP_PORT.to_string())),
                    concurrency,
                    duration,
                })
            }
            Contender::EnvoyMtls => {
                let (files, ca) = self.envoy_client.clone().ok_or_else(|| {
                    BenchError::invalid("handshake scenario", "the Envoy pair is not running")
                })?;
                Ok(HandshakeSpec {
                    addr: std::net::SocketAddr::from((server.ip, envoy::SERVER_LISTEN_PORT)),
                    cert: files.cert,
                    key: files.key,
                    ca,
                    server_id: envoy::spiffe_id(&c.server_pod()),
                    alpn: "h2".to_string(),
                    path,
                    header: None,
                    concurrency,
                    duration,
                })
            }
            other => Err(BenchError::invalid(
                "handshake scenario",
                format!("{} has no mutual TLS to handshake with", other.name()),
            )),
        }
    }

    /// The contender's proxy processes, client side first.
    pub fn proxies(&self, c: Contender) -> Result<Vec<ProxyProcess>> {
        if c == Contender::EnvoyMtls {
            return Ok(self.envoy.clone());
        }
        if !c.knit() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (side, pod) in [("client", c.client_pod()), ("server", c.server_pod())] {
            let pid = self
                .lab
                .pod_pids(&pod)?
                .into_iter()
                .find(|pid| {
                    // Under a wrapper (a profiler) the name is the
                    // wrapper's; the command line still names the proxy.
                    procfs::comm(*pid).is_some_and(|n| n == "knit-proxy")
                        || procfs::cmdline(*pid)
                            .iter()
                            .any(|a| a.ends_with("/knit-proxy"))
                })
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
        if c == Contender::EnvoyMtls {
            // Envoy counts handshakes, not requests, by security: every
            // one of them presented a client certificate (it is required).
            let handshakes = envoy::server_handshakes(&self.lab, &c.server_pod())?;
            return Ok(vec![("mutual_tls handshakes".to_string(), handshakes)]);
        }
        if !c.knit() {
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

/// Tells the plain contender's proxies to send plaintext, and waits until
/// its client proxy does.
fn plaintext_rule(lab: &Lab) -> Result<()> {
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
            Ok(dump["services"][format!("default/{plain}")][0]["client_tls"]["mode"] == "disable")
        },
    )?;
    Ok(())
}

/// Writes the Envoy pair's certificates and bootstraps, validates them,
/// and starts the server side, then the client side: (client, server),
/// and the client's files with the CA.
fn start_envoy_pair(
    lab: &mut Lab,
    binary: &EnvoyBinary,
    workers: u32,
) -> Result<(Vec<ProxyProcess>, (envoy::SideFiles, PathBuf))> {
    let c = Contender::EnvoyMtls;
    let (client_pod, server_pod) = (c.client_pod(), c.server_pod());
    let server_ip = lab.pod(&server_pod)?.ip.to_string();
    let dir = lab.dir().join("envoy");
    let (client, server) = envoy::write_pair(&dir, &client_pod, &server_pod, &server_ip)?;
    envoy::validate(binary, &client.bootstrap)?;
    envoy::validate(binary, &server.bootstrap)?;
    let server_pid = lab.spawn_as_proxy_uid(
        &server_pod,
        "envoy",
        &binary.path,
        &envoy::args(&server.bootstrap, workers),
        envoy::SERVER_LISTEN_PORT,
    )?;
    let client_pid = lab.spawn_as_proxy_uid(
        &client_pod,
        "envoy",
        &binary.path,
        &envoy::args(&client.bootstrap, workers),
        envoy::CLIENT_LISTEN_PORT,
    )?;
    let procs = vec![
        ProxyProcess {
            side: "client",
            pod: client_pod,
            pid: client_pid,
        },
        ProxyProcess {
            side: "server",
            pod: server_pod,
            pid: server_pid,
        },
    ];
    Ok((procs, (client, dir.join("ca.pem"))))
}

/// Signs a workload certificate for `spiffe_id` with `root`'s key and
/// writes `<name>.pem` and `<name>.key` into `dir`.
fn sign_workload_leaf(
    root: &RootCa,
    dir: &Path,
    name: &str,
    spiffe_id: &str,
) -> Result<(PathBuf, PathBuf)> {
    let tls = |what: &str, e: rcgen::Error| BenchError::invalid(what, e.to_string());
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))
    };
    let root_key = KeyPair::from_pem(&read(&root.key)?).map_err(|e| tls("root key", e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&root.cert)?, root_key).map_err(|e| tls("root", e))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    envoy::write_workload_leaf(&issuer, dir, name, spiffe_id)
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
