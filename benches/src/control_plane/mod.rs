//! The control-plane benchmark: knitd (the real binary, as a separate
//! process on loopback) serving a mesh of many services and endpoints from
//! its config directory to many simulated proxies in this process, each on
//! its own HTTP/2 connection as real proxies are, each decoding every
//! response and ACKing it.
//!
//! At each number of proxies it measures, in order:
//! 1. connecting the proxies (each to its first decoded config);
//! 2. knitd at rest: CPU and RSS over an idle window;
//! 3. the full push: one more proxy, connection opened to config decoded;
//! 4. endpoint changes one at a time: the changed file written → the last
//!    proxy's ACK, and the first receipt by any proxy → the last ACK (the
//!    fan-out, without knitd's poll wait);
//! 5. churn: endpoint changes at a steady rate, knitd's CPU and RSS while
//!    they are made, and each change's time to the last ACK.
//!
//! Nothing here asserts a timing; every wait is bounded by a deadline.

pub mod knitd;
pub mod mesh_config;
pub mod proxies;
pub mod report;
mod usage;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knitd::{KNITD_POLL_INTERVAL, KnitdProcess, find_knitd};
use mesh_config::{ConfigDir, FileLayout, MAX_CHANGES, MeshShape};
use proxies::Fleet;
pub use report::{
    ChangeFigures, ChurnFigures, ControlPlaneReport, ScaleReport, Settings, Stats, Usage,
};
use usage::{SAMPLE_EVERY, UsageMeter};

use crate::procfs::{clock_ticks, machine};
use crate::results::utc_timestamp;
use crate::{BenchError, Result};

/// How often the coordinator looks at the proxies' progress.
const CHECK_EVERY: Duration = Duration::from_millis(2);
/// knitd counts as quiet over a window of this length...
const QUIET_WINDOW: Duration = Duration::from_millis(200);
/// ...in which it used at most this share of a core.
const QUIET_CORES: f64 = 0.1;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names the output files.
    pub name: String,
    pub services: u32,
    pub endpoints: u32,
    pub layout: FileLayout,
    /// Numbers of proxies to measure at, ascending; proxies are added to
    /// reach each.
    pub proxy_scales: Vec<u32>,
    /// Changes made one at a time per scale.
    pub latency_changes: u32,
    pub churn_rate_per_s: f64,
    pub churn: Duration,
    pub rest: Duration,
    pub full_push_samples: u32,
    /// Proxies waiting for their first config at once while connecting.
    pub connect_concurrency: usize,
    /// Longest wait for all proxies of a scale to have their first config.
    pub connect_deadline: Duration,
    /// Longest wait for one change to be ACKed by every proxy.
    pub change_deadline: Duration,
    /// How often knitd polls its config directory.
    pub poll_interval: Duration,
    /// The knitd binary; found like the lab finds it when `None`.
    pub knitd: Option<PathBuf>,
    /// Where the config directory and knitd's log go; a temporary
    /// directory when `None`.
    pub work_dir: Option<PathBuf>,
}

impl Spec {
    /// The benchmark: 1000 services, 10 000 endpoints, 500 then
    /// 2000 proxies, 20 changes/s for 30 s, 10 s at rest.
    pub fn standard() -> Spec {
        Spec {
            name: "control-plane".to_owned(),
            services: 1000,
            endpoints: 10_000,
            layout: FileLayout::PerService,
            proxy_scales: vec![500, 2000],
            latency_changes: 20,
            churn_rate_per_s: 20.0,
            churn: Duration::from_secs(30),
            rest: Duration::from_secs(10),
            full_push_samples: 5,
            connect_concurrency: 64,
            connect_deadline: Duration::from_secs(180),
            change_deadline: Duration::from_secs(30),
            poll_interval: KNITD_POLL_INTERVAL,
            knitd: None,
            work_dir: None,
        }
    }

    /// A tiny run for tests: 20 services, 100 endpoints, 20 proxies,
    /// 3 changes one at a time and a second of churn.
    pub fn smoke() -> Spec {
        Spec {
            name: "control-plane-smoke".to_owned(),
            services: 20,
            endpoints: 100,
            proxy_scales: vec![20],
            latency_changes: 3,
            churn_rate_per_s: 5.0,
            churn: Duration::from_secs(1),
            rest: Duration::from_secs(1),
            full_push_samples: 3,
            connect_deadline: Duration::from_secs(60),
            ..Spec::standard()
        }
    }

