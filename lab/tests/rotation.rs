//! Certificate rotation under load, through real capture: short-lived
//! workload certificates renewing over and over, and the mesh root
//! rotated with an overlapping trust bundle by restarting knitd with its
//! CA flags, while a meshed client calls a meshed server over mutual TLS
//! (PERMISSIVE, the default) at a fixed rate, and not one request fails.
//! Needs root and the workspace's binaries (`cargo build --workspace`).
//! `--nocapture` prints the timeline.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{OrLogs, new_lab};
use knit_lab::{ClientSpec, KnitdCa, Lab, PodSpec, ServiceSpec, wait_until_every};

const BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// Every proxy asks for certificates of this lifetime and so renews about
/// every 30 s (half of it, ±10 %).
const CERT_TTL: &str = "--cert-ttl-secs=60";
const RATE: u64 = 200;
const LOAD: Duration = Duration::from_secs(600);
/// Each proxy renews this often at least during the load.
const MIN_RENEWALS: u64 = 10;
/// Renewals of every proxy before the root rotation starts, which puts it
/// about 90-100 s into the load.
const RENEWALS_BEFORE_ROTATION: u64 = 3;
/// Time for every proxy to renew once more (about 33 s at most), with
/// retries after a knitd restart and room for a busy machine.
const RENEWAL_PATIENCE: Duration = Duration::from_secs(90);
/// How often conditions on the proxies are checked: each check runs a
/// process in every pod, on the cores the load runs on.
const POLL: Duration = Duration::from_secs(1);
const PATIENCE: Duration = Duration::from_secs(30);
/// Requests each new pod sends to the backend, and receives from the
/// frontend, over connections opened after a rotation step.
const PROBE_REQUESTS: u64 = 20;

/// What a proxy's `/metrics` says about its identity.
#[derive(Debug, Clone, Default)]
struct IdentityView {
    renewals: u64,
    sign_failures: u64,
    /// The bundle's root fingerprints, in bundle order.
    bundle: Vec<String>,
    /// The root the certificate in use chains to.
    leaf_root: String,
    serial: String,
}

impl IdentityView {
    fn bundle_is(&self, roots: &[&str]) -> bool {
        self.bundle.len() == roots.len() && roots.iter().all(|r| self.bundle.iter().any(|b| b == r))
    }
}

