//! A strict gate in front of hyper's HTTP/1.1 parser.
//!
//! hyper parses leniently where RFC 9112 lets it: it accepts both
//! `Transfer-Encoding` and `Content-Length` (keeping the former), merges
//! repeated equal `Content-Length`s, takes any coding list that ends in
//! `chunked`, and bare LF line endings. Each is harmless to hyper itself,
//! but a proxy that reads a request one way while a hop before or after it
//! reads it another is how request smuggling works. So every request head
//! passes through [`H1Guard`] first: it holds the head back until it is
//! complete, checks it strictly, and only then lets hyper read it. It
//! follows the body framing (Content-Length or chunked, checked strictly
//! too) so it always knows where the next head starts.
//!
//! What a client gets for each vector (checked by `tests/limits.rs`;
//! "hyper" marks what hyper already did on its own, unguarded):
//!
//! | vector | response | connection | upstream sees |
//! |---|---|---|---|
//! | `Transfer-Encoding` + `Content-Length` (either order) | 400 (hyper: served as chunked, then closed) | closed | nothing |
//! | two `Content-Length`s, equal | 400 (hyper: merged, kept alive) | closed | nothing |
//! | two `Content-Length`s, different; `3, 3`; `+3` | 400 (hyper too) | closed | nothing |
//! | `Transfer-Encoding` other than one `chunked` (`chunked, identity`, `gzip, chunked`, `identity, chunked`, `xchunked`, repeated header) | 400 (hyper: 400 only when `chunked` is not last) | closed | nothing |
//! | `Transfer-Encoding` with odd spacing (two spaces, tab, trailing space) | 400 (hyper: accepted) | closed | nothing |
//! | `Transfer-Encoding` in an HTTP/1.0 request | 400 (hyper too) | closed | nothing |
//! | whitespace between field name and colon | 400 (hyper too) | closed | nothing |
//! | obs-fold (continuation line) | 400 (hyper too) | closed | nothing |
//! | bare CR, NUL or another control byte in a field | 400 (hyper too) | closed | nothing |
//! | bare LF as line ending | 400 (hyper: accepted) | closed | nothing |
//! | two `Host`s, or none in HTTP/1.1 | 400 (hyper: accepted) | closed | nothing |
//! | head larger than `http_max_header_bytes` | 431 (hyper: 431 at its buffer limit, ~400 KiB) | closed | nothing |
//! | more than `http_max_headers` fields | 431 (hyper: 431 above 100) | closed | nothing |
//! | request target longer than `http_max_uri_bytes` | 414 (hyper: 414 above 64 KiB) | closed | nothing |
//! | fragment (`#`) in the request target | 400 (hyper: fragment dropped, request served) | closed | nothing |
//! | chunk size not 1-16 hex digits, `0x3`, `3 ` (hyper accepts), bare LF, data not followed by CRLF, oversized trailers | 400 if the response is still to be sent, else just closed (hyper: 502, its upstream call failed) | closed | the head and the body up to the error, never a next request |
//! | head not complete `http_header_read_timeout` after its first byte (slowloris) | none | closed | nothing |
//!
//! A rejected head never reaches hyper: the guard ends the read side there
//! (hyper sees EOF, finishes any earlier response) and writes the error
//! response itself when hyper shuts the connection down. A body error is
//! signalled to the request's handler through [`GuardLink`], which turns
//! whatever the upstream call produced into a 400.
//!
//! After a request that may switch protocols (CONNECT, or `Upgrade`) the
//! guard waits for the handler's answer: on 101 (or 2xx to CONNECT) the
//! rest of the stream is no longer HTTP and passes through untouched;
//! otherwise the next bytes are a request head like any other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::KNIT_ERROR_HEADER;
use crate::error::Error;
use crate::listener::ConnectionSlot;

/// The limits the guard applies to each request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Request line plus header lines plus the empty line.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    /// From the first byte of a head to its end.
    pub header_timeout: Duration,
    /// Waiting for the first byte of the next request.
    pub idle_timeout: Duration,
}

