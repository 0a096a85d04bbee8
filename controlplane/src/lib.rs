//! knitd, the Knit control plane, in file mode: a directory of YAML is
//! loaded and validated (`config`), compiled into the snapshot every proxy
//! needs (`translate`), published (`state`), and streamed to proxies over
//! `Discovery.Stream` (`discovery`); the mesh CA (`ca`) signs each proxy's
//! workload certificate over `Certificates.Sign`; `debug_http` shows it all.
//!
//! Data flow: files → [`config`] → [`model`] → [`translate`] → [`snapshot`]
//! → [`state`] → [`discovery`].
//!
//! Ports: 15012 serves Discovery and Certificates over TLS (certificate from
//! the mesh CA); 15010 serves the same in plaintext, for the lab and
//! development only, since tokens and configs cross it in the clear.
#![forbid(unsafe_code)]

pub mod authz;
pub mod ca;
pub mod client_tls;
pub mod config;
pub mod debug_http;
pub mod discovery;
pub mod discovery_http;
pub mod discovery_response;
pub mod error;
pub mod model;
pub mod mtls;
pub mod push_throttle;
pub mod registry;
pub mod rollout;
pub mod shutdown;
pub mod snapshot;
pub mod state;
pub mod translate;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use knit_proto::v1::certificates_server::CertificatesServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use ca::{
    CaOptions, CertificateAuthority, CertificatesService, FileTokenAuthenticator, ServingCert,
};

pub use error::Error;
pub use registry::{ProxyRegistry, ProxyStatus};
pub use snapshot::{Snapshot, SnapshotView};
pub use state::{ConfigReport, ConfigState};
pub use watch::{Compiled, compile_dir, compile_dir_in};

/// Default address of the discovery + CA gRPC server (plaintext).
pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:15010";
/// Default address of the discovery + CA gRPC server over TLS.
pub const DEFAULT_GRPC_TLS_ADDR: &str = "0.0.0.0:15012";
/// Default address of knitd's health and debug HTTP server.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:15014";
/// How often the config directory is checked for changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long shutdown waits for the servers to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnitdOptions {
    pub config_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    /// `None`: no TLS server (tests that only need the plaintext one).
    pub grpc_tls_addr: Option<SocketAddr>,
    /// Extra DNS names / IP addresses for the TLS server's certificate.
    pub tls_sans: Vec<String>,
    pub http_addr: SocketAddr,
    pub poll_interval: Duration,
    /// Proxies that may hold an unanswered config at once
    /// ([`push_throttle`]).
    pub max_concurrent_pushes: usize,
    /// How long a proxy may take to answer a config before its push
    /// permit is given back anyway.
    pub push_answer_timeout: Duration,
    pub ca: CaOptions,
    /// The mesh root namespace: a PeerAuthentication there without a
    /// selector is mesh-wide.
    pub root_namespace: String,
}

impl KnitdOptions {
    /// Options with the default addresses and poll interval, and an
    /// in-memory CA root.
    pub fn new(config_dir: impl Into<PathBuf>) -> KnitdOptions {
        KnitdOptions {
            config_dir: config_dir.into(),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 15010)),
            grpc_tls_addr: Some(SocketAddr::from(([0, 0, 0, 0], 15012))),
            tls_sans: Vec::new(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 15014)),
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_concurrent_pushes: push_throttle::DEFAULT_MAX_CONCURRENT_PUSHES,
            push_answer_timeout: push_throttle::DEFAULT_ANSWER_TIMEOUT,
            ca: CaOptions::default(),
            root_namespace: model::DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

/// A running knitd: its bound addresses, its state, and its tasks.
#[derive(Debug)]
pub struct Knitd {
    grpc_addr: SocketAddr,
    grpc_tls_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    state: Arc<ConfigState>,
    registry: Arc<ProxyRegistry>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: JoinSet<(&'static str, Result<(), Error>)>,
}

async fn bind(purpose: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            purpose,
            addr,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::LocalAddr { purpose, source })?;
    Ok((listener, local))
}

