//! The leaves of a compiled authorization policy: string patterns (exact,
//! prefix `abc*`, suffix `*abc`, presence `*`) and IP blocks (an address
//! or a CIDR, IPv4 or IPv6).
//!
//! Both serialize as the text an operator wrote, so `/config_dump` reads
//! like the policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// One string pattern of a policy field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    /// `abc*`: the value starts with `abc` (and may equal it).
    Prefix(String),
    /// `*abc`: the value ends with `abc` (and may equal it).
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
}

impl StringMatch {
    /// Parses a pattern. A `*` anywhere but at one end is refused rather
    /// than matched literally: a rule that silently never matches is worse
    /// than a rejected config.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(StringMatch::Presence);
        }
        let parsed = if let Some(rest) = pattern.strip_prefix('*') {
            StringMatch::Suffix(rest.to_owned())
        } else if let Some(rest) = pattern.strip_suffix('*') {
            StringMatch::Prefix(rest.to_owned())
        } else {
            StringMatch::Exact(pattern.to_owned())
        };
        if parsed.text().is_some_and(|text| text.contains('*')) {
            return Err(format!(
                "{pattern:?}: '*' may only stand alone or at the start or end of a pattern"
            ));
        }
        Ok(parsed)
    }

    /// The literal part of the pattern (none for presence).
    pub fn text(&self) -> Option<&str> {
        match self {
            StringMatch::Exact(t) | StringMatch::Prefix(t) | StringMatch::Suffix(t) => Some(t),
            StringMatch::Presence => None,
        }
    }

    /// Rewrites the literal part (lower-casing hosts, canonical escapes in
    /// paths); `rewrite` sees whether the pattern is exact.
    pub fn try_map(
        self,
        rewrite: impl FnOnce(String, bool) -> Result<String, String>,
    ) -> Result<Self, String> {
        Ok(match self {
            StringMatch::Exact(t) => StringMatch::Exact(rewrite(t, true)?),
            StringMatch::Prefix(t) => StringMatch::Prefix(rewrite(t, false)?),
            StringMatch::Suffix(t) => StringMatch::Suffix(rewrite(t, false)?),
            StringMatch::Presence => StringMatch::Presence,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(t) => value == t,
            StringMatch::Prefix(t) => value.starts_with(t.as_str()),
            StringMatch::Suffix(t) => value.ends_with(t.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }

    /// Like `matches`, ASCII case-insensitively (for hosts). Compares
    /// bytes, so no slice can fall inside a UTF-8 character.
    pub fn matches_ignore_ascii_case(&self, value: &str) -> bool {
        let value = value.as_bytes();
        match self {
            StringMatch::Exact(t) => value.eq_ignore_ascii_case(t.as_bytes()),
            StringMatch::Prefix(t) => value
                .get(..t.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(t.as_bytes())),
            StringMatch::Suffix(t) => value
                .len()
                .checked_sub(t.len())
                .and_then(|start| value.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(t.as_bytes())),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(t) => f.write_str(t),
            StringMatch::Prefix(t) => write!(f, "{t}*"),
            StringMatch::Suffix(t) => write!(f, "*{t}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An address block. IPv4-mapped IPv6 blocks are stored as IPv4, and
/// addresses are compared in canonical form, so `::ffff:10.0.0.1` and
/// `10.0.0.1` are one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    /// The network address, host bits cleared.
    network: IpAddr,
    prefix_len: u8,
}

impl IpBlock {
    /// `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`, `::ffff:10.0.0.0/104`.
    /// Host bits in a CIDR are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not an IP address or CIDR");
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => {
                // Digits only: `u8::from_str` would take a leading '+'.
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                len.parse::<u8>()
                    .ok()
                    .filter(|len| *len <= max)
                    .ok_or_else(|| format!("{text:?}: prefix length must be at most {max}"))?
            }
        };
        Ok(Self::new(addr, prefix_len))
    }

    fn new(addr: IpAddr, prefix_len: u8) -> Self {
        let (addr, prefix_len) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix_len >= 96 => (IpAddr::V4(v4), prefix_len - 96),
                _ => (addr, prefix_len),
            },
            IpAddr::V4(_) => (addr, prefix_len),
        };
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & v4_mask(prefix_len))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & v6_mask(prefix_len))),
        };
        IpBlock {
            network,
            prefix_len,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(self.prefix_len) == u32::from(net)
            }
            // A short IPv6 block (/0../95) can cover the IPv4-mapped range.
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                u128::from(ip.to_ipv6_mapped()) & v6_mask(self.prefix_len) == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & v6_mask(self.prefix_len) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn v4_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_table() {
        // (pattern, value, matches, matches ignoring ASCII case)
        let cases = [
            ("/admin", "/admin", true, true),
            ("/admin", "/ADMIN", false, true),
            ("/admin", "/admin/", false, false),
            ("/api/*", "/api/", true, true),
            ("/api/*", "/api/v1", true, true),
            ("/api/*", "/api", false, false),
            ("*.example.com", "a.example.com", true, true),
            ("*.example.com", "A.EXAMPLE.COM", false, true),
            ("*.example.com", "example.com", false, false),
            ("*", "x", true, true),
            ("*", "", false, false),
            ("", "", true, true),
            ("é*", "éa", true, true),
            ("*é", "x", false, false),
            ("*ab", "éab", true, true),
        ];
        for (pattern, value, want, want_ci) in cases {
            let m = StringMatch::parse(pattern).expect("valid pattern");
            assert_eq!(m.matches(value), want, "{pattern:?} vs {value:?}");
            assert_eq!(
                m.matches_ignore_ascii_case(value),
                want_ci,
                "{pattern:?} vs {value:?} ignoring case"
            );
            assert_eq!(m.to_string(), pattern);
        }
        for bad in ["a*b", "**", "*a*", "**a"] {
            assert!(StringMatch::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_blocks_table() {
        // (block, address, contained)
        let cases = [
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("::ffff:10.0.0.0/104", "10.1.1.1", true),
            ("::ffff:10.0.0.1", "10.0.0.1", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::1", "2001:db8::1", true),
            ("::/0", "10.0.0.1", true),
            ("::/0", "2001:db8::1", true),
            ("2001:db8::/32", "10.0.0.1", false),
        ];
        for (block, addr, want) in cases {
            let b = IpBlock::parse(block).expect("valid block");
            let ip: IpAddr = addr.parse().expect("address literal");
            assert_eq!(b.contains(ip), want, "{block} contains {addr}");
        }
        assert_eq!(
            IpBlock::parse("::ffff:10.1.2.3/104")
                .expect("valid")
                .to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "10.0.0/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "host",
            "",
        ] {
            assert!(IpBlock::parse(bad).is_err(), "{bad:?}");
        }
    }
}
