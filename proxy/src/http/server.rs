//! Serving one downstream connection as HTTP/1.1 or HTTP/2 (the first
//! bytes decide), one handler call per request, within the limits of
//! `DataPathSettings`.
//!
//! HTTP/1.1 goes through the head guard (`super::guard`, which documents
//! each smuggling vector and what the client gets). HTTP/2 framing is the
//! `h2` crate's; what this module sets on it, and why:
//!
//! - `max_concurrent_streams` 1024: one connection carries all of a peer
//!   pod's traffic on the mesh port (and all of a gRPC client's), so it
//!   needs room; what bounds memory is the connection window, not this.
//! - stream window 1 MiB: one upload runs at full speed up to ~8 Gbit/s
//!   at 1 ms RTT. Connection window 2 MiB: the most request data one
//!   connection can make the proxy hold while upstreams are slow.
//! - `max_header_list_size` = `http_max_header_bytes`: a larger decoded
//!   header list gets 431 (h2 answers it itself); one over 4x that, or a
//!   CONTINUATION flood (more frames than the limit needs), or an HPACK
//!   bomb decoding past it, gets GOAWAY ENHANCE_YOUR_CALM.
//! - frame size 16 KiB and HPACK table 4 KiB: the protocol's defaults,
//!   which bound per-frame buffering and the decoder's table.
//! - rapid reset (CVE-2023-44487): streams reset before hyper accepted
//!   them are bounded by h2 (`http2_max_pending_accept_resets`, then
//!   GOAWAY); streams reset after they reached the handler are counted
//!   here (`http2_max_premature_resets`), and past the limit the
//!   connection gets GOAWAY and its new requests no upstream work.
//!   Streams the proxy resets for protocol errors are bounded by
//!   `http2_max_local_error_resets`.
//!
//! Requests of either version also pass `check_request`: one plain
//! `Content-Length` at most, header count and URI length within limits.
//!
//! What an HTTP/2 client gets (checked by `tests/limits.rs`; nothing in
//! this list reaches the upstream, except the head of a request whose
//! body then breaks its `content-length`):
//!
//! | vector | answer |
//! |---|---|
//! | `transfer-encoding`, `connection`, `upgrade`, `te` other than `trailers` | RST_STREAM PROTOCOL_ERROR (h2) |
//! | `content-length` unparsable or two different ones; DATA longer than it | RST_STREAM PROTOCOL_ERROR (h2) |
//! | two equal `content-length`s | 400 (`check_request`) |
//! | CR, LF or NUL in a field value | GOAWAY PROTOCOL_ERROR (h2: HPACK cannot decode it) |
//! | more fields than `http_max_headers`; target longer than `http_max_uri_bytes` | 431; 414 (`check_request`) |
//! | decoded header list over `http_max_header_bytes` | 431 and RST_STREAM (h2) |
//! | header list over 4x that, HPACK bomb, CONTINUATION flood | GOAWAY ENHANCE_YOUR_CALM (h2) |
//! | HEADERS+RST_STREAM burst | GOAWAY ENHANCE_YOUR_CALM after 20 (h2) |
//! | resets after each request reached the upstream | GOAWAY (NO_ERROR) after `http2_max_premature_resets` |

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::guard::{GuardLink, H1Guard, HeadLimits};
use super::{Body, error_response};
use crate::context::DataPathSettings;
use crate::detect::{Detected, detect};
use crate::error::Error;
use crate::listener::current_connection_slot;

/// Turns a request into a response; errors are already responses
/// (see `error_response`), so the connection never sees a handler error.
pub trait HttpHandler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send;
}

/// The limits one connection is served with, taken from the settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub head: HeadLimits,
    pub h2_max_concurrent_streams: u32,
    pub h2_stream_window: u32,
    pub h2_connection_window: u32,
    pub h2_max_pending_accept_resets: usize,
    pub h2_max_local_error_resets: usize,
    pub h2_max_premature_resets: usize,
}

impl HttpLimits {
    pub fn new(settings: &DataPathSettings) -> Self {
        HttpLimits {
            head: HeadLimits {
                max_head_bytes: settings.http_max_header_bytes,
                max_headers: settings.http_max_headers,
                max_uri_bytes: settings.http_max_uri_bytes,
                header_timeout: settings.http_header_read_timeout,
                idle_timeout: settings.http_idle_timeout,
            },
            h2_max_concurrent_streams: settings.http2_max_concurrent_streams,
            h2_stream_window: settings.http2_stream_window,
            h2_connection_window: settings.http2_connection_window,
            h2_max_pending_accept_resets: settings.http2_max_pending_accept_resets,
            h2_max_local_error_resets: settings.http2_max_local_error_resets,
            h2_max_premature_resets: settings.http2_max_premature_resets,
        }
    }
}