impl Knitd {
    /// Opens the CA, loads the config directory once, then starts the
    /// directory watch, the gRPC servers (plaintext and TLS) and the debug
    /// server. Bad config never fails this; an unusable CA does.
    pub async fn start(options: KnitdOptions) -> Result<Knitd, Error> {
        let ca = Arc::new(CertificateAuthority::open(&options.ca)?);
        let tls_names = ca::tls::serving_names(&options.tls_sans)?;
        ca.log_start();
        let (grpc_listener, grpc_addr) = bind("discovery gRPC", options.grpc_addr).await?;
        let tls_listener = match options.grpc_tls_addr {
            Some(addr) => Some(bind("discovery gRPC over TLS", addr).await?),
            None => None,
        };
        let (http_listener, http_addr) = bind("debug HTTP", options.http_addr).await?;

        let state = Arc::new(
            ConfigState::new(Snapshot::empty()).with_root_namespace(&options.root_namespace),
        );
        let registry = ProxyRegistry::new();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let watched = watch::load_initial(&options.config_dir, &state).await;

        let mut tasks = JoinSet::new();
        tasks.spawn({
            let poll = watch::poll_config_dir(
                options.config_dir.clone(),
                Arc::clone(&state),
                options.poll_interval,
                watched,
                stopped.clone(),
            );
            async move {
                poll.await;
                ("config watch", Ok(()))
            }
        });
        let discovery = discovery::DiscoveryService::new(
            Arc::clone(&state),
            Arc::clone(&registry),
            push_throttle::PushThrottle::new(
                options.max_concurrent_pushes,
                options.push_answer_timeout,
            ),
            stopped.clone(),
        );
        let rollout = Arc::clone(discovery.rollout());
        let certificates = CertificatesService::new(
            Arc::clone(&ca),
            Arc::new(FileTokenAuthenticator::new(Arc::clone(&state))),
        );
        tasks.spawn({
            let mut stopped = stopped.clone();
            let server = tonic::transport::Server::builder()
                .add_service(discovery_http::DiscoveryHttp::new(discovery.clone()))
                .add_service(CertificatesServer::new(certificates.clone()))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(grpc_listener).map(|accepted| {
                        accepted.inspect(|stream| {
                            // A config push is many small writes; Nagle
                            // would hold the tail for the peer's delayed ACK.
                            let _ = stream.set_nodelay(true);
                        })
                    }),
                    async move { shutdown::shutdown_requested(&mut stopped).await },
                );
            async move { ("discovery gRPC server", server.await.map_err(Error::from)) }
        });
        let mut grpc_tls_addr = None;
        let mut serving = None;
        if let Some((listener, addr)) = tls_listener {
            let cert = ServingCert::new(&ca, tls_names)?;
            let acceptor =
                tokio_rustls::TlsAcceptor::from(ca::tls::server_config(Arc::clone(&cert))?);
            let (connections, incoming) = mpsc::channel(64);
            tasks.spawn({
                let accept = ca::tls::accept_loop(listener, acceptor, connections, stopped.clone());
                async move {
                    accept.await;
                    ("TLS accept loop", Ok(()))
                }
            });
            tasks.spawn({
                let renew =
                    ca::tls::renew_loop(Arc::clone(&ca), Arc::clone(&cert), stopped.clone());
                async move {
                    renew.await;
                    ("serving certificate renewal", Ok(()))
                }
            });
            tasks.spawn({
                let mut stopped = stopped.clone();
                let incoming = ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
                let server = tonic::transport::Server::builder()
                    .add_service(discovery_http::DiscoveryHttp::new(discovery))
                    .add_service(CertificatesServer::new(certificates))
                    .serve_with_incoming_shutdown(incoming, async move {
                        shutdown::shutdown_requested(&mut stopped).await
                    });
                async move { ("TLS gRPC server", server.await.map_err(Error::from)) }
            });
            let summary = cert.summary();
            tracing::info!(
                %addr,
                fingerprint = %summary.fingerprint,
                not_after = %summary.not_after,
                "serving discovery and CA over TLS"
            );
            grpc_tls_addr = Some(addr);
            serving = Some(cert);
        }
        tasks.spawn({
            let serve = debug_http::serve(
                http_listener,
                debug_http::DebugSources {
                    state: Arc::clone(&state),
                    registry: Arc::clone(&registry),
                    ca: Arc::clone(&ca),
                    serving,
                    root_namespace: options.root_namespace.clone(),
                    rollout,
                },
                stopped,
            );
            async move {
                serve.await;
                ("debug HTTP server", Ok(()))
            }
        });
        tracing::info!(%grpc_addr, %http_addr, dir = %options.config_dir.display(), "knitd serving");
        Ok(Knitd {
            grpc_addr,
            grpc_tls_addr,
            http_addr,
            ca,
            state,
            registry,
            stop,
            tasks,
        })
    }

    /// Where the discovery server listens (the real port when 0 was asked).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the TLS gRPC server listens, if it runs.
    pub fn grpc_tls_addr(&self) -> Option<SocketAddr> {
        self.grpc_tls_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    pub fn state(&self) -> &Arc<ConfigState> {
        &self.state
    }

    pub fn registry(&self) -> &Arc<ProxyRegistry> {
        &self.registry
    }

    /// Resolves when a task stops on its own, which only happens on failure.
    async fn failed(&mut self) -> Error {
        match self.tasks.join_next().await {
            Some(Ok((task, Err(error)))) => {
                tracing::error!("{task} stopped: {error}");
                error
            }
            Some(Ok((task, Ok(())))) => Error::Task {
                task,
                reason: "stopped unexpectedly".to_owned(),
            },
            Some(Err(join_error)) => Error::Task {
                task: "knitd",
                reason: join_error.to_string(),
            },
            None => Error::Task {
                task: "knitd",
                reason: "no tasks running".to_owned(),
            },
        }
    }

    /// Stops every task: streams end, servers close their listeners.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.send_replace(true);
        let mut first_error = None;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((task, Err(error))) => {
                        tracing::error!("{task} failed during shutdown: {error}");
                        first_error.get_or_insert(error);
                    }
                    Err(join_error) => {
                        first_error.get_or_insert(Error::Task {
                            task: "knitd",
                            reason: join_error.to_string(),
                        });
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("knitd tasks did not stop within {SHUTDOWN_GRACE:?}; aborting them");
            self.tasks.abort_all();
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Runs knitd until `shutdown` resolves (then stops gracefully) or a server
/// fails.
pub async fn run(options: KnitdOptions, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut knitd = Knitd::start(options).await?;
    let failure = tokio::select! {
        _ = shutdown => None,
        error = knitd.failed() => Some(error),
    };
    match failure {
        None => {
            tracing::info!("shutting down");
            knitd.shutdown().await
        }
        Some(error) => {
            // The failure is what matters; shutdown errors are logged.
            let _ = knitd.shutdown().await;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_agree() {
        let options = KnitdOptions::new("/etc/knit");
        assert_eq!(DEFAULT_GRPC_ADDR.parse(), Ok(options.grpc_addr));
        assert_eq!(DEFAULT_GRPC_TLS_ADDR.parse().ok(), options.grpc_tls_addr);
        assert_eq!(DEFAULT_HTTP_ADDR.parse(), Ok(options.http_addr));
    }
}
