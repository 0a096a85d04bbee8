//! Safe mTLS rollout: a PeerAuthentication change reaches proxies in an
//! order that never refuses a request.
//!
//! Two sides of one workload port move when its mode changes: its own proxy
//! (the server) enforces the mode, and every other proxy (a client) decides
//! from it whether to send mutual TLS or plaintext (plaintext only to
//! DISABLE). A proxy may run any config it was sent and has not yet
//! superseded by an ACK, so a change is only safe once nothing in use
//! contradicts it:
//!
//! - a server enforces STRICT on a port only when no connected proxy may
//!   still use a config that tells it to send plaintext there; until then it
//!   stays PERMISSIVE;
//! - clients are told DISABLE (plaintext) for a port only when the server's
//!   proxy may no longer be enforcing STRICT there; until then they are told
//!   PERMISSIVE and keep sending mutual TLS.
//!
//! So DISABLE → STRICT runs: clients go mTLS, they ACK, the server enforces;
//! STRICT → DISABLE runs: the server relaxes, it ACKs, clients go plaintext.
//! PERMISSIVE ↔ STRICT needs no wait (clients already send mTLS). A hold
//! that outlives the rollout timeout (a proxy that never ACKs) is released
//! with a warning that names the proxies it waited for.
//!
//! An ACK means new requests use the new config, not that requests routed
//! just before it have arrived; so a superseded config counts as in use for
//! a short drain time after the ACK.
//!
//! [`plan`] is the pure rule; [`Rollout`] keeps what each stream may be
//! using and republishes when that or the config changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::model::MtlsMode;
use crate::mtls::{WorkloadMtls, effective_mtls_by_port};
use crate::shutdown::shutdown_requested;
use crate::snapshot::Snapshot;
use crate::state::ConfigState;

/// How long a hold may wait for proxies before it is released anyway.
pub const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a config superseded by an ACK still counts as in use, for
/// requests that were routed with it and are still on the wire.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// `(namespace, name)` of a workload (its proxy's node names the same).
pub type WorkloadKey = (String, String);

/// The modes as published: what each workload's proxy enforces (`server`)
/// and what every client is told about it (`client`). Both start equal to
/// the config's effective modes and differ only while a change is held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MtlsTable {
    pub server: BTreeMap<WorkloadKey, WorkloadMtls>,
    pub client: BTreeMap<WorkloadKey, WorkloadMtls>,
}

impl MtlsTable {
    /// The config's effective modes, on both sides.
    pub fn desired(snapshot: &Snapshot) -> MtlsTable {
        let policies = &snapshot.mtls.policies;
        let root = snapshot.root_namespace.as_str();
        let server: BTreeMap<WorkloadKey, WorkloadMtls> = snapshot
            .mtls
            .workloads
            .iter()
            .map(|w| {
                (
                    (w.namespace.clone(), w.name.clone()),
                    effective_mtls_by_port(policies, root, w),
                )
            })
            .collect();
        MtlsTable {
            client: server.clone(),
            server,
        }
    }

    fn digest(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// Which side of a workload port a hold keeps back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The workload's own proxy is kept from enforcing STRICT.
    Server,
    /// Clients are kept from sending plaintext.
    Client,
}

/// One held change: `port` is `None` for the workload's default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HoldKey {
    pub namespace: String,
    pub workload: String,
    pub port: Option<u16>,
    pub side: Side,
}

/// A held change and the proxies it waits for (`namespace/pod`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    #[serde(flatten)]
    pub key: HoldKey,
    pub desired: MtlsMode,
    pub published: MtlsMode,
    pub waiting_for: Vec<String>,
}

/// A config one proxy may be running.
#[derive(Debug, Clone, Copy)]
pub struct InUse<'a> {
    /// The proxy's node, as `(namespace, pod name)`.
    pub node: &'a WorkloadKey,
    pub table: &'a MtlsTable,
}

/// The plan: the table to publish, and every hold the in-use configs call
/// for (released ones included, marked by `released`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub table: MtlsTable,
    pub holds: Vec<Hold>,
}

/// The slots of one workload whose modes can differ: its default and each
/// port any table names.
fn port_slots<'a>(
    key: &WorkloadKey,
    desired: &MtlsTable,
    in_use: impl Iterator<Item = &'a MtlsTable>,
) -> BTreeSet<Option<u16>> {
    let mut slots = BTreeSet::from([None]);
    let mut add = |modes: Option<&WorkloadMtls>| {
        if let Some(modes) = modes {
            slots.extend(modes.ports.keys().copied().map(Some));
        }
    };
    add(desired.server.get(key));
    add(desired.client.get(key));
    for table in in_use {
        add(table.server.get(key));
        add(table.client.get(key));
    }
    slots
}