fn identity(lab: &Lab, pod: &str) -> knit_lab::Result<IdentityView> {
    let m = lab.proxy_metrics(pod)?;
    let first = |name: &str, label: &str| {
        m.label_values(name, label)
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    Ok(IdentityView {
        renewals: m.value("knit_identity_renewals_total").unwrap_or(0.0) as u64,
        sign_failures: m.sum("knit_identity_sign_failures_total", &[]) as u64,
        bundle: m.label_values("knit_identity_trust_bundle_root_info", "fingerprint"),
        leaf_root: first("knit_identity_cert_info", "root_fingerprint"),
        serial: first("knit_identity_cert_info", "serial"),
    })
}

/// Every pod with a proxy, in name order.
fn proxies(lab: &Lab) -> Vec<String> {
    lab.pods()
        .filter(|p| p.sidecar)
        .map(|p| p.name.clone())
        .collect()
}

/// Waits until `holds` is true of every proxy's identity at once.
fn wait_all(lab: &Lab, what: &str, holds: impl Fn(&IdentityView) -> bool) {
    wait_all_within(lab, what, RENEWAL_PATIENCE, holds);
}

fn wait_all_within(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    holds: impl Fn(&IdentityView) -> bool,
) {
    wait_until_every(what, timeout, POLL, || {
        for pod in proxies(lab) {
            if !holds(&identity(lab, &pod)?) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .or_logs(lab);
}

fn knitd_signer(lab: &Lab) -> String {
    let ca = lab.knitd_get_json("/debug/ca").or_logs(lab);
    ca["active_issuer"]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no active issuer in {ca}"))
        .to_owned()
}

/// The number of endpoints `pod`'s proxy has for `default/<service>`.
fn endpoints(lab: &Lab, pod: &str, service: &str) -> knit_lab::Result<usize> {
    let dump = lab.proxy_config_dump(pod)?;
    Ok(dump["services"][format!("default/{service}")]
        .as_array()
        .and_then(|ports| ports.first())
        .and_then(|p| p["endpoints"].as_array())
        .map_or(0, Vec::len))
}

/// Events with the load's progress and every proxy's renewals.
struct Timeline {
    start: Instant,
    rows: Vec<String>,
}

impl Timeline {
    fn mark(&mut self, lab: &Lab, event: &str) {
        let requests = lab
            .proxy_stats("frontend")
            .ok()
            .and_then(|s| s.get("outbound.http.requests").copied())
            .unwrap_or(0);
        let renewals: Vec<String> = proxies(lab)
            .iter()
            .map(|pod| match identity(lab, pod) {
                Ok(v) => format!("{pod}={}", v.renewals),
                Err(_) => format!("{pod}=?"),
            })
            .collect();
        let row = format!(
            "{:>6.1} s  {event:<58} requests={requests:<7} renewals: {}",
            self.start.elapsed().as_secs_f64(),
            renewals.join(" ")
        );
        eprintln!("rotation: {row}");
        self.rows.push(row);
    }
}

/// A new pod `probe-<n>` behind Service `probe-<n>`: its fresh proxy dials
/// the backend, and the frontend dials it, each over a connection (and a
/// handshake) made with the certificates and bundles of the moment.
fn fresh_handshakes(lab: &mut Lab, n: u32) -> String {
    let name = format!("probe-{n}");
    lab.add_service(
        ServiceSpec::new(&name)
            .port("http", 80, 8080)
            .selector("app", &name),
    )
    .or_logs(lab);
    lab.add_pod(
        PodSpec::new(&name)
            .label("app", &name)
            .service_account("probe")
            .sidecar(true)
            .proxy_arg(CERT_TTL),
    )
    .or_logs(lab);
    wait_until_every(
        &format!("{name} and the frontend to know each other"),
        PATIENCE,
        POLL,
        || Ok(endpoints(lab, &name, "backend")? == 1 && endpoints(lab, "frontend", &name)? == 1),
    )
    .or_logs(lab);
    let view = identity(lab, &name).or_logs(lab);

    let out = lab
        .run_client(
            &name,
            &ClientSpec::new("http://backend/").count(PROBE_REQUESTS),
        )
        .or_logs(lab);
    assert_eq!(
        (out.sent, out.ok),
        (PROBE_REQUESTS, PROBE_REQUESTS),
        "{name} → backend: {out:?}\n{}",
        lab.logs_tail(30)
    );
    let back = lab
        .run_client(
            "frontend",
            &ClientSpec::new(&format!("http://{name}/")).count(PROBE_REQUESTS),
        )
        .or_logs(lab);
    assert_eq!(
        (back.sent, back.ok),
        (PROBE_REQUESTS, PROBE_REQUESTS),
        "frontend → {name}: {back:?}\n{}",
        lab.logs_tail(30)
    );
    // Both hops were mutual TLS, as the receiving proxies saw them.
    let mtls_in = |pod: &str| {
        lab.proxy_metrics(pod).or_logs(lab).sum(
            "knit_requests_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("response_code", "200"),
            ],
        ) as u64
    };
    assert_eq!(
        mtls_in(&name),
        PROBE_REQUESTS,
        "frontend → {name} over mTLS"
    );
    format!(
        "{name}: {PROBE_REQUESTS}+{PROBE_REQUESTS} ok on new mTLS connections (its leaf from {})",
        short(&view.leaf_root)
    )
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..15).unwrap_or(fingerprint)
}

/// One lab, one load of 200 requests/s for 10 minutes (120 000 requests)
/// from `frontend` to `backend` (a meshed client and a meshed server,
/// PERMISSIVE mTLS), every proxy on 60 s certificates. Both acceptance
/// points are checked on that one load:
///
/// (a) 0 failed requests, and every proxy of the load renewed at least 10
///     times (its `knit_identity_renewals_total`).
/// (b) The root rotation, in the middle of the load. Phases, timed by
///     conditions (typical times from the load's start):
///     1. 0 s: root A, knitd's persisted root (`--state-dir`), signs.
///     2. once every proxy renewed 3 times (~90 s): knitd is killed and
///        stays down until a proxy's renewal has failed (`ca_unreachable`,
///        up to ~+33 s), so a renewal races the restart; it comes back
///        still signing with A but serving {A, B} (`--extra-trust-bundle`,
///        B a root the test made). Once every proxy holds both roots (up
///        to ~+33 s), a new pod checks new handshakes both ways.
///     3. (~120-190 s): knitd restarts signing with B as a plug-in CA
///        (`--ca-cert/--ca-key`), serving {B, A}. A new pod, with a leaf of
///        B, at once meets proxies whose leaves are still A's; then the
///        test waits until every proxy's leaf chains to B (up to ~+33 s).
///     4. (~150-225 s): knitd restarts with B alone; the test waits until
///        every proxy's bundle is {B} (up to ~+33 s), and a last new pod
///        checks new handshakes under B alone.
///     From then on (~180-600 s) B signs and proxies keep renewing. The
///     load's one mesh connection, made under A at 0 s, carries all of it.
#[test]
fn certificates_and_the_root_rotate_under_load_without_a_failed_request() {
    let mut lab = new_lab("rotation");
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(BACKEND_VIP)
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    for (name, app) in [("backend-1", "backend"), ("frontend", "frontend")] {
        lab.add_pod(
            PodSpec::new(name)
                .label("app", app)
                .service_account(app)
                .sidecar(true)
                .proxy_arg(CERT_TTL),
        )
        .or_logs(&lab);
    }
    wait_until_every(
        "frontend's proxy to know the backend",
        PATIENCE,
        POLL,
        || Ok(endpoints(&lab, "frontend", "backend")? == 1),
    )
    .or_logs(&lab);
    let root_a = lab.knitd_state_root().or_logs(&lab);
    let root_b = lab.create_root_ca("b").or_logs(&lab);
    let (a, b) = (root_a.fingerprint.as_str(), root_b.fingerprint.as_str());
    assert_eq!(knitd_signer(&lab), a);
    let load_pods = ["backend-1", "frontend"];

    let total = RATE * LOAD.as_secs();
    let load = lab
        .spawn_client(
            "frontend",
            &ClientSpec::new("http://backend/")
                .rate(RATE)
                .count(total)
                .concurrency(16)
                .duration(LOAD),
        )
        .or_logs(&lab);
    let mut timeline = Timeline {
        start: Instant::now(),
        rows: Vec::new(),
    };
    timeline.mark(
        &lab,
        &format!("load started; phase 1: A {} signs", short(a)),
    );

    // Phase 1: renewals under A.
    let patience = RENEWAL_PATIENCE * (RENEWALS_BEFORE_ROTATION as u32 + 1);
    wait_all_within(
        &lab,
        "every proxy to renew 3 times under A",
        patience,
        |v| v.renewals >= RENEWALS_BEFORE_ROTATION && v.leaf_root == a,
    );
    timeline.mark(&lab, "every proxy renewed 3 times");

    // Phase 2: knitd down until a renewal fails, then {A, B}.
    let before: BTreeMap<&str, IdentityView> = load_pods
        .iter()
        .map(|p| (*p, identity(&lab, p).or_logs(&lab)))
        .collect();
    let failures_of: BTreeMap<&str, u64> =
        before.iter().map(|(p, v)| (*p, v.sign_failures)).collect();
    let serials: BTreeMap<&str, String> =
        before.iter().map(|(p, v)| (*p, v.serial.clone())).collect();
    let failures_before: u64 = failures_of.values().sum();
    lab.stop_knitd().or_logs(&lab);
    timeline.mark(&lab, "phase 2: knitd killed");
    wait_until_every(
        "a renewal to fail while knitd is down",
        RENEWAL_PATIENCE,
        POLL,
        || {
            let mut failures = 0;
            for pod in load_pods {
                failures += identity(&lab, pod)?.sign_failures;
            }
            Ok(failures > failures_before)
        },
    )
    .or_logs(&lab);
    // The proxy whose renewal failed still serves the certificate it had.
    for pod in load_pods {
        let view = identity(&lab, pod).or_logs(&lab);
        if view.sign_failures > failures_of[pod] {
            assert_eq!(view.serial, serials[pod], "{pod} keeps its certificate");
            timeline.mark(
                &lab,
                &format!("{pod}: renewal failed, old certificate serves on"),
            );
        }
    }
    lab.start_knitd_with(KnitdCa::state_dir().trusting(&root_b.cert))
        .or_logs(&lab);
    assert_eq!(knitd_signer(&lab), a);
    timeline.mark(&lab, "knitd back: A signs, bundle {A, B}");
    wait_all(&lab, "every proxy to trust A and B", |v| {
        v.bundle_is(&[a, b])
    });
    timeline.mark(&lab, "every proxy holds {A, B}");
    let probe = fresh_handshakes(&mut lab, 2);
    timeline.mark(&lab, &probe);

    // Phase 3: B signs, {B, A}.
    lab.restart_knitd_with(KnitdCa::plug_in(&root_b).trusting(&root_a.cert))
        .or_logs(&lab);
    assert_eq!(knitd_signer(&lab), b);
    timeline.mark(
        &lab,
        &format!("phase 3: B {} signs, bundle {{B, A}}", short(b)),
    );
    let probe = fresh_handshakes(&mut lab, 3);
    timeline.mark(&lab, &probe);
    wait_all(&lab, "every proxy's certificate to chain to B", |v| {
        v.leaf_root == b && v.bundle_is(&[a, b])
    });
    timeline.mark(&lab, "every leaf chains to B");

    // Phase 4: B alone.
    lab.restart_knitd_with(KnitdCa::plug_in(&root_b))
        .or_logs(&lab);
    assert_eq!(knitd_signer(&lab), b);
    timeline.mark(&lab, "phase 4: B signs, bundle {B}");
    wait_all(&lab, "every proxy's bundle to be {B}", |v| {
        v.leaf_root == b && v.bundle_is(&[b])
    });
    timeline.mark(&lab, "every proxy holds {B}");
    let probe = fresh_handshakes(&mut lab, 4);
    timeline.mark(&lab, &probe);
    assert!(
        !load.is_finished(),
        "the rotation must end while the load still runs"
    );

    let report = load.join().or_logs(&lab);
    timeline.mark(&lab, "load finished");
    let views: BTreeMap<String, IdentityView> = proxies(&lab)
        .into_iter()
        .map(|pod| {
            let view = identity(&lab, &pod).or_logs(&lab);
            (pod, view)
        })
        .collect();
    eprintln!("rotation: timeline\n  {}", timeline.rows.join("\n  "));
    eprintln!(
        "rotation: load: sent={} ok={} failed={} statuses={:?} errors={:?} elapsed={} ms \
         max_latency={} ms max_start_lag={} ms",
        report.sent,
        report.ok,
        report.failed,
        report.statuses,
        report.errors,
        report.elapsed_ms,
        report.max_latency_ms,
        report.max_start_lag_ms
    );
    for (pod, v) in &views {
        let metrics = lab.proxy_metrics(pod).or_logs(&lab);
        let failures: Vec<String> = metrics
            .matching("knit_identity_sign_failures_total", &[])
            .map(|s| format!("{}={}", s.labels["reason"], s.value))
            .collect();
        eprintln!(
            "rotation: {pod}: renewals={} sign_failures={:?} leaf_root={} bundle={:?}",
            v.renewals,
            failures,
            short(&v.leaf_root),
            v.bundle.iter().map(|f| short(f)).collect::<Vec<_>>()
        );
    }

    assert_eq!(
        (report.sent, report.ok, report.failed),
        (total, total, 0),
        "every request of the load succeeded: {report:?}\n{}",
        lab.logs_tail(40)
    );
    for pod in load_pods {
        assert!(
            views[pod].renewals >= MIN_RENEWALS,
            "{pod} renewed {} times: {:?}",
            views[pod].renewals,
            views[pod]
        );
        assert!(views[pod].leaf_root == b && views[pod].bundle_is(&[b]));
    }
    // Every request of the load crossed the mesh hop over mutual TLS and
    // got a 200, as the frontend's proxy counted them (the probes' requests
    // to the backend came from their own pods).
    let metrics = lab.proxy_metrics("frontend").or_logs(&lab);
    let to_backend = [
        ("reporter", "source"),
        ("destination_workload", "backend-1"),
    ];
    let all = metrics.sum("knit_requests_total", &to_backend) as u64;
    let mut mtls_ok = to_backend.to_vec();
    mtls_ok.extend([
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ]);
    let mtls_ok = metrics.sum("knit_requests_total", &mtls_ok) as u64;
    assert_eq!(
        (all, mtls_ok),
        (total, total),
        "the frontend's requests to the backend"
    );
    // The load's one connection to the backend, made under root A before
    // the rotation, carried it all: the frontend opened one more mutual TLS
    // connection per probe pod and no other.
    let opened = lab
        .proxy_stats("frontend")
        .or_logs(&lab)
        .get("upstream.mesh.tls_connections_opened")
        .copied();
    assert_eq!(opened, Some(4), "mesh connections of the frontend");
}
