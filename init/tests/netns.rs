//! Root tests: the real `knit-init` binary against the real kernel, each in a
//! throwaway network namespace the test creates and deletes.
//!
//! They need root (to create namespaces and change netfilter rules) and fail,
//! never skip, without it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{getsockopt, sockopt::OriginalDst};

const BINARY: &str = env!("CARGO_BIN_EXE_knit-init");
/// Generous bound for anything that should happen at once, so busy machines do not flake.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "knit-init's namespace tests must run as root: they create network namespaces \
         and install iptables rules (CAP_SYS_ADMIN, CAP_NET_ADMIN); run `cargo test -p knit-init` as root"
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{program} {}`: {err}", args.join(" ")))
}

fn expect_success(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "`{what}` failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap_or_else(|err| panic!("`{what}` printed non-UTF-8: {err}"))
}

/// A network namespace that exists for the lifetime of the value.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create() -> Self {
        require_root();
        let name = format!(
            "knit-init-test-{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed)
        );
        expect_success("ip netns add", run("ip", &["netns", "add", &name]));
        NetNs { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        expect_success(&args.join(" "), self.exec(args))
    }

    fn knit_init(&self, args: &[&str]) -> Output {
        let mut full = vec![BINARY];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    fn knit_init_ok(&self, args: &[&str]) -> String {
        expect_success(
            &format!("knit-init {}", args.join(" ")),
            self.knit_init(args),
        )
    }

    /// `iptables-save -t nat` without comment lines and with chain counters zeroed.
    fn nat_table(&self) -> String {
        normalise_save(&self.exec_ok(&["iptables-save", "-t", "nat"]))
    }

    /// Runs `work` on a thread that has joined this namespace; sockets it
    /// creates stay in the namespace wherever they are used afterwards.
    fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            let joined = scope.spawn(move || {
                let namespace = File::open(&path)
                    .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
                // setns affects only this thread, which ends with the scope.
                setns(&namespace, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|err| panic!("setns {}: {err}", path.display()));
                work()
            });
            joined
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Adds rules and a chain that belong to someone else; knit-init must leave them alone.
    fn add_foreign_rules(&self) {
        for args in [
            &["iptables", "-t", "nat", "-N", "OTHER"][..],
            &[
                "iptables", "-t", "nat", "-A", "OTHER", "-p", "udp", "-j", "RETURN",
            ],
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "udp",
                "-m",
                "comment",
                "--comment",
                "not knit",
                "-j",
                "OTHER",
            ],
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "9",
                "-j",
                "RETURN",
            ],
        ] {
            self.exec_ok(args);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let output = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(err) => eprintln!("warning: cannot run ip netns del {}: {err}", self.name),
        }
    }
}

fn normalise_save(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(at)) => format!("{} [0:0]\n", &line[..at]),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// `-A` lines of a save or restore text, grouped by chain, in order.
fn rules_by_chain(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default().to_string();
            chains.entry(chain).or_default().push(line.to_string());
        }
    }
    chains
}

fn dry_run(args: &[&str]) -> String {
    let mut full = vec!["--dry-run"];
    full.extend_from_slice(args);
    expect_success("knit-init --dry-run", run(BINARY, &full))
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn apply_installs_exactly_the_planned_chains_and_jumps() {
    let ns = NetNs::create();
    let report = ns.knit_init_ok(&[]);
    assert!(
        report.contains("added jumps PREROUTING -> KNIT_INBOUND, OUTPUT -> KNIT_OUTPUT"),
        "{report}"
    );
    let table = ns.nat_table();
    let planned = dry_run(&[]);
    for declaration in planned.lines().filter(|line| line.starts_with(':')) {
        assert!(
            table.lines().any(|line| line == declaration),
            "{declaration} missing in\n{table}"
        );
    }
    // The kernel prints back exactly the rules rendered, chain by chain, in order.
    assert_eq!(
        rules_by_chain(&table),
        rules_by_chain(&planned),
        "installed:\n{table}"
    );
}

#[test]
fn applying_twice_gives_the_same_table() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        ns.knit_init_ok(&[]);
        let once = ns.nat_table();
        let report = ns.knit_init_ok(&[]);
        assert!(report.contains("jumps already present"), "{report}");
        let twice = ns.nat_table();
        assert_eq!(once, twice, "foreign rules: {with_foreign_rules}");
    }
}

#[test]
fn reapplying_with_new_options_replaces_the_chain_contents() {
    let ns = NetNs::create();
    ns.knit_init_ok(&[]);
    let options = ["--exclude-inbound-ports", "22", "--outbound-port", "16001"];
    ns.knit_init_ok(&options);
    assert_eq!(
        rules_by_chain(&ns.nat_table()),
        rules_by_chain(&dry_run(&options))
    );
}

#[test]
fn cleanup_restores_the_table_as_it_was_before_apply() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        let before = ns.nat_table();
        ns.knit_init_ok(&[]);
        assert_ne!(ns.nat_table(), before, "apply changed nothing");
        let report = ns.knit_init_ok(&["--cleanup"]);
        assert!(
            report.contains("removed from table nat: 2 jump(s)"),
            "{report}"
        );
        assert_eq!(
            ns.nat_table(),
            before,
            "foreign rules: {with_foreign_rules}"
        );

        let again = ns.knit_init_ok(&["--cleanup"]);
        assert!(again.contains("nothing to remove"), "{again}");
        assert_eq!(
            ns.nat_table(),
            before,
            "foreign rules: {with_foreign_rules}"
        );
    }
}

#[test]
fn cleanup_with_nothing_installed_succeeds_and_changes_nothing() {
    for with_foreign_rules in [false, true] {
        let ns = NetNs::create();
        if with_foreign_rules {
            ns.add_foreign_rules();
        }
        let before = ns.nat_table();
        let report = ns.knit_init_ok(&["--cleanup"]);
        assert!(report.contains("nothing to remove"), "{report}");
        assert_eq!(ns.nat_table(), before);
    }
}

#[test]
fn without_privileges_it_fails_clearly_and_dry_run_still_works() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BINARY,
    ];
    for extra in [&[][..], &["--cleanup"][..]] {
        let args: Vec<&str> = as_nobody.iter().chain(extra).copied().collect();
        let output = ns.exec(&args);
        let stderr = stderr_of(&output);
        assert!(
            !output.status.success(),
            "{extra:?} succeeded without privileges"
        );
        assert!(
            stderr.starts_with("knit-init: error: `iptables-save`"),
            "{stderr}"
        );
        assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one message: {stderr}"
        );
    }
    assert_eq!(ns.nat_table(), before);

    let dry: Vec<&str> = as_nobody.iter().copied().chain(["--dry-run"]).collect();
    assert_eq!(
        expect_success("dry run as nobody", ns.exec(&dry)),
        dry_run(&[])
    );
}

/// Finds `program` in this process's PATH.
fn find_in_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; install the `iptables` package"))
}

#[test]
fn missing_iptables_restore_is_named_and_nothing_changes() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    // A PATH holding iptables-save but not iptables-restore.
    let tools = tempfile::tempdir().expect("temporary directory");
    std::os::unix::fs::symlink(
        find_in_path("iptables-save"),
        tools.path().join("iptables-save"),
    )
    .expect("link iptables-save");
    let path = format!("PATH={}", tools.path().display());
    let output = ns.exec(&["env", &path, BINARY]);
    assert!(!output.status.success());
    assert_eq!(
        stderr_of(&output).trim_end(),
        "knit-init: error: `iptables-restore` was not found in PATH; install the `iptables` package"
    );
    assert_eq!(ns.nat_table(), before);
}

#[test]
fn a_rejected_transaction_reports_stderr_and_applies_nothing() {
    let ns = NetNs::create();
    let before = ns.nat_table();
    // Line 3 is valid and line 4 is not; atomicity means line 3 must not stick.
    let transaction = "*nat\n:KNIT_PARTIAL - [0:0]\n-A KNIT_PARTIAL -j RETURN\n\
                       -A KNIT_NO_SUCH_CHAIN -j RETURN\nCOMMIT\n";
    let result =
        ns.enter(|| knit_init::Netfilter::restore(&knit_init::Iptables::ipv4(), transaction));
    match result {
        Err(err @ knit_init::InitError::RestoreFailed { .. }) => {
            let message = err.to_string();
            assert!(message.contains("line 4"), "{message}");
            assert!(message.contains("no rule was changed"), "{message}");
        }
        other => panic!("expected RestoreFailed, got {other:?}"),
    }
    assert_eq!(ns.nat_table(), before);
}

// ---- real capture ----

fn listen(address: &str) -> TcpListener {
    let listener = TcpListener::bind(address)
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}"));
    listener
        .set_nonblocking(true)
        .expect("listener can be non-blocking");
    listener
}

/// Connects as the current thread's namespace and uid, sends `token`, closes.
fn send_token(address: SocketAddrV4, token: &str) {
    let mut stream = TcpStream::connect_timeout(&address.into(), DEADLINE)
        .unwrap_or_else(|err| panic!("connect to {address} failed: {err}"));
    stream
        .write_all(token.as_bytes())
        .unwrap_or_else(|err| panic!("send to {address} failed: {err}"));
}

/// Connects from a child process of another identity (setpriv arguments), sends `token`.
fn send_token_as(ns: &NetNs, identity: &[&str], address: SocketAddrV4, token: &str) {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && printf %s {token} >&3",
        address.ip(),
        address.port()
    );
    let mut args = vec!["netns", "exec", ns.name.as_str(), "setpriv"];
    args.extend_from_slice(identity);
    args.extend_from_slice(&["--clear-groups", "bash", "-c", &script]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot spawn client {identity:?}: {err}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("client can be waited for") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("client {identity:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "client {identity:?} to {address} failed ({status}): {stderr}"
    );
}

/// Waits for one connection on `listener` and returns what it sent and its original destination.
fn receive(listener: &TcpListener, what: &str) -> (String, SocketAddrV4) {
    let started = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _peer)) => break stream,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "no connection reached {what} within {DEADLINE:?}"
                );
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(err) => panic!("accept on {what} failed: {err}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking stream");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut received = String::new();
    stream
        .read_to_string(&mut received)
        .unwrap_or_else(|err| panic!("reading from the connection on {what} failed: {err}"));
    let original = getsockopt(&stream, OriginalDst)
        .unwrap_or_else(|err| panic!("SO_ORIGINAL_DST on {what}: {err}"));
    let destination = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(original.sin_addr.s_addr)),
        u16::from_be(original.sin_port),
    );
    (received, destination)
}

fn assert_idle(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what} unexpectedly received a connection from {peer}"),
        Err(err) => panic!("accept on {what} failed: {err}"),
    }
}

#[test]
fn outbound_tcp_is_captured_except_for_the_proxy_uid_gid_and_loopback() {
    let ns = NetNs::create();
    // A non-loopback address of the namespace stands in for a remote service.
    // It sits on `lo` because the dummy driver is not always available; the
    // route is the same either way, since local addresses are reached via lo.
    for args in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "addr", "add", "198.18.255.1/32", "dev", "lo"],
    ] {
        ns.exec_ok(args);
    }
    ns.knit_init_ok(&[]);

    let remote = SocketAddrV4::new(Ipv4Addr::new(198, 18, 255, 1), 80);
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
    let (proxy, service, loopback_service) = ns.enter(|| {
        (
            listen("127.0.0.1:15001"),
            listen(&remote.to_string()),
            listen(&local.to_string()),
        )
    });

    // An ordinary process (root here) is captured: it reaches the proxy,
    // which can still learn where it was going.
    ns.enter(|| send_token(remote, "root"));
    assert_eq!(
        receive(&proxy, "the outbound port"),
        ("root".to_string(), remote)
    );

    let unprivileged = ["--reuid=4242", "--regid=4242"];
    send_token_as(&ns, &unprivileged, remote, "other-user");
    assert_eq!(
        receive(&proxy, "the outbound port"),
        ("other-user".to_string(), remote)
    );

    // The proxy's own identity goes straight through: uid and gid each suffice.
    send_token_as(&ns, &["--reuid=1337", "--regid=1337"], remote, "proxy");
    assert_eq!(
        receive(&service, "198.18.255.1:80"),
        ("proxy".to_string(), remote)
    );
    send_token_as(&ns, &["--reuid=1337", "--regid=4242"], remote, "proxy-uid");
    assert_eq!(
        receive(&service, "198.18.255.1:80"),
        ("proxy-uid".to_string(), remote)
    );
    send_token_as(&ns, &["--reuid=4242", "--regid=1337"], remote, "proxy-gid");
    assert_eq!(
        receive(&service, "198.18.255.1:80"),
        ("proxy-gid".to_string(), remote)
    );

    // Loopback destinations are never captured.
    ns.enter(|| send_token(local, "loopback"));
    assert_eq!(
        receive(&loopback_service, "127.0.0.1:8080"),
        ("loopback".to_string(), local)
    );

    assert_idle(&proxy, "the outbound port");
    assert_idle(&service, "198.18.255.1:80");
}

#[test]
fn inbound_tcp_is_captured_except_for_excluded_ports() {
    let pod = NetNs::create();
    let client = NetNs::create();
    for args in [
        &["ip", "link", "set", "lo", "up"][..],
        &[
            "ip",
            "link",
            "add",
            "kp0",
            "type",
            "veth",
            "peer",
            "name",
            "kc0",
            "netns",
            &client.name,
        ],
        &["ip", "addr", "add", "198.18.254.1/30", "dev", "kp0"],
        &["ip", "link", "set", "kp0", "up"],
    ] {
        pod.exec_ok(args);
    }
    for args in [
        &["ip", "addr", "add", "198.18.254.2/30", "dev", "kc0"][..],
        &["ip", "link", "set", "kc0", "up"],
    ] {
        client.exec_ok(args);
    }
    pod.knit_init_ok(&[]);

    let app = SocketAddrV4::new(Ipv4Addr::new(198, 18, 254, 1), 8080);
    let health = SocketAddrV4::new(Ipv4Addr::new(198, 18, 254, 1), 15021);
    let (inbound, app_listener, health_listener) = pod.enter(|| {
        (
            listen("0.0.0.0:15006"),
            listen(&app.to_string()),
            listen(&health.to_string()),
        )
    });

    client.enter(|| send_token(app, "to-app"));
    assert_eq!(
        receive(&inbound, "the inbound port"),
        ("to-app".to_string(), app)
    );

    client.enter(|| send_token(health, "to-health"));
    assert_eq!(
        receive(&health_listener, "excluded port 15021"),
        ("to-health".to_string(), health)
    );

    assert_idle(&inbound, "the inbound port");
    assert_idle(&app_listener, "198.18.254.1:8080");
}
