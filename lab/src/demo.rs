//! `knit-lab demo`: the newcomer's first command. Builds a three-pod mesh,
//! sends traffic through it, shows the evidence of every hop, scales the
//! backend and shows the change arrive — then cleans up, also on Ctrl-C.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::client::{ClientReport, ClientSpec};
use crate::error::{LabError, Result};
use crate::lab::{KNITD_GRPC_ADDR, Lab, ShutdownHandle};
use crate::process::{self, find_tool};
use crate::spec::{PodSpec, ServiceSpec};
use crate::wait::wait_until;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

type Slot = Arc<Mutex<Option<ShutdownHandle>>>;

/// Runs the demo and returns the process exit code (0 success, 1 failure,
/// 130 interrupted).
pub fn run() -> i32 {
    let slot: Slot = Arc::new(Mutex::new(None));
    if let Err(e) = install_signal_handler(slot.clone()) {
        eprintln!("✘ {e}");
        return 1;
    }
    match demo(&slot) {
        Ok(()) => 0,
        Err(e) => {
            // Ctrl-C reaches the lab's processes too, so a failure may just
            // be its echo; the signal thread then owns the exit.
            thread::sleep(Duration::from_millis(200));
            if INTERRUPTED.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_secs(30));
                return 130;
            }
            eprintln!("\n✘ demo failed: {e}");
            1
        }
    }
}

/// Blocks SIGINT/SIGTERM in every thread and waits for them in one thread,
/// which tears the lab down and exits 130.
fn install_signal_handler(slot: Slot) -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    // Threads inherit the mask, so this must come before any thread is
    // started; child processes get a clean mask from std's spawn.
    set.thread_block()
        .map_err(|e| LabError::io("blocking SIGINT/SIGTERM", std::io::Error::from(e)))?;
    thread::Builder::new()
        .name("knit-lab-signals".to_string())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!(
                "\n{sig} received: stopping the lab's processes and deleting its namespaces..."
            );
            let handle = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(handle) = handle
                && let Err(e) = handle.shutdown()
            {
                eprintln!("knit-lab: cleanup: {e}");
            }
            std::process::exit(130);
        })
        .map_err(|e| LabError::io("starting the signal thread", e))?;
    Ok(())
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn demo(slot: &Slot) -> Result<()> {
    println!("knit-lab demo: a Knit mesh on this machine, in network namespaces");
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    rebuild_binaries()?;
    ensure_tools()?;

    heading("Starting the lab");
    let mut lab = Lab::new("demo")?;
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(lab.shutdown_handle());
    let result = steps(&mut lab);
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("\nlast lines of the lab's logs:\n{}", lab.logs_tail(15));
    }
    result
}

/// Under `cargo run`, rebuilds the other binaries so the demo never runs
/// stale ones.
fn rebuild_binaries() -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    heading("Building the Knit binaries (cargo build --workspace --bins)");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--workspace", "--bins"]);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    if exe_dir
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "release")
    {
        cmd.arg("--release");
    }
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .filter(|p| p.join("Cargo.toml").exists())
    {
        cmd.current_dir(workspace);
    }
    run_visible(cmd)
}

