use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::model::{DocumentRef, MtlsMode, PeerAuthenticationDef, Workload};
use crate::mtls::MtlsInputs;

use MtlsMode::{Disable, Permissive, Strict};

fn key(name: &str) -> WorkloadKey {
    ("shop".to_owned(), name.to_owned())
}

fn modes(default: MtlsMode, ports: &[(u16, MtlsMode)]) -> WorkloadMtls {
    WorkloadMtls {
        default,
        ports: ports.iter().copied().collect(),
    }
}

/// A table where `web` and `db` have the given modes on both sides.
fn table(web: WorkloadMtls, db: WorkloadMtls) -> MtlsTable {
    let rows = BTreeMap::from([(key("web"), web), (key("db"), db)]);
    MtlsTable {
        server: rows.clone(),
        client: rows,
    }
}

fn plain(mode: MtlsMode) -> WorkloadMtls {
    modes(mode, &[])
}

fn hold(workload: &str, port: Option<u16>, side: Side) -> HoldKey {
    HoldKey {
        namespace: "shop".to_owned(),
        workload: workload.to_owned(),
        port,
        side,
    }
}

#[test]
fn plan_table() {
    let web = key("web");
    let db = key("db");
    struct Case {
        name: &'static str,
        desired: MtlsTable,
        in_use: Vec<(WorkloadKey, MtlsTable)>,
        released: BTreeSet<HoldKey>,
        /// (server, client) rows published for `web`.
        want_web: (WorkloadMtls, WorkloadMtls),
        want_holds: Vec<(HoldKey, Vec<&'static str>)>,
    }
    let cases = vec![
        Case {
            name: "nothing in use: the config as it is",
            desired: table(plain(Strict), plain(Disable)),
            in_use: vec![],
            released: BTreeSet::new(),
            want_web: (plain(Strict), plain(Strict)),
            want_holds: vec![],
        },
        Case {
            name: "PERMISSIVE -> STRICT: clients already send mTLS, no wait",
            desired: table(plain(Strict), plain(Permissive)),
            in_use: vec![(db.clone(), table(plain(Permissive), plain(Permissive)))],
            released: BTreeSet::new(),
            want_web: (plain(Strict), plain(Strict)),
            want_holds: vec![],
        },
        Case {
            name: "DISABLE -> STRICT: the server waits for a client still told plaintext",
            desired: table(plain(Strict), plain(Permissive)),
            in_use: vec![
                (db.clone(), table(plain(Disable), plain(Permissive))),
                (web.clone(), table(plain(Disable), plain(Permissive))),
            ],
            released: BTreeSet::new(),
            want_web: (plain(Permissive), plain(Strict)),
            want_holds: vec![(hold("web", None, Side::Server), vec!["shop/db", "shop/web"])],
        },
        Case {
            name: "DISABLE -> STRICT: every client runs the new view, the server enforces",
            desired: table(plain(Strict), plain(Permissive)),
            in_use: vec![
                (db.clone(), table(plain(Strict), plain(Permissive))),
                (web.clone(), table(plain(Permissive), plain(Permissive))),
            ],
            released: BTreeSet::new(),
            want_web: (plain(Strict), plain(Strict)),
            want_holds: vec![],
        },
        Case {
            name: "STRICT -> DISABLE: clients wait until the server's proxy relaxed",
            desired: table(plain(Disable), plain(Permissive)),
            in_use: vec![
                (web.clone(), table(plain(Strict), plain(Permissive))),
                (db.clone(), table(plain(Strict), plain(Permissive))),
            ],
            released: BTreeSet::new(),
            want_web: (plain(Disable), plain(Permissive)),
            want_holds: vec![(hold("web", None, Side::Client), vec!["shop/web"])],
        },
        Case {
            name: "STRICT -> DISABLE: other proxies' view of the server does not matter",
            desired: table(plain(Disable), plain(Permissive)),
            in_use: vec![
                (web.clone(), table(plain(Disable), plain(Permissive))),
                (db.clone(), table(plain(Strict), plain(Permissive))),
            ],
            released: BTreeSet::new(),
            want_web: (plain(Disable), plain(Disable)),
            want_holds: vec![],
        },
        Case {
            name: "port level: only the port clients may still reach in plaintext waits",
            desired: table(modes(Strict, &[(9090, Permissive)]), plain(Permissive)),
            in_use: vec![(
                db.clone(),
                table(modes(Permissive, &[(8080, Disable)]), plain(Permissive)),
            )],
            released: BTreeSet::new(),
            want_web: (
                modes(Strict, &[(8080, Permissive), (9090, Permissive)]),
                modes(Strict, &[(9090, Permissive)]),
            ),
            want_holds: vec![(hold("web", Some(8080), Side::Server), vec!["shop/db"])],
        },
        Case {
            name: "a released hold is reported but not applied",
            desired: table(plain(Strict), plain(Permissive)),
            in_use: vec![(db.clone(), table(plain(Disable), plain(Permissive)))],
            released: BTreeSet::from([hold("web", None, Side::Server)]),
            want_web: (plain(Strict), plain(Strict)),
            want_holds: vec![(hold("web", None, Side::Server), vec!["shop/db"])],
        },
    ];
    for case in cases {
        let in_use: Vec<InUse<'_>> = case
            .in_use
            .iter()
            .map(|(node, table)| InUse { node, table })
            .collect();
        let planned = plan(&case.desired, &in_use, &case.released);
        assert_eq!(
            (
                planned.table.server[&web].clone(),
                planned.table.client[&web].clone()
            ),
            case.want_web,
            "{}",
            case.name
        );
        let holds: Vec<(HoldKey, Vec<&str>)> = planned
            .holds
            .iter()
            .map(|h| {
                (
                    h.key.clone(),
                    h.waiting_for.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(holds, case.want_holds, "{}", case.name);
        if case.want_holds.is_empty() || !case.released.is_empty() {
            assert_eq!(planned.table, case.desired, "{}", case.name);
        }
    }
}

fn doc() -> DocumentRef {
    DocumentRef {
        file: "t.yaml".to_owned(),
        index: 0,
        resource: None,
    }
}

fn workload(name: &str) -> Workload {
    Workload {
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        address: std::net::IpAddr::from([10, 0, 0, 1]),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        service_account: "default".to_owned(),
        ports: BTreeMap::from([("http".to_owned(), 8080)]),
        mesh_port: Some(crate::model::MESH_PORT),
        token_sha256: None,
        origin: doc(),
    }
}

/// The config: `web` and `db` in `shop`, `web` with workload mode `mode`.
fn snapshot(mode: MtlsMode) -> Arc<Snapshot> {
    let policy = PeerAuthenticationDef {
        name: "web".to_owned(),
        namespace: "shop".to_owned(),
        selector: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        mode: Some(mode),
        port_modes: BTreeMap::new(),
        created: None,
        origin: doc(),
    };
    Arc::new(Snapshot::with_mtls(
        Vec::new(),
        Vec::new(),
        MtlsInputs {
            workloads: vec![workload("web"), workload("db")],
            policies: vec![policy],
        },
        "knit-system",
    ))
}

/// What `web`'s proxy enforces and what clients are told, now.
fn web_modes(rollout: &Rollout) -> (MtlsMode, MtlsMode) {
    let current = rollout.current();
    (
        current.table.server[&key("web")].default,
        current.table.client[&key("web")].default,
    )
}

/// Sends the current config on stream `id` and ACKs it.
fn send_and_ack(rollout: &Rollout, id: u64, node: &str, nonce: &str) {
    rollout.take_for_send(id, &key(node), nonce);
    rollout.acked(id, nonce);
}

#[test]
fn disable_to_strict_waits_for_every_client_ack() {
    let rollout =
        Rollout::new(snapshot(Disable), Duration::from_secs(30)).with_drain(Duration::ZERO);
    send_and_ack(&rollout, 1, "web", "w1");
    send_and_ack(&rollout, 2, "db", "d1");
    assert_eq!(web_modes(&rollout), (Disable, Disable));

    let strict = snapshot(Strict);
    rollout.set_snapshot(Arc::clone(&strict));
    // Clients are told mTLS at once; the server stays PERMISSIVE.
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    assert_ne!(rollout.current().version, strict.version);
    assert_eq!(rollout.current().holds.len(), 1);

    // db was sent the new view but has not answered: still held.
    rollout.take_for_send(2, &key("db"), "d2");
    send_and_ack(&rollout, 1, "web", "w2");
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    // A NACK keeps db on its old (plaintext) view.
    rollout.nacked(2, "d2");
    assert_eq!(web_modes(&rollout), (Permissive, Strict));

    send_and_ack(&rollout, 2, "db", "d3");
    assert_eq!(web_modes(&rollout), (Strict, Strict));
    assert_eq!(rollout.current().version, strict.version);
    assert!(rollout.current().holds.is_empty());
}

#[test]
fn strict_to_disable_waits_for_the_server_ack() {
    let rollout =
        Rollout::new(snapshot(Strict), Duration::from_secs(30)).with_drain(Duration::ZERO);
    send_and_ack(&rollout, 1, "web", "w1");
    send_and_ack(&rollout, 2, "db", "d1");
    rollout.set_snapshot(snapshot(Disable));
    assert_eq!(web_modes(&rollout), (Disable, Permissive));
    // The client's ACK does not release it; the server's does.
    send_and_ack(&rollout, 2, "db", "d2");
    assert_eq!(web_modes(&rollout), (Disable, Permissive));
    send_and_ack(&rollout, 1, "web", "w2");
    assert_eq!(web_modes(&rollout), (Disable, Disable));
}

#[test]
fn a_disconnected_client_no_longer_holds() {
    let rollout =
        Rollout::new(snapshot(Disable), Duration::from_secs(30)).with_drain(Duration::ZERO);
    send_and_ack(&rollout, 2, "db", "d1");
    rollout.set_snapshot(snapshot(Strict));
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    rollout.removed(2);
    assert_eq!(web_modes(&rollout), (Strict, Strict));
}

#[test]
fn a_hold_past_the_timeout_is_released() {
    let rollout =
        Rollout::new(snapshot(Disable), Duration::from_secs(30)).with_drain(Duration::ZERO);
    send_and_ack(&rollout, 2, "db", "d1");
    rollout.set_snapshot(snapshot(Strict));
    let start = Instant::now();
    rollout.tick(start + Duration::from_secs(10));
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    rollout.tick(start + Duration::from_secs(31));
    assert_eq!(web_modes(&rollout), (Strict, Strict));
    // Still reported, as released, while db has not ACKed.
    let holds = rollout.current().holds.clone();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].published, Strict);
    assert_eq!(holds[0].waiting_for, ["shop/db"]);
}

#[test]
fn a_stale_ack_drops_only_older_configs() {
    let rollout =
        Rollout::new(snapshot(Disable), Duration::from_secs(30)).with_drain(Duration::ZERO);
    send_and_ack(&rollout, 2, "db", "d1");
    rollout.set_snapshot(snapshot(Strict));
    rollout.take_for_send(2, &key("db"), "d2");
    rollout.set_snapshot(snapshot(Permissive));
    rollout.take_for_send(2, &key("db"), "d3");
    // The answer to d2 arrives late: db runs d2 (mTLS) or d3 (mTLS).
    rollout.acked(2, "d2");
    rollout.set_snapshot(snapshot(Strict));
    assert_eq!(web_modes(&rollout), (Strict, Strict));
}

#[test]
fn a_superseded_config_drains_before_strict() {
    let rollout =
        Rollout::new(snapshot(Disable), Duration::from_secs(30)).with_drain(Duration::from_secs(2));
    let start = Instant::now();
    rollout.take_for_send(2, &key("db"), "d1");
    rollout.acked_at(2, "d1", start);
    rollout.set_snapshot(snapshot(Strict));
    rollout.take_for_send(2, &key("db"), "d2");
    rollout.acked_at(2, "d2", start);
    // Requests routed with the plaintext view may still be on the wire.
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    rollout.tick(start + Duration::from_secs(1));
    assert_eq!(web_modes(&rollout), (Permissive, Strict));
    rollout.tick(start + Duration::from_secs(2));
    assert_eq!(web_modes(&rollout), (Strict, Strict));
}
