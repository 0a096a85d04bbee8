//! Looks at the network namespace to resolve `--ipv6 auto`.

use std::net::Ipv6Addr;
use std::process::{Command, Stdio};

use crate::error::InitError;
use crate::family::INBOUND_DELIVERY_SOURCE_V6;
use crate::iptables::{describe_status, spawn_error, trimmed_stderr};

/// Answers whether the namespace has IPv6 to capture, and provides the
/// IPv6 delivery source address.
pub trait AddressProbe {
    /// Whether some interface holds a global-scope IPv6 address.
    fn has_global_ipv6(&self) -> Result<bool, InitError>;

    /// Puts `::6/128` on `lo` (idempotent). The proxy delivers inbound IPv6
    /// connections to its app from `::6`, which, unlike 127.0.0.6, is not a
    /// loopback address and must be assigned before it can be bound.
    fn ensure_delivery_source_v6(&self) -> Result<(), InitError>;
}

/// Asks iproute2: `ip -6 -o addr show scope global`. Read-only; it only dumps addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpCommand;

const IP_ARGS: [&str; 6] = ["-6", "-o", "addr", "show", "scope", "global"];

impl AddressProbe for IpCommand {
    fn has_global_ipv6(&self) -> Result<bool, InitError> {
        let output = Command::new("ip")
            .args(IP_ARGS)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error("ip", "iproute2", source))?;
        if !output.status.success() {
            return Err(InitError::ProbeFailed {
                command: format!("ip {}", IP_ARGS.join(" ")),
                status: describe_status(output.status),
                stderr: trimmed_stderr(&output),
            });
        }
        Ok(!global_ipv6_addresses(&String::from_utf8_lossy(&output.stdout)).is_empty())
    }

    fn ensure_delivery_source_v6(&self) -> Result<(), InitError> {
        let args = ["-6", "addr", "replace", "::6/128", "dev", "lo", "nodad"];
        let output = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error("ip", "iproute2", source))?;
        if !output.status.success() {
            return Err(InitError::ProbeFailed {
                command: format!("ip {}", args.join(" ")),
                status: describe_status(output.status),
                stderr: trimmed_stderr(&output),
            });
        }
        Ok(())
    }
}

/// The addresses in `ip -6 -o addr show scope global` output that count as
/// the namespace having IPv6.
///
/// `::6` is left out: it is the proxy's inbound delivery source, which Linux
/// reports as global scope once it is put on `lo`, yet it says nothing about
/// the pod having IPv6 connectivity.
pub fn global_ipv6_addresses(output: &str) -> Vec<Ipv6Addr> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet6")?;
            let cidr = words.next()?;
            let address = cidr.split('/').next()?;
            address.parse::<Ipv6Addr>().ok()
        })
        .filter(|address| *address != INBOUND_DELIVERY_SOURCE_V6)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_addresses_are_read_from_one_line_output() {
        let output = "\
1: lo    inet6 ::6/128 scope global nodad \\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::5/64 scope global \\       valid_lft forever preferred_lft forever
3: eth1    inet6 fd00::1/8 scope global dynamic mngtmpaddr \\       valid_lft 86000sec
";
        assert_eq!(
            global_ipv6_addresses(output),
            [
                "2001:db8::5".parse::<Ipv6Addr>().expect("valid"),
                "fd00::1".parse().expect("valid")
            ]
        );
        for nothing in [
            "",
            "1: lo    inet6 ::6/128 scope global nodad\n",
            "garbage\n",
        ] {
            assert!(global_ipv6_addresses(nothing).is_empty(), "{nothing:?}");
        }
    }
}
