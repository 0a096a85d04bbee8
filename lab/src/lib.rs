//! knit-lab: a Knit mesh on one machine.
//!
//! A "pod" is a network namespace with a veth into the bridge `knit0` of a
//! "node" namespace the lab makes. Pods get addresses in 198.18.0.0/16,
//! services VIPs in 198.19.0.0/16 (and, in dual-stack labs, IPv6 from the
//! benchmarking prefix 2001:2::/48); nothing touches the host's own network
//! namespace. The lab runs the real binaries — `knitd` in the node,
//! `knit-init` and `knit-proxy` (uid 1337) in pods — plus its own apps (the
//! HTTP echo, gRPC, TLS, WebSocket, server-first and half-close TCP apps)
//! and the clients that check them, and tears everything down on drop.
//!
//! ```no_run
//! use knit_lab::{ClientSpec, Lab, PodSpec, ServiceSpec};
//!
//! # fn main() -> knit_lab::Result<()> {
//! let mut lab = Lab::new("example")?;
//! lab.start_knitd()?;
//! lab.add_service(ServiceSpec::new("backend").port("http", 80, 8080).selector("app", "backend"))?;
//! lab.add_pod(PodSpec::new("backend-1").label("app", "backend").sidecar(true))?;
//! lab.add_pod(PodSpec::new("frontend").sidecar(true))?;
//! let report = lab.run_client("frontend", &ClientSpec::new("http://backend/").count(10))?;
//! assert!(report.all_ok());
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod apps;
pub mod body;
pub mod cleanup;
pub mod client;
mod client_run;
pub mod config;
pub mod demo;
pub mod echo;
mod error;
pub mod grpc;
pub mod grpc_client;
pub mod grpc_frame;
pub mod histogram;
pub mod iptables;
pub mod knitd;
mod lab;
pub mod netns;
mod outcome;
pub mod pattern;
mod pod;
mod probe;
pub mod process;
pub mod prometheus;
mod report;
mod service;
mod spec;
pub mod tcp_apps;
pub mod tcp_clients;
pub mod tls;
pub mod tls_client;
mod token;
mod wait;
pub mod ws;

pub use apps::{AppClient, AppSpec, BANNER_PORT, GRPC_PORT, TCP_ECHO_PORT, TLS_PORT};
pub use cleanup::{Leftovers, remove_leftovers};
pub use client::{ClientReport, ClientSpec, HttpResponse, TransferCheck};
pub use error::{LabError, Result};
pub use grpc_client::{GrpcClientSpec, GrpcMode, GrpcReport};
pub use histogram::{Histogram, Percentiles};
pub use iptables::NatRule;
pub use knitd::{CaSigner, KnitdCa, RootCa};
pub use lab::{
    KNITD_GRPC_ADDR, KNITD_GRPC_TLS_ADDR, KNITD_HTTP_ADDR, Lab, LabBuilder, Pod, ShutdownHandle,
};
pub use netns::{NODE_IP, NODE_IPV6};
pub use pod::{
    PROXY_ADMIN_PORT, PROXY_METRICS_PORT, PROXY_READY_PORT, PROXY_UID, workload_entry_file,
};
pub use probe::ClientHandle;
pub use process::{find_binary, find_tool};
pub use spec::{PodSpec, ServicePort, ServiceSpec, TargetPort};
pub use tcp_clients::{BannerClientSpec, BannerReport, TcpClientSpec, TcpReport};
pub use tls_client::{TlsClientSpec, TlsReport};
pub use wait::{wait_until, wait_until_every};
pub use ws::{WsClientSpec, WsReport};
