//! WebSocket (RFC 6455) on the echo's `/ws`: the server side of the upgrade
//! and the `knit-lab ws-client` that checks every message comes back.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::body::LabBody;
use crate::echo::{POD_HEADER, plain};
use crate::error::{LabError, Result};
use crate::outcome::{Outcome, elapsed_ms};
use crate::pattern;

/// Whether a header's comma-separated tokens include `token` (case-insensitive).
fn has_token(req: &Request<Incoming>, name: http::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Answers a WebSocket opening handshake (RFC 6455 §4.2) with 101 and
/// echoes every message on the upgraded connection; anything else that
/// asks for `/ws` gets the status the RFC prescribes.
pub(crate) fn accept(req: Request<Incoming>, pod: &str) -> Response<LabBody> {
    if req.method() != Method::GET || req.version() != Version::HTTP_11 {
        return plain(
            StatusCode::BAD_REQUEST,
            "/ws takes an HTTP/1.1 GET with a WebSocket upgrade".to_string(),
        );
    }
    if !has_token(&req, UPGRADE, "websocket") || !has_token(&req, CONNECTION, "upgrade") {
        return plain(
            StatusCode::BAD_REQUEST,
            "/ws needs `Upgrade: websocket` and `Connection: Upgrade`".to_string(),
        );
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut resp = plain(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported".to_string(),
        );
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return resp;
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key".to_string(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let pod = pod.to_string();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo_messages(ws, &pod).await;
            }
            Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(LabBody::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Sends back every data message as it arrives; pings are answered and the
/// closing handshake completed by the protocol layer itself.
async fn echo_messages<S>(mut ws: WebSocketStream<S>, pod: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut echoed = 0u64;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(msg).await {
                    tracing::debug!(pod, "websocket send failed: {e}");
                    break;
                }
                echoed += 1;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(pod, "websocket ended: {e}");
                break;
            }
        }
    }
    tracing::debug!(pod, echoed, "websocket closed");
}

/// What `knit-lab ws-client` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WsClientSpec {
    /// ws:// URL of the echo's /ws; the host resolves through the system resolver.
    #[arg(long)]
    pub url: String,
    /// Messages to send, alternately text and binary; each must come back unchanged.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Size of each binary message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Deadline for connecting and for each echo.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Hard cap on the whole run.
    #[arg(long, default_value_t = 60_000)]
    pub duration_ms: u64,
}

impl WsClientSpec {
    pub fn new(url: &str) -> WsClientSpec {
        WsClientSpec {
            url: url.to_string(),
            count: 10,
            size: 1024,
            timeout_ms: 5000,
            duration_ms: 60_000,
        }
    }

    pub fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }

    pub fn size(mut self, n: usize) -> Self {
        self.size = n;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout_ms = t.as_millis() as u64;
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration_ms = d.as_millis() as u64;
        self
    }

    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--url".into(),
            self.url.clone(),
            "--count".into(),
            self.count.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
        ]
    }

    fn validate(&self) -> Result<(String, u16)> {
        crate::outcome::check_bounds(self.count, self.timeout_ms, self.duration_ms)?;
        if self.size > MAX_MESSAGE {
            return Err(LabError::invalid(
                "--size",
                format!("at most {MAX_MESSAGE}"),
            ));
        }
        let bad = |r: &str| LabError::invalid("--url", format!("{:?}: {r}", self.url));
        let uri: Uri = self.url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("ws") {
            return Err(bad("needs ws:// (wss is not supported)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok((host.to_string(), authority.port_u16().unwrap_or(80)))
    }
}

/// Largest binary message the client sends (tungstenite's default frame limit is 16 MiB).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// The JSON report of `knit-lab ws-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub url: String,
    /// The answering pod, from the 101 response's `x-echo-pod`.
    #[serde(default)]
    pub pod: Option<String>,
    pub sent: u64,
    /// Messages that came back unchanged.
    pub echoed: u64,
    /// The close code the server answered the closing handshake with.
    #[serde(default)]
    pub close_code: Option<u16>,
    pub handshake_ms: u64,
    pub elapsed_ms: u64,
}

impl Outcome for WsReport {
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

/// Runs the client; errors only for unusable options.
pub async fn run_client(spec: &WsClientSpec) -> Result<WsReport> {
    let (host, port) = spec.validate()?;
    let mut report = WsReport {
        url: spec.url.clone(),
        ..WsReport::default()
    };
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(spec.duration_ms),
        exchange(spec, &host, port, &mut report, start),
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
    spec: &WsClientSpec,
    host: &str,
    port: u16,
    report: &mut WsReport,
    start: Instant,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let stream = crate::outcome::connect(host, port, timeout).await?;
    let (mut ws, resp) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async(spec.url.as_str(), stream),
    )
    .await
    .map_err(|_| format!("no WebSocket handshake within {} ms", spec.timeout_ms))?
    .map_err(|e| format!("WebSocket handshake: {e}"))?;
    report.handshake_ms = elapsed_ms(start);
    report.pod = resp
        .headers()
        .get(POD_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    for i in 0..spec.count {
        // Text and binary alternate; binary payloads start at a different
        // pattern offset each time, so a stale echo does not pass.
        let msg = if i % 2 == 0 {
            Message::text(format!("message {i} from knit-lab ws-client"))
        } else {
            Message::binary(pattern::pattern_from(i, spec.size))
        };
        ws.send(msg.clone())
            .await
            .map_err(|e| format!("sending message {i}: {e}"))?;
        report.sent += 1;
        let back = loop {
            let next = tokio::time::timeout(timeout, ws.next())
                .await
                .map_err(|_| format!("no echo of message {i} within {} ms", spec.timeout_ms))?;
            match next {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => break m,
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!(
                        "server closed before echoing message {i}: {frame:?}"
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("reading echo of message {i}: {e}")),
                None => return Err(format!("connection ended before echo of message {i}")),
            }
        };
        if back != msg {
            return Err(format!(
                "echo of message {i} differs: sent {} bytes, got {} bytes",
                msg.len(),
                back.len()
            ));
        }
        report.echoed += 1;
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .map_err(|e| format!("sending close: {e}"))?;
    // The server's close frame ends the stream.
    loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) => return Err(format!("no close reply within {} ms", spec.timeout_ms)),
            Ok(Some(Ok(Message::Close(frame)))) => {
                report.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                if report.close_code.is_some() {
                    break;
                }
                return Err(format!("closing: {e}"));
            }
            Ok(None) => break,
        }
    }
    Ok(())
}
