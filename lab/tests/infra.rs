//! The lab itself, without Knit's proxy or control plane: namespaces, the
//! bridge, the echo app and client, name resolution, isolation and cleanup.
//! Needs root (CI runs as root); without it every test fails saying so.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::{OrLogs, host_ip, netns_list, new_lab};
use knit_lab::{ClientSpec, Lab, PodSpec, ServiceSpec, wait_until};

#[test]
fn pods_without_sidecars_talk_directly_over_the_bridge() {
    let hosts_before = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut lab = new_lab("direct");
    let a = lab
        .add_pod(PodSpec::new("pod-a").label("app", "a"))
        .or_logs(&lab);
    let b = lab
        .add_pod(PodSpec::new("pod-b").label("app", "b"))
        .or_logs(&lab);
    assert_eq!(a.ip, Ipv4Addr::new(198, 18, 0, 11));
    assert_eq!(b.ip, Ipv4Addr::new(198, 18, 0, 12));

    let url = format!("http://{}:8080/hello?x=1", b.ip);
    let report = lab
        .run_client("pod-a", &ClientSpec::new(&url).count(20).concurrency(2))
        .or_logs(&lab);
    assert_eq!(
        (report.sent, report.ok, report.failed),
        (20, 20, 0),
        "{report:?}"
    );
    assert_eq!(report.by_pod.len(), 1, "{report:?}");
    assert_eq!(report.by_pod["pod-b"], 20, "{report:?}");

    let resp = lab.http_get_in_pod("pod-a", &url).or_logs(&lab);
    assert_eq!(resp.status, 200);
    let body = resp.json().unwrap();
    assert_eq!(body["pod"], "pod-b");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(body["host"], format!("{}:8080", b.ip));
    let peer = body["peer"].as_str().unwrap();
    assert!(
        peer.starts_with(&format!("{}:", a.ip)),
        "peer {peer} is not pod-a"
    );

    // A background client joins with its report.
    let background = lab
        .spawn_client(
            "pod-a",
            &ClientSpec::new(&url)
                .count(40)
                .interval(Duration::from_millis(5)),
        )
        .or_logs(&lab);
    let during = lab.http_get_in_pod("pod-a", &url).or_logs(&lab);
    assert_eq!(during.status, 200);
    let report = background.join().or_logs(&lab);
    assert_eq!((report.sent, report.ok), (40, 40), "{report:?}");

    let status = lab
        .http_get_in_pod("pod-a", &format!("http://{}:8080/status/503", b.ip))
        .or_logs(&lab);
    assert_eq!(status.status, 503);

    // Nothing listens on port 9: a transport failure, reported, not fatal.
    let refused = lab
        .run_client(
            "pod-a",
            &ClientSpec::new(&format!("http://{}:9/", b.ip)).count(2),
        )
        .or_logs(&lab);
    assert_eq!(
        (refused.sent, refused.failed, refused.ok),
        (2, 2, 0),
        "{refused:?}"
    );
    assert!(refused.errors[0].contains("connecting to"), "{refused:?}");
    assert!(
        lab.http_get_in_pod("pod-a", &format!("http://{}:9/", b.ip))
            .is_err()
    );

    // Nothing of the lab is visible in the host's namespace.
    let host_addrs = host_ip(&["-o", "addr"]);
    assert!(
        !host_addrs.contains("198.18.") && !host_addrs.contains("198.19."),
        "{host_addrs}"
    );
    let host_links = host_ip(&["-o", "link"]);
    assert!(
        !host_links.contains("knit0") && !host_links.contains(" vh1"),
        "{host_links}"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        hosts_before
    );

    // The WorkloadEntries are where knitd will read them.
    let we = std::fs::read_to_string(lab.config_dir().join("we-pod-b.yaml")).unwrap();
    assert!(
        we.contains("address: \"198.18.0.12\"") && we.contains("\"app\": \"b\""),
        "{we}"
    );

    lab.remove_pod("pod-b").or_logs(&lab);
    assert!(!lab.config_dir().join("we-pod-b.yaml").exists());
    assert!(!netns_list().contains(&b.netns));
    let gone = lab
        .run_client(
            "pod-a",
            &ClientSpec::new(&url).timeout(Duration::from_millis(500)),
        )
        .or_logs(&lab);
    assert_eq!(gone.failed, 1, "{gone:?}");
}

