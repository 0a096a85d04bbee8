//! Capture rules as data: what `plan` produces and the renderers turn into
//! iptables-restore text. Nothing here knows about processes or the kernel.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::InitError;
use crate::family::Family;

/// Prefix of every chain knit-init owns; `--cleanup` removes exactly these.
pub const CHAIN_PREFIX: &str = "KNIT_";

/// Maximum length of an iptables comment (the kernel's `XT_MAX_COMMENT_LEN` minus the NUL).
pub const MAX_COMMENT_LEN: usize = 255;

/// A netfilter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// The `nat` table, where REDIRECT lives.
    Nat,
}

impl Table {
    /// The name iptables uses for the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
        }
    }

    /// The chains the kernel provides in this table; knit-init never creates or deletes them.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        }
    }

    /// Whether `chain` is one of the table's builtin chains.
    pub fn is_builtin(self, chain: &str) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

/// A builtin chain that knit-init hooks into with a jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinChain {
    /// Packets arriving from the network, before routing.
    Prerouting,
    /// Locally generated packets.
    Output,
}

impl BuiltinChain {
    /// The name iptables uses for the chain.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinChain::Prerouting => "PREROUTING",
            BuiltinChain::Output => "OUTPUT",
        }
    }
}

/// A transport protocol a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
}

impl Protocol {
    /// The name iptables uses for the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
        }
    }
}

