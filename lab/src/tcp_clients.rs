//! `knit-lab banner-client` and `knit-lab tcp-client`, the checking ends
//! of the banner and tcp-echo apps.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use crate::error::{LabError, Result};
use crate::outcome::{Outcome, elapsed_ms};
use crate::pattern::{self, PatternCheck};
use crate::tcp_apps::{MAX_LINE, MAX_TCP_ECHO, parse_greeting};

/// What `knit-lab banner-client` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BannerClientSpec {
    /// Name (system resolver) or address to connect to.
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// The line to send after the greeting; it must come back unchanged.
    #[arg(long, default_value = "hello from knit-lab banner-client")]
    pub line: String,
    /// Deadline for connecting and for each answer.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Hard cap on the whole run.
    #[arg(long, default_value_t = 60_000)]
    pub duration_ms: u64,
}

impl BannerClientSpec {
    pub fn new(host: &str, port: u16) -> BannerClientSpec {
        BannerClientSpec {
            host: host.to_string(),
            port,
            line: "hello from knit-lab banner-client".to_string(),
            timeout_ms: 5000,
            duration_ms: 60_000,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout_ms = t.as_millis() as u64;
        self
    }

    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.port.to_string(),
            "--line".into(),
            self.line.clone(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
        ]
    }

    fn validate(&self) -> Result<()> {
        crate::outcome::check_bounds(1, self.timeout_ms, self.duration_ms)?;
        if self.line.contains(['\r', '\n']) || self.line.len() > MAX_LINE - 2 {
            return Err(LabError::invalid(
                "--line",
                "one line without CR/LF, shorter than 64 KiB",
            ));
        }
        if self.line.trim().eq_ignore_ascii_case("QUIT") {
            return Err(LabError::invalid(
                "--line",
                "QUIT is sent by the client itself",
            ));
        }
        Ok(())
    }
}

/// The JSON report of `knit-lab banner-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannerReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The greeting line without CRLF.
    pub greeting: String,
    #[serde(default)]
    pub pod: Option<String>,
    /// From the established connection to the whole greeting.
    pub greeting_ms: u64,
    pub connect_ms: u64,
    /// What came back for the line sent.
    pub echo: String,
    /// The answer to QUIT.
    pub bye: String,
    pub elapsed_ms: u64,
}

impl Outcome for BannerReport {
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

pub async fn run_banner_client(spec: &BannerClientSpec) -> Result<BannerReport> {
    spec.validate()?;
    let mut report = BannerReport::default();
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(spec.duration_ms),
        banner_exchange(spec, &mut report, start),
    )
    .await;
    Ok(crate::outcome::finish(
        report,
        result,
        spec.duration_ms,
        start,
    ))
}

