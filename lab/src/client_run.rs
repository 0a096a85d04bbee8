//! How `knit-lab client` sends: workers each on its own kept-alive
//! connection (HTTP/1.1 or h2c), every request bounded by the per-request
//! timeout and the run by its duration cap. Without a rate the workers
//! share a request counter and each sends its next request when the last
//! one is done (closed loop). With one, a scheduler thread hands out the
//! slots of a fixed schedule as their time comes and the first free worker
//! takes each (open loop, as far as `concurrency` connections allow); a
//! request's latency counts from its slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::body::LabBody;
use crate::client::{ClientSpec, MAX_BODY, Prepared, Target, Transfer};
use crate::error::Result;
use crate::pattern::{PatternCheck, pattern_sha256};
use crate::report::{ClientReport, TransferCheck, pod_of};

/// A slot of the schedule: its number and when it is due.
type Slot = (u64, Instant);

/// Where a worker's next request comes from.
enum Source {
    /// Closed loop: the next number of a shared counter.
    Counter(Arc<AtomicU64>),
    /// Open loop: the slots the scheduler thread releases.
    Schedule(Arc<Mutex<UnboundedReceiver<Slot>>>),
}

/// Runs the load described by `spec` and returns the report. Errors only
/// when the spec itself is unusable; failed requests are in the report.
pub async fn run(spec: &ClientSpec) -> Result<ClientReport> {
    let prepared = spec.prepare()?;
    // The digest every transfer must match, computed once per run.
    let expected = match prepared.transfer {
        Some(Transfer::GrpcUnary(_)) | None => None,
        Some(Transfer::Download(n) | Transfer::Upload(n)) => Some(
            tokio::task::spawn_blocking(move || pattern_sha256(n))
                .await
                .unwrap_or_default(),
        ),
    };
    let shared = Arc::new((prepared, expected));
    let start = Instant::now();
    let deadline = start + spec.duration;
    let workers = spec.concurrency.min(spec.count);
    let keep_last = spec.count == 1;
    let (source, scheduler) = match spec.rate {
        Some(rate) => {
            let (tx, rx) = unbounded_channel();
            let (count, start_std, deadline_std) =
                (spec.count, start.into_std(), deadline.into_std());
            let thread = std::thread::Builder::new()
                .name("schedule".to_string())
                .spawn(move || schedule(&tx, count, rate, start_std, deadline_std))
                .map_err(|e| crate::error::LabError::io("starting the scheduler thread", e))?;
            (Source::Schedule(Arc::new(Mutex::new(rx))), Some(thread))
        }
        None => (Source::Counter(Arc::new(AtomicU64::new(0))), None),
    };
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let shared = shared.clone();
        let source = match &source {
            Source::Counter(c) => Source::Counter(c.clone()),
            Source::Schedule(r) => Source::Schedule(r.clone()),
        };
        let limits = Limits {
            count: spec.count,
            timeout: spec.timeout,
            interval: spec.interval,
            deadline,
            keep_last,
            verbose: spec.verbose,
        };
        tasks.push(tokio::spawn(async move {
            worker(&shared.0, shared.1.as_deref(), &source, limits).await
        }));
    }
    drop(source);
    let mut report = ClientReport::default();
    for t in tasks {
        match t.await {
            Ok(part) => report.merge(part),
            Err(e) => report.record_error(format!("client worker stopped: {e}")),
        }
    }
    if let Some(thread) = scheduler {
        // Every worker is done, so the channel is closed and the thread
        // stops at its next slot at the latest (bounded by the deadline).
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// Releases slot `i` at `start + i / rate` until `count` slots or the
/// deadline. A blocking thread sleeps more precisely than the runtime's
/// millisecond timer, which would otherwise add up to a millisecond to
/// every measured latency.
fn schedule(
    tx: &UnboundedSender<Slot>,
    count: u64,
    rate: u64,
    start: std::time::Instant,
    deadline: std::time::Instant,
) {
    for i in 0..count {
        let due = start + slot_offset(i, rate);
        if due >= deadline {
            break;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tx.send((i, Instant::from_std(due))).is_err() {
            // No worker is left to take it.
            break;
        }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    count: u64,
    timeout: Duration,
    interval: Duration,
    deadline: Instant,
    keep_last: bool,
    verbose: bool,
}

async fn worker(p: &Prepared, expected: Option<&str>, source: &Source, l: Limits) -> ClientReport {
    let mut report = ClientReport::default();
    let mut conn: Option<Sender> = None;
    let mut first = true;
    loop {
        // The request's number and the instant its latency counts from.
        let (i, origin) = match source {
            Source::Schedule(slots) => {
                let slot = slots.lock().await.recv().await;
                let Some((i, due)) = slot else { break };
                report.record_start_lag(Instant::now().saturating_duration_since(due));
                (i, due)
            }
            Source::Counter(next) => {
                if !first && !l.interval.is_zero() {
                    tokio::time::sleep_until((Instant::now() + l.interval).min(l.deadline)).await;
                }
                first = false;
                let now = Instant::now();
                if now >= l.deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= l.count {
                    break;
                }
                (i, now)
            }
        };
        // The deadline stops new requests; one already started gets its
        // full timeout (a sliver of budget would fail it).
        let budget = l.timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(budget, request(&mut conn, p, expected)).await {
            Ok(result) => result,
            Err(_) => {
                // A half-done exchange leaves the connection unusable.
                conn = None;
                Err(format!("no response within {} ms", budget.as_millis()))
            }
        };
        let finished = Instant::now();
        report.record_latency(finished.saturating_duration_since(started));
        match result {
            Ok(answer) => {
                report
                    .latency
                    .record(finished.saturating_duration_since(origin));
                if l.verbose {
                    let pod =
                        pod_of(&answer.headers, &answer.body).unwrap_or_else(|| "-".to_string());
                    let check = answer
                        .check
                        .as_ref()
                        .map(|c| format!(" check={}", c.problem.as_deref().unwrap_or("ok")))
                        .unwrap_or_default();
                    eprintln!(
                        "#{i} {} pod={pod}{check} {} ms",
                        answer.status,
                        started.elapsed().as_millis()
                    );
                }
                report.bytes_sent += answer.sent;
                report.bytes_received += answer.received;
                report.record_checked(
                    answer.status,
                    &answer.headers,
                    &answer.body,
                    l.keep_last,
                    answer.check,
                );
            }
            Err(e) => {
                if l.verbose {
                    eprintln!("#{i} error: {e}");
                }
                report.record_error(e);
            }
        }
    }
    report
}

/// When slot `i` of a schedule of `rate` requests per second starts,
/// counted from the start of the run.
fn slot_offset(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A connection of either protocol.
enum Sender {
    H1(http1::SendRequest<LabBody>),
    H2(http2::SendRequest<LabBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> std::result::Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<LabBody>,
    ) -> std::result::Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// What one request brought back.
struct Answer {
    status: u16,
    headers: HeaderMap,
    /// The body, except for downloads (checked as it streamed by).
    body: Bytes,
    check: Option<TransferCheck>,
    sent: u64,
    received: u64,
}

/// One request on the worker's kept-alive connection, (re)connecting when
/// there is none or the server closed it.
async fn request(
    conn: &mut Option<Sender>,
    p: &Prepared,
    expected: Option<&str>,
) -> std::result::Result<Answer, String> {
    let mut sender = match conn.take() {
        Some(s) if !s.is_closed() => s,
        _ => connect(&p.target, p.http2).await?,
    };
    if sender.ready().await.is_err() {
        // The server closed the idle connection; that is not a failed request.
        sender = connect(&p.target, p.http2).await?;
        sender.ready().await.map_err(|e| chain(&e))?;
    }
    let mut builder = Request::builder().method(p.method.clone());
    builder = if p.http2 {
        // h2 carries the authority in the request line, not in Host.
        builder.uri(format!("http://{}{}", p.target.authority, p.target.path))
    } else {
        builder
            .uri(p.target.path.as_str())
            .header(HOST, p.target.authority.as_str())
    };
    for (k, v) in &p.headers {
        builder = builder.header(k, v);
    }
    let (body, sent) = match p.transfer {
        // No length announced: HTTP/1.1 sends it chunked.
        Some(Transfer::Upload(n)) => (LabBody::pattern(n, false), n),
        _ => (LabBody::full(p.body.clone()), p.body.len() as u64),
    };
    let req = builder
        .body(body)
        .map_err(|e| format!("building request: {e}"))?;
    let resp = sender.send(req).await.map_err(|e| chain(&e))?;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let (body, received, check) = match (p.transfer, parts.status.is_success()) {
        (Some(Transfer::Download(n)), true) => {
            let mut pc = PatternCheck::new(n);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    format!(
                        "reading the download after {} bytes: {}",
                        pc.bytes(),
                        chain(&e)
                    )
                })?;
                if let Some(data) = frame.data_ref() {
                    pc.update(data);
                }
            }
            let received = pc.bytes();
            let result = pc.finish_against(expected.unwrap_or_default().to_string());
            (
                Bytes::new(),
                received,
                Some(TransferCheck::download(&result)),
            )
        }
        (transfer, ok) => {
            let collected = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading response body: {}", chain(&*e)))?;
            let trailers = collected.trailers().cloned();
            let bytes = collected.to_bytes();
            let check = match transfer {
                Some(Transfer::Upload(n)) if ok => Some(TransferCheck::upload(
                    n,
                    expected.unwrap_or_default(),
                    &bytes,
                )),
                Some(Transfer::GrpcUnary(n)) if ok => Some(crate::grpc_frame::check(
                    n,
                    &parts.headers,
                    trailers.as_ref(),
                    &bytes,
                )),
                _ => None,
            };
            let len = bytes.len() as u64;
            (bytes, len, check)
        }
    };
    let closing = parts
        .headers
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if !closing {
        *conn = Some(sender);
    }
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
        check,
        sent,
        received,
    })
}