/// An address block (IPv4 or IPv6) in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    address: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// A block of `address` with `prefix_len` leading bits; host bits must be zero.
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Self, InitError> {
        let (max_len, bits) = match address {
            IpAddr::V4(v4) => (32u8, u128::from(u32::from(v4)) << 96),
            IpAddr::V6(v6) => (128u8, u128::from(v6)),
        };
        if prefix_len > max_len {
            return Err(InitError::InvalidConfig {
                field: "cidr",
                reason: format!("{address}/{prefix_len}: prefix length exceeds {max_len}"),
            });
        }
        let host_mask = u128::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
        if bits & host_mask != 0 {
            return Err(InitError::InvalidConfig {
                field: "cidr",
                reason: format!("{address}/{prefix_len}: address has bits set beyond the prefix"),
            });
        }
        Ok(Cidr {
            address,
            prefix_len,
        })
    }

    /// A block the code knows to be valid (family constants); checked by tests.
    pub(crate) const fn constant(address: IpAddr, prefix_len: u8) -> Self {
        Cidr {
            address,
            prefix_len,
        }
    }

    /// The address family of the block.
    pub fn family(&self) -> Family {
        Family::of(self.address)
    }

    /// The network address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The number of leading bits that identify the block.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `ADDRESS/PREFIX`, or a bare address meaning that one host.
    fn from_str(text: &str) -> Result<Self, String> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address_text
            .parse()
            .map_err(|_| format!("`{text}`: `{address_text}` is not an IPv4 or IPv6 address"))?;
        let prefix_len = match prefix_text {
            Some(prefix) => prefix
                .parse::<u8>()
                .map_err(|_| format!("`{text}`: `{prefix}` is not a prefix length"))?,
            None => match address {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
        };
        Cidr::new(address, prefix_len).map_err(|err| match err {
            InitError::InvalidConfig { reason, .. } => reason,
            other => other.to_string(),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One match condition of a rule; all matches of a rule must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-p PROTO`.
    Protocol(Protocol),
    /// `-m tcp --dport PORT`; the rule must also match [`Protocol::Tcp`] (rendered before it).
    DestinationPort(u16),
    /// `-s CIDR`.
    Source(Cidr),
    /// `-d CIDR`.
    Destination(Cidr),
    /// `! -d CIDR`.
    NotDestination(Cidr),
    /// `-i IFACE`: arrived on this interface (PREROUTING only).
    InInterface(String),
    /// `-o IFACE`: leaves through this interface (OUTPUT only).
    OutInterface(String),
    /// `-m owner --uid-owner UID`: the socket belongs to this user.
    UidOwner(u32),
    /// `-m owner --gid-owner GID`: the socket belongs to this group.
    GidOwner(u32),
}

/// What happens to a packet that matches a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Leave the current chain; the packet continues in the caller unchanged.
    Return,
    /// Continue in another (user-defined) chain.
    Jump(String),
    /// Rewrite the destination to this host, on this TCP port.
    Redirect {
        /// The local port connections are sent to.
        to_port: u16,
    },
}

/// One rule: its matches, its target, and why it exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, rendered in this order.
    pub matches: Vec<Match>,
    /// The action for matching packets.
    pub target: Target,
    /// Why the rule is there; stored in the kernel with `-m comment`.
    pub comment: String,
}

/// A user-defined chain owned by knit-init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain's name; starts with [`CHAIN_PREFIX`].
    pub name: String,
    /// Its rules, in evaluation order.
    pub rules: Vec<Rule>,
}

/// The rule that sends traffic from a builtin chain into a knit-init chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// The builtin chain the rule is appended to.
    pub from: BuiltinChain,
    /// The knit-init chain the rule enters.
    pub to: String,
    /// Conditions for entering it.
    pub matches: Vec<Match>,
    /// Why the jump is there.
    pub comment: String,
}

impl Jump {
    /// The jump as an ordinary rule of its builtin chain.
    pub fn rule(&self) -> Rule {
        Rule {
            matches: self.matches.clone(),
            target: Target::Jump(self.to.clone()),
            comment: self.comment.clone(),
        }
    }
}

/// Everything knit-init installs in one table of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family whose tools install the rules.
    pub family: Family,
    /// The table the rules live in.
    pub table: Table,
    /// knit-init's own chains, created in this order.
    pub chains: Vec<Chain>,
    /// Jumps from builtin chains into `chains`.
    pub jumps: Vec<Jump>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn cidr_accepts_network_addresses_and_rejects_host_bits_or_long_prefixes() {
        let cases: &[(IpAddr, u8, Result<&str, &str>)] = &[
            (Ipv4Addr::new(127, 0, 0, 0).into(), 8, Ok("127.0.0.0/8")),
            (Ipv4Addr::new(10, 1, 2, 3).into(), 32, Ok("10.1.2.3/32")),
            (Ipv4Addr::new(0, 0, 0, 0).into(), 0, Ok("0.0.0.0/0")),
            (Ipv6Addr::LOCALHOST.into(), 128, Ok("::1/128")),
            (
                Ipv4Addr::new(127, 0, 0, 1).into(),
                8,
                Err("bits set beyond the prefix"),
            ),
            (
                Ipv4Addr::new(10, 0, 0, 0).into(),
                33,
                Err("prefix length exceeds 32"),
            ),
            (
                Ipv6Addr::LOCALHOST.into(),
                64,
                Err("bits set beyond the prefix"),
            ),
            (
                Ipv6Addr::UNSPECIFIED.into(),
                129,
                Err("prefix length exceeds 128"),
            ),
        ];
        for (address, prefix_len, expected) in cases {
            let got = Cidr::new(*address, *prefix_len);
            match (expected, got) {
                (Ok(text), Ok(cidr)) => assert_eq!(cidr.to_string(), *text),
                (Err(fragment), Err(err)) => assert!(
                    err.to_string().contains(fragment),
                    "{address}/{prefix_len}: `{err}` lacks `{fragment}`"
                ),
                (expected, got) => {
                    panic!("{address}/{prefix_len}: expected {expected:?}, got {got:?}")
                }
            }
        }
    }

    #[test]
    fn cidrs_parse_from_text_or_say_what_is_wrong() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("10.0.0.0/8", Ok("10.0.0.0/8")),
            ("198.18.0.1", Ok("198.18.0.1/32")),
            ("2001:db8::/32", Ok("2001:db8::/32")),
            ("::1", Ok("::1/128")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("10.0.0.1/8", Err("bits set beyond the prefix")),
            ("10.0.0.0/33", Err("prefix length exceeds 32")),
            ("10.0.0.0/x", Err("`x` is not a prefix length")),
            (
                "example.com",
                Err("`example.com` is not an IPv4 or IPv6 address"),
            ),
            ("", Err("is not an IPv4 or IPv6 address")),
        ];
        for (text, expected) in cases {
            match (expected, text.parse::<Cidr>()) {
                (Ok(shown), Ok(cidr)) => assert_eq!(cidr.to_string(), *shown),
                (Err(fragment), Err(message)) => {
                    assert!(message.contains(fragment), "{text:?}: `{message}`")
                }
                (expected, got) => panic!("{text:?}: expected {expected:?}, got {got:?}"),
            }
        }
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().map(|c| c.family()),
            Ok(Family::Ipv6)
        );
    }

    #[test]
    fn nat_builtin_chains_are_recognised() {
        assert!(Table::Nat.is_builtin("PREROUTING"));
        assert!(Table::Nat.is_builtin("POSTROUTING"));
        assert!(!Table::Nat.is_builtin("KNIT_OUTPUT"));
        assert!(Table::Nat.is_builtin(BuiltinChain::Output.name()));
    }
}
