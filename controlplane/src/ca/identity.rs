//! Workload identities: the trust domain and the SPIFFE IDs the CA signs
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, the
//! shape Istio uses, so policies written for Istio read the same here).

use std::fmt;
use std::time::Duration;

use crate::error::Error;

/// Trust domain of a mesh that names none, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A validated SPIFFE trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `value` against the SPIFFE ID spec: lowercase letters, digits,
    /// `.`, `-` and `_`, at most 255 characters. Uppercase is refused rather
    /// than folded, because the ID is compared byte for byte by peers.
    pub fn new(value: &str) -> Result<TrustDomain, Error> {
        let invalid = |reason: &str| Error::InvalidOption {
            flag: "--trust-domain",
            reason: format!("{value:?} {reason}"),
        };
        if value.is_empty() {
            return Err(invalid("is empty"));
        }
        if value.contains("://") {
            return Err(invalid(
                "must be the bare trust domain (e.g. cluster.local), not a URI",
            ));
        }
        if value.len() > 255 {
            return Err(invalid("is longer than 255 characters"));
        }
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
        if !value.chars().all(allowed) {
            return Err(invalid(
                "may only hold lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        Ok(TrustDomain(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> TrustDomain {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: TrustDomain,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &TrustDomain, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.clone(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Parses a duration flag: a whole number followed by `s`, `m`, `h` or `d`
/// (`90s`, `30m`, `24h`, `7d`). Units are required so `--max-cert-ttl 24`
/// is not silently read as seconds.
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, Error> {
    let invalid = |reason: String| Error::InvalidOption { flag, reason };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| invalid(format!("{value:?} needs a unit: s, m, h or d (e.g. 24h)")))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| invalid(format!("{value:?} is not a number with a unit (e.g. 24h)")))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(invalid(format!(
                "{value:?} has an unknown unit {unit:?} (s, m, h or d)"
            )));
        }
    };
    let seconds = number
        .checked_mul(scale)
        .ok_or_else(|| invalid(format!("{value:?} is too long")))?;
    if seconds == 0 {
        return Err(invalid(format!("{value:?} must be longer than zero")));
    }
    Ok(Duration::from_secs(seconds))
}

/// Renders a duration the way `parse_duration` reads it, in the largest
/// unit that divides it.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, scale) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds != 0 && seconds.is_multiple_of(scale) {
            return format!("{}{unit}", seconds / scale);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains() {
        for good in ["cluster.local", "example.org", "td_1-a", "a"] {
            assert!(TrustDomain::new(good).is_ok(), "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "Cluster.local",
            "spiffe://cluster.local",
            "a/b",
            "a b",
            long.as_str(),
        ] {
            match TrustDomain::new(bad) {
                Err(err) => assert!(
                    err.to_string().starts_with("invalid --trust-domain: "),
                    "{err}"
                ),
                Ok(td) => panic!("accepted {td}"),
            }
        }
        assert_eq!(TrustDomain::default().as_str(), "cluster.local");
    }

    #[test]
    fn spiffe_ids() {
        let td = TrustDomain::default();
        assert_eq!(
            SpiffeId::new(&td, "shop", "web").uri(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
    }

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90, "90s"),
            ("30m", 1800, "30m"),
            ("36h", 129_600, "36h"),
            ("24h", 86_400, "1d"),
            ("7d", 604_800, "7d"),
        ];
        for (text, seconds, shown) in ok {
            let parsed = parse_duration("--x", text).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(parsed, Duration::from_secs(seconds), "{text}");
            assert_eq!(format_duration(parsed), shown);
        }
        for bad in [
            "",
            "24",
            "h",
            "1w",
            "0h",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            match parse_duration("--max-cert-ttl", bad) {
                Err(err) => assert!(
                    err.to_string().starts_with("invalid --max-cert-ttl: "),
                    "{err}"
                ),
                Ok(d) => panic!("{bad:?} parsed as {d:?}"),
            }
        }
    }
}
