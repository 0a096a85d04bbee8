//! Load generators, both open loop at a constant rate with latency counted
//! from each request's scheduled start:
//!
//! - `lab`: the lab's own client (`knit-lab client --rate`), run in the
//!   client pod; it reports a latency histogram;
//! - `oha`: `oha -q RATE --latency-correction`, when installed; it reports
//!   fixed percentiles.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use knit_lab::{ClientSpec, Histogram, Lab, find_tool};
use serde::{Deserialize, Serialize};

use crate::{BenchError, Result};

/// Per-request timeout of the generators.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a generator may run past its duration before it is killed.
const GENERATOR_MARGIN: Duration = Duration::from_secs(30);

/// Which program sends the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// The lab's client (`knit-lab client --rate`).
    Lab,
    /// oha with `--latency-correction` (must be installed).
    Oha,
}

/// One run of load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    pub url: String,
    /// Requests per second (open loop).
    pub rate: u64,
    /// Closed loop instead: each connection sends its next request when
    /// the last one is answered, as fast as the path allows; `rate` only
    /// bounds the count.
    pub closed_loop: bool,
    pub connections: u64,
    pub duration: Duration,
    /// At most this many requests (closed loop), e.g. a bulk download.
    pub requests: Option<u64>,
    /// Each request downloads this many pattern bytes from `/bytes/<n>`,
    /// streamed and checked by the lab client (bodies too big to buffer).
    pub download: Option<u64>,
    /// Each request is a gRPC unary call echoing this many bytes, checked
    /// by the lab client (grpc-status 0 and the whole echo).
    pub grpc_unary: Option<u64>,
    /// Per request.
    pub timeout: Duration,
}

impl LoadSpec {
    /// Requests the schedule holds (open loop), or the most a closed loop
    /// may send.
    pub fn count(&self) -> u64 {
        let millis = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
        let rate = if self.closed_loop {
            crate::run::MAX_RATE
        } else {
            self.rate
        };
        let scheduled = (rate.saturating_mul(millis) / 1000).max(1);
        self.requests.map_or(scheduled, |n| n.min(scheduled))
    }
}

/// What a generator measured. Latencies are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadOutcome {
    pub sent: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Requests without a 2xx: transport failures and other statuses.
    pub errors: u64,
    /// A few error messages, for the reader.
    pub error_samples: Vec<String>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// `(percentile, µs)` points for the plot.
    pub curve: Vec<(f64, u64)>,
    /// The longest a request was sent after its slot (lab generator).
    pub max_start_lag_us: u64,
    /// Response body bytes received.
    #[serde(default)]
    pub bytes_received: u64,
}

impl LoadOutcome {
    fn from_histogram(h: &Histogram) -> LoadOutcome {
        let p = h.percentiles();
        LoadOutcome {
            p50_us: p.p50,
            p90_us: p.p90,
            p99_us: p.p99,
            p999_us: p.p999,
            max_us: h.max_us,
            mean_us: h.mean_us(),
            curve: h.curve(),
            ..LoadOutcome::default()
        }
    }
}

/// A generator started in a pod; [`Running::finish`] waits for it.
pub enum Running {
    Lab(knit_lab::ClientHandle),
    /// `knit-bench handshake-client` in the lab's node namespace.
    Handshake(GeneratorProcess),
    Oha(GeneratorProcess),
}

/// A generator run as a child process that writes its report to a file.
pub struct GeneratorProcess {
    child: std::process::Child,
    command: String,
    /// When it is killed if still running.
    deadline: Instant,
    output: PathBuf,
    log: PathBuf,
}

impl GeneratorProcess {
    fn spawn(mut cmd: Command, duration: Duration, output: PathBuf, log: PathBuf) -> Result<Self> {
        let command = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| BenchError::io(&command, e))?;
        Ok(GeneratorProcess {
            child,
            command,
            deadline: Instant::now() + duration + GENERATOR_MARGIN,
            output,
            log,
        })
    }

    /// Waits for it (killing it past its deadline) and returns its report.
    fn report(mut self) -> Result<String> {
        wait_child(&mut self.child, &self.command, self.deadline, &self.log)?;
        std::fs::read_to_string(&self.output)
            .map_err(|e| BenchError::io(self.output.display().to_string(), e))
    }
}

