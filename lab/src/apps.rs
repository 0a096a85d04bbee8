//! The protocol apps a pod can run besides the echo, and the clients that
//! check them, run inside pods with their JSON reports parsed back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::client::{ClientReport, ClientSpec};
use crate::error::Result;
use crate::grpc_client::{GrpcClientSpec, GrpcReport};
use crate::lab::Lab;
use crate::probe::ClientHandle;
use crate::tcp_clients::{BannerClientSpec, BannerReport, TcpClientSpec, TcpReport};
use crate::tls_client::{TlsClientSpec, TlsReport};
use crate::ws::{WsClientSpec, WsReport};

/// Default ports of the apps, used by the demo and handy in tests.
pub const GRPC_PORT: u16 = 50051;
pub const TLS_PORT: u16 = 8443;
pub const BANNER_PORT: u16 = 2525;
pub const TCP_ECHO_PORT: u16 = 9000;

/// An app a pod runs besides the echo (see [`crate::PodSpec::app`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppSpec {
    /// `knit-lab grpc-echo`: gRPC unary, bidi stream and slow calls.
    GrpcEcho { port: u16 },
    /// `knit-lab tls-echo`: TLS with the lab CA's certificate for `tls-echo`.
    TlsEcho { port: u16 },
    /// `knit-lab banner`: the server speaks first.
    Banner { port: u16 },
    /// `knit-lab tcp-echo`: answers after the client's FIN.
    TcpEcho { port: u16 },
}

impl AppSpec {
    pub fn port(&self) -> u16 {
        match *self {
            AppSpec::GrpcEcho { port }
            | AppSpec::TlsEcho { port }
            | AppSpec::Banner { port }
            | AppSpec::TcpEcho { port } => port,
        }
    }

    /// The name of the app's port in the pod's WorkloadEntry, for Services'
    /// named `targetPort`s.
    pub fn port_name(&self) -> &'static str {
        match self {
            AppSpec::GrpcEcho { .. } => "grpc",
            AppSpec::TlsEcho { .. } => "tls",
            AppSpec::Banner { .. } => "banner",
            AppSpec::TcpEcho { .. } => "tcp",
        }
    }

    /// The `knit-lab` subcommand that runs it.
    pub fn subcommand(&self) -> &'static str {
        match self {
            AppSpec::GrpcEcho { .. } => "grpc-echo",
            AppSpec::TlsEcho { .. } => "tls-echo",
            AppSpec::Banner { .. } => "banner",
            AppSpec::TcpEcho { .. } => "tcp-echo",
        }
    }

    /// Arguments after the subcommand; `listen` is `0.0.0.0` or `[::]`.
    pub(crate) fn args(&self, pod: &str, listen: &str, cert_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "--pod-name".to_string(),
            pod.to_string(),
            "--listen".to_string(),
            format!("{listen}:{}", self.port()),
        ];
        if let AppSpec::TlsEcho { .. } = self {
            args.push("--cert-dir".to_string());
            args.push(cert_dir.display().to_string());
        }
        args
    }
}

/// A client the lab can run in a pod: its subcommand, arguments and report.
pub trait AppClient {
    type Report: DeserializeOwned;
    /// The `knit-lab` subcommand.
    fn subcommand(&self) -> &'static str;
    fn to_args(&self) -> Vec<String>;
    /// The client's own duration cap; the lab kills it some time after.
    fn max_duration(&self) -> Duration;
}

impl AppClient for ClientSpec {
    type Report = ClientReport;
    fn subcommand(&self) -> &'static str {
        "client"
    }
    fn to_args(&self) -> Vec<String> {
        ClientSpec::to_args(self)
    }
    fn max_duration(&self) -> Duration {
        ClientSpec::max_duration(self)
    }
}

macro_rules! app_client {
    ($spec:ty, $report:ty, $sub:literal) => {
        impl AppClient for $spec {
            type Report = $report;
            fn subcommand(&self) -> &'static str {
                $sub
            }
            fn to_args(&self) -> Vec<String> {
                <$spec>::to_args(self)
            }
            fn max_duration(&self) -> Duration {
                Duration::from_millis(self.duration_ms)
            }
        }
    };
}

app_client!(GrpcClientSpec, GrpcReport, "grpc-client");
app_client!(WsClientSpec, WsReport, "ws-client");
app_client!(TlsClientSpec, TlsReport, "tls-client");
app_client!(BannerClientSpec, BannerReport, "banner-client");
app_client!(TcpClientSpec, TcpReport, "tcp-client");