fn mode_at(modes: &WorkloadMtls, slot: Option<u16>) -> MtlsMode {
    match slot {
        None => modes.default,
        Some(port) => modes.mode(port),
    }
}

/// A row from per-slot modes. A port is listed when its mode differs from
/// the default or the desired row lists it, so a row with nothing held
/// equals the desired one.
fn row(slots: &BTreeMap<Option<u16>, MtlsMode>, listed: Option<&WorkloadMtls>) -> WorkloadMtls {
    let default = slots
        .get(&None)
        .copied()
        .unwrap_or(crate::mtls::DEFAULT_MTLS_MODE);
    let ports = slots
        .iter()
        .filter_map(|(slot, mode)| slot.map(|port| (port, *mode)))
        .filter(|(port, mode)| {
            *mode != default || listed.is_some_and(|row| row.ports.contains_key(port))
        })
        .collect();
    WorkloadMtls { default, ports }
}

/// The mode to publish for one side of one slot: `want`, unless it is the
/// `risky` mode and `waiting` (computed only then) names proxies that may
/// still contradict it; then PERMISSIVE, unless the hold was released. A
/// hold is recorded either way.
fn hold_if_waiting(
    want: MtlsMode,
    risky: MtlsMode,
    waiting: impl FnOnce() -> BTreeSet<String>,
    key: HoldKey,
    released: &BTreeSet<HoldKey>,
    holds: &mut Vec<Hold>,
) -> MtlsMode {
    if want != risky {
        return want;
    }
    let waiting = waiting();
    if waiting.is_empty() {
        return want;
    }
    let published = if released.contains(&key) {
        want
    } else {
        MtlsMode::Permissive
    };
    holds.push(Hold {
        key,
        desired: want,
        published,
        waiting_for: waiting.into_iter().collect(),
    });
    published
}

/// One table and every proxy that may be running it. Proxies nearly
/// always share a handful of tables (the current one, the one before), so
/// planning per table instead of per proxy keeps a recompute at
/// O(workloads × tables), not O(workloads × proxies), and a recompute
/// runs on every ACK.
struct TableUse<'a> {
    table: &'a MtlsTable,
    nodes: Vec<&'a WorkloadKey>,
}

fn group_by_table<'a>(in_use: &[InUse<'a>]) -> Vec<TableUse<'a>> {
    let mut groups: Vec<TableUse<'a>> = Vec::new();
    for u in in_use {
        // By address only: equal tables are nearly always one `Arc`, and
        // comparing contents would cost a walk of the whole table. Equal
        // tables apart only make two groups.
        match groups.iter_mut().find(|g| std::ptr::eq(g.table, u.table)) {
            Some(group) => group.nodes.push(u.node),
            None => groups.push(TableUse {
                table: u.table,
                nodes: vec![u.node],
            }),
        }
    }
    groups
}

/// The safe table to publish given what proxies may be using. Holds in
/// `released` are reported but not applied.
pub fn plan(desired: &MtlsTable, in_use: &[InUse<'_>], released: &BTreeSet<HoldKey>) -> Plan {
    let groups = group_by_table(in_use);
    let mut table = MtlsTable::default();
    let mut holds = Vec::new();
    let name = |node: &WorkloadKey| format!("{}/{}", node.0, node.1);
    for (key, server_desired) in &desired.server {
        let client_desired = desired.client.get(key).unwrap_or(server_desired);
        let slots = port_slots(key, desired, groups.iter().map(|g| g.table));
        let mut server_row = BTreeMap::new();
        let mut client_row = BTreeMap::new();
        for slot in slots {
            let hold_key = |side| HoldKey {
                namespace: key.0.clone(),
                workload: key.1.clone(),
                port: slot,
                side,
            };
            // Server: STRICT waits until no client may send plaintext.
            let published = hold_if_waiting(
                mode_at(server_desired, slot),
                MtlsMode::Strict,
                || {
                    groups
                        .iter()
                        .filter(|g| {
                            g.table
                                .client
                                .get(key)
                                .is_some_and(|m| mode_at(m, slot) == MtlsMode::Disable)
                        })
                        .flat_map(|g| g.nodes.iter().map(|node| name(node)))
                        .collect()
                },
                hold_key(Side::Server),
                released,
                &mut holds,
            );
            server_row.insert(slot, published);

            // Clients: DISABLE waits until the server may no longer be STRICT.
            let published = hold_if_waiting(
                mode_at(client_desired, slot),
                MtlsMode::Disable,
                || {
                    groups
                        .iter()
                        .filter(|g| {
                            g.table
                                .server
                                .get(key)
                                .is_some_and(|m| mode_at(m, slot) == MtlsMode::Strict)
                        })
                        .flat_map(|g| g.nodes.iter().filter(|node| **node == key))
                        .map(|node| name(node))
                        .collect()
                },
                hold_key(Side::Client),
                released,
                &mut holds,
            );
            client_row.insert(slot, published);
        }
        table
            .server
            .insert(key.clone(), row(&server_row, Some(server_desired)));
        table
            .client
            .insert(key.clone(), row(&client_row, Some(client_desired)));
    }
    Plan { table, holds }
}

/// What streams send now: the config, the safe mTLS table, and their
/// version (the config's own version when nothing is held).
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    pub table: Arc<MtlsTable>,
    pub version: String,
    pub holds: Vec<Hold>,
    /// The services and endpoints every stream sends for this, encoded on
    /// first use (see `discovery::shared_part`).
    pub encoded_shared: OnceLock<Bytes>,
}

