//! The control-plane benchmark's report: serde JSON and a Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mesh_config::FileLayout;
use crate::procfs::Machine;
use crate::{BenchError, Result};

/// Percentiles of a set of durations, in milliseconds (nearest rank).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Stats {
    pub fn of(durations: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest value with at least p of them at
            // or below it.
            let index = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[index]
        };
        let mean = if ms.is_empty() {
            0.0
        } else {
            ms.iter().sum::<f64>() / ms.len() as f64
        };
        Stats {
            count: ms.len(),
            p50_ms: round(rank(0.50)),
            p99_ms: round(rank(0.99)),
            max_ms: round(ms.last().copied().unwrap_or(0.0)),
            mean_ms: round(mean),
        }
    }

    fn cell(&self) -> String {
        if self.count == 0 {
            return "—".to_owned();
        }
        format!(
            "{} / {} / {}",
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.max_ms)
        )
    }
}

/// Three significant decimals are plenty for milliseconds and MiB.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// knitd's (and the benchmark process's) CPU and memory over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub seconds: f64,
    /// knitd's CPU time over the window / its length.
    pub knitd_cores: f64,
    /// The benchmark process's (the simulated proxies') CPU, likewise.
    pub bench_cores: f64,
    /// Every other process on the machine, likewise (foreign load).
    pub other_cores: f64,
    /// VmRSS at the end of the window.
    pub knitd_rss_mib: f64,
    /// The largest VmRSS sampled during the window (every 250 ms).
    pub knitd_rss_max_mib: f64,
    /// VmHWM, reset at the start of the window.
    pub knitd_peak_rss_mib: f64,
}

/// Timings of endpoint changes made one at a time, each waited for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeFigures {
    pub changes: u32,
    /// Changes every connected proxy ACKed in time.
    pub fully_acked: u32,
    pub acks_expected: u64,
    pub acks_received: u64,
    /// From the changed file being in place to the last proxy's ACK of a
    /// version holding the change (includes knitd's poll wait).
    pub written_to_last_ack: Stats,
    /// From the first receipt of such a version by any proxy to the last
    /// ACK: the fan-out.
    pub first_seen_to_last_ack: Stats,
    /// From the file being in place to the first receipt: poll wait,
    /// reload and the first send.
    pub written_to_first_seen: Stats,
    /// From the last ACK to knitd going quiet: the ACKs it was still
    /// handling after the proxies had sent them (and had the change).
    pub knitd_busy_after_last_ack: Stats,
    pub usage: Usage,
}

/// Endpoint changes at a steady rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChurnFigures {
    pub rate_per_s: f64,
    pub changes: u32,
    pub fully_acked: u32,
    pub acks_expected: u64,
    pub acks_received: u64,
    /// Per change, as in [`ChangeFigures`]; only fully ACKed changes count.
    pub written_to_last_ack: Stats,
    /// knitd while the changes were being made.
    pub usage: Usage,
    /// After the last change, how long until every proxy had ACKed it.
    pub drain_s: Option<f64>,
}

/// Everything measured with one number of proxies connected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    pub proxies: u32,
    /// Proxies that had their first config (all of them unless `error`).
    pub connected: u64,
    /// Time to connect the proxies added at this scale, each to its first
    /// decoded config.
    pub connect_s: Option<f64>,
    /// knitd while the proxies connected (RSS max is the window's VmHWM).
    pub connecting: Option<Usage>,
    /// Per proxy added at this scale, connection to first decoded config,
    /// with others connecting alongside.
    pub first_push_while_connecting: Option<Stats>,
    /// After the last proxy had its first config, how long knitd kept
    /// working before it went quiet (`None`: it never did in time).
    pub settle_s: Option<f64>,
    /// Mean encoded size of a response.
    pub response_bytes: Option<u64>,
    pub rest: Option<Usage>,
    /// One more proxy on top of the connected ones: connection opened to
    /// its full config decoded.
    pub full_push: Option<Stats>,
    pub latency: Option<ChangeFigures>,
    pub churn: Option<ChurnFigures>,
    pub responses_decoded: u64,
    /// Responses whose services or endpoints did not add up to the mesh.
    pub mismatched_responses: u64,
    pub stream_errors: u64,
    /// Streams reopened after an error (with knit-proxy's backoff).
    pub reconnects: u64,
    pub first_stream_error: Option<String>,
    /// Why this scale stopped early, if it did.
    pub error: Option<String>,
}

