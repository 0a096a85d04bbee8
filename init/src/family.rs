//! The two address families knit-init captures, and what differs between them.
//!
//! The rule model is the same for both; only addresses and tool names change.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::rules::Cidr;

/// An IP address family, each with its own netfilter tables and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: iptables.
    Ipv4,
    /// IPv6: ip6tables.
    Ipv6,
}

/// Where the proxy connects from when it delivers an inbound connection to the
/// app (IPv4). A fixed loopback source is what lets the capture rules tell this
/// delivery apart from the proxy calling its own pod as a client.
pub const INBOUND_DELIVERY_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// The IPv6 counterpart of [`INBOUND_DELIVERY_SOURCE_V4`].
pub const INBOUND_DELIVERY_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

impl Family {
    /// Both families, IPv4 first: the order they are applied and printed in.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// "IPv4" or "IPv6".
    pub fn label(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// The save tool of the family, as found in PATH.
    pub fn save_tool(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-save",
            Family::Ipv6 => "ip6tables-save",
        }
    }

    /// The restore tool of the family, as found in PATH.
    pub fn restore_tool(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }

    /// The save tool that always talks to the given backend.
    pub fn backend_save_tool(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Family::Ipv4, Backend::Legacy) => "iptables-legacy-save",
            (Family::Ipv4, Backend::Nft) => "iptables-nft-save",
            (Family::Ipv6, Backend::Legacy) => "ip6tables-legacy-save",
            (Family::Ipv6, Backend::Nft) => "ip6tables-nft-save",
        }
    }

    /// Every loopback address of the family: 127.0.0.0/8 or ::1/128.
    pub fn loopback(self) -> Cidr {
        match self {
            Family::Ipv4 => Cidr::constant(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            Family::Ipv6 => Cidr::constant(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        }
    }

    /// The source the proxy uses when delivering inbound connections to the app.
    pub fn inbound_delivery_source(self) -> Cidr {
        match self {
            Family::Ipv4 => Cidr::constant(IpAddr::V4(INBOUND_DELIVERY_SOURCE_V4), 32),
            Family::Ipv6 => Cidr::constant(IpAddr::V6(INBOUND_DELIVERY_SOURCE_V6), 128),
        }
    }

    /// The family of an address.
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The two kernel interfaces the iptables tools can drive. Rules written
/// through one are invisible to the other's tools, yet the kernel runs both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The x_tables interface (`iptables-legacy`).
    Legacy,
    /// nftables (`iptables-nft`, "nf_tables" in `--version`).
    Nft,
}

impl Backend {
    /// How `--version` names the backend.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nf_tables",
        }
    }

    /// The backend that is not this one.
    pub fn other(self) -> Backend {
        match self {
            Backend::Legacy => Backend::Nft,
            Backend::Nft => Backend::Legacy,
        }
    }

    /// The backend a tool's `--version` line names, e.g.
    /// `iptables-save v1.8.9 (nf_tables)`. Versions before 1.8 have no
    /// variant suffix and only know the legacy interface.
    pub fn from_version_line(line: &str) -> Option<Backend> {
        if line.contains("(nf_tables)") {
            Some(Backend::Nft)
        } else if line.contains("(legacy)") || (line.contains(" v1.") && !line.contains('(')) {
            Some(Backend::Legacy)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_constants_are_valid_blocks_of_their_family() {
        for family in Family::ALL {
            for cidr in [family.loopback(), family.inbound_delivery_source()] {
                assert_eq!(Family::of(cidr.address()), family, "{cidr}");
                assert_eq!(
                    Cidr::new(cidr.address(), cidr.prefix_len()).ok(),
                    Some(cidr)
                );
            }
        }
        assert_eq!(Family::Ipv4.loopback().to_string(), "127.0.0.0/8");
        assert_eq!(Family::Ipv6.loopback().to_string(), "::1/128");
        assert_eq!(
            Family::Ipv4.inbound_delivery_source().to_string(),
            "127.0.0.6/32"
        );
        assert_eq!(
            Family::Ipv6.inbound_delivery_source().to_string(),
            "::6/128"
        );
    }

    #[test]
    fn backends_are_read_from_version_lines() {
        let cases = [
            ("iptables-save v1.8.9 (nf_tables)", Some(Backend::Nft)),
            ("ip6tables-restore v1.8.7 (legacy)", Some(Backend::Legacy)),
            ("iptables-save v1.6.1", Some(Backend::Legacy)),
            ("iptables-save v1.8.9 (something-new)", None),
            ("", None),
            ("#!/bin/sh test double", None),
        ];
        for (line, expected) in cases {
            assert_eq!(Backend::from_version_line(line), expected, "{line:?}");
        }
        assert_eq!(Backend::Nft.other(), Backend::Legacy);
        assert_eq!(
            Family::Ipv6.backend_save_tool(Backend::Legacy),
            "ip6tables-legacy-save"
        );
    }
}
