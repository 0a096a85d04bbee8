//! Shared helpers of the root tests: throwaway network namespaces, the
//! knit-init binary run inside them, and real TCP clients and listeners.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::{Ip6tOriginalDst, OriginalDst};
use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
use socket2::{Domain, Protocol, Socket, Type};

pub const BINARY: &str = env!("CARGO_BIN_EXE_knit-init");
/// Generous bound for anything that should happen at once, so busy machines do not flake.
pub const DEADLINE: Duration = Duration::from_secs(20);
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The proxy's uid and gid in every test.
pub const PROXY_ID: u32 = 1337;

static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "knit-init's namespace tests must run as root: they create network namespaces \
         and install iptables rules (CAP_SYS_ADMIN, CAP_NET_ADMIN); run `cargo test -p knit-init` as root"
    );
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{program} {}`: {err}", args.join(" ")))
}

pub fn expect_success(what: &str, output: Output) -> String {
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

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A network namespace that exists for the lifetime of the value.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create() -> Self {
        require_root();
        let name = format!(
            "knit-init-test-{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed)
        );
        expect_success("ip netns add", run("ip", &["netns", "add", &name]));
        NetNs { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        expect_success(&args.join(" "), self.exec(args))
    }

    /// Runs each command (given as one string, split on spaces) in the namespace.
    pub fn setup(&self, commands: &[&str]) {
        for command in commands {
            let args: Vec<&str> = command.split_whitespace().collect();
            self.exec_ok(&args);
        }
    }

    pub fn knit_init(&self, args: &[&str]) -> Output {
        let mut full = vec![BINARY];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    pub fn knit_init_ok(&self, args: &[&str]) -> String {
        expect_success(
            &format!("knit-init {}", args.join(" ")),
            self.knit_init(args),
        )
    }

    /// `iptables-save -t nat` without comment lines and with chain counters zeroed.
    pub fn nat_table(&self) -> String {
        normalise_save(&self.exec_ok(&["iptables-save", "-t", "nat"]))
    }

    /// `ip6tables-save -t nat`, normalised like [`NetNs::nat_table`].
    pub fn nat6_table(&self) -> String {
        normalise_save(&self.exec_ok(&["ip6tables-save", "-t", "nat"]))
    }

    /// Runs `work` on a thread that has joined this namespace; sockets it
    /// creates stay in the namespace wherever they are used afterwards.
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
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

    /// Adds IPv4 rules and a chain that belong to someone else; knit-init must leave them alone.
    pub fn add_foreign_rules(&self) {
        self.add_foreign_rules_with("iptables");
    }

    /// The same foreign rules, written with `tool` (`iptables`, `ip6tables`, `iptables-legacy`...).
    pub fn add_foreign_rules_with(&self, tool: &str) {
        for args in [
            &[tool, "-t", "nat", "-N", "OTHER"][..],
            &[
                tool, "-t", "nat", "-A", "OTHER", "-p", "udp", "-j", "RETURN",
            ],
            &[
                tool,
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
                tool,
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

/// Drops `#` lines (they carry timestamps) and zeroes chain counters, which
/// move with traffic; what remains is every chain, policy and rule.
pub fn normalise_save(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(at)) => format!("{} [0:0]\n", &line[..at]),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// `-A` lines of a save or restore text, grouped by chain, in order.
pub fn rules_by_chain(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default().to_string();
            chains.entry(chain).or_default().push(line.to_string());
        }
    }
    chains
}

/// Chain names declared by `:NAME` lines that start with `KNIT_`.
pub fn knit_chains(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|decl| decl.split_whitespace().next())
        .filter(|name| name.starts_with("KNIT_"))
        .map(str::to_string)
        .collect()
}

pub fn dry_run(args: &[&str]) -> String {
    let mut full = vec!["--dry-run"];
    full.extend_from_slice(args);
    expect_success("knit-init --dry-run", run(BINARY, &full))
}

/// One family's transaction out of a dry run: the lines after its header,
/// up to the next header.
pub fn dry_run_section(text: &str, header: &str) -> String {
    let mut lines = text.lines().skip_while(|line| *line != header);
    assert_eq!(lines.next(), Some(header), "no `{header}` in\n{text}");
    lines
        .take_while(|line| !line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

pub const IPV4_HEADER: &str = "# iptables-restore (IPv4)";
pub const IPV6_HEADER: &str = "# ip6tables-restore (IPv6)";

/// Finds `program` in this process's PATH.
pub fn find_in_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; install the `iptables` package"))
}

/// Writes an executable shell script and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write test script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make test script executable");
    path.to_string_lossy().into_owned()
}