/// The MAC that `ip -n ns -o <what>` prints: a link's own address for
/// `link show …`, a neighbour's for `neigh show …`.
fn lladdr(ns: &str, what: &[&str]) -> String {
    let mut args = vec!["-n", ns, "-o"];
    args.extend_from_slice(what);
    let out = host_ip(&args);
    let mut words = out.split_whitespace();
    let key = if what[0] == "link" {
        "link/ether"
    } else {
        "lladdr"
    };
    words
        .find(|w| *w == key)
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no {key} in `ip {}`: {out}", args.join(" ")))
        .to_string()
}

/// Pods reach the node (knitd) at one MAC for the lab's whole life: a
/// bridge that took its ports' lowest MAC would move whenever a pod joined,
/// and every pod that had already talked to the node would lose what it
/// sends there until its neighbour entry expired.
#[test]
fn the_node_keeps_one_mac_as_pods_join() {
    let mut lab = new_lab("nodemac");
    let a = lab.add_pod(PodSpec::new("pod-a")).or_logs(&lab);
    let node = lab.node_netns().to_string();
    let bridge = || lladdr(&node, &["link", "show", "dev", knit_lab::netns::BRIDGE]);
    assert_eq!(bridge(), knit_lab::netns::NODE_MAC);

    // pod-a talks to the node (nothing listens on 9: refused, but resolved).
    let node_url = format!("http://{}:9/", knit_lab::netns::NODE_IP);
    let probe = ClientSpec::new(&node_url).timeout(Duration::from_secs(2));
    let first = lab.run_client("pod-a", &probe).or_logs(&lab);
    assert!(first.errors[0].contains("refused"), "{first:?}");
    let cached = || {
        lladdr(
            &a.netns,
            &["neigh", "show", &knit_lab::netns::NODE_IP.to_string()],
        )
    };
    assert_eq!(cached(), knit_lab::netns::NODE_MAC);

    for n in 0..6 {
        lab.add_pod(PodSpec::new(&format!("pod-{n}"))).or_logs(&lab);
    }
    assert_eq!(bridge(), knit_lab::netns::NODE_MAC);
    // The node still answers pod-a at the address it cached.
    let again = lab.run_client("pod-a", &probe).or_logs(&lab);
    assert!(again.errors[0].contains("refused"), "{again:?}");
    assert_eq!(cached(), knit_lab::netns::NODE_MAC);
}