/// What was run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub services: u32,
    pub endpoints: u32,
    pub namespaces: u32,
    pub layout: Option<FileLayout>,
    pub config_files: u32,
    pub config_bytes: u64,
    /// knitd's poll interval of the config directory.
    pub poll_interval_ms: u64,
    pub proxy_scales: Vec<u32>,
    pub latency_changes: u32,
    pub churn_rate_per_s: f64,
    pub churn_s: f64,
    pub rest_s: f64,
    pub full_push_samples: u32,
    pub connection_model: String,
    pub knitd_binary: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneReport {
    pub scenario: String,
    pub started_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    /// knitd started, then one proxy: start to its decoded first config
    /// (includes knitd's first load of the directory).
    pub startup_to_first_push_ms: Option<f64>,
    pub scales: Vec<ScaleReport>,
    /// knitd's WARN and ERROR log lines (the first few).
    pub knitd_log_problems: Vec<String>,
    pub notes: Vec<String>,
}

fn usage_cells(usage: Option<&Usage>) -> (String, String) {
    match usage {
        Some(u) => (
            format!("{:.3}", u.knitd_cores),
            format!("{:.0} / {:.0}", u.knitd_rss_mib, u.knitd_peak_rss_mib),
        ),
        None => ("—".to_owned(), "—".to_owned()),
    }
}

