//! Network namespaces through `ip`: the node namespace with its bridge, pod
//! namespaces wired to it by veth pairs, and listing/emptying namespaces.
//!
//! Every veth pair is created from inside the node namespace with its peer
//! moved straight into the pod, so no interface ever appears in the host's
//! namespace. Dual-stack labs add IPv6 from RFC 5180's benchmarking prefix
//! 2001:2::/48 only: the bridge 2001:2::1/64, pods 2001:2::A:B for
//! 198.18.A.B, service VIPs 2001:2:0:1::A:B for 198.19.A.B.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{LabError, Result};
use crate::process::{Tools, run_checked, signal};

/// The bridge in the node namespace that every pod's veth is attached to.
pub const BRIDGE: &str = "knit0";
/// The bridge's own MAC address, set when it is created (locally
/// administered, unicast). A bridge left to choose takes the lowest MAC of
/// its ports and changes it whenever a pod joins with a lower one; pods
/// still holding the old address in their neighbour cache then lose
/// everything they send to the node (knitd) until that entry expires,
/// tens of seconds later.
pub const NODE_MAC: &str = "02:6b:6e:69:74:01";
/// The node's address on the bridge; every pod's default gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of the pod network 198.18.0.0/16.
pub const POD_PREFIX_LEN: u8 = 16;
/// The node's IPv6 address on the bridge (dual-stack labs).
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
/// Prefix length of the IPv6 pod network 2001:2::/64.
pub const POD_PREFIX6_LEN: u8 = 64;

/// An octet's decimal digits read as hex (12 → 0x12), so an IPv6 twin
/// reads like its IPv4 address.
fn dec_as_hex(n: u8) -> u16 {
    let n = u16::from(n);
    (n / 100) << 8 | (n / 10 % 10) << 4 | (n % 10)
}

/// The IPv6 address of the pod at 198.18.A.B: 2001:2::A:B.
pub fn pod_ipv6(ip: Ipv4Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, dec_as_hex(o[2]), dec_as_hex(o[3]))
}

/// The IPv6 VIP twin of 198.19.A.B: 2001:2:0:1::A:B.
pub fn vip_ipv6(vip: Ipv4Addr) -> Ipv6Addr {
    let o = vip.octets();
    Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, dec_as_hex(o[2]), dec_as_hex(o[3]))
}

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

