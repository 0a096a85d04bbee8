//! `knit-lab tls-client`: connects to the tls-echo, verifies its
//! certificate against the lab CA for the SNI name it sends, reads the
//! greeting, and checks that pattern bytes come back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, split};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::error::{LabError, Result};
use crate::outcome::{Outcome, elapsed_ms};
use crate::pattern::{self, PatternCheck};

/// Largest transfer of one run.
pub const MAX_TLS_BYTES: u64 = 1024 * 1024 * 1024;
const MAX_HELLO: usize = 1024;

/// What `knit-lab tls-client` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TlsClientSpec {
    /// Name (system resolver) or address to connect to.
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// PEM file of the CA the server certificate must chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// Server name sent as SNI and verified against the certificate (default: --host).
    #[arg(long)]
    pub sni: Option<String>,
    /// Pattern bytes to send and expect back.
    #[arg(long, default_value_t = 4096)]
    pub bytes: u64,
    /// Deadline for connecting, the handshake and each read.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Hard cap on the whole run.
    #[arg(long, default_value_t = 60_000)]
    pub duration_ms: u64,
}

impl TlsClientSpec {
    pub fn new(host: &str, port: u16, ca: impl Into<PathBuf>) -> TlsClientSpec {
        TlsClientSpec {
            host: host.to_string(),
            port,
            ca: ca.into(),
            sni: None,
            bytes: 4096,
            timeout_ms: 5000,
            duration_ms: 60_000,
        }
    }

    pub fn sni(mut self, name: &str) -> Self {
        self.sni = Some(name.to_string());
        self
    }

    pub fn bytes(mut self, n: u64) -> Self {
        self.bytes = n;
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration_ms = d.as_millis() as u64;
        self
    }

    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.port.to_string(),
            "--ca".into(),
            self.ca.display().to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
        ];
        if let Some(sni) = &self.sni {
            args.push("--sni".into());
            args.push(sni.clone());
        }
        args
    }

    fn server_name(&self) -> &str {
        self.sni.as_deref().unwrap_or(&self.host)
    }

    fn validate(&self) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
        crate::outcome::check_bounds(1, self.timeout_ms, self.duration_ms)?;
        if self.bytes > MAX_TLS_BYTES {
            return Err(LabError::invalid(
                "--bytes",
                format!("at most {MAX_TLS_BYTES}"),
            ));
        }
        let name = ServerName::try_from(self.server_name().to_string())
            .map_err(|e| LabError::invalid("--sni", format!("{:?}: {e}", self.server_name())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in crate::tls::read_certs(&self.ca)? {
            roots.add(cert).map_err(|e| LabError::Tls {
                context: format!("adding {} to the trust store", self.ca.display()),
                reason: e.to_string(),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| LabError::Tls {
                context: "TLS versions".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok((Arc::new(config), name))
    }
}

/// The JSON report of `knit-lab tls-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The greeting line, without its newline.
    pub hello: String,
    /// The pod and the SNI named by the greeting.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    /// e.g. `TLSv1_3`.
    #[serde(default)]
    pub tls_version: Option<String>,
    pub bytes_sent: u64,
    /// Bytes that came back matching the pattern.
    pub bytes_echoed: u64,
    pub handshake_ms: u64,
    pub elapsed_ms: u64,
}

impl Outcome for TlsReport {
    fn reason_slot(&mut self) -> &mut Option<String> {
        &mut self.reason
    }
    fn set_ok(&mut self, ok: bool) {
        self.ok = ok;
    }
    fn set_elapsed(&mut self, ms: u64) {
        self.elapsed_ms = ms;
    }
}

/// `hello from <pod> sni=<sni>` → (pod, sni).
pub fn parse_hello(line: &str) -> Option<(String, String)> {
    let rest = line.trim_end().strip_prefix("hello from ")?;
    let (pod, sni) = rest.split_once(" sni=")?;
    (!pod.is_empty()).then(|| (pod.to_string(), sni.to_string()))
}

/// Runs the client; errors only for unusable options (or an unreadable CA).
pub async fn run_client(spec: &TlsClientSpec) -> Result<TlsReport> {
    let (config, name) = spec.validate()?;
    let mut report = TlsReport::default();
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(spec.duration_ms),
        exchange(spec, config, name, &mut report, start),
    )
    .await;
    Ok(crate::outcome::finish(
        report,
        result,
        spec.duration_ms,
        start,
    ))
}

async fn exchange(
    spec: &TlsClientSpec,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    report: &mut TlsReport,
    start: Instant,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let late = |what: &str| format!("{what}: nothing within {} ms", spec.timeout_ms);
    let tcp = crate::outcome::connect(&spec.host, spec.port, timeout).await?;
    let mut tls = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| late("TLS handshake"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    report.handshake_ms = elapsed_ms(start);
    report.tls_version = tls.get_ref().1.protocol_version().map(|v| format!("{v:?}"));

    // The greeting: one line, read byte by byte so nothing after it is consumed.
    let mut hello = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(timeout, tls.read(&mut b))
            .await
            .map_err(|_| late("reading the greeting"))?
            .map_err(|e| format!("reading the greeting: {e}"))?;
        if n == 0 || b[0] == b'\n' {
            break;
        }
        hello.push(b[0]);
        if hello.len() > MAX_HELLO {
            return Err(format!("greeting longer than {MAX_HELLO} bytes"));
        }
    }
    report.hello = String::from_utf8_lossy(&hello).into_owned();
    match parse_hello(&report.hello) {
        Some((pod, sni)) => {
            if sni != spec.server_name() {
                report.fail(format!(
                    "server saw SNI {sni:?}, client sent {:?}",
                    spec.server_name()
                ));
            }
            report.pod = Some(pod);
            report.sni = Some(sni);
        }
        None => report.fail(format!("unexpected greeting {:?}", report.hello)),
    }

    let (mut r, mut w) = split(tls);
    let total = spec.bytes;
    // Writing and reading run together: the echo answers as it reads, and a
    // large transfer would otherwise fill both directions' buffers.
    let writer = async move {
        let mut offset = 0u64;
        while offset < total {
            let chunk = pattern::window(
                offset,
                usize::try_from(total - offset).unwrap_or(pattern::CHUNK),
            );
            w.write_all(chunk).await?;
            offset += chunk.len() as u64;
        }
        // close_notify and FIN: the echo stops when it reads them.
        w.shutdown().await?;
        Ok::<u64, std::io::Error>(offset)
    };
    let reader = async {
        let mut check = PatternCheck::new(total);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::time::timeout(timeout, r.read(&mut buf))
                .await
                .map_err(|_| late("reading the echo"))?
                .map_err(|e| format!("reading the echo after {} bytes: {e}", check.bytes()))?;
            if n == 0 {
                return Ok::<_, String>(check);
            }
            check.update(&buf[..n]);
        }
    };
    let (written, check) = tokio::join!(writer, reader);
    report.bytes_sent = written.map_err(|e| format!("sending: {e}"))?;
    let result = check?.finish();
    if let Some(problem) = result.problem() {
        report.fail(format!("echo: {problem}"));
    } else {
        report.bytes_echoed = result.bytes;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_lines() {
        assert_eq!(
            parse_hello("hello from web-1 sni=tls-echo\n"),
            Some(("web-1".into(), "tls-echo".into()))
        );
        assert_eq!(
            parse_hello("hello from web-1 sni=-"),
            Some(("web-1".into(), "-".into()))
        );
        assert_eq!(parse_hello("hi from web-1 sni=x"), None);
        assert_eq!(parse_hello("hello from  sni=x"), None);
    }
}