/// The report as Markdown: one row per scale.
pub fn markdown(report: &ControlPlaneReport) -> String {
    let s = &report.settings;
    let mut out = String::new();
    let _ = writeln!(out, "# Control plane: {}\n", report.scenario);
    let _ = writeln!(
        out,
        "{} services, {} endpoints (WorkloadEntries) in {} namespaces, {} config files ({} KiB); \
         knitd polls its directory every {} ms. Simulated proxies: {}. Started {}.\n",
        s.services,
        s.endpoints,
        s.namespaces,
        s.config_files,
        s.config_bytes / 1024,
        s.poll_interval_ms,
        s.connection_model,
        report.started_utc,
    );
    let _ = writeln!(
        out,
        "Times in ms as p50 / p99 / max. RSS in MiB as end of window / peak (VmHWM) of window.\n"
    );
    let _ = writeln!(
        out,
        "| proxies | change → last ACK | fan-out (first seen → last ACK) | full push (new proxy) | \
         rest: knitd cores | rest: knitd RSS | churn: knitd cores | churn: knitd RSS | \
         churn: change → last ACK | response KiB |"
    );
    let _ = writeln!(out, "|---:|---|---|---|---:|---:|---:|---:|---|---:|");
    for scale in &report.scales {
        let latency = scale.latency.as_ref();
        let (rest_cores, rest_rss) = usage_cells(scale.rest.as_ref());
        let (churn_cores, churn_rss) = usage_cells(scale.churn.as_ref().map(|c| &c.usage));
        let cell = |stats: Option<&Stats>| stats.map_or_else(|| "—".to_owned(), Stats::cell);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scale.proxies,
            cell(latency.map(|l| &l.written_to_last_ack)),
            cell(latency.map(|l| &l.first_seen_to_last_ack)),
            cell(scale.full_push.as_ref()),
            rest_cores,
            rest_rss,
            churn_cores,
            churn_rss,
            cell(scale.churn.as_ref().map(|c| &c.written_to_last_ack)),
            scale
                .response_bytes
                .map_or_else(|| "—".to_owned(), |b| format!("{:.0}", b as f64 / 1024.0)),
        );
    }
    let _ = writeln!(out);
    for scale in &report.scales {
        let _ = write!(
            out,
            "- {} proxies: {} had their first config",
            scale.proxies, scale.connected
        );
        if let Some(usage) = &scale.connecting {
            let _ = write!(
                out,
                " (knitd meanwhile: {:.2} cores, RSS {:.0} MiB, peak {:.0} MiB, over {:.1} s)",
                usage.knitd_cores, usage.knitd_rss_mib, usage.knitd_peak_rss_mib, usage.seconds
            );
        }
        if let Some(connect) = scale.connect_s {
            let _ = write!(out, "; connecting took {connect:.2} s");
            match scale.settle_s {
                Some(settle) => {
                    let _ = write!(out, ", then knitd was busy another {settle:.2} s");
                }
                None if scale.rest.is_some() => {
                    let _ = write!(out, ", and knitd never went quiet after");
                }
                None => {}
            }
        }
        if let Some(latency) = &scale.latency {
            let _ = write!(
                out,
                "; {} of {} one-at-a-time changes fully ACKed ({} of {} ACKs), written → first \
                 receipt {}, knitd busy after the last ACK {}, other processes {:.2} cores",
                latency.fully_acked,
                latency.changes,
                latency.acks_received,
                latency.acks_expected,
                latency.written_to_first_seen.cell(),
                latency.knitd_busy_after_last_ack.cell(),
                latency.usage.other_cores
            );
        }
        if let Some(churn) = &scale.churn {
            let _ = write!(
                out,
                "; churn {}/s: {} of {} changes fully ACKed, bench process {:.2} cores, \
                 other processes {:.2} cores",
                churn.rate_per_s,
                churn.fully_acked,
                churn.changes,
                churn.usage.bench_cores,
                churn.usage.other_cores
            );
            if let Some(drain) = churn.drain_s {
                let _ = write!(out, ", drained {drain:.1} s after the last change");
            }
        }
        let _ = write!(
            out,
            "; {} responses decoded, {} mismatched, {} stream errors, {} reconnects",
            scale.responses_decoded,
            scale.mismatched_responses,
            scale.stream_errors,
            scale.reconnects
        );
        if let Some(error) = &scale.first_stream_error {
            let _ = write!(out, " (first: {error})");
        }
        if let Some(error) = &scale.error {
            let _ = write!(out, "; stopped early: {error}");
        }
        let _ = writeln!(out, ".");
    }
    if let Some(startup) = report.startup_to_first_push_ms {
        let _ = writeln!(
            out,
            "\nknitd start to the first proxy's decoded config: {} ms.",
            ms(startup)
        );
    }
    let _ = writeln!(
        out,
        "\nMachine: {} ({} CPUs, {} MiB), kernel {}. knitd: `{}`.",
        report.machine.cpu_model,
        report.machine.cpus,
        report.machine.memory_mib,
        report.machine.kernel,
        s.knitd_binary
    );
    for note in &report.notes {
        let _ = writeln!(out, "\n{note}");
    }
    if !report.knitd_log_problems.is_empty() {
        let _ = writeln!(out, "\nknitd warnings and errors:\n");
        for line in &report.knitd_log_problems {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// Writes `<dir>/<scenario>.json` and `.md`; returns the paths written.
pub fn write(report: &ControlPlaneReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json =
        serde_json::to_string_pretty(report).map_err(|e| BenchError::parse("the report", e))?;
    let files = [
        (dir.join(format!("{}.json", report.scenario)), json + "\n"),
        (
            dir.join(format!("{}.md", report.scenario)),
            markdown(report),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let durations: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stats = Stats::of(&durations);
        assert_eq!(
            (stats.count, stats.p50_ms, stats.p99_ms, stats.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        let few = Stats::of(&[Duration::from_millis(3), Duration::from_millis(1)]);
        assert_eq!((few.p50_ms, few.p99_ms, few.max_ms), (1.0, 3.0, 3.0));
        assert_eq!(Stats::of(&[]).count, 0);
    }

    #[test]
    fn markdown_has_a_row_per_scale() {
        let report = ControlPlaneReport {
            scenario: "t".to_owned(),
            scales: vec![
                ScaleReport {
                    proxies: 5,
                    ..Default::default()
                },
                ScaleReport {
                    proxies: 9,
                    error: Some("too slow".to_owned()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let md = markdown(&report);
        assert!(md.contains("\n| 5 | — |"), "{md}");
        assert!(md.contains("\n| 9 | — |"), "{md}");
        assert!(md.contains("stopped early: too slow"), "{md}");
    }
}
