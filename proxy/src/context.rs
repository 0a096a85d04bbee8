//! What every connection task shares: the current config (lock-free
//! reads), counters, the upstream pool and the data-path settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::snapshot::Snapshot;
use std::net::SocketAddr;

use crate::config::snapshot::{Endpoint, ServiceTarget, Upstream};
use crate::http::upstream::{PoolSettings, UpstreamPool};
use crate::identity::{IdentityManager, SpiffeId};
use crate::mesh::pool::MeshPool;
use crate::stats::Stats;
use crate::upstream_tls::ClientTlsPolicy;

/// The SPIFFE ID `ep` must prove on a mesh hop.
fn endpoint_identity(
    manager: &IdentityManager,
    ep: &Endpoint,
) -> Result<SpiffeId, crate::error::Error> {
    SpiffeId::workload(manager.trust_domain(), &ep.namespace, &ep.service_account).map_err(|e| {
        crate::error::Error::EndpointIdentity {
            workload: ep.workload.to_string(),
            detail: e.to_string(),
        }
    })
}

#[derive(Debug, Clone)]
pub struct DataPathSettings {
    /// How long outbound detection waits for the client's first bytes.
    pub outbound_detect_timeout: Duration,
    /// Inbound waits longer: the peer is usually a proxy that speaks first.
    pub inbound_detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// An opaque TCP connection (or tunnel) with no byte in either
    /// direction for this long is closed, so half-dead flows don't live
    /// forever.
    pub tcp_idle_timeout: Duration,
    // Limits on what downstream clients may send (see `http::guard` for
    // what each one guards against and what a client gets when it trips).
    /// A request head must be complete this long after its first byte
    /// arrived, or the connection is closed (slowloris).
    pub http_header_read_timeout: Duration,
    /// An HTTP/1.1 connection waiting for its next request is closed after
    /// this long. Kept above the 20 s the proxy's own pools reuse idle
    /// connections, so a peer proxy never closes one under a reused request.
    pub http_idle_timeout: Duration,
    /// Largest request head: HTTP/1.1 request line plus headers, or the
    /// decoded HTTP/2 header list (RFC 7541 sizes). Beyond it: 431.
    pub http_max_header_bytes: usize,
    /// Most header fields in one request. Beyond it: 431.
    pub http_max_headers: usize,
    /// Longest request target (path and query, or the absolute URI).
    /// Beyond it: 414.
    pub http_max_uri_bytes: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 receive window per stream, in bytes.
    pub http2_stream_window: u32,
    /// HTTP/2 receive window per connection, in bytes: the most request
    /// data one connection can make the proxy hold.
    pub http2_connection_window: u32,
    /// Streams a client may open and reset before the proxy even accepted
    /// them; one more and the connection gets GOAWAY (h2's own guard).
    pub http2_max_pending_accept_resets: usize,
    /// Streams the proxy may reset for protocol errors over a connection's
    /// life before it sends GOAWAY.
    pub http2_max_local_error_resets: usize,
    /// Rapid reset (CVE-2023-44487): once a client has reset this many
    /// requests before their response, and they are more than half of its
    /// requests, the connection gets GOAWAY and no more upstream work.
    pub http2_max_premature_resets: usize,
    /// Connections each listener holds at once; more are closed at accept.
    pub max_connections_per_listener: usize,
}

impl Default for DataPathSettings {
    fn default() -> Self {
        DataPathSettings {
            outbound_detect_timeout: Duration::from_millis(300),
            inbound_detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            tcp_idle_timeout: Duration::from_secs(3600),
            http_header_read_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(30),
            http_max_header_bytes: 64 * 1024,
            http_max_headers: 100,
            http_max_uri_bytes: 16 * 1024,
            http2_max_concurrent_streams: 1024,
            http2_stream_window: 1024 * 1024,
            http2_connection_window: 2 * 1024 * 1024,
            http2_max_pending_accept_resets: 20,
            http2_max_local_error_resets: 256,
            http2_max_premature_resets: 100,
            max_connections_per_listener: 4096,
        }
    }
}

/// The config as the data path sees it. Writers (the discovery client)
/// publish whole snapshots; readers `load()` one per connection or request.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<u64>,
    received_first: AtomicBool,
}

impl Default for ConfigStore {
    fn default() -> Self {
        ConfigStore {
            current: ArcSwap::from_pointee(Snapshot::default()),
            changed: watch::channel(0).0,
            received_first: AtomicBool::new(false),
        }
    }
}

impl ConfigStore {
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.received_first.store(true, Ordering::Release);
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub fn has_config(&self) -> bool {
        self.received_first.load(Ordering::Acquire)
    }

    /// Signals "changed"; the value is a generation counter, not the config.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Upstream connections by purpose, so each is counted and tuned apart.
pub struct Pools {
    /// To endpoints without a Knit proxy, and passthrough.
    pub direct: Arc<UpstreamPool>,
    /// To peer proxies' mesh ports: HTTP/2 only, one connection per peer.
    pub mesh: Arc<MeshPool>,
    /// To this pod's app, from 127.0.0.6 so capture knows it is delivery.
    pub app: Arc<UpstreamPool>,
}

/// The source addresses of the proxy's deliveries to its own app; knit-init
/// exempts them from capture (and puts ::6 on lo).
pub const INBOUND_DELIVERY_SOURCES: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
];

impl Pools {
    pub fn new(connect_timeout: Duration) -> Self {
        let settings = PoolSettings {
            connect_timeout,
            ..PoolSettings::default()
        };
        Pools {
            direct: UpstreamPool::new(settings.clone()),
            mesh: Arc::new(MeshPool::new(connect_timeout)),
            app: UpstreamPool::new(PoolSettings {
                local_bind: INBOUND_DELIVERY_SOURCES.to_vec(),
                ..settings
            }),
        }
    }
}

