//! Counters an operator reads from `/stats` (Prometheus export comes later
//! and reads the same atomics).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one listener (inbound or outbound).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub connections: AtomicU64,
    /// Closed at accept: the listener already held its connection limit.
    pub connections_refused: AtomicU64,
    pub http_requests: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub passthrough_connections: AtomicU64,
    pub detected_http1: AtomicU64,
    pub detected_http2: AtomicU64,
    pub detected_tls: AtomicU64,
    pub detected_opaque: AtomicU64,
    pub detect_timeouts: AtomicU64,
    pub declared: AtomicU64,
    pub errors: ErrorCounters,
}

/// One counter per error reason; the set of reasons is closed, so a fixed
/// table avoids a lock on the data path.
#[derive(Debug, Default)]
pub struct ErrorCounters {
    counts: [AtomicU64; ERROR_REASONS.len()],
}

pub const ERROR_REASONS: [&str; 20] = [
    "no_endpoints",
    "upstream_connect_failed",
    "upstream_connect_timeout",
    "upstream_handshake_failed",
    "upstream_request_failed",
    "stream_reset",
    "tunnel_refused",
    "idle_timeout",
    "mesh_tls_failed",
    "upstream_tls_failed",
    "mesh_tls_unavailable",
    "upstream_tls_unusable",
    "mtls_required",
    "rbac_denied",
    "identity_unavailable",
    "invalid_endpoint_identity",
    "bad_request",
    "original_dst_unavailable",
    "self_loop",
    "other",
];

impl ErrorCounters {
    pub fn record(&self, reason: &str) {
        let idx = ERROR_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(ERROR_REASONS.len() - 1);
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the mesh listener (traffic from peer proxies).
#[derive(Debug, Default)]
pub struct MeshStats {
    pub connections: AtomicU64,
    /// Closed at accept: the listener already held its connection limit.
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    pub tunnels: AtomicU64,
    pub errors: ErrorCounters,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub outbound: ListenerStats,
    pub inbound: ListenerStats,
    pub mesh: MeshStats,
    pub config_updates_accepted: AtomicU64,
    pub config_updates_rejected: AtomicU64,
    pub control_plane_connects: AtomicU64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// A flat name → value map, stable names, sorted.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        for (prefix, l) in [("outbound", &self.outbound), ("inbound", &self.inbound)] {
            let fields: [(&str, &AtomicU64); 11] = [
                ("connections", &l.connections),
                ("connections_refused", &l.connections_refused),
                ("http.requests", &l.http_requests),
                ("tcp.connections", &l.tcp_connections),
                ("passthrough.connections", &l.passthrough_connections),
                ("detect.http1", &l.detected_http1),
                ("detect.http2", &l.detected_http2),
                ("detect.tls", &l.detected_tls),
                ("detect.opaque", &l.detected_opaque),
                ("detect.timeout", &l.detect_timeouts),
                ("detect.declared", &l.declared),
            ];
            for (name, value) in fields {
                map.insert(format!("{prefix}.{name}"), value.load(Ordering::Relaxed));
            }
            for (reason, value) in ERROR_REASONS.iter().zip(&l.errors.counts) {
                map.insert(
                    format!("{prefix}.errors.{reason}"),
                    value.load(Ordering::Relaxed),
                );
            }
        }
        let mesh = &self.mesh;
        map.insert(
            "mesh.connections".into(),
            mesh.connections.load(Ordering::Relaxed),
        );
        map.insert(
            "mesh.connections_refused".into(),
            mesh.connections_refused.load(Ordering::Relaxed),
        );
        map.insert(
            "mesh.requests".into(),
            mesh.requests.load(Ordering::Relaxed),
        );
        map.insert("mesh.tunnels".into(), mesh.tunnels.load(Ordering::Relaxed));
        for (reason, value) in ERROR_REASONS.iter().zip(&mesh.errors.counts) {
            map.insert(
                format!("mesh.errors.{reason}"),
                value.load(Ordering::Relaxed),
            );
        }
        map.insert(
            "config.updates_accepted".into(),
            self.config_updates_accepted.load(Ordering::Relaxed),
        );
        map.insert(
            "config.updates_rejected".into(),
            self.config_updates_rejected.load(Ordering::Relaxed),
        );
        map.insert(
            "config.control_plane_connects".into(),
            self.control_plane_connects.load(Ordering::Relaxed),
        );
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_reason_and_unknown_goes_to_other() {
        let stats = Stats::default();
        stats.outbound.errors.record("no_endpoints");
        stats.outbound.errors.record("no_endpoints");
        stats.inbound.errors.record("something_new");
        let map = stats.to_map();
        assert_eq!(map["outbound.errors.no_endpoints"], 2);
        assert_eq!(map["inbound.errors.other"], 1);
        assert_eq!(map["inbound.errors.no_endpoints"], 0);
    }
}