/// Room for the method and version around the target, so an unfinished
/// request line can be judged too long before its end arrives.
const REQUEST_LINE_OVERHEAD: usize = 64;
/// A chunk size is at most 16 hex digits (`u64`).
const MAX_CHUNK_SIZE_DIGITS: u32 = 16;
/// Chunk extensions are legal but unused; this bounds the line they are on.
const MAX_CHUNK_EXTENSION_BYTES: usize = 4096;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// After an error response, how long and how much the guard keeps reading
/// (and discarding) before closing. Closing a socket with unread input
/// makes the kernel send RST, which can destroy the response before the
/// client read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// What the guard and the handler of the same connection tell each other.
#[derive(Debug, Default)]
pub struct GuardLink {
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Requests the handler has finished with, and whether the last one's
    /// response switched protocols.
    answered: u64,
    last_switched: bool,
    /// The guard waiting for an answer.
    waker: Option<Waker>,
    /// A framing error in the body of the request being served.
    body_error: Option<Error>,
}

impl GuardLink {
    /// The handler has the response to the next request; `switched` when
    /// it switches protocols (101, or 2xx to CONNECT).
    pub fn answered(&self, switched: bool) {
        let mut state = self.state.lock().expect("guard link poisoned");
        state.answered += 1;
        state.last_switched = switched;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// The error found in the current request's body, if any.
    pub fn take_body_error(&self) -> Option<Error> {
        self.state
            .lock()
            .expect("guard link poisoned")
            .body_error
            .take()
    }

    fn set_body_error(&self, err: Error) {
        self.state.lock().expect("guard link poisoned").body_error = Some(err);
    }

    /// Whether request number `index` (from 1) switched protocols, or
    /// `None` (and the waker is kept) while it is still being served.
    fn switched(&self, index: u64, cx: &mut Context<'_>) -> Option<bool> {
        let mut state = self.state.lock().expect("guard link poisoned");
        if state.answered >= index {
            Some(state.last_switched)
        } else {
            state.waker = Some(cx.waker().clone());
            None
        }
    }
}

/// Where in the request stream the guard is.
#[derive(Debug)]
enum State {
    /// Reading a request head.
    Head,
    /// `remaining` bytes of a Content-Length body.
    Sized {
        remaining: u64,
    },
    Chunked(Chunk),
    /// A request that may switch protocols is complete; the handler's
    /// answer says what the next bytes are.
    AwaitSwitch,
    /// Not HTTP any more (switched protocols): bytes pass untouched.
    Passthrough,
    /// Hyper reads EOF: after a rejection, a timeout, or the client's EOF.
    Done,
}

#[derive(Debug)]
enum Chunk {
    Size {
        digits: u32,
        value: u64,
        extension: Option<usize>,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    Trailers(FieldScan),
}

/// Byte-wise checks of a trailer section, which streams past like the body.
#[derive(Debug, Default)]
struct FieldScan {
    total: usize,
    fields: usize,
    line: usize,
    name: usize,
    colon: bool,
    cr: bool,
}

/// Progress through the head being read.
#[derive(Debug, Default)]
struct HeadScan {
    /// Where the next unchecked line starts in `pending`.
    line_start: usize,
    /// How far the current line has been searched for its LF already, so
    /// a head trickled in byte by byte is not searched again and again.
    searched: usize,
    /// Empty lines before the request line, already dropped.
    skipped: usize,
    request: Option<RequestLine>,
    fields: usize,
    content_length: Option<u64>,
    chunked: bool,
    hosts: usize,
    upgrade: bool,
}

#[derive(Debug, Clone, Copy)]
struct RequestLine {
    connect: bool,
    http10: bool,
}

/// How the request whose head was just checked is framed.
struct Head {
    len: usize,
    body: Body,
    may_switch: bool,
}

enum Body {
    None,
    Sized(u64),
    Chunked,
}

enum Step {
    /// Bytes are validated and ready for hyper.
    Release,
    /// More input is needed; up to `direct` bytes may go straight to
    /// hyper without passing through `pending`.
    NeedMore { direct: u64 },
    /// Waiting for the handler's answer to a protocol switch.
    Wait,
    /// Hyper reads EOF.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
}

/// The error response owed to the client, written at shutdown.
struct Rejection {
    bytes: Vec<u8>,
    written: usize,
}

/// An HTTP/1.1 server connection's socket as hyper sees it: only
/// validated bytes come through. See the module docs.
pub struct H1Guard {
    io: TcpStream,
    limits: HeadLimits,
    link: Arc<GuardLink>,
    state: State,
    /// Read from the socket, not yet given to hyper.
    pending: BytesMut,
    /// The first `ready` bytes of `pending` are validated.
    ready: usize,
    head: HeadScan,
    /// Heads given to hyper so far.
    heads: u64,
    /// The request in flight may switch protocols.
    may_switch: bool,
    /// When the first byte of the head being read arrived.
    head_started: Option<Instant>,
    timer: Option<(Phase, Pin<Box<Sleep>>)>,
    rejection: Option<Rejection>,
    write_shut: bool,
    linger: Option<Pin<Box<Sleep>>>,
    lingered: usize,
    /// Keeps the connection counted against its listener's limit for as
    /// long as the socket lives, also after an upgrade hands it on.
    _slot: Option<ConnectionSlot>,
}

impl H1Guard {
    /// `first_byte` is when the first request's first byte arrived, if the
    /// caller already waited for it.
    pub fn new(
        io: TcpStream,
        limits: HeadLimits,
        link: Arc<GuardLink>,
        first_byte: Option<Instant>,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        H1Guard {
            io,
            limits,
            link,
            state: State::Head,
            pending: BytesMut::with_capacity(READ_CHUNK),
            ready: 0,
            head: HeadScan::default(),
            heads: 0,
            may_switch: false,
            head_started: first_byte,
            timer: None,
            rejection: None,
            write_shut: false,
            linger: None,
            lingered: 0,
            _slot: slot,
        }
    }

