//! knitd's own TLS server (port 15012): a serving certificate issued by
//! the mesh CA, renewed at half its lifetime and swapped in without
//! restarting the server, and the accept loop that hands TLS connections
//! to the gRPC server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::authority::{CertificateAuthority, KNITD_NAMESPACE, KNITD_SERVICE_ACCOUNT};
use super::pki::{self, CertSummary};
use crate::config::names::check_dns1123_subdomain;
use crate::error::Error;
use crate::shutdown::shutdown_requested;
use crate::translate::CLUSTER_DOMAIN;

/// A client that has not finished its handshake by then is dropped, so
/// slow or idle connections cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before retrying a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// The names knitd's certificate carries besides its SPIFFE ID: the
/// in-cluster Service names, then `extra` (`--tls-san`: DNS names or IP
/// addresses clients dial, e.g. knitd's address in the lab).
pub fn serving_names(extra: &[String]) -> Result<Vec<SanType>, Error> {
    let svc = format!("{KNITD_SERVICE_ACCOUNT}.{KNITD_NAMESPACE}.svc");
    let mut names = vec![
        KNITD_SERVICE_ACCOUNT.to_owned(),
        format!("{KNITD_SERVICE_ACCOUNT}.{KNITD_NAMESPACE}"),
        format!("{svc}.{CLUSTER_DOMAIN}"),
        svc,
    ];
    let mut sans = Vec::new();
    for name in extra {
        match name.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                check_dns1123_subdomain(name).map_err(|reason| Error::InvalidOption {
                    flag: "--tls-san",
                    reason: format!("{reason}, nor an IP address"),
                })?;
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
    }
    let mut dns = Vec::with_capacity(names.len());
    for name in names {
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|err| Error::InvalidOption {
                flag: "--tls-san",
                reason: format!("{name:?}: {err}"),
            })?;
        dns.push(SanType::DnsName(ia5));
    }
    dns.extend(sans);
    Ok(dns)
}

struct Current {
    key: Arc<CertifiedKey>,
    summary: CertSummary,
}

/// The serving certificate in use; replaced whole on renewal.
pub struct ServingCert {
    names: Vec<SanType>,
    current: ArcSwap<Current>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("fingerprint", &self.current.load().summary.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A fresh key and a certificate for it. The key is new each time, so a
/// renewal also rotates knitd's TLS key.
fn issue(ca: &CertificateAuthority, names: &[SanType]) -> Result<Current, Error> {
    let tls_error = |reason: String| Error::Tls { reason };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|err| tls_error(format!("cannot generate the serving key: {err}")))?;
    let issued = ca.issue_serving(&key, names)?;
    let summary = CertSummary::of(&issued.chain[0]).map_err(tls_error)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|err| tls_error(format!("cannot use the serving key: {err}")))?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(issued.chain, signer)),
        summary,
    })
}

impl ServingCert {
    pub fn new(ca: &CertificateAuthority, names: Vec<SanType>) -> Result<Arc<ServingCert>, Error> {
        let current = issue(ca, &names)?;
        Ok(Arc::new(ServingCert {
            names,
            current: ArcSwap::from_pointee(current),
        }))
    }

    /// Issues a new certificate and serves it from the next handshake on.
    pub fn renew(&self, ca: &CertificateAuthority) -> Result<(), Error> {
        self.current.store(Arc::new(issue(ca, &self.names)?));
        Ok(())
    }

    pub fn summary(&self) -> CertSummary {
        self.current.load().summary.clone()
    }

    /// How long until the next renewal: half the time left, so a failing
    /// renewal is retried well before the certificate expires.
    pub fn renew_delay(&self) -> Duration {
        let left = self.current.load().summary.not_after_unix - pki::now_unix();
        Duration::from_secs(u64::try_from(left / 2).unwrap_or(0)).max(Duration::from_secs(1))
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current.load().key))
    }
}

/// TLS 1.2 and 1.3 with ring (the process's only provider), no client
/// certificates (callers prove who they are with tokens), ALPN h2 for gRPC.
pub fn server_config(serving: Arc<ServingCert>) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Tls {
            reason: err.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(serving)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Renews the serving certificate until shutdown.
pub async fn renew_loop(
    ca: Arc<CertificateAuthority>,
    serving: Arc<ServingCert>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = serving.renew_delay();
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match serving.renew(&ca) {
            Ok(()) => {
                let summary = serving.summary();
                tracing::info!(
                    fingerprint = %summary.fingerprint,
                    not_after = %summary.not_after,
                    "renewed knitd's serving certificate"
                );
                delay = serving.renew_delay();
            }
            Err(err) => {
                tracing::warn!("cannot renew knitd's serving certificate: {err}");
                delay = RENEW_RETRY.min(serving.renew_delay());
            }
        }
    }
}

/// Accepts TCP connections, runs each TLS handshake in its own task (one
/// slow client must not hold up the rest) and hands finished ones to the
/// gRPC server through `connections`.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<TlsStream<TcpStream>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!("TLS accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // As on the plaintext port: no Nagle delay on config pushes.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // Only fails when the server is gone, i.e. shutting down.
                    let _ = connections.send(tls).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    handshakes.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::CaOptions;

    #[test]
    fn names_include_the_service_and_extras() {
        let names = serving_names(&["198.18.0.1".to_owned(), "knitd.lab".to_owned()])
            .unwrap_or_else(|err| panic!("{err}"));
        let shown: Vec<String> = names
            .iter()
            .map(|n| match n {
                SanType::DnsName(d) => d.as_str().to_owned(),
                SanType::IpAddress(ip) => ip.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "knitd",
                "knitd.knit-system",
                "knitd.knit-system.svc.cluster.local",
                "knitd.knit-system.svc",
                "knitd.lab",
                "198.18.0.1"
            ]
        );
        match serving_names(&["Not A Name".to_owned()]) {
            Err(err) => assert!(err.to_string().starts_with("invalid --tls-san: "), "{err}"),
            Ok(names) => panic!("accepted {names:?}"),
        }
    }

    #[test]
    fn renewal_swaps_the_certificate_and_waits_half_the_lifetime() {
        let ca =
            CertificateAuthority::open(&CaOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let serving = ServingCert::new(&ca, serving_names(&[]).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let first = serving.summary();
        let delay = serving.renew_delay();
        // 24 h certificates: renewed after about 12 h.
        assert!(
            delay > Duration::from_secs(11 * 3600) && delay <= Duration::from_secs(12 * 3600),
            "{delay:?}"
        );
        serving.renew(&ca).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(serving.summary().fingerprint, first.fingerprint);
    }
}