impl Lab {
    /// The lab CA's certificate (PEM), which signed the tls-echo's.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir().join(crate::tls::CA_FILE)
    }

    /// Where the lab's CA and tls-echo certificate live.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir().join("tls")
    }

    /// Runs `knit-lab grpc-client` in a pod and returns its report.
    pub fn run_grpc_client(&self, pod: &str, spec: &GrpcClientSpec) -> Result<GrpcReport> {
        self.run_app_client(pod, spec)
    }

    /// Runs `knit-lab ws-client` in a pod and returns its report.
    pub fn run_ws_client(&self, pod: &str, spec: &WsClientSpec) -> Result<WsReport> {
        self.run_app_client(pod, spec)
    }

    /// Runs `knit-lab tls-client` in a pod and returns its report.
    pub fn run_tls_client(&self, pod: &str, spec: &TlsClientSpec) -> Result<TlsReport> {
        self.run_app_client(pod, spec)
    }

    /// Runs `knit-lab banner-client` in a pod and returns its report.
    pub fn run_banner_client(&self, pod: &str, spec: &BannerClientSpec) -> Result<BannerReport> {
        self.run_app_client(pod, spec)
    }

    /// Runs `knit-lab tcp-client` in a pod and returns its report.
    pub fn run_tcp_client(&self, pod: &str, spec: &TcpClientSpec) -> Result<TcpReport> {
        self.run_app_client(pod, spec)
    }

    /// Runs any client in a pod as root (so its traffic is captured like an
    /// app's) and returns its parsed report.
    pub fn run_app_client<C: AppClient>(&self, pod: &str, spec: &C) -> Result<C::Report> {
        let netns = self.pod(pod)?.netns.clone();
        self.run_client_in(&netns, spec)
    }

    /// Starts any client in a pod in the background; [`ClientHandle::join`]
    /// returns its report.
    pub fn spawn_app_client<C: AppClient>(
        &self,
        pod: &str,
        spec: &C,
    ) -> Result<ClientHandle<C::Report>> {
        self.spawn_client_in(pod, spec)
    }
}

/// Whether the network namespace of process `pid` has a TCP socket
/// listening on `port` (IPv4 or IPv6), from `/proc/<pid>/net/tcp{,6}`:
/// the kernel's own table, so no probe traffic is needed.
pub(crate) fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .is_ok_and(|text| table_has_listener(&text, port))
    })
}

/// A `/proc/net/tcp` table has a LISTEN (state 0A) socket on `port`.
fn table_has_listener(text: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        state == Some("0A") && local.and_then(|l| l.rsplit(':').next()) == Some(want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_name_their_ports_and_commands() {
        let apps = [
            (AppSpec::GrpcEcho { port: 1 }, "grpc", "grpc-echo"),
            (AppSpec::TlsEcho { port: 2 }, "tls", "tls-echo"),
            (AppSpec::Banner { port: 3 }, "banner", "banner"),
            (AppSpec::TcpEcho { port: 4 }, "tcp", "tcp-echo"),
        ];
        for (i, (app, name, sub)) in apps.iter().enumerate() {
            assert_eq!(app.port(), i as u16 + 1);
            assert_eq!(app.port_name(), *name);
            assert_eq!(app.subcommand(), *sub);
        }
        let args = AppSpec::TlsEcho { port: 8443 }.args("p", "[::]", Path::new("/x/tls"));
        assert_eq!(
            args,
            [
                "--pod-name",
                "p",
                "--listen",
                "[::]:8443",
                "--cert-dir",
                "/x/tls"
            ]
        );
        assert_eq!(
            AppSpec::Banner { port: 25 }
                .args("p", "0.0.0.0", Path::new("/"))
                .len(),
            4
        );
    }

    #[test]
    fn proc_net_tcp_listeners() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
                  1: 0B0012C6:1F90 0C0012C6:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(table_has_listener(v4, 8080));
        assert!(
            !table_has_listener(v4, 53488),
            "an established socket is no listener"
        );
        assert!(!table_has_listener(v4, 9000));
        let v6 = "  sl  local_address                         remote_address                        st\n\
                  0: 00000000000000000000000000000000:C383 00000000000000000000000000000000:0000 0A 0\n";
        assert!(table_has_listener(v6, 50051));
        // The lab's own process has its listeners too, here in the test.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(
            std::process::id(),
            l.local_addr().unwrap().port()
        ));
    }
}