impl Published {
    /// The config as it is, nothing held (what a fresh knitd starts with).
    pub fn unsequenced(snapshot: Arc<Snapshot>) -> Published {
        let table = Arc::new(MtlsTable::desired(&snapshot));
        Published {
            version: snapshot.version.clone(),
            snapshot,
            table,
            holds: Vec::new(),
            encoded_shared: OnceLock::new(),
        }
    }
}

/// `/debug/rollout`: the config's version, the version proxies are sent,
/// and every held mTLS change with the proxies it waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub config_version: String,
    pub published_version: String,
    pub holds: Vec<Hold>,
}

/// What one stream may be running: the table it last ACKed, every one sent
/// since (by nonce, oldest first), and superseded ones still draining.
#[derive(Debug)]
struct StreamUse {
    node: WorkloadKey,
    acked: Option<Arc<MtlsTable>>,
    pending: Vec<(String, Arc<MtlsTable>)>,
    draining: Vec<(Instant, Arc<MtlsTable>)>,
}

impl StreamUse {
    fn in_use(&self) -> impl Iterator<Item = &Arc<MtlsTable>> {
        self.acked
            .iter()
            .chain(self.pending.iter().map(|(_, t)| t))
            .chain(self.draining.iter().map(|(_, t)| t))
    }
}

#[derive(Debug)]
struct Inner {
    snapshot: Arc<Snapshot>,
    desired: MtlsTable,
    streams: HashMap<u64, StreamUse>,
    /// When each currently called-for hold was first seen.
    hold_since: HashMap<HoldKey, Instant>,
    released: BTreeSet<HoldKey>,
    /// What the last plan was made from: every (stream, table) pair in
    /// use. The `Arc`s keep those tables alive, so an address seen here is
    /// never reused by another table.
    planned_from: Vec<(u64, Arc<MtlsTable>)>,
}

impl Inner {
    /// Every (stream, table) pair in use, in a canonical order.
    fn in_use_pairs(&self) -> Vec<(u64, Arc<MtlsTable>)> {
        let mut pairs: Vec<(u64, Arc<MtlsTable>)> = self
            .streams
            .iter()
            .flat_map(|(id, s)| s.in_use().map(move |t| (*id, Arc::clone(t))))
            .collect();
        pairs.sort_by_key(|(id, t)| (*id, Arc::as_ptr(t) as usize));
        pairs.dedup_by(|a, b| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1));
        pairs
    }
}

/// Whether two lists of pairs name the same streams and the very same
/// tables.
fn same_pairs(a: &[(u64, Arc<MtlsTable>)], b: &[(u64, Arc<MtlsTable>)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && Arc::ptr_eq(&x.1, &y.1))
}

/// The sequencer: the current `Published`, recomputed on every config
/// change, send, ACK, NACK and disconnect.
#[derive(Debug)]
pub struct Rollout {
    inner: Mutex<Inner>,
    current: ArcSwap<Published>,
    changed: watch::Sender<()>,
    timeout: Duration,
    drain: Duration,
}

