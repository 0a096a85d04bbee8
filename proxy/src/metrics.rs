//! Prometheus metrics (15090 `/metrics`). Every label value comes from the
//! mesh — this proxy's own identity, the config snapshot, or metadata a
//! peer proxy sent (validated and bounded) — never from client input, so
//! cardinality stays bounded by the mesh's size.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        Metrics {
            registry,
            requests,
            tcp_opened,
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