    /// Validates what `pending` holds (nothing of it is ready yet) and
    /// decides what hyper gets next.
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        debug_assert_eq!(self.ready, 0);
        match &mut self.state {
            State::Head => match self.head.scan(&mut self.pending, &self.limits) {
                Ok(None) => Step::NeedMore { direct: 0 },
                Ok(Some(head)) => {
                    self.heads += 1;
                    self.ready = head.len;
                    self.may_switch = head.may_switch;
                    self.head = HeadScan::default();
                    self.head_started = None;
                    self.timer = None;
                    match head.body {
                        Body::None => self.message_done(),
                        Body::Sized(0) => self.message_done(),
                        Body::Sized(n) => self.state = State::Sized { remaining: n },
                        Body::Chunked => {
                            self.state = State::Chunked(Chunk::Size {
                                digits: 0,
                                value: 0,
                                extension: None,
                            })
                        }
                    }
                    Step::Release
                }
                Err(err) => {
                    debug!(reason = err.reason(), error = %err, "rejecting request head");
                    self.rejection = Some(Rejection {
                        bytes: rejection_bytes(&err),
                        written: 0,
                    });
                    self.state = State::Done;
                    Step::Eof
                }
            },
            State::Sized { remaining } => {
                if self.pending.is_empty() {
                    return Step::NeedMore { direct: *remaining };
                }
                let n = (self.pending.len() as u64).min(*remaining);
                *remaining -= n;
                self.ready = n as usize;
                if *remaining == 0 {
                    self.message_done();
                }
                Step::Release
            }
            State::Chunked(chunk) => {
                if self.pending.is_empty() {
                    let direct = match chunk {
                        Chunk::Data { remaining } => *remaining,
                        _ => 0,
                    };
                    return Step::NeedMore { direct };
                }
                let (used, outcome) = scan_chunked(chunk, &self.pending, &self.limits);
                self.ready = used;
                match outcome {
                    Ok(false) => {}
                    Ok(true) => self.message_done(),
                    Err(err) => {
                        debug!(reason = err.reason(), error = %err, "rejecting request body");
                        self.link.set_body_error(err);
                        self.state = State::Done;
                    }
                }
                if self.ready > 0 {
                    Step::Release
                } else {
                    Step::Eof
                }
            }
            State::AwaitSwitch => match self.link.switched(self.heads, cx) {
                None => Step::Wait,
                Some(true) => {
                    self.state = State::Passthrough;
                    self.step(cx)
                }
                Some(false) => {
                    self.state = State::Head;
                    self.step(cx)
                }
            },
            State::Passthrough => {
                if self.pending.is_empty() {
                    Step::NeedMore { direct: u64::MAX }
                } else {
                    self.ready = self.pending.len();
                    Step::Release
                }
            }
            State::Done => Step::Eof,
        }
    }