async fn banner_exchange(
    spec: &BannerClientSpec,
    report: &mut BannerReport,
    start: Instant,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let stream = crate::outcome::connect(&spec.host, spec.port, timeout).await?;
    let connected = Instant::now();
    report.connect_ms = elapsed_ms(start);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut read_line = async |what: &str| -> std::result::Result<String, String> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(
            timeout,
            (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| format!("{what}: nothing within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("{what}: {e}"))?;
        if n == 0 {
            return Err(format!("{what}: the server closed the connection"));
        }
        Ok(String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string())
    };
    // Nothing is sent before the greeting: the server must speak first.
    report.greeting = read_line("reading the greeting").await?;
    report.greeting_ms = u64::try_from(connected.elapsed().as_millis()).unwrap_or(u64::MAX);
    report.pod = parse_greeting(&report.greeting);
    if report.pod.is_none() {
        report.fail(format!("unexpected greeting {:?}", report.greeting));
    }
    w.write_all(format!("{}\r\n", spec.line).as_bytes())
        .await
        .map_err(|e| format!("sending the line: {e}"))?;
    report.echo = read_line("reading the echo").await?;
    if report.echo != spec.line {
        report.fail(format!(
            "echo {:?} differs from {:?}",
            report.echo, spec.line
        ));
    }
    w.write_all(b"QUIT\r\n")
        .await
        .map_err(|e| format!("sending QUIT: {e}"))?;
    report.bye = read_line("reading the answer to QUIT").await?;
    if !report.bye.starts_with("221") {
        report.fail(format!("QUIT answered {:?}", report.bye));
    }
    Ok(())
}

/// What `knit-lab tcp-client` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TcpClientSpec {
    /// Name (system resolver) or address to connect to.
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// Pattern bytes to send before shutting down the write side.
    #[arg(long, default_value_t = 1024)]
    pub bytes: u64,
    /// Deadline for connecting and for each read.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Hard cap on the whole run.
    #[arg(long, default_value_t = 60_000)]
    pub duration_ms: u64,
}

impl TcpClientSpec {
    pub fn new(host: &str, port: u16) -> TcpClientSpec {
        TcpClientSpec {
            host: host.to_string(),
            port,
            bytes: 1024,
            timeout_ms: 5000,
            duration_ms: 60_000,
        }
    }

    pub fn bytes(mut self, n: u64) -> Self {
        self.bytes = n;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout_ms = t.as_millis() as u64;
        self
    }

    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.port.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
        ]
    }

    fn validate(&self) -> Result<()> {
        crate::outcome::check_bounds(1, self.timeout_ms, self.duration_ms)?;
        if self.bytes > MAX_TCP_ECHO {
            return Err(LabError::invalid(
                "--bytes",
                format!("at most {MAX_TCP_ECHO}"),
            ));
        }
        Ok(())
    }
}

/// The JSON report of `knit-lab tcp-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The pod named after the echoed bytes.
    #[serde(default)]
    pub pod: Option<String>,
    pub elapsed_ms: u64,
}

impl Outcome for TcpReport {
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

pub async fn run_tcp_client(spec: &TcpClientSpec) -> Result<TcpReport> {
    spec.validate()?;
    let mut report = TcpReport::default();
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(spec.duration_ms),
        tcp_exchange(spec, &mut report),
    )
    .await;
    Ok(crate::outcome::finish(
        report,
        result,
        spec.duration_ms,
        start,
    ))
}

async fn tcp_exchange(
    spec: &TcpClientSpec,
    report: &mut TcpReport,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut stream = crate::outcome::connect(&spec.host, spec.port, timeout).await?;
    let mut offset = 0u64;
    while offset < spec.bytes {
        let chunk = pattern::window(
            offset,
            usize::try_from(spec.bytes - offset).unwrap_or(pattern::CHUNK),
        );
        stream
            .write_all(chunk)
            .await
            .map_err(|e| format!("sending after {offset} bytes: {e}"))?;
        offset += chunk.len() as u64;
    }
    report.bytes_sent = offset;
    // Half-close: the echo answers only once it has read our FIN.
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutting down the write side: {e}"))?;
    let mut check = PatternCheck::new(spec.bytes);
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(timeout, stream.read(&mut buf))
            .await
            .map_err(|_| {
                format!(
                    "no reply data within {} ms after {} bytes (did the FIN arrive?)",
                    spec.timeout_ms, report.bytes_received
                )
            })?
            .map_err(|e| format!("reading after {} bytes: {e}", report.bytes_received))?;
        if n == 0 {
            break;
        }
        report.bytes_received += n as u64;
        let data = &buf[..n];
        // The first `bytes` are the pattern, the rest is `|<pod>`.
        let room = usize::try_from(spec.bytes - check.bytes())
            .unwrap_or(usize::MAX)
            .min(n);
        check.update(&data[..room]);
        tail.extend_from_slice(&data[room..]);
        if tail.len() > 1024 {
            return Err(format!(
                "more than 1 KiB after the {} echoed bytes",
                spec.bytes
            ));
        }
    }
    if let Some(problem) = check.finish().problem() {
        report.fail(format!("echo: {problem}"));
    }
    match tail.strip_prefix(b"|") {
        Some(pod) if !pod.is_empty() => {
            report.pod = Some(String::from_utf8_lossy(pod).into_owned())
        }
        _ => report.fail(format!(
            "reply does not end with |<pod>: tail {:?}",
            String::from_utf8_lossy(&tail)
        )),
    }
    Ok(())
}
