//! What a scenario produced: every measured sample, the medians per
//! contender and the latency added over the direct path; written as JSON
//! and as a Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::load::{Generator, LoadOutcome};
use crate::procfs::Machine;
use crate::topology::Contender;
use crate::{BenchError, Result};

/// The knobs of a run, as recorded with its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub rate: u64,
    /// Closed loop (a ceiling): `rate` was only a bound.
    #[serde(default)]
    pub closed_loop: bool,
    /// A new mutual-TLS connection per request, straight to the server
    /// proxy (scenario e).
    #[serde(default)]
    pub handshakes: bool,
    pub connections: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub repetitions: u32,
    pub body_bytes: u64,
    pub protocol: String,
    pub generator: Generator,
    /// Worker threads of every proxy: knit-proxy's `TOKIO_WORKER_THREADS`,
    /// Envoy's `--concurrency`.
    pub proxy_worker_threads: u32,
    /// The Envoy measured, when `envoy-mtls` ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<crate::envoy::EnvoyBinary>,
    /// `debug` or `release`: the profile of the binaries measured.
    pub build: String,
}

/// One proxy process over one measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyUsage {
    /// `client` or `server`.
    pub side: String,
    pub pod: String,
    pub pid: u32,
    /// utime + stime over the measurement.
    pub cpu_seconds: f64,
    /// Average cores busy: CPU seconds per second of the measurement.
    pub cores: f64,
    /// Cores per 1000 requests per second (CPU seconds per 1000 requests).
    pub cores_per_krps: f64,
    /// VmRSS and RssAnon near the end of the load, VmHWM (the peak since
    /// the reset before the load) after it; MiB.
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
    pub peak_rss_mib: f64,
}

/// One measurement of one contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub contender: Contender,
    pub repetition: u32,
    /// Measurements made for this slot (more than 1 when one was disturbed).
    pub attempts: u32,
    pub wall_s: f64,
    pub achieved_rps: f64,
    /// Response bodies received per second of the measurement.
    #[serde(default)]
    pub throughput_mib_s: f64,
    pub load: LoadOutcome,
    pub proxies: Vec<ProxyUsage>,
    /// CPU the machine spent on tasks outside the lab and the harness,
    /// in cores (softirq time is counted apart).
    pub foreign_cores: f64,
    pub steal_cores: f64,
    pub softirq_cores: f64,
    /// Foreign load or steal above the thresholds.
    pub disturbed: bool,
}

/// Medians of one proxy side over the repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySummary {
    pub side: String,
    pub cores: f64,
    pub cores_per_krps: f64,
    /// Response bodies carried per second per core of this proxy.
    #[serde(default)]
    pub mib_s_per_core: f64,
    /// Requests (in scenario e, handshakes) per second per core of this
    /// proxy.
    #[serde(default)]
    pub rps_per_core: f64,
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
    pub peak_rss_mib: f64,
}

/// Medians of one contender over the repetitions (milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub contender: Contender,
    pub name: String,
    pub description: String,
    pub repetitions: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The contender's median minus the direct path's.
    pub added_p50_ms: f64,
    pub added_p90_ms: f64,
    pub added_p99_ms: f64,
    pub added_p999_ms: f64,
    pub sent: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    #[serde(default)]
    pub throughput_mib_s: f64,
    pub proxies: Vec<ProxySummary>,
    /// The highest foreign load seen in its measurements, in cores.
    pub max_foreign_cores: f64,
    /// Requests the server proxy counted per `connection_security_policy`.
    pub server_security: Vec<(String, u64)>,
    /// The median latency curve, `(percentile, ms)`.
    pub curve: Vec<(f64, f64)>,
}

/// Everything a scenario run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// UTC, RFC 3339.
    pub generated_at: String,
    pub machine: Machine,
    pub settings: Settings,
    pub contenders: Vec<Summary>,
    pub samples: Vec<Sample>,
    pub notes: Vec<String>,
}