    fn message_done(&mut self) {
        self.state = if self.may_switch {
            State::AwaitSwitch
        } else {
            State::Head
        };
    }

    /// Bytes that went straight to hyper.
    fn consumed_direct(&mut self, n: u64) {
        match &mut self.state {
            State::Sized { remaining } => {
                *remaining -= n;
                if *remaining == 0 {
                    self.message_done();
                }
            }
            State::Chunked(chunk) => {
                if let Chunk::Data { remaining } = chunk {
                    *remaining -= n;
                    if *remaining == 0 {
                        *chunk = Chunk::DataCr;
                    }
                }
            }
            _ => {}
        }
    }

    /// The timer for the head being read (or waited for); `true` when it
    /// has expired.
    fn head_timer_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.head_started.is_none() && !self.pending.is_empty() {
            // Bytes of the next head came along with the previous body.
            self.head_started = Some(Instant::now());
        }
        let phase = if self.head_started.is_some() {
            Phase::Head
        } else {
            Phase::Idle
        };
        if self.timer.as_ref().is_none_or(|(p, _)| *p != phase) {
            let deadline = match (phase, self.head_started) {
                (Phase::Head, Some(started)) => started + self.limits.header_timeout,
                _ => Instant::now() + self.limits.idle_timeout,
            };
            self.timer = Some((phase, Box::pin(tokio::time::sleep_until(deadline))));
        }
        let Some((phase, sleep)) = self.timer.as_mut() else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        match phase {
            Phase::Idle => debug!("idle HTTP/1.1 connection closed"),
            Phase::Head => debug!(
                timeout_ms = self.limits.header_timeout.as_millis() as u64,
                "request head did not arrive in time; closing"
            ),
        }
        true
    }
}

impl AsyncRead for H1Guard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            let direct = match this.step(cx) {
                Step::Release => continue,
                Step::Wait => return Poll::Pending,
                Step::Eof => return Poll::Ready(Ok(())),
                Step::NeedMore { direct } => direct,
            };
            if matches!(this.state, State::Head) && this.head_timer_expired(cx) {
                this.state = State::Done;
                return Poll::Ready(Ok(()));
            }
            if direct > 0 {
                // Body bytes whose framing needs no look: straight into
                // hyper's buffer, no copy through `pending`.
                let want = usize::try_from(direct)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                let before = buf.filled().len();
                if want == buf.remaining() {
                    // All of hyper's room may be filled: read straight in,
                    // without zeroing it first.
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                } else {
                    let mut direct_buf = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct_buf))?;
                    let n = direct_buf.filled().len();
                    buf.advance(n);
                }
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.state = State::Done;
                } else {
                    this.consumed_direct(n as u64);
                }
                return Poll::Ready(Ok(()));
            }
            // Into spare capacity, never zeroed: zeroing 16 KiB for
            // every read cost more than the rest of the guard.
            this.pending.reserve(READ_CHUNK);
            let polled = std::pin::pin!(this.io.read_buf(&mut this.pending)).poll(cx);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    // The client is done sending. Whatever partial head is
                    // buffered is dropped; a partial body ends short, which
                    // hyper reports to the handler as an incomplete body.
                    this.state = State::Done;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {
                    if matches!(this.state, State::Head) && this.head_started.is_none() {
                        this.head_started = Some(Instant::now());
                    }
                }
            }
        }
    }
}