/// The oha release the harness installs when there is none.
pub const OHA_VERSION: &str = "1.16.0";

/// Finds oha in `$PATH`, `~/.cargo/bin` or the harness's cache.
pub fn find_oha() -> Result<PathBuf> {
    if let Ok(p) = find_tool("oha") {
        return Ok(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let candidates = [
        home.map(|h| h.join(".cargo/bin/oha")),
        Some(oha_cache_binary()),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Ok(p);
    }
    Err(BenchError::ToolMissing {
        tool: "oha".to_string(),
        hint: "knit-bench installs it with `--generator oha`, or run `cargo install oha`"
            .to_string(),
    })
}

fn oha_cache_binary() -> PathBuf {
    std::path::Path::new(crate::envoy::CACHE_DIR).join(format!("oha-{OHA_VERSION}/bin/oha"))
}

/// Finds oha, or builds it with `cargo install` (a few minutes) into the
/// harness's cache.
pub fn find_or_install_oha(progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if let Ok(p) = find_oha() {
        return Ok(p);
    }
    let binary = oha_cache_binary();
    let root = binary
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or_else(|| BenchError::invalid("oha cache", binary.display().to_string()))?;
    progress(&format!(
        "oha is missing: building oha {OHA_VERSION} with `cargo install` into {} (a few minutes)",
        root.display()
    ));
    let cargo = find_tool("cargo").map_err(|_| BenchError::ToolMissing {
        tool: "cargo".to_string(),
        hint: "needed to install oha; or use --generator lab".to_string(),
    })?;
    let mut cmd = Command::new(cargo);
    cmd.args([
        "install",
        "oha",
        "--locked",
        "--version",
        OHA_VERSION,
        "--root",
    ])
    .arg(root)
    .stdin(Stdio::null());
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| BenchError::io(&command, e))?;
    if !out.status.success() || !binary.is_file() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(BenchError::Command {
            command,
            status: out.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(binary)
}

/// Starts `generator` in `pod`, sending `spec`. `scratch` is a directory
/// for the generator's output.
pub fn start(
    lab: &Lab,
    pod: &str,
    generator: Generator,
    spec: &LoadSpec,
    scratch: &std::path::Path,
) -> Result<Running> {
    if spec.rate == 0 || spec.connections == 0 || spec.duration.is_zero() {
        return Err(BenchError::invalid(
            "load",
            "rate, connections and duration must be positive",
        ));
    }
    match generator {
        Generator::Lab => {
            let mut client = ClientSpec::new(&spec.url);
            if let Some(n) = spec.download {
                client = client.download(n);
            }
            if let Some(n) = spec.grpc_unary {
                client = client.grpc_unary(n);
            }
            if !spec.closed_loop {
                client = client.rate(spec.rate);
            }
            let client = client
                .count(spec.count())
                .concurrency(spec.connections)
                .duration(spec.duration)
                .timeout(spec.timeout);
            Ok(Running::Lab(lab.spawn_client(pod, &client)?))
        }
        Generator::Oha if spec.grpc_unary.is_some() => Err(BenchError::invalid(
            "generator",
            "oha cannot make gRPC calls; use --generator lab",
        )),
        Generator::Oha => {
            let oha = find_oha()?;
            let ip = find_tool("ip")?;
            let netns = lab.pod(pod)?.netns.clone();
            let output = scratch.join(format!("oha-{pod}.json"));
            let log = scratch.join(format!("oha-{pod}.log"));
            let log_file = std::fs::File::create(&log)
                .map_err(|e| BenchError::io(log.display().to_string(), e))?;
            let mut cmd = Command::new(ip);
            cmd.args(["netns", "exec", &netns])
                .arg(&oha)
                .args(if spec.closed_loop {
                    vec![]
                } else {
                    vec![
                        "-q".to_string(),
                        spec.rate.to_string(),
                        "--latency-correction".to_string(),
                    ]
                })
                .args(["-z", &format!("{}ms", spec.duration.as_millis())])
                .args(["-c", &spec.connections.to_string()])
                .args(["-t", &format!("{}ms", spec.timeout.as_millis())])
                .args(["--no-tui", "--output-format", "json", "-o"])
                .arg(&output)
                .arg(&spec.url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log_file));
            Ok(Running::Oha(GeneratorProcess::spawn(
                cmd,
                spec.duration,
                output,
                log,
            )?))
        }
    }
}

/// Starts scenario (e)'s client (this very binary's `handshake-client`)
/// in the lab's node namespace; its JSON report goes to a file in
/// `scratch`.
pub fn start_handshakes(
    lab: &Lab,
    spec: &crate::handshake::HandshakeSpec,
    scratch: &std::path::Path,
) -> Result<Running> {
    let me = std::env::current_exe().map_err(|e| BenchError::io("finding knit-bench", e))?;
    let ip = find_tool("ip")?;
    let output = scratch.join("handshake.json");
    let log = scratch.join("handshake.log");
    let out_file = std::fs::File::create(&output)
        .map_err(|e| BenchError::io(output.display().to_string(), e))?;
    let log_file =
        std::fs::File::create(&log).map_err(|e| BenchError::io(log.display().to_string(), e))?;
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "exec", lab.node_netns()])
        .arg(me)
        .args(spec.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_file))
        .stderr(Stdio::from(log_file));
    Ok(Running::Handshake(GeneratorProcess::spawn(
        cmd,
        spec.duration,
        output,
        log,
    )?))
}

