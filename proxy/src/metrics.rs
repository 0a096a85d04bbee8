//! Prometheus metrics (15090 `/metrics`). Every label value comes from the
//! mesh — this proxy's own identity, the config snapshot, or metadata a
//! peer proxy sent (validated and bounded) — never from client input, so
//! cardinality stays bounded by the mesh's size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
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

/// A label value. Shared: the values come from long-lived config (this
/// proxy's workload, the snapshot's services and endpoints, SPIFFE IDs),
/// so labelling a request clones pointers, not strings.
pub type LabelValue = Arc<str>;

/// The labels of one request or connection, Istio's standard set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: LabelValue,
    pub source_namespace: LabelValue,
    pub source_principal: LabelValue,
    pub destination_service: LabelValue,
    pub destination_workload: LabelValue,
    pub destination_namespace: LabelValue,
    pub destination_principal: LabelValue,
    pub connection_security_policy: SecurityPolicy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
}

pub const UNKNOWN: &str = "unknown";

/// [`UNKNOWN`] as a label value, allocated once.
pub fn unknown() -> LabelValue {
    static VALUE: std::sync::LazyLock<LabelValue> = std::sync::LazyLock::new(|| UNKNOWN.into());
    VALUE.clone()
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tcp_opened: Family<TrafficLabels, Counter>,
    identity: Arc<IdentityMetrics>,
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
        let identity = Arc::new(IdentityMetrics::default());
        registry.register_collector(Box::new(Arc::clone(&identity)));
        Metrics {
            registry,
            requests,
            tcp_opened,
            identity,
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

    /// Where the identity manager records its certificates, renewals and
    /// failures, for the `knit_identity_*` metrics.
    pub fn identity_metrics(&self) -> Arc<IdentityMetrics> {
        Arc::clone(&self.identity)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the identity manager reports about this proxy's workload
/// certificate and trust bundle, recorded on each issuance and failure and
/// exported at scrape time. Nothing is exported before the first
/// certificate (and with identity off nothing ever is): a 0 would read as
/// "expires now".
///
/// - `knit_identity_cert_expiry_seconds`, `knit_identity_bundle_expiry_seconds`:
///   seconds from the scrape to the leaf's notAfter and to the earliest
///   root's notAfter. Computed at scrape time, so they count down between
///   issuances without a timer, and an alert such as `< 3600` fires when
///   renewal has been failing, whatever the scrape interval. After an
///   expiry they go negative, which says how long ago.
/// - `knit_identity_renewals_total`: certificates installed in place of an
///   earlier one.
/// - `knit_identity_sign_failures_total{reason}`: failed issuances, by the
///   reason token of the proxy's log line (`ca_unreachable`...).
/// - `knit_identity_trust_bundle_roots` and one
///   `knit_identity_trust_bundle_root_info{fingerprint}` per root: what the
///   proxy trusts, to follow a root rotation proxy by proxy.
/// - `knit_identity_cert_info{serial,root_fingerprint}`: the certificate
///   in use and the bundle root it chains to (one series at a time).
#[derive(Debug)]
pub struct IdentityMetrics {
    /// Unix seconds; [`NOT_SET`] until the first issuance.
    cert_not_after: AtomicI64,
    bundle_not_after: AtomicI64,
    renewals: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    installed: Mutex<Option<InstalledCert>>,
}

/// The earlier name of [`IdentityMetrics`], from when it held only the
/// expiry gauges.
pub type IdentityExpiry = IdentityMetrics;

/// The labels of the certificate in use, copied at installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledCert {
    pub serial: String,
    /// Fingerprint of the bundle root the certificate chains to.
    pub root_fingerprint: String,
    /// Fingerprints of the bundle's roots, in bundle order.
    pub bundle_fingerprints: Vec<String>,
}

/// No certificate yet.
const NOT_SET: i64 = i64::MIN;

impl Default for IdentityMetrics {
    fn default() -> Self {
        IdentityMetrics {
            cert_not_after: AtomicI64::new(NOT_SET),
            bundle_not_after: AtomicI64::new(NOT_SET),
            renewals: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            installed: Mutex::new(None),
        }
    }
}

impl IdentityMetrics {
    /// Records a newly installed certificate and bundle (expiry only).
    pub fn record(&self, cert_not_after: SystemTime, bundle_not_after: SystemTime) {
        self.cert_not_after
            .store(unix_seconds(cert_not_after), Ordering::Relaxed);
        self.bundle_not_after
            .store(unix_seconds(bundle_not_after), Ordering::Relaxed);
    }

    /// Records a newly installed certificate: its expiry, what it chains
    /// to, and whether it replaced an earlier one (a renewal).
    pub fn record_installed(
        &self,
        cert: InstalledCert,
        cert_not_after: SystemTime,
        bundle_not_after: SystemTime,
        renewal: bool,
    ) {
        *lock(&self.installed) = Some(cert);
        self.record(cert_not_after, bundle_not_after);
        if renewal {
            self.renewals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one failed issuance under its reason token.
    pub fn record_sign_failure(&self, reason: &'static str) {
        *lock(&self.failures).entry(reason).or_insert(0) += 1;
    }

    /// Certificates installed in place of an earlier one.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Failed issuances with this reason token.
    pub fn sign_failures(&self, reason: &str) -> u64 {
        lock(&self.failures).get(reason).copied().unwrap_or(0)
    }

    /// The certificate in use, as last recorded.
    pub fn installed(&self) -> Option<InstalledCert> {
        lock(&self.installed).clone()
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

/// The maps here are plain values; a panic elsewhere leaves them consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN + 1, |s| -s),
    }
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for IdentityMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let failures = lock(&self.failures).clone();
        if !failures.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "knit_identity_sign_failures",
                "Failed workload certificate issuances, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in &failures {
                let labels = [("reason", *reason)];
                ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
            }
        }
        let Some((cert, bundle)) = self.remaining_at(SystemTime::now()) else {
            return Ok(());
        };
        encode_gauge(
            &mut encoder,
            "knit_identity_cert_expiry_seconds",
            "Seconds until this proxy's workload certificate expires (negative: expired)",
            cert,
        )?;
        encode_gauge(
            &mut encoder,
            "knit_identity_bundle_expiry_seconds",
            "Seconds until the earliest root of the trust bundle expires (negative: expired)",
            bundle,
        )?;
        let renewals = ConstCounter::new(self.renewals());
        renewals.encode(encoder.encode_descriptor(
            "knit_identity_renewals",
            "Workload certificates installed in place of an earlier one",
            None,
            renewals.metric_type(),
        )?)?;
        let Some(installed) = self.installed() else {
            return Ok(());
        };
        encode_gauge(
            &mut encoder,
            "knit_identity_trust_bundle_roots",
            "Root certificates in this proxy's trust bundle",
            i64::try_from(installed.bundle_fingerprints.len()).unwrap_or(i64::MAX),
        )?;
        let mut metric = encoder.encode_descriptor(
            "knit_identity_trust_bundle_root_info",
            "One series per root of this proxy's trust bundle (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for fingerprint in &installed.bundle_fingerprints {
            let labels = [("fingerprint", fingerprint.as_str())];
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "knit_identity_cert_info",
            "The workload certificate in use and the bundle root it chains to (value 1)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("serial", installed.serial.as_str()),
            ("root_fingerprint", installed.root_fingerprint.as_str()),
        ];
        ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
    }
}

/// A label value taken from peer metadata: kept only if it looks like a
/// Kubernetes name (so nothing unbounded or odd becomes a label).
pub fn mesh_name(value: Option<&str>) -> LabelValue {
    match value {
        Some(v)
            if !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                }) =>
        {
            v.into()
        }
        _ => unknown(),
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
        m.identity_metrics().record(
            now + std::time::Duration::from_secs(3600),
            now + std::time::Duration::from_secs(10 * 86400),
        );
        let (cert, bundle) = m.identity_metrics().remaining_at(now).expect("recorded");
        assert_eq!((cert, bundle), (3600, 864_000));
        let later = now + std::time::Duration::from_secs(3700);
        assert_eq!(
            m.identity_metrics().remaining_at(later).map(|r| r.0),
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
    fn renewals_failures_and_the_bundle_are_exported() {
        let m = Metrics::default();
        let identity = m.identity_metrics();
        identity.record_sign_failure("ca_unreachable");
        let text = m.encode();
        assert!(
            text.contains("knit_identity_sign_failures_total{reason=\"ca_unreachable\"} 1"),
            "failures count before the first certificate: {text}"
        );
        assert!(!text.contains("knit_identity_renewals"), "{text}");

        let now = SystemTime::now();
        let hour = now + std::time::Duration::from_secs(3600);
        let cert = |serial: &str, root: &str, bundle: &[&str]| InstalledCert {
            serial: serial.into(),
            root_fingerprint: root.into(),
            bundle_fingerprints: bundle.iter().map(|f| f.to_string()).collect(),
        };
        identity.record_installed(cert("01", "sha256:aa", &["sha256:aa"]), hour, hour, false);
        let text = m.encode();
        assert!(text.contains("knit_identity_renewals_total 0"), "{text}");
        assert!(
            text.contains("knit_identity_trust_bundle_roots 1"),
            "{text}"
        );

        // A renewal during a rotation: a second root, signed by the new one.
        identity.record_installed(
            cert("02", "sha256:bb", &["sha256:bb", "sha256:aa"]),
            hour,
            hour,
            true,
        );
        identity.record_sign_failure("ca_unreachable");
        identity.record_sign_failure("ca_unavailable");
        let text = m.encode();
        for line in [
            "knit_identity_renewals_total 1",
            "knit_identity_trust_bundle_roots 2",
            "knit_identity_trust_bundle_root_info{fingerprint=\"sha256:bb\"} 1",
            "knit_identity_trust_bundle_root_info{fingerprint=\"sha256:aa\"} 1",
            "knit_identity_cert_info{serial=\"02\",root_fingerprint=\"sha256:bb\"} 1",
            "knit_identity_sign_failures_total{reason=\"ca_unreachable\"} 2",
            "knit_identity_sign_failures_total{reason=\"ca_unavailable\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains("serial=\"01\""),
            "only the certificate in use"
        );
        assert_eq!(
            (
                identity.renewals(),
                identity.sign_failures("ca_unreachable")
            ),
            (1, 2)
        );
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
            assert_eq!(&*mesh_name(input), want, "{input:?}");
        }
    }
}