/// This proxy's workload, for metrics and for peers.
#[derive(Debug, Clone)]
pub struct NodeMeta {
    pub workload: crate::metrics::LabelValue,
    pub namespace: crate::metrics::LabelValue,
}

pub struct ProxyContext {
    pub metrics: crate::metrics::Metrics,
    pub node: NodeMeta,
    pub config: ConfigStore,
    pub stats: Stats,
    pub pools: Pools,
    pub settings: DataPathSettings,
    pub listeners_bound: AtomicBool,
    /// This pod's own IPs: an endpoint there is this pod, reached directly
    /// (capture turns that into a call through the inbound side).
    pub pod_ips: Vec<std::net::IpAddr>,
    /// This workload's certificate and its renewal; `None` with identity
    /// off (no certificate, plaintext mesh only).
    pub identity: Option<Arc<crate::identity::IdentityManager>>,
}

impl ProxyContext {
    pub fn new(settings: DataPathSettings) -> Self {
        ProxyContext {
            metrics: crate::metrics::Metrics::default(),
            node: NodeMeta {
                workload: crate::metrics::unknown(),
                namespace: crate::metrics::unknown(),
            },
            config: ConfigStore::default(),
            stats: Stats::default(),
            pools: Pools::new(settings.connect_timeout),
            settings,
            listeners_bound: AtomicBool::new(false),
            pod_ips: Vec::new(),
            identity: None,
        }
    }

    /// How to reach `ep`, an endpoint of `target`, from here. Without a
    /// DestinationRule: through its proxy (over mutual TLS when this proxy
    /// has an identity and the endpoint's port is not DISABLE), or straight
    /// to it when it has no proxy or is this very pod. A rule overrides
    /// that per port (`upstream_tls` module docs).
    pub fn upstream_for(
        &self,
        target: &ServiceTarget,
        ep: &Endpoint,
    ) -> Result<Upstream, crate::error::Error> {
        // A call to this pod stays inside it: capture turns it into a call
        // through the inbound side.
        let peer_port = ep
            .mesh_port
            .filter(|_| !self.pod_ips.contains(&ep.addr.ip()));
        let mesh = |identity| match peer_port {
            Some(port) => Upstream::Mesh {
                peer: SocketAddr::new(ep.addr.ip(), port),
                target_port: ep.addr.port(),
                identity,
            },
            None => Upstream::Direct(ep.addr),
        };
        match &target.client_tls {
            ClientTlsPolicy::Auto => {
                // Plaintext when this proxy has no identity, or when the
                // endpoint's port is DISABLE (knitd publishes that only
                // once the server takes plaintext there).
                let identity = match self.identity.as_ref().filter(|_| ep.wants_mtls()) {
                    None => None,
                    Some(manager) => Some(endpoint_identity(manager, ep)?),
                };
                Ok(mesh(identity))
            }
            ClientTlsPolicy::Disable { .. } => Ok(mesh(None)),
            ClientTlsPolicy::IstioMutual { destination_rule } => {
                let unavailable = |detail: String| crate::error::Error::MeshTlsUnavailable {
                    service: target.service.clone(),
                    port: target.port,
                    destination_rule: destination_rule.clone(),
                    detail,
                };
                if ep.mesh_port.is_none() {
                    return Err(unavailable(format!(
                        "endpoint {} ({}) has no Knit proxy",
                        ep.workload, ep.addr
                    )));
                }
                if peer_port.is_none() {
                    return Ok(Upstream::Direct(ep.addr));
                }
                let Some(manager) = self.identity.as_ref() else {
                    return Err(unavailable(
                        "this proxy runs without a workload identity".to_owned(),
                    ));
                };
                Ok(mesh(Some(endpoint_identity(manager, ep)?)))
            }
            ClientTlsPolicy::Simple(tls) | ClientTlsPolicy::Mutual(tls) => Ok(Upstream::Tls {
                addr: ep.addr,
                tls: Arc::clone(tls),
            }),
            ClientTlsPolicy::Unusable { reason, .. } => {
                Err(crate::error::Error::UpstreamTlsUnusable {
                    reason: reason.clone(),
                })
            }
        }
    }

    /// This proxy's current certificate, if it has one.
    pub fn current_identity(&self) -> Option<Arc<crate::identity::WorkloadIdentity>> {
        self.identity.as_ref().and_then(|m| m.current())
    }

    /// Counters plus the pools' connection counts.
    pub fn stats_map(&self) -> std::collections::BTreeMap<String, u64> {
        let mut map = self.stats.to_map();
        map.insert(
            "upstream.direct.connections_opened".into(),
            self.pools.direct.connections_opened(),
        );
        map.insert(
            "upstream.direct.tls_connections_opened".into(),
            self.pools.direct.tls_connections_opened(),
        );
        let (mesh, mesh_tls) = self.pools.mesh.connections_opened();
        map.insert("upstream.mesh.connections_opened".into(), mesh);
        map.insert("upstream.mesh.tls_connections_opened".into(), mesh_tls);
        map.insert(
            "upstream.app.connections_opened".into(),
            self.pools.app.connections_opened(),
        );
        map
    }

    /// Ready: the first config arrived, the listeners are bound, and (with
    /// identity on) a workload certificate is held, since without one no
    /// peer would accept a mesh connection from or to this pod.
    pub fn is_ready(&self) -> bool {
        self.config.has_config()
            && self.listeners_bound.load(Ordering::Acquire)
            && self.has_identity_if_required()
    }

    /// True with identity off, or when a certificate is held.
    pub fn has_identity_if_required(&self) -> bool {
        self.identity
            .as_ref()
            .is_none_or(|manager| manager.current().is_some())
    }
}
