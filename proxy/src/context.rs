//! What every connection task shares: the current config (lock-free
//! reads), counters, the upstream pool and the data-path settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::snapshot::Snapshot;
use crate::http::upstream::UpstreamPool;
use crate::stats::Stats;

#[derive(Debug, Clone)]
pub struct DataPathSettings {
    /// How long outbound detection waits for the client's first bytes.
    pub outbound_detect_timeout: Duration,
    /// Inbound waits longer: the peer is usually a proxy that speaks first.
    pub inbound_detect_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for DataPathSettings {
    fn default() -> Self {
        DataPathSettings {
            outbound_detect_timeout: Duration::from_millis(300),
            inbound_detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
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

pub struct ProxyContext {
    pub config: ConfigStore,
    pub stats: Stats,
    pub pool: Arc<UpstreamPool>,
    pub settings: DataPathSettings,
    pub listeners_bound: AtomicBool,
}

impl ProxyContext {
    pub fn is_ready(&self) -> bool {
        self.config.has_config() && self.listeners_bound.load(Ordering::Acquire)
    }
}