impl Rollout {
    pub fn new(snapshot: Arc<Snapshot>, timeout: Duration) -> Rollout {
        let published = Published::unsequenced(Arc::clone(&snapshot));
        Rollout {
            inner: Mutex::new(Inner {
                desired: (*published.table).clone(),
                snapshot,
                streams: HashMap::new(),
                hold_since: HashMap::new(),
                released: BTreeSet::new(),
                planned_from: Vec::new(),
            }),
            current: ArcSwap::from_pointee(published),
            changed: watch::Sender::new(()),
            timeout,
            drain: DEFAULT_DRAIN,
        }
    }

    /// The same rollout with another drain time.
    pub fn with_drain(mut self, drain: Duration) -> Rollout {
        self.drain = drain;
        self
    }

    /// A rollout of `state`'s config, kept current by a task that follows
    /// config changes, ends drain times and releases expired holds.
    pub fn follow(
        state: Arc<ConfigState>,
        timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Arc<Rollout> {
        // Subscribe before reading, so no change slips between.
        let mut changes = state.subscribe();
        let rollout = Arc::new(Rollout::new(state.snapshot(), timeout));
        let follower = Arc::clone(&rollout);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(500));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown_requested(&mut shutdown) => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        follower.set_snapshot(state.snapshot());
                    }
                    _ = ticks.tick() => follower.tick(Instant::now()),
                }
            }
        });
        rollout
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data, recomputed whole: a panic elsewhere cannot tear it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn current(&self) -> Arc<Published> {
        self.current.load_full()
    }

    pub fn view(&self) -> RolloutView {
        let current = self.current();
        RolloutView {
            config_version: current.snapshot.version.clone(),
            published_version: current.version.clone(),
            holds: current.holds.clone(),
        }
    }

    /// Wakes on every change of `current`.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// A new config.
    pub fn set_snapshot(&self, snapshot: Arc<Snapshot>) {
        let mut inner = self.lock();
        if inner.snapshot.version == snapshot.version {
            return;
        }
        inner.desired = MtlsTable::desired(&snapshot);
        inner.snapshot = snapshot;
        self.republish(&mut inner, Instant::now(), Replan::Always);
    }

    /// What to send on stream `id` (of proxy `node`) with `nonce`, recorded
    /// as possibly in use from now on. Taken under the lock, so a recompute
    /// either sees this send or happens before it and is what is sent.
    /// Recording the current table never calls for a new hold: it was
    /// planned from the same config, and published modes only ever differ
    /// from the config towards PERMISSIVE.
    pub fn take_for_send(&self, id: u64, node: &WorkloadKey, nonce: &str) -> Arc<Published> {
        let mut inner = self.lock();
        let published = self.current.load_full();
        inner
            .streams
            .entry(id)
            .or_insert_with(|| StreamUse {
                node: node.clone(),
                acked: None,
                pending: Vec::new(),
                draining: Vec::new(),
            })
            .pending
            .push((nonce.to_owned(), Arc::clone(&published.table)));
        published
    }

    /// Stream `id` ACKed `nonce`: it runs that table; older ones are gone.
    pub fn acked(&self, id: u64, nonce: &str) {
        self.acked_at(id, nonce, Instant::now());
    }

    /// [`Rollout::acked`] at `now`.
    pub fn acked_at(&self, id: u64, nonce: &str, now: Instant) {
        let mut inner = self.lock();
        let Some(stream) = inner.streams.get_mut(&id) else {
            return;
        };
        let Some(at) = stream.pending.iter().position(|(n, _)| n == nonce) else {
            return;
        };
        let later = stream.pending.split_off(at + 1);
        let Some((_, running)) = stream.pending.pop() else {
            return;
        };
        let superseded = stream
            .acked
            .take()
            .into_iter()
            .chain(stream.pending.drain(..).map(|(_, t)| t))
            // Addresses first: an unchanged table is the same `Arc`.
            .filter(|table| !Arc::ptr_eq(table, &running) && **table != *running)
            .collect::<Vec<_>>();
        if !self.drain.is_zero() {
            let until = now + self.drain;
            stream
                .draining
                .extend(superseded.into_iter().map(|table| (until, table)));
        }
        stream.acked = Some(running);
        stream.pending = later;
        self.republish(&mut inner, now, Replan::IfInUseChanged);
    }

    /// Stream `id` rejected `nonce`: it keeps running what it had.
    pub fn nacked(&self, id: u64, nonce: &str) {
        let mut inner = self.lock();
        let Some(stream) = inner.streams.get_mut(&id) else {
            return;
        };
        stream.pending.retain(|(n, _)| n != nonce);
        self.republish(&mut inner, Instant::now(), Replan::IfInUseChanged);
    }

    /// Stream `id` ended.
    pub fn removed(&self, id: u64) {
        let mut inner = self.lock();
        if inner.streams.remove(&id).is_some() {
            self.republish(&mut inner, Instant::now(), Replan::IfInUseChanged);
        }
    }

    /// Ends drain times and releases holds older than the timeout; call
    /// periodically.
    pub fn tick(&self, now: Instant) {
        let mut inner = self.lock();
        let drained = inner
            .streams
            .values()
            .any(|s| s.draining.iter().any(|(until, _)| *until <= now));
        let expired = inner
            .hold_since
            .iter()
            .any(|(key, since)| !inner.released.contains(key) && now - *since >= self.timeout);
        if drained || expired {
            self.republish(&mut inner, now, Replan::Always);
        }
    }

    /// Plans again and publishes the result if it differs. The plan is a
    /// function of the desired table, the released holds and the
    /// (stream, table) pairs in use, so with `IfInUseChanged` it is skipped
    /// when those pairs are the very ones of the last plan: an ACK of the
    /// current table usually only moves a table from "sent" to "running"
    /// and the old one to "draining", and with hundreds of proxies ACKing
    /// every change, planning each time would dominate knitd's CPU.
    fn republish(&self, inner: &mut Inner, now: Instant, when: Replan) {
        for stream in inner.streams.values_mut() {
            stream.draining.retain(|(until, _)| *until > now);
        }
        let pairs = inner.in_use_pairs();
        if when == Replan::IfInUseChanged && same_pairs(&pairs, &inner.planned_from) {
            return;
        }
        inner.planned_from = pairs;
        let plan_now = |inner: &Inner| {
            let in_use: Vec<InUse<'_>> = inner
                .streams
                .values()
                .flat_map(|s| {
                    s.in_use().map(|table| InUse {
                        node: &s.node,
                        table,
                    })
                })
                .collect();
            plan(&inner.desired, &in_use, &inner.released)
        };
        let mut planned = plan_now(inner);
        // Track hold ages; release the expired ones and plan again.
        let called_for: BTreeSet<&HoldKey> = planned.holds.iter().map(|h| &h.key).collect();
        inner.hold_since.retain(|key, _| called_for.contains(key));
        inner.released.retain(|key| called_for.contains(key));
        let mut newly_released = Vec::new();
        for hold in &planned.holds {
            let since = *inner.hold_since.entry(hold.key.clone()).or_insert(now);
            if !inner.released.contains(&hold.key) && now - since >= self.timeout {
                newly_released.push(hold.clone());
            }
        }
        if !newly_released.is_empty() {
            for hold in &newly_released {
                tracing::warn!(
                    workload = %format!("{}/{}", hold.key.namespace, hold.key.workload),
                    port = ?hold.key.port,
                    side = ?hold.key.side,
                    desired = ?hold.desired,
                    waited_for = ?hold.waiting_for,
                    "mTLS change applied without every proxy's ACK (rollout timeout)"
                );
                inner.released.insert(hold.key.clone());
            }
            planned = plan_now(inner);
        }
        let current = self.current.load();
        if *current.table == planned.table
            && current.snapshot.version == inner.snapshot.version
            && current.holds == planned.holds
        {
            return;
        }
        let version = if planned.table == inner.desired {
            inner.snapshot.version.clone()
        } else {
            format!(
                "{}-{:08x}",
                inner.snapshot.version,
                planned.table.digest() as u32
            )
        };
        let table = if *current.table == planned.table {
            Arc::clone(&current.table)
        } else {
            Arc::new(planned.table)
        };
        drop(current);
        for hold in &planned.holds {
            tracing::info!(
                workload = %format!("{}/{}", hold.key.namespace, hold.key.workload),
                port = ?hold.key.port,
                side = ?hold.key.side,
                desired = ?hold.desired,
                published = ?hold.published,
                waiting_for = ?hold.waiting_for,
                "mTLS change held until proxies ACK"
            );
        }
        self.current.store(Arc::new(Published {
            snapshot: Arc::clone(&inner.snapshot),
            table,
            version,
            holds: planned.holds,
            encoded_shared: OnceLock::new(),
        }));
        self.changed.send_replace(());
    }
}

/// When [`Rollout::republish`] must plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replan {
    /// The config changed, a drain ended or a hold expired.
    Always,
    /// A stream's tables changed; skip if the pairs in use did not.
    IfInUseChanged,
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
