//! The published state: the current snapshot behind an `ArcSwap` (readers
//! never lock), the current config problems, and a `watch` channel that only
//! says "the snapshot changed".

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::ca::auth::WorkloadTokens;
use crate::mtls::MtlsInputs;
use crate::snapshot::Snapshot;

/// Config problems of the last load, as shown by `/debug/errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ConfigState {
    snapshot: ArcSwap<Snapshot>,
    report: ArcSwap<ConfigReport>,
    /// Token digests of the current config, for the CA. Apart from the
    /// snapshot because proxies are never sent them, and a token change
    /// alone must take effect without a new snapshot version.
    tokens: ArcSwap<WorkloadTokens>,
    /// Workloads and PeerAuthentications of the current config, for
    /// `/debug/mtls` (not in the snapshot yet).
    mtls: ArcSwap<MtlsInputs>,
    changed: watch::Sender<()>,
    /// The mesh root namespace config reloads compile with.
    root_namespace: String,
}

impl ConfigState {
    pub fn new(initial: Snapshot) -> ConfigState {
        ConfigState {
            snapshot: ArcSwap::from_pointee(initial),
            report: ArcSwap::from_pointee(ConfigReport::default()),
            tokens: ArcSwap::from_pointee(WorkloadTokens::default()),
            mtls: ArcSwap::from_pointee(MtlsInputs::default()),
            changed: watch::Sender::new(()),
            root_namespace: crate::model::DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }

    /// The same state, compiling config reloads with `root_namespace`.
    pub fn with_root_namespace(mut self, root_namespace: &str) -> ConfigState {
        root_namespace.clone_into(&mut self.root_namespace);
        self
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn report(&self) -> Arc<ConfigReport> {
        self.report.load_full()
    }

    /// A receiver that wakes on every later snapshot change.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Publishes `snapshot` if its version differs from the current one.
    /// Returns whether it did; an unchanged version wakes nobody.
    pub fn publish(&self, snapshot: Snapshot) -> bool {
        if self.snapshot.load().version == snapshot.version {
            return false;
        }
        self.snapshot.store(Arc::new(snapshot));
        self.changed.send_replace(());
        true
    }

    pub fn set_report(&self, report: ConfigReport) {
        self.report.store(Arc::new(report));
    }

    pub fn tokens(&self) -> Arc<WorkloadTokens> {
        self.tokens.load_full()
    }

    pub fn set_tokens(&self, tokens: WorkloadTokens) {
        self.tokens.store(Arc::new(tokens));
    }

    pub fn mtls(&self) -> Arc<MtlsInputs> {
        self.mtls.load_full()
    }

    pub fn set_mtls(&self, inputs: MtlsInputs) {
        self.mtls.store(Arc::new(inputs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_proto::v1 as pb;

    fn snapshot_with(name: &str) -> Snapshot {
        Snapshot::new(
            vec![pb::Service {
                name: name.to_owned(),
                ..Default::default()
            }],
            Vec::new(),
        )
    }

    #[test]
    fn only_a_new_version_is_published_and_signalled() {
        let state = ConfigState::new(Snapshot::empty());
        let mut changes = state.subscribe();
        assert!(!state.publish(Snapshot::empty()));
        assert!(!changes.has_changed().unwrap_or(true));

        assert!(state.publish(snapshot_with("a")));
        assert!(changes.has_changed().unwrap_or(false));
        changes.mark_unchanged();
        assert_eq!(state.snapshot().services[0].name, "a");

        assert!(!state.publish(snapshot_with("a")));
        assert!(!changes.has_changed().unwrap_or(true));
    }
}