/// Hyper's own header count limit; above it hyper must be told ours.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// Hyper's read buffer limit (8 KiB + 100 x 4 KiB); a head limit above it
/// needs a larger buffer, or hyper would answer 431 first.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
/// How long a connection closed for abuse may take to finish its GOAWAY
/// exchange before it is dropped.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

pub async fn serve<H: HttpHandler>(
    stream: TcpStream,
    handler: Arc<H>,
    settings: &DataPathSettings,
) {
    let limits = HttpLimits::new(settings);
    // A client that connects and stays silent is idle, not slow; once its
    // first byte is in, the head timeout runs.
    match tokio::time::timeout(limits.head.idle_timeout, stream.readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "downstream connection failed before its first request");
            return;
        }
        Err(_) => {
            debug!("downstream connection sent nothing; closing");
            return;
        }
    }
    let first_byte = Instant::now();
    match detect(&stream, limits.head.header_timeout).await {
        Ok(Detected::Http2) => serve_http2(stream, handler, &limits).await,
        Ok(Detected::Closed) => {}
        Ok(Detected::Timeout) => debug!("request did not start in time; closing"),
        // Anything else is HTTP/1.1 or garbage, which the guard rejects.
        Ok(_) => serve_http1(stream, handler, &limits, first_byte).await,
        Err(e) => debug!(error = %e, "downstream connection failed"),
    }
}

async fn serve_http1<H: HttpHandler>(
    stream: TcpStream,
    handler: Arc<H>,
    limits: &HttpLimits,
    first_byte: Instant,
) {
    let link = Arc::new(GuardLink::default());
    let io = H1Guard::new(
        stream,
        limits.head,
        link.clone(),
        Some(first_byte),
        current_connection_slot(),
    );
    let request_limits = limits.head;
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let link = link.clone();
        async move { Ok::<_, Infallible>(http1_request(&*handler, &link, &request_limits, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        // The guard times each head from its first byte; hyper's timer
        // would also run while a keep-alive connection waits, idle.
        .header_read_timeout(None)
        // Already enforced by the guard; hyper's check stays as a second
        // line, equal so it never answers differently.
        .max_header_size(limits.head.max_head_bytes)
        // A client may send its request and shut its write side; it still
        // wants the response.
        .half_close(true);
    if limits.head.max_head_bytes > HYPER_DEFAULT_MAX_BUF {
        builder.max_buf_size(limits.head.max_head_bytes + 16 * 1024);
    }
    if limits.head.max_headers > HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(limits.head.max_headers);
    }
    if let Err(e) = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        debug!(error = %e, "downstream HTTP/1.1 connection ended with an error");
    }
}

async fn http1_request<H: HttpHandler>(
    handler: &H,
    link: &GuardLink,
    limits: &HeadLimits,
    req: Request<Incoming>,
) -> Response<Body> {
    let is_connect = req.method() == Method::CONNECT;
    // Tells the guard, even if this future is dropped, whether the bytes
    // after this request are still HTTP.
    let mut answer = Answer {
        link,
        switched: false,
    };
    let resp = match check_request(&req, limits) {
        Ok(()) => handler.handle(req).await,
        Err(e) => closing(error_response(&e)),
    };
    // A framing error in the body beats whatever the upstream made of the
    // truncated request.
    let resp = match link.take_body_error() {
        Some(e) => closing(error_response(&e)),
        None => resp,
    };
    answer.switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && resp.status().is_success());
    resp
}

struct Answer<'a> {
    link: &'a GuardLink,
    switched: bool,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        self.link.answered(self.switched);
    }
}

