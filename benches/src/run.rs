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
use crate::{BenchError, Result};

/// Bounds that keep every run finite.
pub const MAX_REPETITIONS: u32 = 20;
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_RATE: u64 = 100_000;
pub const MAX_CONNECTIONS: u64 = 1024;
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
    pub rate: u64,
    pub connections: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub repetitions: u32,
    pub generator: Generator,
    pub proxy_workers: u32,
    pub body_bytes: u64,
}

impl Scenario {
    /// Scenario (a): 1000 rps over 16 connections, 1 KiB responses,
    /// HTTP/1.1, 30 s, three repetitions.
    pub fn standard() -> Scenario {
        Scenario {
            name: "a-1000rps-16c".to_string(),
            rate: 1000,
            connections: 16,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            repetitions: 3,
            generator: Generator::Lab,
            proxy_workers: 2,
            body_bytes: 1024,
        }
    }

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
        if self.body_bytes > 1 << 20 {
            return bad("body size", "at most 1 MiB".to_string());
        }
        Ok(())
    }
}

/// Builds the lab, runs `scenario` and returns its report. `progress`
/// hears one line per step.
pub fn run(scenario: &Scenario, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    scenario.validate()?;
    if scenario.generator == Generator::Oha {
        load::find_oha()?;
    }
    let ticks = procfs::clock_ticks()?;
    progress("building the lab (knitd and a client/server pod pair per contender)");
    let topo = Topology::build(
        "bench",
        TopologySpec {
            proxy_workers: scenario.proxy_workers,
            body_bytes: scenario.body_bytes,
        },
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
            connections: scenario.connections,
            duration_s: scenario.duration.as_secs_f64(),
            warmup_s: scenario.warmup.as_secs_f64(),
            repetitions: scenario.repetitions,
            body_bytes: scenario.body_bytes,
            protocol: "http/1.1".to_string(),
            generator: scenario.generator,
            proxy_worker_threads: scenario.proxy_workers,
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
        for c in Contender::ALL {
            progress(&format!("warming up {} for {:?}", c.name(), sc.warmup));
            let spec = load_spec(topo, c, sc, sc.warmup)?;
            let warm =
                load::start(&topo.lab, &c.client_pod(), sc.generator, &spec, &scratch)?.finish()?;
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
        let mut order = Contender::ALL.to_vec();
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
    for c in Contender::ALL {
        security.push((c, topo.server_security(c)?));
    }
    Ok((samples, security))
}

fn load_spec(topo: &Topology, c: Contender, sc: &Scenario, duration: Duration) -> Result<LoadSpec> {
    Ok(LoadSpec {
        url: topo.url(c)?,
        rate: sc.rate,
        connections: sc.connections,
        duration,
    })
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
    let spec = load_spec(topo, c, sc, sc.duration)?;
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

    let running = load::start(&topo.lab, &c.client_pod(), sc.generator, &spec, scratch)?;
    let read_at = started + sc.duration.mul_f64(MEMORY_READ_AT);
    let now = Instant::now();
    if read_at > now {
        std::thread::sleep(read_at - now);
    }
    let mem_mid: Vec<ProcMem> = proxies
        .iter()
        .map(|p| procfs::proc_mem(p.pid))
        .collect::<Result<_>>()?;
    let outcome = running.finish()?;

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
        achieved_rps: outcome.sent as f64 / sc.duration.as_secs_f64().max(1e-3),
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
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ticks_gained_only_by_processes_seen_twice() {
        let before = BTreeMap::from([(1, 10), (2, 5)]);
        let after = BTreeMap::from([(1, 15), (3, 100), (2, 4)]);
        assert_eq!(gained(&before, &after), 5);
    }
}