    fn churn_changes(&self) -> u32 {
        (self.churn_rate_per_s * self.churn.as_secs_f64()).round() as u32
    }

    fn check(&self) -> Result<MeshShape> {
        let shape = MeshShape {
            services: self.services,
            endpoints: self.endpoints,
        };
        shape.check()?;
        if !self.proxy_scales.windows(2).all(|w| w[0] < w[1]) || self.proxy_scales.is_empty() {
            return Err(BenchError::invalid(
                "proxy scales",
                format!("{:?} must be ascending and not empty", self.proxy_scales),
            ));
        }
        let most = self.proxy_scales.last().copied().unwrap_or(0);
        if most.saturating_add(self.full_push_samples) > self.endpoints {
            return Err(BenchError::invalid(
                "proxy scales",
                format!(
                    "{most} proxies and {} full-push probes need as many WorkloadEntries, \
                     but the mesh has {}",
                    self.full_push_samples, self.endpoints
                ),
            ));
        }
        if !(self.churn_rate_per_s > 0.0 && self.churn_rate_per_s <= 1000.0) {
            return Err(BenchError::invalid(
                "churn rate",
                format!("{} changes/s is not in (0, 1000]", self.churn_rate_per_s),
            ));
        }
        let changes =
            (self.latency_changes + self.churn_changes()) as usize * self.proxy_scales.len();
        if changes >= MAX_CHANGES as usize {
            return Err(BenchError::invalid(
                "changes",
                format!("{changes} changes do not fit the {MAX_CHANGES} change addresses"),
            ));
        }
        Ok(shape)
    }
}

/// Everything one run needs at hand.
struct Bench<'a> {
    spec: &'a Spec,
    config: ConfigDir,
    knitd: KnitdProcess,
    fleet: Fleet,
    ticks_per_s: u64,
    progress: &'a mut dyn FnMut(&str),
}

