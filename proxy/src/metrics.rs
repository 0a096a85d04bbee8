//! Prometheus metrics (15090 `/metrics`). Every label value comes from the
//! mesh — this proxy's own identity, the config snapshot, or metadata a
//! peer proxy sent (validated and bounded) — never from client input, so
//! cardinality stays bounded by the mesh's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Which proxy of the two reports a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

/// Whether the hop between the proxies was mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    mutual_tls,
    none,
}

/// The labels of one request or connection, Istio's standard set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_principal: String,
    pub connection_security_policy: SecurityPolicy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
}

pub const UNKNOWN: &str = "unknown";

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tcp_opened: Family<TrafficLabels, Counter>,
    identity_expiry: Arc<IdentityExpiry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let tcp_opened = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "knit_requests",
            "HTTP requests, by reporting proxy",
            requests.clone(),
        );
        registry.register(
            "knit_tcp_connections_opened",
            "Opaque TCP connections and tunnels opened, by reporting proxy",
            tcp_opened.clone(),
        );
        let identity_expiry = Arc::new(IdentityExpiry::default());
        registry.register_collector(Box::new(Arc::clone(&identity_expiry)));
        Metrics {
            registry,
            requests,
            tcp_opened,
            identity_expiry,
        }
    }
}

impl Metrics {
    pub fn request(&self, traffic: TrafficLabels, response_code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                traffic,
                response_code,
            })
            .inc();
    }

    pub fn tcp_opened(&self, traffic: TrafficLabels) {
        self.tcp_opened.get_or_create(&traffic).inc();
    }

    /// Where the identity manager records its certificate's and bundle's
    /// expiry, for `knit_identity_*_expiry_seconds`.
    pub fn identity_expiry(&self) -> Arc<IdentityExpiry> {
        Arc::clone(&self.identity_expiry)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// When this proxy's workload certificate (the leaf's notAfter) and its
/// trust bundle (the earliest root's notAfter) expire, as recorded on each
/// issuance.
///
/// The gauges `knit_identity_cert_expiry_seconds` and
/// `knit_identity_bundle_expiry_seconds` are computed from these at scrape
/// time — seconds from the scrape to the expiry — so they count down
/// between issuances without a timer, and an alert such as `< 3600` fires
/// when renewal has been failing, whatever the scrape interval. Before the
/// first certificate (and with identity off) neither gauge is exported: a
/// 0 would read as "expires now". After an expiry they go negative, which
/// says how long ago.
#[derive(Debug)]
pub struct IdentityExpiry {
    /// Unix seconds; [`NOT_SET`] until the first issuance.
    cert_not_after: AtomicI64,
    bundle_not_after: AtomicI64,
}

/// No certificate yet.
const NOT_SET: i64 = i64::MIN;

impl Default for IdentityExpiry {
    fn default() -> Self {
        IdentityExpiry {
            cert_not_after: AtomicI64::new(NOT_SET),
            bundle_not_after: AtomicI64::new(NOT_SET),
        }
    }
}

impl IdentityExpiry {
    /// Records a newly installed certificate and bundle.
    pub fn record(&self, cert_not_after: SystemTime, bundle_not_after: SystemTime) {
        self.cert_not_after
            .store(unix_seconds(cert_not_after), Ordering::Relaxed);
        self.bundle_not_after
            .store(unix_seconds(bundle_not_after), Ordering::Relaxed);
    }

    /// Seconds from `now` until each expiry; `None` before the first
    /// certificate.
    pub fn remaining_at(&self, now: SystemTime) -> Option<(i64, i64)> {
        let cert = self.cert_not_after.load(Ordering::Relaxed);
        let bundle = self.bundle_not_after.load(Ordering::Relaxed);
        if cert == NOT_SET || bundle == NOT_SET {
            return None;
        }
        let now = unix_seconds(now);
        Some((cert.saturating_sub(now), bundle.saturating_sub(now)))
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN + 1, |s| -s),
    }
}

impl Collector for IdentityExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((cert, bundle)) = self.remaining_at(SystemTime::now()) else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "knit_identity_cert_expiry_seconds",
                "Seconds until this proxy's workload certificate expires (negative: expired)",
                cert,
            ),
            (
                "knit_identity_bundle_expiry_seconds",
                "Seconds until the earliest root of the trust bundle expires (negative: expired)",
                bundle,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// A label value taken from peer metadata: kept only if it looks like a
/// Kubernetes name (so nothing unbounded or odd becomes a label).
pub fn mesh_name(value: Option<&str>) -> String {
    match value {
        Some(v)
            if !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                }) =>
        {
            v.to_owned()
        }
        _ => UNKNOWN.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(reporter: Reporter) -> TrafficLabels {
        TrafficLabels {
            reporter,
            source_workload: "frontend".into(),
            source_namespace: "default".into(),
            source_principal: UNKNOWN.into(),
            destination_service: "backend.default.svc.cluster.local".into(),
            destination_workload: "backend-1".into(),
            destination_namespace: "default".into(),
            destination_principal: UNKNOWN.into(),
            connection_security_policy: SecurityPolicy::none,
        }
    }

    #[test]
    fn counters_are_exposed_with_their_labels() {
        let m = Metrics::default();
        m.request(labels(Reporter::source), 200);
        m.request(labels(Reporter::source), 200);
        m.tcp_opened(labels(Reporter::destination));
        let text = m.encode();
        assert!(
            text.contains(
                "knit_requests_total{reporter=\"source\",source_workload=\"frontend\",source_namespace=\"default\",\
                 source_principal=\"unknown\",destination_service=\"backend.default.svc.cluster.local\",\
                 destination_workload=\"backend-1\",destination_namespace=\"default\",destination_principal=\"unknown\",\
                 connection_security_policy=\"none\",response_code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("knit_tcp_connections_opened_total{reporter=\"destination\""),
            "{text}"
        );
    }

    #[test]
    fn identity_gauges_count_down_from_the_recorded_expiry() {
        let m = Metrics::default();
        assert!(
            !m.encode().contains("knit_identity_"),
            "no gauge before the first certificate"
        );
        let now = SystemTime::now();
        m.identity_expiry().record(
            now + std::time::Duration::from_secs(3600),
            now + std::time::Duration::from_secs(10 * 86400),
        );
        let (cert, bundle) = m.identity_expiry().remaining_at(now).expect("recorded");
        assert_eq!((cert, bundle), (3600, 864_000));
        let later = now + std::time::Duration::from_secs(3700);
        assert_eq!(
            m.identity_expiry().remaining_at(later).map(|r| r.0),
            Some(-100)
        );
        let text = m.encode();
        assert!(
            text.contains("# TYPE knit_identity_cert_expiry_seconds gauge"),
            "{text}"
        );
        let value = |name: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        // Computed at scrape time: a second or two may have passed.
        assert!((3590..=3600).contains(&value("knit_identity_cert_expiry_seconds")));
        assert!((863_990..=864_000).contains(&value("knit_identity_bundle_expiry_seconds")));
    }

    #[test]
    fn only_name_like_peer_metadata_becomes_a_label() {
        let long = "a".repeat(254);
        let cases = [
            (Some("backend-1"), "backend-1"),
            (Some("api.prod"), "api.prod"),
            (Some(""), UNKNOWN),
            (Some("Evil"), UNKNOWN),
            (Some("a b"), UNKNOWN),
            (Some("x\"y"), UNKNOWN),
            (Some(long.as_str()), UNKNOWN),
            (None, UNKNOWN),
        ];
        for (input, want) in cases {
            assert_eq!(mesh_name(input), want, "{input:?}");
        }
    }
}