// ---- real TCP ----

/// A non-blocking listener; IPv6 ones are IPv6-only so they can share a
/// port with an IPv4 listener.
pub fn listen(address: SocketAddr) -> TcpListener {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .expect("socket");
    if address.is_ipv6() {
        socket.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket
        .bind(&address.into())
        .unwrap_or_else(|err| panic!("cannot listen on {address}: {err}"));
    socket.listen(16).expect("listen");
    let listener: TcpListener = socket.into();
    listener
        .set_nonblocking(true)
        .expect("listener can be non-blocking");
    listener
}

pub fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

pub fn v6(text: &str, port: u16) -> SocketAddr {
    let address: Ipv6Addr = text.parse().expect("test address is valid");
    SocketAddr::V6(SocketAddrV6::new(address, port, 0, 0))
}

/// Who a test client is, as the netfilter owner match sees it.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// The app: root, like the test process.
pub const APP: Identity = Identity { uid: 0, gid: 0 };
/// The proxy, by uid and gid.
pub const PROXY: Identity = Identity {
    uid: PROXY_ID,
    gid: PROXY_ID,
};

/// Connects from inside `ns` as `who` (optionally from `source`), sends `token`, closes.
///
/// The owner match looks at the credentials of the socket's file, which come
/// from the creating thread's filesystem uid/gid. Those are per thread (unlike
/// setuid, which glibc applies to the whole process), so the test switches
/// them on its own short-lived thread just for the socket() call.
pub fn send_as(ns: &NetNs, who: Identity, source: Option<IpAddr>, to: SocketAddr, token: &str) {
    ns.enter(|| {
        setfsgid(Gid::from_raw(who.gid));
        setfsuid(Uid::from_raw(who.uid));
        // An invalid id changes nothing and returns the current one.
        assert_eq!(setfsuid(Uid::from_raw(u32::MAX)).as_raw(), who.uid);
        assert_eq!(setfsgid(Gid::from_raw(u32::MAX)).as_raw(), who.gid);
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP));
        setfsuid(Uid::from_raw(0));
        setfsgid(Gid::from_raw(0));
        let socket = socket.expect("client socket");
        if let Some(source) = source {
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .unwrap_or_else(|err| panic!("cannot bind the client to {source}: {err}"));
        }
        socket
            .connect_timeout(&to.into(), DEADLINE)
            .unwrap_or_else(|err| panic!("{who:?} connecting to {to} failed: {err}"));
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(token.as_bytes())
            .unwrap_or_else(|err| panic!("send to {to} failed: {err}"));
    });
}

/// Connects as the app (root, any source).
pub fn send(ns: &NetNs, to: SocketAddr, token: &str) {
    send_as(ns, APP, None, to, token);
}

/// Waits for one connection on `listener` and returns what it sent and its
/// original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
pub fn receive(listener: &TcpListener, what: &str) -> (String, SocketAddr) {
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
    (received, original_destination(&stream, what))
}

fn original_destination(stream: &TcpStream, what: &str) -> SocketAddr {
    let local = stream.local_addr().expect("local address");
    let original = if local.is_ipv4() {
        getsockopt(stream, OriginalDst).map(|original| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(original.sin_addr.s_addr)),
                u16::from_be(original.sin_port),
            ))
        })
    } else {
        getsockopt(stream, Ip6tOriginalDst).map(|original| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(original.sin6_addr.s6_addr),
                u16::from_be(original.sin6_port),
                0,
                0,
            ))
        })
    };
    match original {
        Ok(original) => original,
        // No conntrack entry: the namespace has no nat rules (the "remote"),
        // so nothing can have rewritten the destination; it is the local address.
        Err(nix::errno::Errno::ENOENT) => local,
        Err(err) => panic!("original destination on {what}: {err}"),
    }
}

pub fn assert_idle(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what} unexpectedly received a connection from {peer}"),
        Err(err) => panic!("accept on {what} failed: {err}"),
    }
}