/// Waits for `child` until `deadline`, killing it past that.
fn wait_child(
    child: &mut std::process::Child,
    command: &str,
    deadline: Instant,
    log: &std::path::Path,
) -> Result<()> {
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| BenchError::io(command, e))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Command {
                command: command.to_string(),
                status: "killed".to_string(),
                output: "ran past its deadline".to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(BenchError::Command {
            command: command.to_string(),
            status: status.to_string(),
            output: std::fs::read_to_string(log).unwrap_or_default(),
        });
    }
    Ok(())
}

impl Running {
    /// Waits for the generator (killing it past its deadline) and reads
    /// what it measured.
    pub fn finish(self) -> Result<LoadOutcome> {
        match self {
            Running::Lab(handle) => {
                let r = handle.join()?;
                let mut out = LoadOutcome::from_histogram(&r.latency);
                out.sent = r.sent;
                out.ok = r.ok;
                out.errors = r.sent.saturating_sub(r.ok);
                out.error_samples = r.errors.clone();
                for (status, n) in &r.statuses {
                    if !(200..300).contains(status) {
                        out.error_samples.push(format!("{n} × status {status}"));
                    }
                }
                out.max_start_lag_us = r.start_lag.max_us;
                out.bytes_received = r.bytes_received;
                Ok(out)
            }
            Running::Handshake(process) => {
                let text = process.report()?;
                let r: crate::handshake::HandshakeReport = serde_json::from_str(&text)
                    .map_err(|e| BenchError::parse("the handshake client's report", e))?;
                let mut out = LoadOutcome::from_histogram(&r.latency);
                out.sent = r.attempted;
                out.ok = r.ok;
                out.errors = r.errors;
                out.error_samples = r.error_samples;
                out.bytes_received = r.bytes_received;
                Ok(out)
            }
            Running::Oha(process) => parse_oha(&process.report()?),
        }
    }
}

