//! The connected proxies: who they are, what they were sent, what they
//! accepted or rejected. An entry lives exactly as long as its stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use knit_proto::v1 as pb;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRecord {
    pub node: pb::Node,
    pub connected_since: SystemTime,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub last_nack: Option<String>,
}

/// JSON shape of one proxy in `/debug/proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub pod_name: String,
    pub namespace: String,
    pub ips: Vec<String>,
    pub proxy_version: String,
    pub connected_since_unix: u64,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub last_nack: Option<String>,
}

impl From<&ProxyRecord> for ProxyStatus {
    fn from(record: &ProxyRecord) -> Self {
        ProxyStatus {
            pod_name: record.node.pod_name.clone(),
            namespace: record.node.namespace.clone(),
            ips: record.node.ips.clone(),
            proxy_version: record.node.proxy_version.clone(),
            connected_since_unix: record
                .connected_since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sent_version: record.sent_version.clone(),
            sent_nonce: record.sent_nonce.clone(),
            acked_version: record.acked_version.clone(),
            last_nack: record.last_nack.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ProxyRegistry {
    /// By connection id: one pod may briefly hold two streams while reconnecting.
    proxies: Mutex<BTreeMap<u64, ProxyRecord>>,
    next_id: AtomicU64,
}

impl ProxyRegistry {
    pub fn new() -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry::default())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ProxyRecord>> {
        // Records are plain data; a panic elsewhere cannot leave them torn.
        self.proxies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connected proxy; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, node: pb::Node) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            ProxyRecord {
                node,
                connected_since: SystemTime::now(),
                sent_version: None,
                sent_nonce: None,
                acked_version: None,
                last_nack: None,
            },
        );
        Registration {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Every connected proxy, sorted by namespace, pod name and connection.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let proxies = self.lock();
        let mut records: Vec<(&u64, &ProxyRecord)> = proxies.iter().collect();
        records.sort_by(|(id_a, a), (id_b, b)| {
            (&a.node.namespace, &a.node.pod_name, id_a).cmp(&(
                &b.node.namespace,
                &b.node.pod_name,
                id_b,
            ))
        });
        records
            .into_iter()
            .map(|(_, record)| ProxyStatus::from(record))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut ProxyRecord)) {
        if let Some(record) = self.lock().get_mut(&id) {
            change(record);
        }
    }
}

/// One stream's entry in the registry.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ProxyRegistry>,
    id: u64,
}

impl Registration {
    /// This stream's id, unique for the life of the registry.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn record_sent(&self, version: &str, nonce: &str) {
        self.registry.update(self.id, |record| {
            record.sent_version = Some(version.to_owned());
            record.sent_nonce = Some(nonce.to_owned());
        });
    }

    pub fn record_ack(&self, version: &str) {
        self.registry.update(self.id, |record| {
            record.acked_version = Some(version.to_owned());
        });
    }

    pub fn record_nack(&self, message: &str) {
        self.registry.update(self.id, |record| {
            record.last_nack = Some(message.to_owned());
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(namespace: &str, pod: &str) -> pb::Node {
        pb::Node {
            pod_name: pod.to_owned(),
            namespace: namespace.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn records_live_as_long_as_their_registration() {
        let registry = ProxyRegistry::new();
        let b = registry.register(node("shop", "b"));
        let a = registry.register(node("shop", "a"));
        let other = registry.register(node("default", "z"));
        a.record_sent("v1", "n1");
        a.record_ack("v1");
        a.record_nack("bad route");
        let listed = registry.list();
        let order: Vec<(&str, &str)> = listed
            .iter()
            .map(|p| (p.namespace.as_str(), p.pod_name.as_str()))
            .collect();
        assert_eq!(order, [("default", "z"), ("shop", "a"), ("shop", "b")]);
        assert_eq!(listed[1].sent_version.as_deref(), Some("v1"));
        assert_eq!(listed[1].sent_nonce.as_deref(), Some("n1"));
        assert_eq!(listed[1].acked_version.as_deref(), Some("v1"));
        assert_eq!(listed[1].last_nack.as_deref(), Some("bad route"));
        assert_eq!(listed[2].acked_version, None);
        drop(a);
        drop(other);
        assert_eq!(registry.len(), 1);
        drop(b);
        assert!(registry.is_empty());
    }
}