#[test]
fn service_names_resolve_to_vips_inside_pods() {
    let mut lab = new_lab("names");
    lab.add_pod(PodSpec::new("web")).or_logs(&lab);
    let vip = lab
        .add_service(
            ServiceSpec::new("backend")
                .port("http", 80, 8080)
                .selector("app", "backend"),
        )
        .or_logs(&lab);
    assert_eq!(vip, Ipv4Addr::new(198, 19, 0, 10));

    let hosts_path = lab.hosts_file_path("web").unwrap();
    assert_eq!(
        hosts_path,
        Path::new("/etc/netns")
            .join(&lab.pod("web").unwrap().netns)
            .join("hosts")
    );
    let hosts = std::fs::read_to_string(&hosts_path).unwrap();
    assert!(hosts.starts_with("127.0.0.1 localhost\n"), "{hosts}");
    assert!(
        hosts.contains("198.19.0.10 backend backend.default backend.default.svc backend.default.svc.cluster.local\n"),
        "{hosts}"
    );

    assert_eq!(resolve(&lab, "backend").as_deref(), Some("198.19.0.10"));
    assert_eq!(
        resolve(&lab, "backend.default.svc.cluster.local").as_deref(),
        Some("198.19.0.10")
    );

    // A later service reaches existing pods' hosts files; other namespaces
    // resolve only by qualified name.
    let db = lab
        .add_service(
            ServiceSpec::new("db")
                .namespace("data")
                .vip(Ipv4Addr::new(198, 19, 0, 50))
                .port("pg", 5432, 5432),
        )
        .or_logs(&lab);
    assert_eq!(db, Ipv4Addr::new(198, 19, 0, 50));
    assert_eq!(resolve(&lab, "db.data").as_deref(), Some("198.19.0.50"));
    assert_eq!(
        resolve(&lab, "db.data.svc.cluster.local").as_deref(),
        Some("198.19.0.50")
    );
    assert_eq!(resolve(&lab, "db"), None);

    // A pod added afterwards knows both; the next VIP is allocated.
    lab.add_pod(PodSpec::new("late").namespace("data"))
        .or_logs(&lab);
    let late = lab
        .exec_in_pod("late", "getent", &["hosts", "db"])
        .or_logs(&lab);
    assert!(late.starts_with("198.19.0.50"), "{late}");
    let third = lab
        .add_service(ServiceSpec::new("cache").port("redis", 6379, 6379))
        .or_logs(&lab);
    assert_eq!(third, Ipv4Addr::new(198, 19, 0, 11));
    assert_eq!(resolve(&lab, "cache").as_deref(), Some("198.19.0.11"));

    // The client resolves through the pod's hosts file too: the VIP has no
    // proxy behind it here, so the request fails, but it was aimed right.
    let r = lab
        .run_client(
            "web",
            &ClientSpec::new("http://backend/").timeout(Duration::from_millis(500)),
        )
        .or_logs(&lab);
    assert_eq!(r.failed, 1, "{r:?}");
    assert!(!r.errors[0].contains("resolving"), "{r:?}");
    let r = lab
        .run_client(
            "web",
            &ClientSpec::new("http://no-such-service/").timeout(Duration::from_millis(2000)),
        )
        .or_logs(&lab);
    assert!(r.errors[0].contains("resolving no-such-service"), "{r:?}");

    let svc = std::fs::read_to_string(lab.config_dir().join("svc-backend.yaml")).unwrap();
    assert!(svc.contains("clusterIP: \"198.19.0.10\""), "{svc}");
    assert!(lab.config_dir().join("svc-data-db.yaml").exists());
    lab.remove_service("data", "db").or_logs(&lab);
    assert!(!lab.config_dir().join("svc-data-db.yaml").exists());
    assert_eq!(resolve(&lab, "db.data"), None);

    // Duplicate names and VIPs are refused with the reason.
    let dup = lab
        .add_service(ServiceSpec::new("backend").port("http", 80, 8080))
        .unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    let clash = lab
        .add_service(ServiceSpec::new("other").vip(vip).port("http", 80, 8080))
        .unwrap_err();
    assert!(
        clash
            .to_string()
            .contains("already used by default/backend"),
        "{clash}"
    );
}

/// The address `getent hosts NAME` gives inside pod `web`, if any.
fn resolve(lab: &Lab, name: &str) -> Option<String> {
    let out = lab.exec_in_pod("web", "getent", &["hosts", name]).ok()?;
    out.split_whitespace().next().map(str::to_string)
}