impl Bench<'_> {
    /// Makes change `seq` (the next one) and returns when its file is in
    /// place.
    fn make_change(&mut self) -> Result<usize> {
        let seq = self.fleet.tracker.announce(Instant::now());
        let seq_u32 = u32::try_from(seq)
            .map_err(|_| BenchError::invalid("change", format!("change {seq} is too many")))?;
        self.config.apply_change(seq_u32)?;
        self.fleet.tracker.written(seq, Instant::now());
        Ok(seq)
    }

    /// Waits until every proxy that must ACK change `seq` has, or until
    /// `deadline`; returns whether they all did.
    fn wait_acked(
        &mut self,
        seq: usize,
        deadline: Duration,
        meter: &mut UsageMeter,
    ) -> Result<bool> {
        let started = Instant::now();
        loop {
            let done = self
                .fleet
                .tracker
                .change(seq)
                .is_some_and(|c| c.acks >= c.expected_acks);
            if done {
                return Ok(true);
            }
            if started.elapsed() > deadline {
                return Ok(false);
            }
            meter.sample(&self.knitd)?;
            self.knitd.check_running()?;
            std::thread::sleep(CHECK_EVERY);
        }
    }

    /// Waits until knitd has been quiet for a window (it may still be
    /// handling ACKs the proxies have long sent); returns how long it was
    /// busy, or `None` if it never went quiet within `deadline`.
    fn wait_quiet(&mut self, deadline: Duration) -> Result<Option<Duration>> {
        let started = Instant::now();
        let quiet_ticks = QUIET_CORES * QUIET_WINDOW.as_secs_f64() * self.ticks_per_s as f64;
        loop {
            let window_start = Instant::now();
            let before = self.knitd.cpu_ticks()?;
            std::thread::sleep(QUIET_WINDOW);
            self.knitd.check_running()?;
            let used = self.knitd.cpu_ticks()?.saturating_sub(before);
            if used as f64 <= quiet_ticks {
                return Ok(Some(window_start - started));
            }
            if started.elapsed() > deadline {
                return Ok(None);
            }
        }
    }

    fn rest(&mut self) -> Result<Usage> {
        let mut meter = UsageMeter::start(&self.knitd)?;
        let until = Instant::now() + self.spec.rest;
        while Instant::now() < until {
            meter.sample(&self.knitd)?;
            std::thread::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now())));
        }
        self.knitd.check_running()?;
        meter.finish(&self.knitd, self.ticks_per_s)
    }

    fn full_push(&mut self, first_probe: u32) -> Result<Stats> {
        let mut samples = Vec::new();
        for k in 0..self.spec.full_push_samples {
            let push = self
                .fleet
                .probe_full_push(first_probe + k, self.spec.connect_deadline)?;
            samples.push(push.elapsed);
        }
        Ok(Stats::of(&samples))
    }

    /// Changes one at a time, each waited for; the gaps between them vary
    /// so changes land at different points of knitd's poll cycle.
    fn latency(&mut self) -> Result<ChangeFigures> {
        let mut meter = UsageMeter::start(&self.knitd)?;
        let first = self.fleet.tracker.issued();
        let mut busy_after = Vec::new();
        for k in 0..self.spec.latency_changes {
            // Each change starts from a quiet knitd, and the gaps vary so
            // changes land at different points of knitd's poll cycle.
            self.wait_quiet(self.spec.change_deadline)?;
            std::thread::sleep(Duration::from_millis(u64::from(k) * 97 % 250));
            let seq = self.make_change()?;
            if self.wait_acked(seq, self.spec.change_deadline, &mut meter)? {
                let acked = Instant::now();
                if self.wait_quiet(self.spec.change_deadline)?.is_some() {
                    let last_ack = self
                        .fleet
                        .tracker
                        .change(seq)
                        .and_then(|c| c.last_ack)
                        .unwrap_or(acked);
                    // The quiet window began when knitd stopped working.
                    busy_after.push(
                        Instant::now()
                            .saturating_duration_since(last_ack)
                            .saturating_sub(QUIET_WINDOW),
                    );
                }
            }
        }
        let records = self
            .fleet
            .tracker
            .changes(first..self.fleet.tracker.issued());
        let full: Vec<_> = records
            .iter()
            .filter(|c| c.acks >= c.expected_acks)
            .collect();
        let durations = |f: &dyn Fn(&proxies::ChangeRecord) -> Option<Duration>| -> Vec<Duration> {
            full.iter().filter_map(|&c| f(c)).collect()
        };
        Ok(ChangeFigures {
            changes: records.len() as u32,
            fully_acked: full.len() as u32,
            acks_expected: records.iter().map(|c| u64::from(c.expected_acks)).sum(),
            acks_received: records.iter().map(|c| u64::from(c.acks)).sum(),
            written_to_last_ack: Stats::of(&durations(&|c| {
                c.last_ack
                    .map(|t| t.saturating_duration_since(c.written_at))
            })),
            first_seen_to_last_ack: Stats::of(&durations(&|c| {
                Some(c.last_ack?.saturating_duration_since(c.first_seen?))
            })),
            written_to_first_seen: Stats::of(&durations(&|c| {
                c.first_seen
                    .map(|t| t.saturating_duration_since(c.written_at))
            })),
            knitd_busy_after_last_ack: Stats::of(&busy_after),
            usage: meter.finish(&self.knitd, self.ticks_per_s)?,
        })
    }

    /// Changes at a steady rate for the churn window, then a bounded wait
    /// for the proxies to catch up.
    fn churn(&mut self) -> Result<ChurnFigures> {
        let count = self.spec.churn_changes();
        let rate = self.spec.churn_rate_per_s;
        let first = self.fleet.tracker.issued();
        let mut meter = UsageMeter::start(&self.knitd)?;
        let started = Instant::now();
        for i in 0..count {
            let due = started + Duration::from_secs_f64(f64::from(i) / rate);
            while Instant::now() < due {
                meter.sample(&self.knitd)?;
                std::thread::sleep(CHECK_EVERY.min(due.saturating_duration_since(Instant::now())));
            }
            self.make_change()?;
        }
        // The window ends one interval after the last change, so it spans
        // `count / rate` seconds.
        let end = started + Duration::from_secs_f64(f64::from(count) / rate);
        while Instant::now() < end {
            meter.sample(&self.knitd)?;
            std::thread::sleep(CHECK_EVERY);
        }
        self.knitd.check_running()?;
        let usage = meter.finish(&self.knitd, self.ticks_per_s)?;
        let last = self.fleet.tracker.issued().saturating_sub(1);
        let drain_started = Instant::now();
        let mut drain_meter = UsageMeter::start(&self.knitd)?;
        let drained =
            count > 0 && self.wait_acked(last, self.spec.change_deadline, &mut drain_meter)?;
        let drain_s = drained.then(|| {
            self.fleet
                .tracker
                .change(last)
                .and_then(|c| c.last_ack)
                .map_or(drain_started.elapsed(), |t| {
                    t.saturating_duration_since(end)
                })
                .as_secs_f64()
        });
        let records = self
            .fleet
            .tracker
            .changes(first..self.fleet.tracker.issued());
        let full: Vec<_> = records
            .iter()
            .filter(|c| c.acks >= c.expected_acks)
            .collect();
        let times: Vec<Duration> = full
            .iter()
            .filter_map(|c| {
                c.last_ack
                    .map(|t| t.saturating_duration_since(c.written_at))
            })
            .collect();
        Ok(ChurnFigures {
            rate_per_s: rate,
            changes: records.len() as u32,
            fully_acked: full.len() as u32,
            acks_expected: records.iter().map(|c| u64::from(c.expected_acks)).sum(),
            acks_received: records.iter().map(|c| u64::from(c.acks)).sum(),
            written_to_last_ack: Stats::of(&times),
            usage,
            drain_s: drain_s.map(|s| (s * 100.0).round() / 100.0),
        })
    }

    /// Grows the fleet to `proxies` and measures; fills `scale` as it goes
    /// so a failure keeps what was measured.
    fn measure_scale(&mut self, proxies: u32, scale: &mut ScaleReport) -> Result<()> {
        let before = self.fleet.first_pushes.len();
        let responses_before = self.fleet.tracker.responses.load(Ordering::Relaxed);
        let bytes_before = self.fleet.tracker.response_bytes.load(Ordering::Relaxed);
        (self.progress)(&format!("{proxies} proxies: connecting"));
        let connecting = Instant::now();
        let meter = UsageMeter::start(&self.knitd)?;
        let grown = self.fleet.grow_to(
            proxies,
            self.spec.connect_concurrency,
            self.spec.connect_deadline,
        );
        scale.connected = self.fleet.tracker.connected();
        scale.connecting = Some(meter.finish(&self.knitd, self.ticks_per_s)?);
        grown?;
        scale.connect_s = Some((connecting.elapsed().as_secs_f64() * 100.0).round() / 100.0);
        scale.first_push_while_connecting = Some(Stats::of(&self.fleet.first_pushes[before..]));
        let responses = self.fleet.tracker.responses.load(Ordering::Relaxed) - responses_before;
        let bytes = self.fleet.tracker.response_bytes.load(Ordering::Relaxed) - bytes_before;
        scale.response_bytes = bytes.checked_div(responses);

        (self.progress)(&format!("{proxies} proxies: waiting for knitd to settle"));
        let settle = self.wait_quiet(self.spec.connect_deadline)?;
        scale.settle_s = settle.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0);
        (self.progress)(&format!("{proxies} proxies: {:?} at rest", self.spec.rest));
        scale.rest = Some(self.rest()?);

        (self.progress)(&format!(
            "{proxies} proxies: {} full pushes to a new proxy",
            self.spec.full_push_samples
        ));
        scale.full_push = Some(self.full_push(proxies)?);

        (self.progress)(&format!(
            "{proxies} proxies: {} endpoint changes one at a time",
            self.spec.latency_changes
        ));
        scale.latency = Some(self.latency()?);

        (self.progress)(&format!(
            "{proxies} proxies: churn at {}/s for {:?}",
            self.spec.churn_rate_per_s, self.spec.churn
        ));
        scale.churn = Some(self.churn()?);
        Ok(())
    }
}