/// Reads oha's `--output-format json`: percentiles in seconds, statuses
/// and transport errors. Requests cut off by the end of the run
/// ("aborted due to deadline") are not errors of the contender.
pub fn parse_oha(text: &str) -> Result<LoadOutcome> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BenchError::parse("oha's JSON", e))?;
    let pct = &v["latencyPercentiles"];
    let us = |key: &str| -> Result<u64> {
        let s = pct[key].as_f64().ok_or_else(|| {
            BenchError::parse("oha's JSON", format!("no latencyPercentiles.{key}"))
        })?;
        Ok((s * 1e6).round().max(0.0) as u64)
    };
    let mut out = LoadOutcome {
        p50_us: us("p50")?,
        p90_us: us("p90")?,
        p99_us: us("p99")?,
        p999_us: us("p99.9")?,
        max_us: (v["summary"]["slowest"].as_f64().unwrap_or(0.0) * 1e6).round() as u64,
        mean_us: v["summary"]["average"].as_f64().unwrap_or(0.0) * 1e6,
        bytes_received: v["summary"]["totalData"].as_u64().unwrap_or(0),
        ..LoadOutcome::default()
    };
    let mut curve = Vec::new();
    for (key, p) in [
        ("p10", 10.0),
        ("p25", 25.0),
        ("p50", 50.0),
        ("p75", 75.0),
        ("p90", 90.0),
        ("p95", 95.0),
        ("p99", 99.0),
        ("p99.9", 99.9),
        ("p99.99", 99.99),
    ] {
        if let Some(s) = pct[key].as_f64() {
            curve.push((p, (s * 1e6).round().max(0.0) as u64));
        }
    }
    out.curve = curve;
    if let Some(statuses) = v["statusCodeDistribution"].as_object() {
        for (code, n) in statuses {
            let n = n.as_u64().unwrap_or(0);
            out.sent += n;
            if code.starts_with('2') {
                out.ok += n;
            } else {
                out.errors += n;
                out.error_samples.push(format!("{n} × status {code}"));
            }
        }
    }
    if let Some(errors) = v["errorDistribution"].as_object() {
        for (message, n) in errors {
            if message.contains("aborted due to deadline") {
                continue;
            }
            let n = n.as_u64().unwrap_or(0);
            out.sent += n;
            out.errors += n;
            out.error_samples.push(format!("{n} × {message}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts() {
        let spec = LoadSpec {
            url: "http://x/".to_string(),
            rate: 1000,
            closed_loop: false,
            connections: 16,
            duration: Duration::from_secs(30),
            requests: None,
            download: None,
            grpc_unary: None,
            timeout: REQUEST_TIMEOUT,
        };
        assert_eq!(spec.count(), 30_000);
        let tiny = LoadSpec {
            rate: 3,
            duration: Duration::from_millis(100),
            ..spec
        };
        assert_eq!(tiny.count(), 1);
        let closed = LoadSpec {
            closed_loop: true,
            duration: Duration::from_secs(2),
            ..tiny
        };
        assert_eq!(closed.count(), 2 * crate::run::MAX_RATE);
        let bulk = LoadSpec {
            requests: Some(20),
            ..closed
        };
        assert_eq!(bulk.count(), 20);
    }

    #[test]
    fn oha_json() {
        let text = r#"{
          "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.004, "average": 0.0005},
          "latencyPercentiles": {"p10": 0.0002, "p25": 0.0003, "p50": 0.0004, "p75": 0.0005,
             "p90": 0.0006, "p95": 0.0007, "p99": 0.001, "p99.9": 0.002, "p99.99": 0.004},
          "statusCodeDistribution": {"200": 1990, "503": 4},
          "errorDistribution": {"aborted due to deadline": 6, "connection reset": 2}
        }"#;
        let o = parse_oha(text).unwrap();
        assert_eq!(
            (o.p50_us, o.p90_us, o.p99_us, o.p999_us),
            (400, 600, 1000, 2000)
        );
        assert_eq!((o.sent, o.ok, o.errors), (1996, 1990, 6));
        assert_eq!(o.max_us, 4000);
        assert_eq!(o.curve.len(), 9);
        assert!(o.error_samples.iter().any(|e| e.contains("reset")));
        assert!(parse_oha("{}").is_err());
        assert!(parse_oha("not json").is_err());
    }
}
