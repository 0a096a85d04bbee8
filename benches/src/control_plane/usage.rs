//! knitd's and the benchmark process's CPU, and knitd's memory, over a
//! measurement window.

use std::time::{Duration, Instant};

use super::knitd::KnitdProcess;
use super::report::Usage;
use crate::Result;
use crate::procfs::{self_cpu, system_cpu};

/// How often knitd's memory is sampled inside a measurement window.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// knitd's and this process's CPU time and knitd's memory over a window.
pub(crate) struct UsageMeter {
    started: Instant,
    knitd_ticks: u64,
    self_ticks: u64,
    /// The whole machine's task time (user, nice, system).
    machine_ticks: u64,
    rss_max_kib: u64,
    last_sample: Instant,
}

impl UsageMeter {
    pub(crate) fn start(knitd: &KnitdProcess) -> Result<UsageMeter> {
        knitd.reset_peak()?;
        let rss = knitd.memory()?.vm_rss_kib;
        Ok(UsageMeter {
            started: Instant::now(),
            knitd_ticks: knitd.cpu_ticks()?,
            self_ticks: self_cpu()?.own,
            machine_ticks: system_cpu()?.task_time(),
            rss_max_kib: rss,
            last_sample: Instant::now(),
        })
    }

    /// Samples knitd's RSS if a sample is due.
    pub(crate) fn sample(&mut self, knitd: &KnitdProcess) -> Result<()> {
        if self.last_sample.elapsed() >= SAMPLE_EVERY {
            self.last_sample = Instant::now();
            self.rss_max_kib = self.rss_max_kib.max(knitd.memory()?.vm_rss_kib);
        }
        Ok(())
    }

    pub(crate) fn finish(self, knitd: &KnitdProcess, ticks_per_s: u64) -> Result<Usage> {
        let seconds = self.started.elapsed().as_secs_f64();
        let memory = knitd.memory()?;
        let cores = |ticks: u64| ticks as f64 / ticks_per_s as f64 / seconds.max(1e-9);
        let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
        let knitd_ticks = knitd.cpu_ticks()?.saturating_sub(self.knitd_ticks);
        let self_ticks = self_cpu()?.own.saturating_sub(self.self_ticks);
        let machine_ticks = system_cpu()?.task_time().saturating_sub(self.machine_ticks);
        // Whatever else ran on the machine meanwhile (other benchmarks,
        // builds): it competes with knitd for the same cores.
        let other_ticks = machine_ticks.saturating_sub(knitd_ticks + self_ticks);
        let thousandths = |value: f64| (value * 1000.0).round() / 1000.0;
        Ok(Usage {
            seconds: (seconds * 100.0).round() / 100.0,
            knitd_cores: thousandths(cores(knitd_ticks)),
            bench_cores: thousandths(cores(self_ticks)),
            other_cores: thousandths(cores(other_ticks)),
            knitd_rss_mib: mib(memory.vm_rss_kib),
            knitd_rss_max_mib: mib(self.rss_max_kib.max(memory.vm_rss_kib)),
            knitd_peak_rss_mib: mib(memory.vm_hwm_kib),
        })
    }
}
