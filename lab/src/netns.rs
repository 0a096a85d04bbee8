//! Network namespaces through `ip`: the node namespace with its bridge, pod
//! namespaces wired to it by veth pairs, and listing/emptying namespaces.
//!
//! Every veth pair is created from inside the node namespace with its peer
//! moved straight into the pod, so no interface ever appears in the host's
//! namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{LabError, Result};
use crate::process::{Tools, run_checked, signal};

/// The bridge in the node namespace that every pod's veth is attached to.
pub const BRIDGE: &str = "knit0";
/// The node's address on the bridge; every pod's default gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of the pod network 198.18.0.0/16.
pub const POD_PREFIX_LEN: u8 = 16;

/// `ip` never legitimately takes long; anything slower is a wedged kernel call.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn ip(tools: &Tools, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(&tools.ip);
    cmd.args(args);
    run_checked(cmd, IP_TIMEOUT)
}

/// A command that runs `program args...` inside namespace `ns` via
/// `ip netns exec`, which also bind-mounts `/etc/netns/<ns>/*` over `/etc`.
pub(crate) fn exec_in(tools: &Tools, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(&tools.ip);
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

pub(crate) fn add(tools: &Tools, ns: &str) -> Result<()> {
    ip(tools, &["netns", "add", ns]).map(drop)
}

/// Deletes a namespace; one that is already gone is not an error.
pub(crate) fn delete(tools: &Tools, ns: &str) -> Result<()> {
    match ip(tools, &["netns", "delete", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !list(tools)?.iter().any(|n| n == ns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Names of all named network namespaces on the machine.
pub(crate) fn list(tools: &Tools) -> Result<Vec<String>> {
    let out = ip(tools, &["netns", "list"])?;
    Ok(parse_netns_list(&out))
}

/// `ip netns list` prints `name` or `name (id: N)` per line.
pub(crate) fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// PIDs of every process whose network namespace is `ns`.
pub(crate) fn pids(tools: &Tools, ns: &str) -> Result<Vec<u32>> {
    let out = ip(tools, &["netns", "pids", ns])?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<u32>()
                .map_err(|e| LabError::parse(format!("`ip netns pids {ns}` output {l:?}"), e))
        })
        .collect()
}

/// SIGKILLs every process in `ns` (ones the lab did not start itself, such
/// as strays of a crashed run) and returns their PIDs.
pub(crate) fn kill_all_in(tools: &Tools, ns: &str) -> Result<Vec<u32>> {
    let pids = pids(tools, ns)?;
    let own = std::process::id();
    let victims: Vec<u32> = pids.into_iter().filter(|&p| p != own).collect();
    for &pid in &victims {
        signal(pid, Signal::SIGKILL);
    }
    Ok(victims)
}

/// Creates the node namespace: loopback up and the bridge at 198.18.0.1/16.
pub(crate) fn setup_node(tools: &Tools, node: &str) -> Result<()> {
    let addr = format!("{NODE_IP}/{POD_PREFIX_LEN}");
    ip(tools, &["-n", node, "link", "set", "lo", "up"])?;
    ip(
        tools,
        &["-n", node, "link", "add", BRIDGE, "type", "bridge"],
    )?;
    ip(tools, &["-n", node, "addr", "add", &addr, "dev", BRIDGE])?;
    ip(tools, &["-n", node, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Wires an existing pod namespace to the node: a veth whose node end
/// `node_if` joins the bridge and whose pod end is `eth0` with `addr`/16,
/// plus loopback and a default route via the node.
pub(crate) fn setup_pod(
    tools: &Tools,
    node: &str,
    pod: &str,
    node_if: &str,
    addr: Ipv4Addr,
) -> Result<()> {
    let cidr = format!("{addr}/{POD_PREFIX_LEN}");
    let gw = NODE_IP.to_string();
    ip(
        tools,
        &[
            "-n", node, "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns",
            pod,
        ],
    )?;
    ip(
        tools,
        &["-n", node, "link", "set", node_if, "master", BRIDGE],
    )?;
    ip(tools, &["-n", node, "link", "set", node_if, "up"])?;
    ip(tools, &["-n", pod, "link", "set", "lo", "up"])?;
    ip(tools, &["-n", pod, "addr", "add", &cidr, "dev", "eth0"])?;
    ip(tools, &["-n", pod, "link", "set", "eth0", "up"])?;
    ip(tools, &["-n", pod, "route", "add", "default", "via", &gw])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_list_parsing_keeps_names_only() {
        let out = "knl-12-0-web (id: 3)\nknl-12-0-node (id: 2)\nplain\n\n";
        assert_eq!(
            parse_netns_list(out),
            vec!["knl-12-0-web", "knl-12-0-node", "plain"]
        );
    }
}