/// The median of some values (the mean of the middle two for an even
/// count); 0 for none. NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Summarises the samples of each contender, in [`Contender::ALL`] order.
pub fn summarize(samples: &[Sample], security: &[(Contender, Vec<(String, u64)>)]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for c in Contender::ALL {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.contender == c).collect();
        if mine.is_empty() {
            continue;
        }
        let m = |f: &dyn Fn(&Sample) -> f64| median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>());
        let mut sides: Vec<String> = Vec::new();
        for s in &mine {
            for p in &s.proxies {
                if !sides.contains(&p.side) {
                    sides.push(p.side.clone());
                }
            }
        }
        let proxies = sides
            .iter()
            .map(|side| {
                let pm = |f: &dyn Fn(&ProxyUsage) -> f64| {
                    let v: Vec<f64> = mine
                        .iter()
                        .flat_map(|s| s.proxies.iter().filter(|p| &p.side == side).map(f))
                        .collect();
                    median(&v)
                };
                // A rate of the sample over this side's busy cores.
                let per_core = |rate: &dyn Fn(&Sample) -> f64| {
                    let v: Vec<f64> = mine
                        .iter()
                        .flat_map(|s| {
                            s.proxies
                                .iter()
                                .filter(|p| &p.side == side && p.cores > 0.0)
                                .map(|p| rate(s) / p.cores)
                        })
                        .collect();
                    median(&v)
                };
                ProxySummary {
                    side: side.clone(),
                    cores: pm(&|p| p.cores),
                    cores_per_krps: pm(&|p| p.cores_per_krps),
                    rps_per_core: per_core(&|s| s.load.ok as f64 / s.wall_s),
                    mib_s_per_core: per_core(&|s| s.throughput_mib_s),
                    rss_mib: pm(&|p| p.rss_mib),
                    rss_anon_mib: pm(&|p| p.rss_anon_mib),
                    peak_rss_mib: pm(&|p| p.peak_rss_mib),
                }
            })
            .collect();
        // The median curve, point by point, over samples with the same points.
        let points = mine[0].load.curve.len();
        let curve = (0..points)
            .filter_map(|i| {
                let p = mine[0].load.curve[i].0;
                let v: Vec<f64> = mine
                    .iter()
                    .filter_map(|s| s.load.curve.get(i).filter(|pt| pt.0 == p))
                    .map(|pt| ms(pt.1))
                    .collect();
                (!v.is_empty()).then(|| (p, median(&v)))
            })
            .collect();
        out.push(Summary {
            contender: c,
            name: c.name().to_string(),
            description: c.describe().to_string(),
            repetitions: mine.len(),
            p50_ms: m(&|s| ms(s.load.p50_us)),
            p90_ms: m(&|s| ms(s.load.p90_us)),
            p99_ms: m(&|s| ms(s.load.p99_us)),
            p999_ms: m(&|s| ms(s.load.p999_us)),
            added_p50_ms: 0.0,
            added_p90_ms: 0.0,
            added_p99_ms: 0.0,
            added_p999_ms: 0.0,
            sent: mine.iter().map(|s| s.load.sent).sum(),
            errors: mine.iter().map(|s| s.load.errors).sum(),
            achieved_rps: m(&|s| s.achieved_rps),
            throughput_mib_s: m(&|s| s.throughput_mib_s),
            proxies,
            max_foreign_cores: mine.iter().map(|s| s.foreign_cores).fold(0.0, f64::max),
            server_security: security
                .iter()
                .find(|(sc, _)| *sc == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            curve,
        });
    }
    if let Some(base) = out
        .iter()
        .find(|s| s.contender == Contender::Direct)
        .cloned()
    {
        for s in &mut out {
            s.added_p50_ms = s.p50_ms - base.p50_ms;
            s.added_p90_ms = s.p90_ms - base.p90_ms;
            s.added_p99_ms = s.p99_ms - base.p99_ms;
            s.added_p999_ms = s.p999_ms - base.p999_ms;
        }
    }
    out
}

/// The Markdown table of a report, with the settings and the machine.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark `{}`\n", r.scenario);
    let _ = writeln!(
        out,
        "{} · {} · {} CPUs · {} MiB · Linux {} · {} build\n",
        r.generated_at,
        if r.machine.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            r.machine.cpu_model.as_str()
        },
        r.machine.cpus,
        r.machine.memory_mib,
        r.machine.kernel,
        s.build
    );
    let _ = writeln!(
        out,
        "{}, {} connections, {} s per measurement after {} s of warm-up, \
         {}, {}-byte responses, generator `{}`, \
         {} worker threads per proxy. Contenders take turns; each figure is the \
         median of {} repetitions. {}\n",
        if s.handshakes {
            "Closed loop, each request on a new TLS 1.3 mutual-TLS connection from the lab's \
             node straight to the server proxy (its client-side proxy idles)"
                .to_string()
        } else if s.closed_loop {
            "Closed loop (each connection sends its next request when answered)".to_string()
        } else {
            format!("Open loop, {} rps", s.rate)
        },
        s.connections,
        s.duration_s,
        s.warmup_s,
        s.protocol,
        s.body_bytes,
        match s.generator {
            Generator::Lab => "knit-lab client",
            Generator::Oha => "oha --latency-correction",
        },
        s.proxy_worker_threads,
        s.repetitions,
        if s.closed_loop {
            "Latency counts from each request's send."
        } else {
            "Latency counts from each request's scheduled start."
        }
    );
    out.push_str(
        "| contender | rps | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p99 | errors / sent |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in &r.contenders {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {} / {} |",
            c.name,
            c.achieved_rps,
            c.throughput_mib_s,
            c.p50_ms,
            c.p90_ms,
            c.p99_ms,
            c.p999_ms,
            c.added_p50_ms,
            c.added_p99_ms,
            c.errors,
            c.sent
        );
    }
    out.push_str(
        "\n| contender | proxy | cores | cores per 1000 rps | rps per core | MiB/s per core | RSS MiB | RssAnon MiB | peak RSS MiB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in &r.contenders {
        for p in &c.proxies {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.3} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
                c.name,
                p.side,
                p.cores,
                p.cores_per_krps,
                p.rps_per_core,
                p.mib_s_per_core,
                p.rss_mib,
                p.rss_anon_mib,
                p.peak_rss_mib
            );
        }
    }
    let disturbed = r.samples.iter().filter(|s| s.disturbed).count();
    let max_foreign = r
        .samples
        .iter()
        .map(|s| s.foreign_cores)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "\nForeign CPU load during measurements: at most {max_foreign:.3} cores; \
         {disturbed} of {} measurements stayed above the threshold after a repeat.",
        r.samples.len()
    );
    for n in &r.notes {
        let _ = writeln!(out, "\n{n}");
    }
    out
}

