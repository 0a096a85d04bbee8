//! What the harness reads from `/proc`: a process's CPU time
//! (`/proc/<pid>/stat` utime + stime, in clock ticks) and memory
//! (`/proc/<pid>/status` VmRSS, RssAnon, VmHWM), resetting the peak
//! (`5` into `/proc/<pid>/clear_refs`), the machine's CPU time by kind
//! (`/proc/stat`), and a description of the machine.

use std::path::Path;
use std::process::Command;

use crate::{BenchError, Result};

/// CPU time of a process in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcCpu {
    /// utime + stime: the process's own threads, exited ones included.
    pub own: u64,
    /// cutime + cstime: children it has waited for.
    pub children: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name may hold spaces
/// and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> std::result::Result<ProcCpu, String> {
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| "no `)` after the command name".to_string())?;
    // `rest` starts at field 3 (state); utime is field 14.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> std::result::Result<u64, String> {
        let s = fields
            .get(n - 3)
            .ok_or_else(|| format!("only {} fields after the name", fields.len()))?;
        s.parse::<u64>()
            .map_err(|e| format!("field {n} {s:?}: {e}"))
    };
    // cutime and cstime are signed in the kernel's format; they are never
    // negative in practice, and a negative one is reported as an error.
    Ok(ProcCpu {
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// The CPU time of process `pid`.
pub fn proc_cpu(pid: u32) -> Result<ProcCpu> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    parse_stat(&text).map_err(|reason| BenchError::parse(path, reason))
}

/// The CPU time of this process (and its reaped children).
pub fn self_cpu() -> Result<ProcCpu> {
    proc_cpu(std::process::id())
}

/// Memory of a process in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcMem {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    /// The peak resident size since start or the last reset.
    pub vm_hwm_kib: u64,
}

/// Parses the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> std::result::Result<ProcMem, String> {
    let kib = |key: &str| -> std::result::Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| format!("no {key} line"))?;
        let mut parts = line.split_whitespace();
        let n = parts
            .next()
            .ok_or_else(|| format!("{key} has no value"))?
            .parse::<u64>()
            .map_err(|e| format!("{key}: {e}"))?;
        match parts.next() {
            Some("kB") | None => Ok(n),
            Some(unit) => Err(format!("{key}: unexpected unit {unit:?}")),
        }
    };
    Ok(ProcMem {
        vm_rss_kib: kib("VmRSS")?,
        rss_anon_kib: kib("RssAnon")?,
        vm_hwm_kib: kib("VmHWM")?,
    })
}

/// The memory of process `pid`.
pub fn proc_mem(pid: u32) -> Result<ProcMem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    parse_status(&text).map_err(|reason| BenchError::parse(path, reason))
}

/// Resets the peak resident size (VmHWM) of `pid` to its current size.
pub fn reset_peak(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, b"5").map_err(|e| BenchError::io(format!("writing 5 to {path}"), e))
}

/// The arguments of `pid`'s command line.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The command name of `pid` (`/proc/<pid>/comm`), if it is running.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// PIDs of every process whose command name starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).is_some_and(|c| c.starts_with(prefix)))
        .collect()
}

/// The machine's CPU time by kind, in clock ticks, summed over CPUs (the
/// first line of `/proc/stat`; guest time is already in user and nice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemCpu {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl SystemCpu {
    /// Time spent running tasks (user, nice, system), which is what the
    /// processes' own utime and stime add up to.
    pub fn task_time(&self) -> u64 {
        self.user + self.nice + self.system
    }

    /// Ticks of each kind between `earlier` and `self`.
    pub fn since(&self, earlier: &SystemCpu) -> SystemCpu {
        SystemCpu {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// Parses the text of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> std::result::Result<SystemCpu, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| "no `cpu` line".to_string())?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().map_err(|e| format!("cpu line {f:?}: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    if v.len() < 8 {
        return Err(format!(
            "cpu line has {} values, expected 8 or more",
            v.len()
        ));
    }
    Ok(SystemCpu {
        user: v[0],
        nice: v[1],
        system: v[2],
        idle: v[3],
        iowait: v[4],
        irq: v[5],
        softirq: v[6],
        steal: v[7],
    })
}

/// The machine's CPU time now.
pub fn system_cpu() -> Result<SystemCpu> {
    let text =
        std::fs::read_to_string("/proc/stat").map_err(|e| BenchError::io("/proc/stat", e))?;
    parse_proc_stat(&text).map_err(|reason| BenchError::parse("/proc/stat", reason))
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| BenchError::io("running getconf CLK_TCK", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 && out.status.success() => Ok(n),
        _ => Err(BenchError::parse(
            "getconf CLK_TCK",
            format!("{:?}", text.trim()),
        )),
    }
}

/// What the figures were measured on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: String,
    pub clock_ticks: u64,
}

/// Describes this machine from `/proc`; what cannot be read stays empty.
pub fn machine(clock_ticks: u64) -> Machine {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    Machine {
        cpu_model,
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        memory_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        clock_ticks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime ...
        let text = "4242 (knit proxy) (x)) S 1 2 3 0 -1 4194560 10 0 0 0 250 75 8 2 20 0 3 0";
        assert_eq!(
            parse_stat(text),
            Ok(ProcCpu {
                own: 325,
                children: 10
            })
        );
        assert!(parse_stat("4242 knit S 1").is_err());
        assert!(parse_stat("4242 (k) S 1 2 3").is_err());
        assert!(parse_stat("4242 (k) S 1 2 3 0 -1 1 1 0 0 0 x 1 0 0").is_err());
    }

    #[test]
    fn the_running_process_can_be_read() {
        let cpu = self_cpu().expect("own stat");
        let mem = proc_mem(std::process::id()).expect("own status");
        assert!(
            mem.vm_rss_kib > 0 && mem.vm_hwm_kib >= mem.vm_rss_kib / 2,
            "{mem:?}"
        );
        assert!(cpu.own < u64::MAX);
        assert!(clock_ticks().expect("CLK_TCK") > 0);
        let m = machine(100);
        assert!(m.cpus >= 1, "{m:?}");
    }

    #[test]
    fn status_lines() {
        let text =
            "Name:\tknit-proxy\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    4096 kB\n";
        assert_eq!(
            parse_status(text),
            Ok(ProcMem {
                vm_rss_kib: 10240,
                rss_anon_kib: 4096,
                vm_hwm_kib: 20480
            })
        );
        assert!(parse_status("VmRSS:\t1 kB\n").is_err());
        assert!(parse_status("VmRSS:\t1 MB\nRssAnon: 1 kB\nVmHWM: 1 kB\n").is_err());
    }

    #[test]
    fn proc_stat_cpu_line() {
        let text = "cpu  100 5 50 1000 7 1 9 3 0 0\ncpu0 50 2 25 500 3 0 4 1 0 0\nintr 1\n";
        let a = parse_proc_stat(text).unwrap();
        assert_eq!(
            (a.user, a.softirq, a.steal, a.task_time()),
            (100, 9, 3, 155)
        );
        let b = SystemCpu {
            user: 130,
            system: 60,
            ..a
        };
        let d = b.since(&a);
        assert_eq!((d.user, d.system, d.nice, d.task_time()), (30, 10, 0, 40));
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err());
    }
}