/// An error response after which the HTTP/1.1 connection is closed: the
/// request's body may still be unread, and its framing is suspect.
fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Checks of the parsed request, for both versions. In HTTP/1.1 the guard
/// has checked the raw head already; these matter for HTTP/2, where h2
/// rejects connection headers, conflicting `content-length`s and DATA
/// that contradicts one, but lets a repeated equal `content-length`
/// through to a hop that may be HTTP/1.1.
fn check_request<B>(req: &Request<B>, limits: &HeadLimits) -> Result<(), Error> {
    let uri_len = match req.uri().path_and_query() {
        Some(p) => p.as_str().len(),
        None => req.uri().to_string().len(),
    };
    if uri_len > limits.max_uri_bytes {
        return Err(Error::UriTooLong(format!(
            "request target exceeds {} bytes",
            limits.max_uri_bytes
        )));
    }
    if req.headers().len() > limits.max_headers {
        return Err(Error::HeadersTooLarge(format!(
            "more than {} header fields",
            limits.max_headers
        )));
    }
    let mut lengths = req.headers().get_all(header::CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        if lengths.next().is_some() {
            return Err(Error::BadRequest("more than one Content-Length".into()));
        }
        let bytes = length.as_bytes();
        if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadRequest("invalid Content-Length".into()));
        }
    }
    Ok(())
}

/// The HTTP/2 server settings both the downstream servers and the mesh
/// listener use (see the module docs for the numbers).
fn http2_builder(limits: &HttpLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .max_header_list_size(u32::try_from(limits.head.max_head_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_resets)
        .max_local_error_reset_streams(limits.h2_max_local_error_resets);
    builder
}

/// Serves an HTTP/2 connection (prior knowledge: the preface is the first
/// thing on `stream`).
pub async fn serve_http2<H, S>(stream: S, handler: Arc<H>, limits: &HttpLimits)
where
    H: HttpHandler,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let resets = Arc::new(ResetWatch::new(limits.h2_max_premature_resets));
    let request_limits = limits.head;
    let service = {
        let resets = resets.clone();
        service_fn(move |req| {
            let handler = handler.clone();
            let resets = resets.clone();
            // Boxed: hyper spawns each stream as a task holding this
            // future, and tokio moves a task's future several times over
            // its life; a pointer moves cheaper than the request's whole
            // state (kilobytes once it holds an upstream send).
            Box::pin(async move {
                Ok::<_, Infallible>(http2_request(&*handler, &resets, &request_limits, req).await)
            })
        })
    };
    let conn = http2_builder(limits).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = resets.tripped.notified() => {
            warn!(
                premature_resets = resets.cancelled.load(Ordering::Relaxed),
                requests = resets.started.load(Ordering::Relaxed),
                "HTTP/2 client keeps resetting its requests (rapid reset?); sending GOAWAY"
            );
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(ABUSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = served {
        debug!(error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

async fn http2_request<H: HttpHandler>(
    handler: &H,
    resets: &Arc<ResetWatch>,
    limits: &HeadLimits,
    req: Request<Incoming>,
) -> Response<Body> {
    if resets.is_tripped() {
        // GOAWAY is on its way; the requests still arriving get no
        // upstream work.
        return error_response(&Error::BadRequest(
            "connection closed for resetting too many requests".into(),
        ));
    }
    let ticket = ResetTicket::new(resets.clone());
    let resp = match check_request(&req, limits) {
        Ok(()) => handler.handle(req).await,
        Err(e) => error_response(&e),
    };
    ticket.answered();
    resp
}

/// Per HTTP/2 connection: requests started, and requests whose handler was
/// dropped before it answered. hyper drops it when the client resets the
/// stream, so that is the reset an attacker uses to make the upstream
/// work for nothing. As in Envoy's premature-reset check, the connection
/// trips once such resets reach the limit and are over half of all its
/// requests: a client that cancels now and then (gRPC deadlines) stays.
struct ResetWatch {
    started: AtomicUsize,
    cancelled: AtomicUsize,
    max: usize,
    is_tripped: AtomicBool,
    tripped: Notify,
}

impl ResetWatch {
    fn new(max: usize) -> Self {
        ResetWatch {
            started: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            max,
            is_tripped: AtomicBool::new(false),
            tripped: Notify::new(),
        }
    }

    fn is_tripped(&self) -> bool {
        self.is_tripped.load(Ordering::Relaxed)
    }

    fn cancel(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if cancelled >= self.max
            && cancelled * 2 > started
            && !self.is_tripped.swap(true, Ordering::Relaxed)
        {
            self.tripped.notify_one();
        }
    }
}

struct ResetTicket {
    watch: Arc<ResetWatch>,
    answered: bool,
}

impl ResetTicket {
    fn new(watch: Arc<ResetWatch>) -> Self {
        watch.started.fetch_add(1, Ordering::Relaxed);
        ResetTicket {
            watch,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for ResetTicket {
    fn drop(&mut self) {
        if !self.answered {
            self.watch.cancel();
        }
    }
}