/// Runs the benchmark. A scale that fails (knitd too slow for a deadline,
/// a stream error) is reported with its error and ends the run; the report
/// keeps what was measured before.
pub fn run(spec: &Spec, progress: &mut dyn FnMut(&str)) -> Result<ControlPlaneReport> {
    let shape = spec.check()?;
    let knitd_binary = match &spec.knitd {
        Some(path) => path.clone(),
        None => find_knitd()?,
    };
    let temporary;
    let work_dir = match &spec.work_dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("knit-bench-cp-")
                .tempdir()
                .map_err(|e| BenchError::io("creating a temporary directory", e))?;
            temporary.path().to_path_buf()
        }
    };
    let config_path = work_dir.join("config");
    std::fs::create_dir_all(&config_path).map_err(|source| BenchError::Write {
        path: config_path.clone(),
        source,
    })?;
    let state_path = work_dir.join("knitd-state");
    std::fs::create_dir_all(&state_path).map_err(|source| BenchError::Write {
        path: state_path.clone(),
        source,
    })?;
    let ticks_per_s = clock_ticks()?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    progress(&format!(
        "writing {} services and {} endpoints to {}",
        spec.services,
        spec.endpoints,
        config_path.display()
    ));
    let config = ConfigDir::create(&config_path, shape, spec.layout)?;
    let mut report = ControlPlaneReport {
        scenario: spec.name.clone(),
        started_utc: utc_timestamp(started_unix),
        machine: machine(ticks_per_s),
        settings: Settings {
            services: spec.services,
            endpoints: spec.endpoints,
            namespaces: spec.services.div_ceil(100),
            layout: Some(spec.layout),
            config_files: config.files,
            config_bytes: config.bytes,
            poll_interval_ms: spec.poll_interval.as_millis() as u64,
            proxy_scales: spec.proxy_scales.clone(),
            latency_changes: spec.latency_changes,
            churn_rate_per_s: spec.churn_rate_per_s,
            churn_s: spec.churn.as_secs_f64(),
            rest_s: spec.rest.as_secs_f64(),
            full_push_samples: spec.full_push_samples,
            connection_model: "one HTTP/2 connection and one Discovery.Stream per proxy, \
                               as each real proxy has"
                .to_owned(),
            knitd_binary: knitd_binary.display().to_string(),
        },
        ..Default::default()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("knit-bench-proxies")
        .build()
        .map_err(|e| BenchError::io("starting the async runtime", e))?;

    progress(&format!("starting {}", knitd_binary.display()));
    let started = Instant::now();
    let knitd = KnitdProcess::start(
        &knitd_binary,
        &config_path,
        &state_path,
        &work_dir.join("knitd.log"),
        spec.poll_interval,
        spec.connect_deadline,
    )?;
    let fleet = Fleet::new(runtime.handle().clone(), knitd.grpc_addr, shape);
    let mut bench = Bench {
        spec,
        config,
        knitd,
        fleet,
        ticks_per_s,
        progress,
    };
    // The first full push includes knitd's first load of the directory.
    let last_probe = spec.endpoints - 1;
    match bench
        .fleet
        .probe_full_push(last_probe, spec.connect_deadline)
    {
        Ok(_) => {
            report.startup_to_first_push_ms =
                Some((started.elapsed().as_secs_f64() * 1e4).round() / 10.0);
        }
        Err(e) => report
            .notes
            .push(format!("knitd never served its first config: {e}")),
    }

    for &proxies in &spec.proxy_scales {
        if report.startup_to_first_push_ms.is_none() {
            break;
        }
        let mut scale = ScaleReport {
            proxies,
            ..Default::default()
        };
        let outcome = bench.measure_scale(proxies, &mut scale);
        let tracker = &bench.fleet.tracker;
        scale.responses_decoded = tracker.responses.load(Ordering::Relaxed);
        scale.mismatched_responses = tracker.mismatched.load(Ordering::Relaxed);
        scale.stream_errors = tracker.stream_errors.load(Ordering::Relaxed);
        scale.reconnects = tracker.reconnects.load(Ordering::Relaxed);
        scale.first_stream_error = tracker
            .first_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let failed = outcome.is_err();
        if let Err(error) = outcome {
            (bench.progress)(&format!("{proxies} proxies: stopped: {error}"));
            scale.error = Some(error.to_string());
        }
        report.scales.push(scale);
        if failed {
            break;
        }
    }

    report.knitd_log_problems = bench.knitd.log_problems(20);
    let Bench {
        fleet, mut knitd, ..
    } = bench;
    fleet.shutdown();
    knitd.stop();
    drop(runtime);
    report.notes.push(format!(
        "knitd ran as its own process on 127.0.0.1 polling its directory every {} ms \
         (--poll-interval-ms), so \"change → last ACK\" includes up to one poll interval \
         of waiting; the fan-out column starts at the first proxy's receipt instead. The \
         simulated proxies share the machine with knitd; their CPU is given as bench cores.",
        spec.poll_interval.as_millis()
    ));
    Ok(report)
}
