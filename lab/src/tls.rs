//! TLS in the lab: a CA and a server certificate for the tls-echo made once
//! per lab (rcgen), and `knit-lab tls-echo`, a rustls server that greets
//! with the SNI it saw and echoes bytes. Only the ring provider is used,
//! named explicitly, so no process-wide default is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncWriteExt, split};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::error::{LabError, Result};

/// DNS names in the tls-echo's certificate.
pub const TLS_ECHO_NAMES: [&str; 4] = [
    "tls-echo",
    "tls-echo.default",
    "tls-echo.default.svc",
    "tls-echo.default.svc.cluster.local",
];
/// Files in a lab's `tls/` dir.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "tls-echo.pem";
pub const KEY_FILE: &str = "tls-echo.key";
/// A client certificate signed by the lab CA, for TLS origination with a
/// client certificate (DestinationRule MUTUAL).
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Longest a client may take for the handshake or stay idle.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_err(context: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Tls {
        context: context.to_string(),
        reason: e.to_string(),
    }
}

/// The ring provider, the only one the lab uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes a fresh CA, a tls-echo certificate and a client certificate
/// signed by it, and writes `ca.pem`, `tls-echo.pem`, `tls-echo.key`,
/// `client.pem` and `client.key` (keys mode 0600) into `dir`.
pub fn write_lab_certs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let ca_key = KeyPair::generate().map_err(|e| tls_err("generating the CA key", e))?;
    let mut ca =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA parameters", e))?;
    ca.distinguished_name
        .push(DnType::CommonName, "knit-lab test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| tls_err("self-signing the CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(|e| tls_err("generating the tls-echo key", e))?;
    let names: Vec<String> = TLS_ECHO_NAMES.iter().map(|n| n.to_string()).collect();
    let mut params =
        CertificateParams::new(names).map_err(|e| tls_err("tls-echo parameters", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, TLS_ECHO_NAMES[3]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| tls_err("signing the tls-echo certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| tls_err("generating the client key", e))?;
    let mut client = CertificateParams::new(vec!["lab-client".to_string()])
        .map_err(|e| tls_err("client parameters", e))?;
    client
        .distinguished_name
        .push(DnType::CommonName, "lab-client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(|e| tls_err("signing the client certificate", e))?;

    write_file(&dir.join(CA_FILE), ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &dir.join(CLIENT_CERT_FILE),
        client_cert.pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join(CLIENT_KEY_FILE),
        client_key.serialize_pem().as_bytes(),
        0o600,
    )
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data));
    result.map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// Certificates from a PEM file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(&format!("reading {}", path.display()), e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&format!("parsing {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(tls_err(
            &format!("reading {}", path.display()),
            "no certificate in the file",
        ));
    }
    Ok(certs)
}

/// The tls-echo's server config from `cert_dir`. A client certificate is
/// asked for but optional; one presented must chain to the lab CA.
pub fn server_config(cert_dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&cert_dir.join(CERT_FILE))?;
    let key_path: PathBuf = cert_dir.join(KEY_FILE);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_err(&format!("reading {}", key_path.display()), e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&cert_dir.join(CA_FILE))? {
        roots
            .add(ca)
            .map_err(|e| tls_err("the lab CA as a client-certificate root", e))?;
    }
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_err("the client-certificate verifier", e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("the tls-echo certificate", e))?;
    Ok(Arc::new(config))
}

/// Binds `listen` and serves the TLS echo until the process is stopped.
pub async fn run_echo(pod: &str, listen: SocketAddr, cert_dir: &Path) -> Result<()> {
    let config = server_config(cert_dir)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::io(format!("tls-echo binding {listen}"), e))?;
    tracing::info!(pod, %listen, "tls-echo listening");
    serve_echo(listener, pod, config).await
}

/// Serves the TLS echo on an already bound listener.
pub async fn serve_echo(
    listener: TcpListener,
    pod: &str,
    config: Arc<rustls::ServerConfig>,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let pod: Arc<str> = Arc::from(pod);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("tls-echo accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, pod) = (acceptor.clone(), pod.clone());
        tokio::spawn(async move {
            if let Err(e) = echo_connection(acceptor, stream, &pod).await {
                tracing::debug!(%peer, "tls-echo connection ended: {e}");
            }
        });
    }
}

/// Handshake, greet with the SNI the client sent (and ` client=verified`
/// when it presented a certificate of the lab CA), then echo until the
/// client closes its side; close ours with close_notify.
async fn echo_connection(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    pod: &str,
) -> std::io::Result<()> {
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let session = tls.get_ref().1;
    let sni = session.server_name().unwrap_or("-").to_string();
    // A client certificate got here only if it chains to the lab CA.
    let client = if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
        " client=verified"
    } else {
        ""
    };
    tls.write_all(format!("hello from {pod} sni={sni}{client}\n").as_bytes())
        .await?;
    tls.flush().await?;
    let (mut r, mut w) = split(tls);
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_are_written_and_load_into_a_server_config() {
        let dir = tempfile::tempdir().unwrap();
        write_lab_certs(dir.path()).unwrap();
        let ca = read_certs(&dir.path().join(CA_FILE)).unwrap();
        assert_eq!(ca.len(), 1);
        server_config(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = server_config(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("tls-echo.pem"), "{err}");
    }
}
