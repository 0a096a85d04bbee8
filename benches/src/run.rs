//! Running a scenario: build the lab, warm every contender up, then
//! measure the contenders in turns (the order rotates each repetition),
//! reading `/proc` around each measurement.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::load::{self, Generator, LoadSpec};
use crate::procfs::{self, ProcCpu, ProcMem};
use crate::results::{self, ProxyUsage, Report, Sample, Settings};
use crate::topology::{Contender, Topology, TopologySpec};
use crate::{BenchError, Result, envoy};

/// Bounds that keep every run finite.
pub const MAX_REPETITIONS: u32 = 20;
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_RATE: u64 = 100_000;
pub const MAX_CONNECTIONS: u64 = 1024;
pub const MAX_BODY_BYTES: u64 = 1 << 30;
/// Largest message of the gRPC scenario: tonic's default decoding limit.
pub const GRPC_MAX_MESSAGE_BYTES: u64 = 4 << 20;
/// Bodies above this are streamed and checked instead of buffered.
const STREAMED_BODY_BYTES: u64 = 1 << 20;
/// Measurements made again when one was disturbed.
const DISTURBED_RETRIES: u32 = 1;
/// Foreign load above this many cores marks a measurement as disturbed
/// (5 % of a 2-core machine).
pub const FOREIGN_THRESHOLD_CORES: f64 = 0.1;
/// Steal above this many cores marks a measurement as disturbed.
pub const STEAL_THRESHOLD_CORES: f64 = 0.05;
/// When the proxies' memory is read, as a fraction of the load's duration.
const MEMORY_READ_AT: f64 = 0.9;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// Requests per second; with `closed_loop`, only a bound.
    pub rate: u64,
    /// Closed loop: as fast as each connection gets answers (a ceiling).
    #[serde(default)]
    pub closed_loop: bool,
    pub connections: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub repetitions: u32,
    pub generator: Generator,
    pub proxy_workers: u32,
    pub body_bytes: u64,
    /// Who is measured, in this order on the first repetition.
    pub contenders: Vec<Contender>,
    /// What every knit-proxy runs under (a profiler), empty for nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_wrapper: Vec<String>,
    /// At most this many requests per measurement (closed loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Scenario (e): a new mutual-TLS connection per request, straight to
    /// the server proxy (closed loop; mTLS contenders only).
    #[serde(default)]
    pub handshakes: bool,
    /// Scenario (g): gRPC unary calls over h2c from the client app, each
    /// echoing `body_bytes` (the lab's grpc-echo serves them).
    #[serde(default)]
    pub grpc: bool,
}

impl Scenario {
    /// Scenario (a): 1000 rps over 16 connections, 1 KiB responses,
    /// HTTP/1.1, 30 s, three repetitions.
    pub fn standard() -> Scenario {
        Scenario {
            name: "a-1000rps-16c".to_string(),
            rate: 1000,
            closed_loop: false,
            connections: 16,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            repetitions: 3,
            generator: Generator::Lab,
            proxy_workers: 2,
            body_bytes: 1024,
            contenders: Contender::ALL.to_vec(),
            proxy_wrapper: Vec::new(),
            requests: None,
            handshakes: false,
            grpc: false,
        }
    }

    /// A standard scenario by its letter: `a` 1000 rps over 16
    /// connections, `b` 1000 rps over 4, `c` 3000 rps over 16, `d` the
    /// closed-loop ceiling over 16 connections.
    pub fn preset(id: &str) -> Option<Scenario> {
        let a = Scenario::standard();
        Some(match id {
            "a" => a,
            "b" => Scenario {
                name: "b-1000rps-4c".to_string(),
                connections: 4,
                ..a
            },
            "c" => Scenario {
                name: "c-3000rps-16c".to_string(),
                rate: 3000,
                ..a
            },
            "d" => Scenario {
                name: "d-closed-loop-16c".to_string(),
                closed_loop: true,
                duration: Duration::from_secs(15),
                ..a
            },
            "e" => Scenario {
                name: "e-handshakes-16c".to_string(),
                closed_loop: true,
                handshakes: true,
                duration: Duration::from_secs(15),
                warmup: Duration::from_secs(2),
                contenders: vec![Contender::KnitMtls, Contender::EnvoyMtls],
                ..a
            },
            "f" => Scenario {
                name: "f-bulk-20x100mib".to_string(),
                closed_loop: true,
                connections: 1,
                requests: Some(20),
                body_bytes: 100 << 20,
                duration: Duration::from_secs(120),
                warmup: Duration::from_secs(2),
                ..a
            },
            // A gRPC channel multiplexes few connections; each of these
            // carries one call at a time.
            "g" => Scenario {
                name: "g-grpc-1000rps-4c".to_string(),
                connections: 4,
                grpc: true,
                ..a
            },
            _ => return None,
        })
    }