impl AsyncWrite for H1Guard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Hyper is done with the connection: first the error response owed
    /// for a rejected head, then the FIN, then a bounded lingering read.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rejection) = this.rejection.as_mut() {
            while rejection.written < rejection.bytes.len() {
                match ready!(
                    Pin::new(&mut this.io).poll_write(cx, &rejection.bytes[rejection.written..])
                ) {
                    Ok(n) if n > 0 => rejection.written += n,
                    // The client is gone; nothing more to tell it.
                    _ => return Pin::new(&mut this.io).poll_shutdown(cx),
                }
            }
        }
        if !this.write_shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.write_shut = true;
        }
        if this.rejection.is_none() {
            return Poll::Ready(Ok(()));
        }
        let linger = this
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        if linger.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 4096];
        while this.lingered < LINGER_BYTES {
            let mut read_buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut read_buf)) {
                Ok(()) if !read_buf.filled().is_empty() => this.lingered += read_buf.filled().len(),
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Hyper shuts the connection down through `poll_shutdown` except when
/// it ends as an upgrade, which it believes it is after any request that
/// asked for one, even if the answer declined: then the socket is simply
/// dropped. What is owed is written here, as far as the socket takes it
/// without waiting.
impl Drop for H1Guard {
    fn drop(&mut self) {
        if let Some(rejection) = self.rejection.as_mut() {
            while rejection.written < rejection.bytes.len() {
                match self.io.try_write(&rejection.bytes[rejection.written..]) {
                    Ok(n) if n > 0 => rejection.written += n,
                    _ => break,
                }
            }
        }
    }
}

impl HeadScan {
    /// Checks the lines of the head at the start of `buf` that have
    /// arrived; `Ok(Some)` once the whole head is there and acceptable.
    fn scan(&mut self, buf: &mut BytesMut, limits: &HeadLimits) -> Result<Option<Head>, Error> {
        loop {
            let from = self.searched.max(self.line_start);
            let Some(lf) = buf[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| from + i)
            else {
                self.searched = buf.len();
                let unfinished = buf.len() - self.line_start;
                if self.request.is_none()
                    && unfinished > limits.max_uri_bytes + REQUEST_LINE_OVERHEAD
                {
                    return Err(Error::UriTooLong(format!(
                        "request line exceeds {} bytes",
                        limits.max_uri_bytes
                    )));
                }
                self.check_head_size(buf.len(), limits)?;
                return Ok(None);
            };
            let line = &buf[self.line_start..lf];
            let Some(content) = line.strip_suffix(b"\r") else {
                return Err(bad("line ends in a bare LF"));
            };
            match self.request {
                None if content.is_empty() => {
                    // RFC 9112 §2.2: empty lines before a request line are
                    // ignored; they never reach hyper.
                    self.skipped += lf + 1;
                    self.check_head_size(0, limits)?;
                    buf.advance(lf + 1);
                    self.searched = 0;
                    continue;
                }
                None => self.request = Some(request_line(content, limits)?),
                Some(request) if content.is_empty() => {
                    let len = lf + 1;
                    self.check_head_size(len, limits)?;
                    return self.finish(request, len).map(Some);
                }
                Some(_) => self.field_line(content, limits)?,
            }
            self.line_start = lf + 1;
            self.check_head_size(self.line_start, limits)?;
        }
    }

    fn check_head_size(&self, buffered: usize, limits: &HeadLimits) -> Result<(), Error> {
        if buffered + self.skipped > limits.max_head_bytes {
            return Err(Error::HeadersTooLarge(format!(
                "request head exceeds {} bytes",
                limits.max_head_bytes
            )));
        }
        Ok(())
    }

    fn field_line(&mut self, line: &[u8], limits: &HeadLimits) -> Result<(), Error> {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obsolete line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without a colon"))?;
        let (name, raw_value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad("invalid header name"));
        }
        if let Some(&b) = raw_value.iter().find(|&&b| !is_field_byte(b)) {
            return Err(bad(match b {
                b'\r' => "bare CR in a header",
                0 => "NUL in a header",
                _ => "control character in a header",
            }));
        }
        self.fields += 1;
        if self.fields > limits.max_headers {
            return Err(Error::HeadersTooLarge(format!(
                "more than {} header fields",
                limits.max_headers
            )));
        }
        let value = trim_ows(raw_value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                return Err(bad("more than one Content-Length"));
            }
            self.content_length =
                Some(parse_content_length(value).ok_or_else(|| bad("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.chunked {
                return Err(bad("more than one Transfer-Encoding"));
            }
            // Exactly `chunked`, after at most the one space everybody
            // writes: every other spelling is a reading two parsers may
            // disagree on, and no other coding can be forwarded (hop-by-hop
            // stripping would drop it while the body stays encoded).
            let spelled = raw_value.strip_prefix(b" ").unwrap_or(raw_value);
            if !spelled.eq_ignore_ascii_case(b"chunked") {
                return Err(bad("Transfer-Encoding must be exactly \"chunked\""));
            }
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            self.hosts += 1;
            if self.hosts > 1 {
                return Err(bad("more than one Host"));
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        Ok(())
    }

    fn finish(&self, request: RequestLine, len: usize) -> Result<Head, Error> {
        if self.chunked && self.content_length.is_some() {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        if self.chunked && request.http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !request.http10 && self.hosts == 0 {
            return Err(bad("HTTP/1.1 request without Host"));
        }
        let body = match (self.chunked, self.content_length) {
            (true, _) => Body::Chunked,
            (false, Some(n)) => Body::Sized(n),
            (false, None) => Body::None,
        };
        // The same rule hyper applies before it offers an upgrade.
        let may_switch = request.connect || (!request.http10 && self.upgrade);
        Ok(Head {
            len,
            body,
            may_switch,
        })
    }
}

fn request_line(line: &[u8], limits: &HeadLimits) -> Result<RequestLine, Error> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad("invalid method"));
    }
    if target.len() > limits.max_uri_bytes {
        return Err(Error::UriTooLong(format!(
            "request target exceeds {} bytes",
            limits.max_uri_bytes
        )));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(bad("invalid request target"));
    }
    // A client never sends a fragment (RFC 9110 §7.1); hyper would drop it
    // and serve the rest, so what the app and a policy see would differ
    // from what the client wrote.
    if target.contains(&b'#') {
        return Err(bad("fragment in the request target"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(bad("unsupported HTTP version")),
    };
    Ok(RequestLine {
        connect: method == b"CONNECT",
        http10,
    })
}

/// Advances `chunk` over `buf`; returns how many bytes are valid and
/// whether the body ended (or the error found right after them).
fn scan_chunked(
    chunk: &mut Chunk,
    buf: &[u8],
    limits: &HeadLimits,
) -> (usize, Result<bool, Error>) {
    let mut pos = 0;
    while pos < buf.len() {
        let b = buf[pos];
        let next = match chunk {
            Chunk::Data { remaining } => {
                let n = (buf.len() - pos).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                pos += n;
                *remaining -= n as u64;
                if *remaining == 0 {
                    *chunk = Chunk::DataCr;
                }
                continue;
            }
            Chunk::Size {
                digits,
                value,
                extension: None,
            } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    *digits += 1;
                    if *digits > MAX_CHUNK_SIZE_DIGITS {
                        return (pos, Err(bad("chunk size too long")));
                    }
                    *value = (*value << 4) | u64::from(hex_value(b));
                    None
                }
                b';' if *digits > 0 => Some(Chunk::Size {
                    digits: *digits,
                    value: *value,
                    extension: Some(0),
                }),
                b'\r' if *digits > 0 => Some(Chunk::SizeLf { value: *value }),
                _ => return (pos, Err(bad("malformed chunk size"))),
            },
            Chunk::Size {
                value,
                extension: Some(len),
                ..
            } => match b {
                b'\r' => Some(Chunk::SizeLf { value: *value }),
                b if is_field_byte(b) => {
                    *len += 1;
                    if *len > MAX_CHUNK_EXTENSION_BYTES {
                        return (pos, Err(bad("chunk extension too long")));
                    }
                    None
                }
                _ => return (pos, Err(bad("malformed chunk extension"))),
            },
            Chunk::SizeLf { value } => match (b, *value) {
                (b'\n', 0) => Some(Chunk::Trailers(FieldScan::default())),
                (b'\n', n) => Some(Chunk::Data { remaining: n }),
                _ => return (pos, Err(bad("chunk size line not ended by CRLF"))),
            },
            Chunk::DataCr => match b {
                b'\r' => Some(Chunk::DataLf),
                _ => return (pos, Err(bad("chunk data not followed by CRLF"))),
            },
            Chunk::DataLf => match b {
                b'\n' => Some(Chunk::Size {
                    digits: 0,
                    value: 0,
                    extension: None,
                }),
                _ => return (pos, Err(bad("chunk data not followed by CRLF"))),
            },
            Chunk::Trailers(scan) => match scan.byte(b, limits) {
                Err(e) => return (pos, Err(e)),
                Ok(true) => return (pos + 1, Ok(true)),
                Ok(false) => None,
            },
        };
        if let Some(next) = next {
            *chunk = next;
        }
        pos += 1;
    }
    (pos, Ok(false))
}

impl FieldScan {
    /// One byte of the trailer section; `Ok(true)` at its final CRLF.
    fn byte(&mut self, b: u8, limits: &HeadLimits) -> Result<bool, Error> {
        self.total += 1;
        if self.total > limits.max_head_bytes {
            return Err(Error::HeadersTooLarge(format!(
                "trailers exceed {} bytes",
                limits.max_head_bytes
            )));
        }
        if self.cr {
            if b != b'\n' {
                return Err(bad("bare CR in a trailer"));
            }
            self.cr = false;
            if self.line == 0 {
                return Ok(true);
            }
            if !self.colon || self.name == 0 {
                return Err(bad("malformed trailer line"));
            }
            self.fields += 1;
            if self.fields > limits.max_headers {
                return Err(Error::HeadersTooLarge(format!(
                    "more than {} trailer fields",
                    limits.max_headers
                )));
            }
            self.line = 0;
            self.name = 0;
            self.colon = false;
            return Ok(false);
        }
        match b {
            b'\r' => self.cr = true,
            b'\n' => return Err(bad("trailer line ends in a bare LF")),
            b' ' | b'\t' if self.line == 0 => return Err(bad("obsolete line folding in trailers")),
            b':' if !self.colon => self.colon = true,
            b if !self.colon && is_tchar(b) => self.name += 1,
            b if self.colon && is_field_byte(b) => {}
            _ => return Err(bad("invalid byte in a trailer")),
        }
        if b != b'\r' {
            self.line += 1;
        }
        Ok(false)
    }
}

fn bad(detail: &str) -> Error {
    Error::BadRequest(detail.to_owned())
}

/// RFC 9110 `tchar`: what field names and methods are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a field value may hold: visible ASCII, space, tab and obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// 1*DIGIT and nothing else: no sign, no list, no inner space.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The error response as bytes, in the shape of `error_response`, closing
/// the connection. Its body never echoes the client's bytes.
fn rejection_bytes(err: &Error) -> Vec<u8> {
    let status = err.status();
    let body = format!("{}: {err}\n", err.reason());
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n{KNIT_ERROR_HEADER}: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        err.reason(),
        body.len(),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head_bytes: 1024,
            max_headers: 8,
            max_uri_bytes: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn scan_all(raw: &[u8]) -> Result<Option<Head>, Error> {
        let mut buf = BytesMut::from(raw);
        HeadScan::default().scan(&mut buf, &limits())
    }

    #[test]
    fn head_table() {
        // (head, Ok(body framing) or Err(reason))
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok("none")),
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok("none")),
            (b"GET / HTTP/1.0\r\n\r\n", Ok("none")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Ok("sized")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok("chunked")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:chunked\r\n\r\n", Ok("chunked")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", Ok("chunked")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked\r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n", Err("bad_request")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\nHost: a\n\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err("bad_request")),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Err("bad_request")),
            (b"GET /admin#x HTTP/1.1\r\nHost: a\r\n\r\n", Err("bad_request")),
            (b"GET /a?b#c HTTP/1.1\r\nHost: a\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err("bad_request")),
            (b"GET / HTTP/1.1\r\nHost: a\r\n1: a\r\n2: a\r\n3: a\r\n4: a\r\n5: a\r\n6: a\r\n7: a\r\n8: a\r\n\r\n", Err("headers_too_large")),
        ];
        for (raw, want) in cases {
            let got = match scan_all(raw) {
                Ok(Some(head)) => Ok(match head.body {
                    Body::None => "none",
                    Body::Sized(_) => "sized",
                    Body::Chunked => "chunked",
                }),
                Ok(None) => Ok("incomplete"),
                Err(e) => Err(e.reason()),
            };
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn long_request_line_is_414_before_it_ends() {
        let mut raw = b"GET /".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 200));
        let err = scan_all(&raw).err().expect("too long");
        assert_eq!(err.reason(), "uri_too_long");
    }

    #[test]
    fn a_head_arriving_byte_by_byte_is_read_as_one() {
        let raw = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let head_end = raw.len() - 2;
        let mut scan = HeadScan::default();
        let mut buf = BytesMut::new();
        for (i, &b) in raw[..head_end].iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let got = scan.scan(&mut buf, &limits()).expect("valid so far");
            if i + 1 < head_end {
                assert!(got.is_none(), "complete after {} bytes", i + 1);
            } else {
                let head = got.expect("complete at the end");
                // The leading empty line was dropped, not counted in.
                assert_eq!(head.len, head_end - 2);
                assert!(matches!(head.body, Body::Sized(2)));
            }
        }
    }

    #[test]
    fn chunked_framing_table() {
        // (body bytes, Ok(ended) or Err(()))
        let cases: &[(&[u8], Result<bool, ()>)] = &[
            (b"3\r\nabc\r\n0\r\n\r\n", Ok(true)),
            (b"3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", Ok(true)),
            (b"3\r\nab", Ok(false)),
            (b"3 \r\nabc\r\n0\r\n\r\n", Err(())),
            (b"0x3\r\nabc\r\n0\r\n\r\n", Err(())),
            (b"3\nabc\n0\n\n", Err(())),
            (b"3\r\nabcX\r\n", Err(())),
            (b"FFFFFFFFFFFFFFFFF\r\n", Err(())),
            (b"\r\n", Err(())),
            (b"0\r\nX-T: 1\n\r\n", Err(())),
            (b"0\r\nX-T: 1\r\n folded\r\n\r\n", Err(())),
        ];
        for (raw, want) in cases {
            let mut chunk = Chunk::Size {
                digits: 0,
                value: 0,
                extension: None,
            };
            let (_, got) = scan_chunked(&mut chunk, raw, &limits());
            assert_eq!(
                got.map_err(|_| ()),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