/// Writes `<dir>/<scenario>.json` and `.md` (and the plot, `.svg`);
/// returns the paths written.
pub fn write(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(r).map_err(|e| BenchError::parse("the report", e))?;
    let files = [
        (dir.join(format!("{}.json", r.scenario)), json + "\n"),
        (dir.join(format!("{}.md", r.scenario)), markdown(r)),
        (dir.join(format!("{}.svg", r.scenario)), crate::svg::plot(r)),
    ];
    let mut written = Vec::new();
    for (path, text) in files {
        std::fs::write(&path, text).map_err(|source| BenchError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_423_813), "2026-11-23T08:50:13Z");
    }

    fn sample(c: Contender, rep: u32, p50: u64, proxies: usize) -> Sample {
        Sample {
            contender: c,
            repetition: rep,
            attempts: 1,
            wall_s: 1.0,
            achieved_rps: 100.0,
            throughput_mib_s: 0.1,
            load: LoadOutcome {
                sent: 100,
                ok: 100,
                p50_us: p50,
                p90_us: p50 * 2,
                p99_us: p50 * 3,
                p999_us: p50 * 4,
                curve: vec![(50.0, p50), (99.0, p50 * 3)],
                ..LoadOutcome::default()
            },
            proxies: (0..proxies)
                .map(|i| ProxyUsage {
                    side: if i == 0 { "client" } else { "server" }.to_string(),
                    pod: "p".to_string(),
                    pid: 1,
                    cpu_seconds: 0.1,
                    cores: 0.1 * f64::from(rep + 1),
                    cores_per_krps: 1.0,
                    rss_mib: 10.0,
                    rss_anon_mib: 4.0,
                    peak_rss_mib: 12.0,
                })
                .collect(),
            foreign_cores: 0.01,
            steal_cores: 0.0,
            softirq_cores: 0.0,
            disturbed: false,
        }
    }

    #[test]
    fn summaries_take_medians_and_subtract_the_direct_path() {
        let mut samples = Vec::new();
        for rep in 0..3 {
            samples.push(sample(
                Contender::Direct,
                rep,
                200 + u64::from(rep) * 100,
                0,
            ));
            samples.push(sample(
                Contender::KnitMtls,
                rep,
                500 + u64::from(rep) * 10,
                2,
            ));
        }
        let security = vec![(Contender::KnitMtls, vec![("mutual_tls".to_string(), 300)])];
        let s = summarize(&samples, &security);
        assert_eq!(s.len(), 2);
        let (d, m) = (&s[0], &s[1]);
        assert_eq!(d.name, "direct");
        assert!((d.p50_ms - 0.3).abs() < 1e-9, "{d:?}");
        assert!((m.p50_ms - 0.51).abs() < 1e-9);
        assert!((m.added_p50_ms - 0.21).abs() < 1e-9);
        assert!((m.added_p99_ms - (1.53 - 0.9)).abs() < 1e-9);
        assert_eq!((m.sent, m.errors, m.repetitions), (300, 0, 3));
        assert_eq!(m.proxies.len(), 2);
        assert!((m.proxies[0].cores - 0.2).abs() < 1e-9);
        assert_eq!(m.server_security[0].1, 300);
        assert_eq!(m.curve.len(), 2);
        assert!(d.proxies.is_empty());

        let report = Report {
            scenario: "t".to_string(),
            generated_at: utc_timestamp(0),
            machine: Machine::default(),
            settings: Settings {
                rate: 100,
                closed_loop: false,
                handshakes: false,
                connections: 2,
                duration_s: 1.0,
                warmup_s: 0.0,
                repetitions: 3,
                body_bytes: 1024,
                protocol: "http/1.1".to_string(),
                generator: Generator::Lab,
                proxy_worker_threads: 2,
                envoy: None,
                build: "debug".to_string(),
            },
            contenders: s,
            samples,
            notes: vec!["a note".to_string()],
        };
        let md = markdown(&report);
        assert!(md.contains("| knit-mtls | 100 | 0.1 | 0.510 |"), "{md}");
        assert!(md.contains("| knit-mtls | server |"), "{md}");
        assert!(md.contains("a note"));
        let dir = tempfile::tempdir().unwrap();
        let files = write(&report, dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        // Floats may come back a last digit off; the shape must not.
        assert_eq!(back.settings, report.settings);
        assert_eq!(back.samples.len(), report.samples.len());
        assert_eq!(back.contenders.len(), 2);
        assert_eq!(
            back.contenders[1].server_security,
            report.contenders[1].server_security
        );
    }
}