    /// The letters of [`Scenario::preset`], in suite order.
    pub const PRESETS: [&'static str; 7] = ["a", "b", "c", "d", "e", "f", "g"];

    /// A quick check that the harness works: a tiny rate for two seconds
    /// per contender, one repetition.
    pub fn smoke() -> Scenario {
        Scenario {
            name: "smoke".to_string(),
            rate: 25,
            connections: 2,
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            repetitions: 1,
            ..Scenario::standard()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, reason: String| Err(BenchError::invalid(what, reason));
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || self.name.starts_with('.')
        {
            return bad(
                "scenario name",
                format!("{:?}: letters, digits, '-', '_', '.'", self.name),
            );
        }
        if self.rate == 0 || self.rate > MAX_RATE {
            return bad("rate", format!("must be 1..={MAX_RATE}"));
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return bad("connections", format!("must be 1..={MAX_CONNECTIONS}"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(
                "duration",
                format!("must be up to {} s", MAX_DURATION.as_secs()),
            );
        }
        if self.warmup > MAX_DURATION {
            return bad(
                "warm-up",
                format!("must be up to {} s", MAX_DURATION.as_secs()),
            );
        }
        if self.repetitions == 0 || self.repetitions > MAX_REPETITIONS {
            return bad("repetitions", format!("must be 1..={MAX_REPETITIONS}"));
        }
        if self.proxy_workers == 0 || self.proxy_workers > 64 {
            return bad("proxy workers", "must be 1..=64".to_string());
        }
        if self.contenders.is_empty() {
            return bad("contenders", "choose at least one".to_string());
        }
        for (i, c) in self.contenders.iter().enumerate() {
            if self.contenders[..i].contains(c) {
                return bad("contenders", format!("{} is listed twice", c.name()));
            }
        }
        if self.body_bytes > MAX_BODY_BYTES {
            return bad("body size", format!("at most {} MiB", MAX_BODY_BYTES >> 20));
        }
        if self.handshakes {
            if !self.closed_loop {
                return bad("handshakes", "run in closed loop".to_string());
            }
            if let Some(c) = self
                .contenders
                .iter()
                .find(|c| !matches!(c, Contender::KnitMtls | Contender::EnvoyMtls))
            {
                return bad(
                    "contenders",
                    format!("{} has no mutual TLS to handshake with", c.name()),
                );
            }
        }
        if self.grpc {
            if self.handshakes {
                return bad("grpc", "not with handshakes".to_string());
            }
            if self.body_bytes > GRPC_MAX_MESSAGE_BYTES {
                return bad(
                    "body size",
                    format!("a gRPC message of at most {GRPC_MAX_MESSAGE_BYTES} bytes"),
                );
            }
            if self.generator != Generator::Lab {
                return bad(
                    "generator",
                    "gRPC calls need the lab generator (--generator lab)".to_string(),
                );
            }
        }
        if self.requests == Some(0) {
            return bad("requests", "must be at least 1".to_string());
        }
        if self.requests.is_some() && !self.closed_loop {
            return bad("requests", "only bounds a closed loop".to_string());
        }
        Ok(())
    }
}

/// Builds the lab, runs `scenario` and returns its report. `progress`
/// hears one line per step.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    scenario.validate()?;
    if scenario.generator == Generator::Oha {
        let oha = load::find_or_install_oha(progress)?;
        progress(&format!("oha: {}", oha.display()));
    }
    let ticks = procfs::clock_ticks()?;
    let envoy = if scenario.contenders.contains(&Contender::EnvoyMtls) {
        let binary = envoy::find_or_install(progress)?;
        progress(&format!(
            "Envoy: {} ({}, from {})",
            binary.path.display(),
            binary.version,
            binary.source
        ));
        Some(binary)
    } else {
        None
    };
    progress("building the lab (knitd and a client/server pod pair per contender)");
    let topo = Topology::build(
        "bench",
        TopologySpec {
            proxy_workers: scenario.proxy_workers,
            body_bytes: scenario.body_bytes,
            grpc: scenario.grpc,
            contenders: scenario.contenders.clone(),
            proxy_wrapper: scenario.proxy_wrapper.clone(),
        },
        envoy.as_ref(),
    )?;
    let result = measure_all(&topo, scenario, ticks, progress);
    if result.is_err() {
        eprintln!("knit-bench: lab logs:\n{}", topo.lab.logs_tail(20));
    }
    let (samples, security) = result?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let contenders = results::summarize(&samples, &security);
    let mut notes = vec![format!(
        "Foreign load is the machine's user+nice+system CPU time minus that of the lab's \
         processes, the harness and its children, and ksoftirqd; a measurement above \
         {FOREIGN_THRESHOLD_CORES} cores of it (or {STEAL_THRESHOLD_CORES} cores of steal) \
         is repeated once and the quieter attempt kept."
    )];
    if cfg!(debug_assertions) {
        notes.push(
            "These binaries are a debug build: the figures check the harness, they do not \
             describe Knit's performance. Use `--release` for real figures."
                .to_string(),
        );
    }
    Ok(Report {
        scenario: scenario.name.clone(),
        generated_at: results::utc_timestamp(now),
        machine: procfs::machine(ticks),
        settings: Settings {
            rate: scenario.rate,
            closed_loop: scenario.closed_loop,
            handshakes: scenario.handshakes,
            connections: scenario.connections,
            duration_s: scenario.duration.as_secs_f64(),
            warmup_s: scenario.warmup.as_secs_f64(),
            repetitions: scenario.repetitions,
            body_bytes: scenario.body_bytes,
            protocol: if scenario.handshakes {
                "h2, one request per new mutual-TLS connection".to_string()
            } else if scenario.grpc {
                "gRPC unary calls over h2c from the client app".to_string()
            } else {
                "HTTP/1.1 from the client app".to_string()
            },
            generator: scenario.generator,
            proxy_worker_threads: scenario.proxy_workers,
            envoy,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
        },
        contenders,
        samples,
        notes,
    })
}

type Security = Vec<(Contender, Vec<(String, u64)>)>;

fn measure_all(
    topo: &Topology,
    sc: &Scenario,
    ticks: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Sample>, Security)> {
    let scratch = topo.lab.dir().join("bench");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| BenchError::io(format!("creating {}", scratch.display()), e))?;
    if !sc.warmup.is_zero() {
        for &c in &sc.contenders {
            progress(&format!("warming up {} for {:?}", c.name(), sc.warmup));
            let warm = start_load(topo, c, sc, sc.warmup, &scratch)?.finish()?;
            if warm.ok == 0 {
                return Err(BenchError::invalid(
                    format!("warm-up of {}", c.name()),
                    format!("no request succeeded: {:?}", warm.error_samples),
                ));
            }
        }
    }
    let mut samples = Vec::new();
    for rep in 0..sc.repetitions {
        let mut order = sc.contenders.clone();
        let turn = rep as usize % order.len();
        order.rotate_left(turn);
        for c in order {
            let mut best: Option<Sample> = None;
            for attempt in 1..=1 + DISTURBED_RETRIES {
                progress(&format!(
                    "repetition {}/{}: {} (attempt {attempt})",
                    rep + 1,
                    sc.repetitions,
                    c.name()
                ));
                let mut s = measure(topo, c, sc, ticks, &scratch)?;
                s.repetition = rep;
                s.attempts = attempt;
                let quieter = best.as_ref().is_none_or(|b| {
                    s.foreign_cores + s.steal_cores < b.foreign_cores + b.steal_cores
                });
                let disturbed = s.disturbed;
                if quieter {
                    best = Some(s);
                }
                if let Some(b) = best.as_mut() {
                    b.attempts = attempt;
                }
                if !disturbed {
                    break;
                }
            }
            samples.extend(best);
        }
    }
    let mut security = Vec::new();
    for &c in &sc.contenders {
        security.push((c, topo.server_security(c)?));
    }
    Ok((samples, security))
}

/// Starts the scenario's load on contender `c` for `duration`.
fn start_load(
    topo: &Topology,
    c: Contender,
    sc: &Scenario,
    duration: Duration,
    scratch: &Path,
) -> Result<load::Running> {
    if sc.handshakes {
        let spec = topo.handshake_spec(c, sc.connections, duration)?;
        return load::start_handshakes(&topo.lab, &spec, scratch);
    }
    let spec = load_spec(topo, c, sc, duration)?;
    load::start(&topo.lab, &c.client_pod(), sc.generator, &spec, scratch)
}

fn load_spec(topo: &Topology, c: Contender, sc: &Scenario, duration: Duration) -> Result<LoadSpec> {
    let mut spec = LoadSpec::new(topo.url(c)?, sc, duration);
    if sc.grpc {
        spec.url = topo.grpc_url(c)?;
        spec.grpc_unary = Some(sc.body_bytes);
    } else if sc.body_bytes > STREAMED_BODY_BYTES {
        // Bulk bodies stream through the client's checked download.
        spec.download = Some(sc.body_bytes);
    }
    Ok(spec)
}

impl LoadSpec {
    /// The scenario's load on `url`, for `duration`.
    fn new(url: String, sc: &Scenario, duration: Duration) -> LoadSpec {
        LoadSpec {
            url,
            rate: sc.rate,
            closed_loop: sc.closed_loop,
            connections: sc.connections,
            duration,
            requests: sc.requests,
            download: None,
            grpc_unary: None,
            timeout: request_timeout(sc.body_bytes),
        }
    }
}

/// Per request: the generators' default, plus a second per 10 MiB of body
/// (a bulk download at a slow 10 MiB/s, as through debug builds).
fn request_timeout(body_bytes: u64) -> Duration {
    load::REQUEST_TIMEOUT + Duration::from_secs(body_bytes / (10 << 20))
}

/// CPU ticks of every process the lab runs, by PID.
fn lab_cpu(topo: &Topology) -> BTreeMap<u32, u64> {
    topo.lab
        .process_pids()
        .into_iter()
        .filter_map(|(_, pid)| procfs::proc_cpu(pid).ok().map(|c| (pid, c.own)))
        .collect()
}

/// CPU ticks of the kernel's softirq threads, by PID.
fn softirq_threads() -> BTreeMap<u32, u64> {
    procfs::pids_named("ksoftirqd")
        .into_iter()
        .filter_map(|pid| procfs::proc_cpu(pid).ok().map(|c| (pid, c.own)))
        .collect()
}

/// Ticks gained by processes present at both readings.
fn gained(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> u64 {
    after
        .iter()
        .filter_map(|(pid, a)| before.get(pid).map(|b| a.saturating_sub(*b)))
        .sum()
}

fn measure(
    topo: &Topology,
    c: Contender,
    sc: &Scenario,
    ticks: u64,
    scratch: &Path,
) -> Result<Sample> {
    let proxies = topo.proxies(c)?;
    for p in &proxies {
        procfs::reset_peak(p.pid)?;
    }
    let proxy_before: Vec<ProcCpu> = proxies
        .iter()
        .map(|p| procfs::proc_cpu(p.pid))
        .collect::<Result<_>>()?;
    let lab_before = lab_cpu(topo);
    let soft_before = softirq_threads();
    let self_before = procfs::self_cpu()?;
    let sys_before = procfs::system_cpu()?;
    let started = Instant::now();

    let running = start_load(topo, c, sc, sc.duration, scratch)?;
    let read_mem =
        || -> Result<Vec<ProcMem>> { proxies.iter().map(|p| procfs::proc_mem(p.pid)).collect() };
    // A run bounded by its request count may end long before its
    // duration: its memory is read when it is done (the peak is kept
    // either way).
    let (mem_mid, outcome) = if sc.requests.is_some() {
        let outcome = running.finish()?;
        (read_mem()?, outcome)
    } else {
        let read_at = started + sc.duration.mul_f64(MEMORY_READ_AT);
        let now = Instant::now();
        if read_at > now {
            std::thread::sleep(read_at - now);
        }
        let mem = read_mem()?;
        (mem, running.finish()?)
    };

    let sys_after = procfs::system_cpu()?;
    let wall = started.elapsed().as_secs_f64().max(1e-3);
    let self_after = procfs::self_cpu()?;
    let soft_after = softirq_threads();
    let lab_after = lab_cpu(topo);
    let proxy_after: Vec<ProcCpu> = proxies
        .iter()
        .map(|p| procfs::proc_cpu(p.pid))
        .collect::<Result<_>>()?;
    let peaks: Vec<ProcMem> = proxies
        .iter()
        .map(|p| procfs::proc_mem(p.pid))
        .collect::<Result<_>>()?;

    let tick_s = 1.0 / ticks as f64;
    let requests = outcome.sent.max(1) as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let usage = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cpu = proxy_after[i].own.saturating_sub(proxy_before[i].own) as f64 * tick_s;
            ProxyUsage {
                side: p.side.to_string(),
                pod: p.pod.clone(),
                pid: p.pid,
                cpu_seconds: cpu,
                cores: cpu / wall,
                cores_per_krps: cpu / requests * 1000.0,
                rss_mib: mib(mem_mid[i].vm_rss_kib),
                rss_anon_mib: mib(mem_mid[i].rss_anon_kib),
                peak_rss_mib: mib(peaks[i].vm_hwm_kib),
            }
        })
        .collect();

    let sys = sys_after.since(&sys_before);
    let own = gained(&lab_before, &lab_after)
        + gained(&soft_before, &soft_after)
        + (self_after.own + self_after.children)
            .saturating_sub(self_before.own + self_before.children);
    let foreign_cores = sys.task_time().saturating_sub(own) as f64 * tick_s / wall;
    let steal_cores = sys.steal as f64 * tick_s / wall;
    let softirq_cores = (sys.softirq + sys.irq) as f64 * tick_s / wall;
    Ok(Sample {
        contender: c,
        repetition: 0,
        attempts: 1,
        wall_s: wall,
        // A closed loop may end before its duration (a fixed number of
        // requests): the rate is over the time it ran.
        achieved_rps: outcome.sent as f64
            / if sc.closed_loop {
                wall
            } else {
                sc.duration.as_secs_f64().max(1e-3)
            },
        throughput_mib_s: outcome.bytes_received as f64 / wall / f64::from(1 << 20),
        load: outcome,
        proxies: usage,
        foreign_cores,
        steal_cores,
        softirq_cores,
        disturbed: foreign_cores > FOREIGN_THRESHOLD_CORES || steal_cores > STEAL_THRESHOLD_CORES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_valid_and_bounded() {
        Scenario::standard().validate().unwrap();
        Scenario::smoke().validate().unwrap();
        let s = Scenario::standard();
        assert_eq!(
            (s.rate, s.connections, s.duration.as_secs()),
            (1000, 16, 30)
        );
        for bad in [
            Scenario {
                rate: 0,
                ..Scenario::smoke()
            },
            Scenario {
                connections: 0,
                ..Scenario::smoke()
            },
            Scenario {
                repetitions: MAX_REPETITIONS + 1,
                ..Scenario::smoke()
            },
            Scenario {
                duration: Duration::ZERO,
                ..Scenario::smoke()
            },
            Scenario {
                name: "../x".to_string(),
                ..Scenario::smoke()
            },
            Scenario {
                proxy_workers: 0,
                ..Scenario::smoke()
            },
            Scenario {
                generator: Generator::Oha,
                ..Scenario::preset("g").unwrap()
            },
            Scenario {
                body_bytes: GRPC_MAX_MESSAGE_BYTES + 1,
                ..Scenario::preset("g").unwrap()
            },
            Scenario {
                handshakes: true,
                grpc: true,
                ..Scenario::preset("e").unwrap()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_preset_is_valid() {
        for id in Scenario::PRESETS {
            let sc = Scenario::preset(id).unwrap();
            sc.validate().unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(sc.name.starts_with(id), "{id}: {}", sc.name);
        }
        assert!(Scenario::preset("z").is_none());
    }

    #[test]
    fn ticks_gained_only_by_processes_seen_twice() {
        let before = BTreeMap::from([(1, 10), (2, 5)]);
        let after = BTreeMap::from([(1, 15), (3, 100), (2, 4)]);
        assert_eq!(gained(&before, &after), 5);
    }
}