#[test]
fn drop_removes_every_namespace_process_and_file() {
    let mut lab = new_lab("drop");
    lab.add_pod(PodSpec::new("one")).or_logs(&lab);
    lab.add_pod(PodSpec::new("two")).or_logs(&lab);
    lab.add_service(ServiceSpec::new("svc").port("http", 80, 8080))
        .or_logs(&lab);
    let two_ip = lab.pod("two").unwrap().ip;
    // A background client still running at drop time must go too.
    let client = lab
        .spawn_client(
            "one",
            &ClientSpec::new(&format!("http://{two_ip}:8080/"))
                .count(10_000)
                .interval(Duration::from_millis(20))
                .duration(Duration::from_secs(60)),
        )
        .or_logs(&lab);

    let prefix = lab.prefix().to_string();
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 3, "{namespaces:?}");
    let listed = netns_list();
    for ns in &namespaces {
        assert!(
            ns.starts_with(&prefix) && listed.contains(ns),
            "{ns} not in {listed:?}"
        );
    }
    let pids = lab.process_pids();
    assert_eq!(pids.len(), 3, "two echoes and a client: {pids:?}");
    let echo_pids = lab.pod_pids("one").unwrap();
    assert_eq!(echo_pids.len(), 1);
    for (_, pid) in &pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    let etc_dirs: Vec<_> = ["one", "two"]
        .iter()
        .map(|p| {
            lab.hosts_file_path(p)
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .collect();
    assert!(etc_dirs.iter().all(|d| d.is_dir()));
    let dir = lab.dir().to_path_buf();
    assert!(dir.is_dir());
    assert!(!client.is_finished());

    drop(lab);

    let listed = netns_list();
    assert!(
        !listed.iter().any(|n| n.starts_with(&prefix)),
        "left behind: {listed:?}"
    );
    for (label, pid) in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{label} (pid {pid}) survived"
        );
    }
    for d in &etc_dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    if std::env::var("KNIT_LAB_KEEP").as_deref() != Ok("1") {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let err = client.join().unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[test]
fn two_labs_in_parallel_do_not_interfere() {
    let build = |tag: &'static str| {
        thread::spawn(move || {
            let mut lab = new_lab(&format!("par-{tag}"));
            let client = lab
                .add_pod(PodSpec::new(&format!("{tag}-client")))
                .or_logs(&lab);
            let server = lab
                .add_pod(PodSpec::new(&format!("{tag}-server")))
                .or_logs(&lab);
            (lab, client, server)
        })
    };
    let (one, two) = (build("one"), build("two"));
    let (lab1, c1, s1) = one.join().expect("building lab one");
    let (lab2, c2, s2) = two.join().expect("building lab two");

    // Same addresses in both labs, different namespaces.
    assert_eq!((c1.ip, s1.ip), (c2.ip, s2.ip));
    assert_ne!(lab1.prefix(), lab2.prefix());
    assert_ne!(lab1.node_netns(), lab2.node_netns());

    let load = |lab: &Lab, tag: &str, ip: Ipv4Addr| {
        let spec = ClientSpec::new(&format!("http://{ip}:8080/"))
            .count(30)
            .concurrency(3);
        let r = lab.run_client(&format!("{tag}-client"), &spec).or_logs(lab);
        assert_eq!(r.ok, 30, "{r:?}");
        assert_eq!(
            r.by_pod.keys().collect::<Vec<_>>(),
            vec![&format!("{tag}-server")],
            "{r:?}"
        );
    };
    thread::scope(|s| {
        s.spawn(|| load(&lab1, "one", s1.ip));
        s.spawn(|| load(&lab2, "two", s2.ip));
    });

    // Tearing one down leaves the other working.
    let prefix1 = lab1.prefix().to_string();
    drop(lab1);
    assert!(!netns_list().iter().any(|n| n.starts_with(&prefix1)));
    load(&lab2, "two", s2.ip);
    assert!(lab2.namespaces().iter().all(|n| netns_list().contains(n)));
}

#[test]
fn bad_requests_are_refused_with_reasons() {
    let mut lab = new_lab("refuse");
    lab.add_pod(PodSpec::new("p")).or_logs(&lab);
    let dup = lab.add_pod(PodSpec::new("p")).unwrap_err();
    assert!(dup.to_string().contains("pod `p` already exists"), "{dup}");
    let bad = lab.add_pod(PodSpec::new("Bad_Name")).unwrap_err();
    assert!(
        bad.to_string().starts_with("invalid pod `Bad_Name` name"),
        "{bad}"
    );
    assert!(
        lab.remove_pod("nope")
            .unwrap_err()
            .to_string()
            .contains("pod `nope` does not exist")
    );
    assert!(lab.write_config("../escape.yaml", "x").is_err());
    assert!(
        lab.remove_config("missing.yaml")
            .unwrap_err()
            .to_string()
            .contains("missing.yaml")
    );

    // Arbitrary (even malformed) config is written as given, atomically.
    lab.write_config("broken.yaml", "kind: [unclosed")
        .or_logs(&lab);
    let path = lab.config_dir().join("broken.yaml");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "kind: [unclosed");
    let leftovers: Vec<_> = std::fs::read_dir(lab.config_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|f| !f.starts_with('.')),
        "temp files left: {leftovers:?}"
    );
    lab.remove_config("broken.yaml").or_logs(&lab);
    assert!(!path.exists());

    // Asking knitd for something while it is not running names the place.
    let err = lab.knitd_get("/healthz").unwrap_err().to_string();
    assert!(
        err.contains("198.18.0.1:15014") && err.contains("node namespace"),
        "{err}"
    );

    // wait_until reports what it waited for.
    let err = wait_until("pigs to fly", Duration::from_millis(200), || Ok(false)).unwrap_err();
    assert!(err.to_string().contains("pigs to fly"), "{err}");
}