/// Installs the system tools with apt-get when they are missing and it can.
fn ensure_tools() -> Result<()> {
    let needed = [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "setpriv",
        "sysctl",
    ];
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|t| find_tool(t).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let Ok(apt) = find_tool("apt-get") else {
        return Err(find_tool(missing[0])
            .err()
            .unwrap_or(LabError::ToolMissing {
                tool: missing[0].to_string(),
                searched: "$PATH".to_string(),
            }));
    };
    heading(&format!(
        "Installing iproute2 iptables util-linux procps with apt-get (missing: {})",
        missing.join(", ")
    ));
    let install = || {
        let mut cmd = Command::new(&apt);
        cmd.args([
            "install",
            "-y",
            "iproute2",
            "iptables",
            "util-linux",
            "procps",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    if run_visible(install()).is_err() {
        // Fresh machines have no package lists yet.
        let mut update = Command::new(&apt);
        update.arg("update");
        run_visible(update)?;
        run_visible(install())?;
    }
    Ok(())
}

fn run_visible(mut cmd: Command) -> Result<()> {
    let command = process::describe(&cmd);
    let status = cmd.status().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(LabError::CommandFailed {
            command,
            status: status.to_string(),
            output: "see its output above".to_string(),
        })
    }
}

fn steps(lab: &mut Lab) -> Result<()> {
    println!(
        "    node namespace {}  (bridge knit0, 198.18.0.1/16)",
        lab.node_netns()
    );
    println!("    config and logs in {}", lab.dir().display());
    let t = Instant::now();
    lab.start_knitd()?;
    println!(
        "    knitd        ready, discovery on {KNITD_GRPC_ADDR}  ({:.1} s)",
        secs(t)
    );
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(VIP)
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )?;
    println!("    service      backend  {VIP}:80 → app=backend :8080");
    for (name, app) in [
        ("frontend", "frontend"),
        ("backend-1", "backend"),
        ("backend-2", "backend"),
    ] {
        add_demo_pod(lab, name, app)?;
    }
    let backends = ["backend-1", "backend-2"];
    wait_endpoints(lab, &backends)?;

    heading("Step 1: frontend calls http://backend/ 20 times");
    let pods = ["frontend", "backend-1", "backend-2"];
    let before = Evidence::collect(lab, &pods);
    let first = lab.run_client("frontend", &ClientSpec::new("http://backend/").count(20))?;
    check_report("step 1", &first, 20, &backends)?;
    println!("    answered by  {}", answered(&first));
    // Counters are bumped as responses complete; give them a moment to settle.
    let _ = wait_until(
        "frontend's outbound counter",
        Duration::from_secs(3),
        || {
            Ok(Evidence::collect(lab, &["frontend"]).delta(
                &before,
                "frontend",
                "outbound.http.requests",
            ) >= Some(20))
        },
    );
    let after = Evidence::collect(lab, &pods);
    println!(
        "    evidence, hop by hop (iptables counts the app's connection; proxies share one mutual-TLS HTTP/2 connection per peer):"
    );
    after.print_redirects(&before, "frontend");
    after.print_counter(&before, "frontend", "outbound.http.requests");
    after.print_counter(&before, "frontend", "upstream.mesh.connections_opened");
    after.print_counter(&before, "frontend", "upstream.mesh.tls_connections_opened");
    for b in backends {
        after.print_counter(&before, b, "mesh.requests");
    }

    heading("Step 2: scale backend to 3 replicas");
    let pod = add_demo_pod(lab, "backend-3", "backend")?;
    let all = ["backend-1", "backend-2", "backend-3"];
    wait_endpoints(lab, &all)?;
    let applied = pod.registered_at.elapsed();
    println!(
        "    wrote {}; frontend's proxy listed 3 endpoints {:.1} s later",
        crate::pod::workload_entry_file("backend-3"),
        applied.as_secs_f64()
    );
    let second = lab.run_client("frontend", &ClientSpec::new("http://backend/").count(30))?;
    check_report("step 2", &second, 30, &all)?;
    println!("    30 requests answered by  {}", answered(&second));

    heading("Summary");
    println!(
        "    ✔ {}/{} requests through the mesh; {} replicas; config change applied in {:.1} s",
        first.ok + second.ok,
        first.sent + second.sent,
        all.len(),
        applied.as_secs_f64()
    );
    println!(
        "    (the lab is removed now; `knit-lab cleanup` removes leftovers of an interrupted run)"
    );
    Ok(())
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn add_demo_pod(lab: &mut Lab, name: &str, app: &str) -> Result<crate::lab::Pod> {
    let t = Instant::now();
    let pod = lab.add_pod(
        PodSpec::new(name)
            .label("app", app)
            .service_account(app)
            .sidecar(true),
    )?;
    println!(
        "    pod {name:<9} {:<13} app={app:<9} knit-init ✓  knit-proxy ready  ({:.1} s)",
        pod.ip.to_string(),
        secs(t)
    );
    Ok(pod)
}

/// Waits until the frontend proxy's config lists the addresses of all
/// `backends` (anywhere in the dump: its exact shape is the proxy's business).
fn wait_endpoints(lab: &Lab, backends: &[&str]) -> Result<()> {
    let ips: Vec<String> = backends
        .iter()
        .map(|b| lab.pod(b).map(|p| p.ip.to_string()))
        .collect::<Result<_>>()?;
    let what = format!("frontend's proxy to list {} backend endpoints", ips.len());
    wait_until(&what, CONFIG_TIMEOUT, || {
        let dump = lab.proxy_config_dump("frontend")?;
        let found = strings_in(&dump);
        let missing: Vec<&String> = ips
            .iter()
            .filter(|ip| !found.iter().any(|s| mentions(s, ip)))
            .collect();
        if missing.is_empty() {
            return Ok(true);
        }
        // An error (not `false`) so a timeout shows what the proxy had.
        let mut text = dump.to_string();
        text.truncate(400);
        Err(LabError::CheckFailed {
            what: format!("config_dump lacks {missing:?}"),
            detail: text,
        })
    })
}

/// Whether a config string is this address (alone or as `ip:port`).
fn mentions(s: &str, ip: &str) -> bool {
    s == ip || s.strip_prefix(ip).is_some_and(|rest| rest.starts_with(':'))
}

/// Every string and number in a JSON tree (the dump's exact shape is the
/// proxy's business; addresses appear as strings somewhere in it).
fn strings_in(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    out
}

fn check_report(step: &str, r: &ClientReport, want: u64, pods: &[&str]) -> Result<()> {
    if r.ok != want || r.sent != want {
        return Err(LabError::CheckFailed {
            what: format!("{step}: {}/{want} requests succeeded", r.ok),
            detail: format!(
                "statuses {:?}, x-knit-error {:?}, transport errors {:?}",
                r.statuses, r.knit_errors, r.errors
            ),
        });
    }
    let silent: Vec<&str> = pods
        .iter()
        .copied()
        .filter(|p| !r.by_pod.contains_key(*p))
        .collect();
    if !silent.is_empty() {
        return Err(LabError::CheckFailed {
            what: format!("{step}: {} never answered", silent.join(", ")),
            detail: format!("answers per pod: {:?}", r.by_pod),
        });
    }
    Ok(())
}

fn answered(r: &ClientReport) -> String {
    r.by_pod
        .iter()
        .map(|(pod, n)| format!("{pod} ×{n}"))
        .collect::<Vec<_>>()
        .join("   ")
}

/// Counters of each pod's proxy and REDIRECT rules at one moment. A counter
/// that cannot be read is shown as such, not guessed.
struct Evidence {
    stats: BTreeMap<String, std::result::Result<BTreeMap<String, u64>, String>>,
    redirects: BTreeMap<String, std::result::Result<BTreeMap<String, u64>, String>>,
}

impl Evidence {
    fn collect(lab: &Lab, pods: &[&str]) -> Evidence {
        let mut e = Evidence {
            stats: BTreeMap::new(),
            redirects: BTreeMap::new(),
        };
        for pod in pods {
            e.stats.insert(
                pod.to_string(),
                lab.proxy_stats(pod).map_err(|e| e.to_string()),
            );
            let redirects = lab.iptables_nat_rules(pod).map(|rules| {
                let mut m = BTreeMap::new();
                for r in rules.iter().filter(|r| r.is_redirect()) {
                    let key = match r.redirect_port() {
                        Some(port) => format!("{} → :{port}", r.chain),
                        None => r.key(),
                    };
                    *m.entry(key).or_insert(0) += r.packets;
                }
                m
            });
            e.redirects
                .insert(pod.to_string(), redirects.map_err(|e| e.to_string()));
        }
        e
    }

    fn delta(&self, before: &Evidence, pod: &str, counter: &str) -> Option<u64> {
        let now = self.stats.get(pod)?.as_ref().ok()?.get(counter)?;
        let then = before
            .stats
            .get(pod)
            .and_then(|s| s.as_ref().ok())
            .and_then(|s| s.get(counter))
            .copied()
            .unwrap_or(0);
        Some(now.saturating_sub(then))
    }

    fn print_counter(&self, before: &Evidence, pod: &str, counter: &str) {
        let value = match (self.delta(before, pod, counter), self.stats.get(pod)) {
            (Some(d), _) => format!("+{d}"),
            (None, Some(Err(e))) => format!("n/a ({e})"),
            _ => "n/a (counter not reported)".to_string(),
        };
        println!("      {pod:<9}  proxy     {counter:<36} {value}");
    }

    fn print_redirects(&self, before: &Evidence, pod: &str) {
        match self.redirects.get(pod) {
            Some(Ok(rules)) => {
                let then = before.redirects.get(pod).and_then(|r| r.as_ref().ok());
                let mut shown = false;
                for (key, now) in rules {
                    let d = now.saturating_sub(then.and_then(|t| t.get(key)).copied().unwrap_or(0));
                    if d > 0 {
                        let unit = if d == 1 { "connection" } else { "connections" };
                        println!("      {pod:<9}  iptables  {key:<36} +{d} {unit}");
                        shown = true;
                    }
                }
                if !shown {
                    println!("      {pod:<9}  iptables  no REDIRECT rule counted a new connection");
                }
            }
            Some(Err(e)) => println!("      {pod:<9}  iptables  n/a ({e})"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_matching() {
        assert!(mentions("198.18.0.11", "198.18.0.11"));
        assert!(mentions("198.18.0.11:8080", "198.18.0.11"));
        assert!(!mentions("198.18.0.110", "198.18.0.11"));
        assert!(!mentions("198.18.0.110:80", "198.18.0.11"));
        let v = serde_json::json!({"endpoints": [{"service": "backend", "addrs": ["198.18.0.12:8080", {"ip": "198.18.0.13"}]}]});
        let s = strings_in(&v["endpoints"]);
        assert!(s.iter().any(|x| mentions(x, "198.18.0.12")));
        assert!(s.iter().any(|x| mentions(x, "198.18.0.13")));
    }
}