async fn connect(t: &Target, http2: bool) -> std::result::Result<Sender, String> {
    let addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", t.host))?;
    let mut last = format!("{} resolved to no address", t.host);
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                let sender = if http2 {
                    let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("h2 handshake with {addr}: {}", chain(&e)))?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Sender::H2(sender)
                } else {
                    let (sender, connection) = http1::handshake(io)
                        .await
                        .map_err(|e| format!("handshake with {addr}: {}", chain(&e)))?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Sender::H1(sender)
                };
                return Ok(sender);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// An error with its causes, `outer: inner: ...`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { crate::echo::serve(listener, "rate-echo").await });
        addr
    }

    #[test]
    fn slots_are_evenly_spaced() {
        assert_eq!(slot_offset(0, 200), Duration::ZERO);
        assert_eq!(slot_offset(1, 200), Duration::from_millis(5));
        assert_eq!(slot_offset(200, 200), Duration::from_secs(1));
        assert_eq!(slot_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(slot_offset(120_000, 200), Duration::from_secs(600));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fixed_rate_keeps_its_schedule_and_counts_exactly() {
        let addr = echo().await;
        let spec = ClientSpec::new(&format!("http://{addr}/"))
            .rate(100)
            .count(50)
            .concurrency(4);
        let begun = std::time::Instant::now();
        let r = run(&spec).await.expect("runs");
        let took = begun.elapsed();
        assert_eq!((r.sent, r.ok, r.failed), (50, 50, 0), "{r:?}");
        assert_eq!((r.latency.count, r.start_lag.count), (50, 50), "{r:?}");
        // The last slot starts 490 ms in: not sooner, whatever the speed.
        assert!(took >= Duration::from_millis(490), "{took:?}");
        assert!(r.max_latency_ms < 5000, "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fixed_rate_stops_at_the_duration_and_counts_failures() {
        let addr = echo().await;
        // Slots at 0, 100 and 200 ms fall within 250 ms; the rest do not.
        let spec = ClientSpec::new(&format!("http://{addr}/"))
            .rate(10)
            .count(1000)
            .duration(Duration::from_millis(250));
        let r = run(&spec).await.expect("runs");
        assert_eq!((r.sent, r.ok), (3, 3), "{r:?}");

        // Nothing listening: every slot is a counted failure.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let spec = ClientSpec::new(&format!("http://{closed}/"))
            .rate(50)
            .count(10)
            .concurrency(2);
        let r = run(&spec).await.expect("runs");
        assert_eq!((r.sent, r.ok, r.failed), (10, 0, 10), "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_unary_calls_pass_only_with_an_ok_echo() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let grpc = listener.local_addr().expect("addr");
        tokio::spawn(async move { crate::grpc::serve(listener, "g").await });
        let spec = ClientSpec::new(&format!("http://{grpc}/"))
            .grpc_unary(1000)
            .rate(200)
            .count(40)
            .concurrency(2);
        let r = run(&spec).await.expect("runs");
        assert_eq!(
            (r.sent, r.ok, r.verified, r.mismatched),
            (40, 40, 40, 0),
            "{r:?}"
        );
        assert!(r.bytes_sent >= 40 * 1000, "{r:?}");

        // A plain HTTP server answers 200 with no grpc-status: not a pass.
        let http = echo().await;
        let spec = ClientSpec::new(&format!("http://{http}/"))
            .grpc_unary(10)
            .count(3);
        let r = run(&spec).await.expect("runs");
        assert_eq!((r.sent, r.ok, r.mismatched), (3, 0, 3), "{r:?}");
        assert!(r.errors.iter().any(|e| e.contains("grpc-status")), "{r:?}");
    }

    /// A server that answers each request on a connection `delay` after
    /// reading its head.
    async fn slow_server(delay: Duration) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(resp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// One connection, a request every 10 ms and 30 ms per answer: the
    /// queue grows, and latency counted from each slot shows it. Request
    /// `i` cannot finish before 30·(i+1) ms, its slot is at 10·i ms, so
    /// its latency is at least 20·i + 30 ms whatever the machine's speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_counts_from_the_slot_not_the_send() {
        let addr = slow_server(Duration::from_millis(30)).await;
        let spec = ClientSpec::new(&format!("http://{addr}/"))
            .rate(100)
            .count(20)
            .concurrency(1);
        let r = run(&spec).await.expect("runs");
        assert_eq!((r.sent, r.ok), (20, 20), "{r:?}");
        assert_eq!(r.latency.count, 20);
        // Rank 10 of 20 is request 9 or later: at least 210 ms.
        assert!(r.latency.percentile_us(50.0) >= 210_000, "{:?}", r.latency);
        // The last request: at least 410 ms from its slot.
        assert!(r.latency.max_us >= 410_000, "{:?}", r.latency);
        // It was sent at least 380 ms after its slot (19 answers before it).
        assert!(r.start_lag.max_us >= 380_000, "{:?}", r.start_lag);
    }
}