/// Turns off IPv6 duplicate address detection for every interface made in
/// namespace `ns` from now on, so addresses are usable at once instead of
/// "tentative" for a second or more. Only the lab's own namespace is touched.
fn disable_dad(tools: &Tools, ns: &str) -> Result<()> {
    let sysctl = crate::process::find_tool("sysctl")?;
    let mut cmd = exec_in(tools, ns, &sysctl);
    cmd.args([
        "-q",
        "-w",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
    run_checked(cmd, IP_TIMEOUT).map(drop)
}

/// Creates the node namespace: loopback up and the bridge at 198.18.0.1/16
/// (and 2001:2::1/64 when dual-stack).
pub(crate) fn setup_node(tools: &Tools, node: &str, dual_stack: bool) -> Result<()> {
    let addr = format!("{NODE_IP}/{POD_PREFIX_LEN}");
    if dual_stack {
        disable_dad(tools, node)?;
    }
    ip(tools, &["-n", node, "link", "set", "lo", "up"])?;
    let mut add = vec![
        "-n", node, "link", "add", BRIDGE, "address", NODE_MAC, "type", "bridge",
    ];
    if dual_stack {
        // Without an MLD querier, snooping may stop forwarding the
        // neighbour solicitations IPv6 needs; the lab bridge floods instead.
        add.extend(["mcast_snooping", "0"]);
    }
    ip(tools, &add)?;
    ip(tools, &["-n", node, "addr", "add", &addr, "dev", BRIDGE])?;
    if dual_stack {
        let addr6 = format!("{NODE_IPV6}/{POD_PREFIX6_LEN}");
        ip(
            tools,
            &["-n", node, "addr", "add", &addr6, "dev", BRIDGE, "nodad"],
        )?;
    }
    ip(tools, &["-n", node, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Wires an existing pod namespace to the node: a veth whose node end
/// `node_if` joins the bridge and whose pod end is `eth0` with `addr`/16
/// (and `addr6`/64), plus loopback and default routes via the node.
pub(crate) fn setup_pod(
    tools: &Tools,
    node: &str,
    pod: &str,
    node_if: &str,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
) -> Result<()> {
    let cidr = format!("{addr}/{POD_PREFIX_LEN}");
    let gw = NODE_IP.to_string();
    if addr6.is_some() {
        // Before eth0 arrives, so it inherits the setting.
        disable_dad(tools, pod)?;
    }
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
    if let Some(addr6) = addr6 {
        let cidr6 = format!("{addr6}/{POD_PREFIX6_LEN}");
        let gw6 = NODE_IPV6.to_string();
        ip(
            tools,
            &["-n", pod, "addr", "add", &cidr6, "dev", "eth0", "nodad"],
        )?;
        ip(
            tools,
            &["-n", pod, "-6", "route", "add", "default", "via", &gw6],
        )?;
    }
    Ok(())
}

/// Whether `addr` is on `dev` in `ns` and usable: present, not tentative
/// (duplicate address detection pending) and not failed.
pub(crate) fn ipv6_ready(tools: &Tools, ns: &str, dev: &str, addr: Ipv6Addr) -> Result<bool> {
    let out = ip(tools, &["-n", ns, "-6", "-o", "addr", "show", "dev", dev])?;
    Ok(ipv6_line_ready(&out, addr))
}

fn ipv6_line_ready(out: &str, addr: Ipv6Addr) -> bool {
    let want = format!("inet6 {addr}/");
    out.lines()
        .any(|l| l.contains(&want) && !l.contains("tentative") && !l.contains("dadfailed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_read_like_their_ipv4_addresses() {
        assert_eq!(
            pod_ipv6(Ipv4Addr::new(198, 18, 0, 12)).to_string(),
            "2001:2::12"
        );
        assert_eq!(
            pod_ipv6(Ipv4Addr::new(198, 18, 1, 255)).to_string(),
            "2001:2::1:255"
        );
        assert_eq!(pod_ipv6(NODE_IP), NODE_IPV6);
        assert_eq!(
            vip_ipv6(Ipv4Addr::new(198, 19, 0, 10)).to_string(),
            "2001:2:0:1::10"
        );
        assert_eq!(
            vip_ipv6(Ipv4Addr::new(198, 19, 2, 3)).to_string(),
            "2001:2:0:1::2:3"
        );
        assert_eq!(dec_as_hex(255), 0x255);
        assert_eq!(dec_as_hex(0), 0);
    }

    #[test]
    fn ipv6_readiness_from_ip_output() {
        let addr: Ipv6Addr = "2001:2::12".parse().unwrap();
        let tentative =
            "2: eth0    inet6 2001:2::12/64 scope global tentative \\       valid_lft forever";
        let ready = "2: eth0    inet6 2001:2::12/64 scope global \\       valid_lft forever";
        let other = "2: eth0    inet6 2001:2::120/64 scope global \\       valid_lft forever";
        assert!(!ipv6_line_ready(tentative, addr));
        assert!(ipv6_line_ready(ready, addr));
        assert!(!ipv6_line_ready(other, addr));
        assert!(!ipv6_line_ready("", addr));
    }

    #[test]
    fn netns_list_parsing_keeps_names_only() {
        let out = "knl-12-0-web (id: 3)\nknl-12-0-node (id: 2)\nplain\n\n";
        assert_eq!(
            parse_netns_list(out),
            vec!["knl-12-0-web", "knl-12-0-node", "plain"]
        );
    }
}
