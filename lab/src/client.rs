//! The load client run inside pods (`knit-lab client`): HTTP/1.1 with
//! keep-alive, names resolved by the system resolver (so a pod's hosts file
//! applies), bounded in count and time, and one JSON report at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{LabError, Result};
use crate::report::pod_of;
pub use crate::report::{ClientReport, HttpResponse, MAX_ERRORS};

/// Bodies above this are cut off (the echo's are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Upper bounds that keep every load loop finite.
pub const MAX_CONCURRENCY: u64 = 1024;
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// What to send: the options of `knit-lab client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub url: String,
    pub count: u64,
    pub concurrency: u64,
    /// Per request, including connecting.
    pub timeout: Duration,
    /// Hard cap on the whole run; requests not started by then are not sent.
    pub duration: Duration,
    /// Pause between requests of one connection.
    pub interval: Duration,
    pub headers: Vec<(String, String)>,
    pub method: String,
    /// Size of the request body (zeros), 0 for none.
    pub body_bytes: usize,
    /// One line per request on stderr.
    pub verbose: bool,
}

impl ClientSpec {
    /// One GET with the defaults of the CLI.
    pub fn new(url: &str) -> ClientSpec {
        ClientSpec {
            url: url.to_string(),
            count: 1,
            concurrency: 1,
            timeout: Duration::from_millis(5000),
            duration: Duration::from_millis(60_000),
            interval: Duration::ZERO,
            headers: Vec::new(),
            method: "GET".to_string(),
            body_bytes: 0,
            verbose: false,
        }
    }

    pub fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }

    pub fn concurrency(mut self, c: u64) -> Self {
        self.concurrency = c;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    pub fn interval(mut self, i: Duration) -> Self {
        self.interval = i;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = method.to_string();
        self
    }

    pub fn body_bytes(mut self, n: usize) -> Self {
        self.body_bytes = n;
        self
    }

    /// The `knit-lab client` arguments that reproduce this spec.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--url".to_string(),
            self.url.clone(),
            "--count".to_string(),
            self.count.to_string(),
            "--concurrency".to_string(),
            self.concurrency.to_string(),
            "--timeout-ms".to_string(),
            self.timeout.as_millis().to_string(),
            "--duration-ms".to_string(),
            self.duration.as_millis().to_string(),
            "--interval-ms".to_string(),
            self.interval.as_millis().to_string(),
            "--method".to_string(),
            self.method.clone(),
            "--body-bytes".to_string(),
            self.body_bytes.to_string(),
        ];
        for (k, v) in &self.headers {
            args.push("--header".to_string());
            args.push(format!("{k}: {v}"));
        }
        if self.verbose {
            args.push("--verbose".to_string());
        }
        args
    }

    /// Checks limits and parses the URL, method and headers.
    fn prepare(&self) -> Result<Prepared> {
        if self.count == 0 {
            return Err(LabError::invalid("--count", "must be at least 1"));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(LabError::invalid(
                "--concurrency",
                format!("must be 1..={MAX_CONCURRENCY}"),
            ));
        }
        if self.timeout.is_zero() {
            return Err(LabError::invalid("--timeout-ms", "must be positive"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(LabError::invalid(
                "--duration-ms",
                format!("must be 1..={}", MAX_DURATION.as_millis()),
            ));
        }
        if self.body_bytes > MAX_BODY {
            return Err(LabError::invalid(
                "--body-bytes",
                format!("at most {MAX_BODY}"),
            ));
        }
        let target = Target::parse(&self.url)?;
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|e| LabError::invalid("--method", format!("{:?}: {e}", self.method)))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| LabError::invalid("--header", format!("name {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| LabError::invalid("--header", format!("value {v:?}: {e}")))?;
            headers.append(name, value);
        }
        Ok(Prepared {
            target,
            method,
            headers,
            body: Bytes::from(vec![0u8; self.body_bytes]),
        })
    }
}

/// Parses a `--header` argument of the form `name: value`.
pub fn parse_header_arg(arg: &str) -> Result<(String, String)> {
    match arg.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(LabError::invalid(
            "--header",
            format!("{arg:?} is not `name: value`"),
        )),
    }
}

/// Where requests go, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let bad = |reason: String| LabError::invalid("--url", format!("{url:?}: {reason}"));
        let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(format!("scheme {other} is not supported (only http)"))),
            None => return Err(bad("needs http://".to_string())),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host".to_string()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host".to_string()));
        }
        Ok(Target {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string()),
        })
    }
}

struct Prepared {
    target: Target,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

/// Runs the load described by `spec` and returns the report. Errors only
/// when the spec itself is unusable; failed requests are in the report.
pub async fn run(spec: &ClientSpec) -> Result<ClientReport> {
    let prepared = Arc::new(spec.prepare()?);
    let start = Instant::now();
    let deadline = start + spec.duration;
    let next = Arc::new(AtomicU64::new(0));
    let workers = spec.concurrency.min(spec.count);
    let keep_last = spec.count == 1;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let prepared = prepared.clone();
        let next = next.clone();
        let (count, timeout, interval, verbose) =
            (spec.count, spec.timeout, spec.interval, spec.verbose);
        tasks.push(tokio::spawn(async move {
            worker(
                &prepared, &next, count, timeout, interval, deadline, keep_last, verbose,
            )
            .await
        }));
    }
    let mut report = ClientReport::default();
    for t in tasks {
        match t.await {
            Ok(part) => report.merge(part),
            Err(e) => report.record_error(format!("client worker stopped: {e}")),
        }
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    p: &Prepared,
    next: &AtomicU64,
    count: u64,
    timeout: Duration,
    interval: Duration,
    deadline: Instant,
    keep_last: bool,
    verbose: bool,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut first = true;
    loop {
        if !first && !interval.is_zero() {
            tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
        }
        first = false;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        let budget = timeout.min(deadline - now);
        let started = Instant::now();
        match tokio::time::timeout(budget, request(&mut conn, p)).await {
            Ok(Ok((status, headers, body))) => {
                if verbose {
                    let pod = pod_of(&body).unwrap_or_else(|| "-".to_string());
                    eprintln!(
                        "#{i} {status} pod={pod} {} ms",
                        started.elapsed().as_millis()
                    );
                }
                report.record_response(status, &headers, &body, keep_last);
            }
            Ok(Err(e)) => {
                if verbose {
                    eprintln!("#{i} error: {e}");
                }
                report.record_error(e);
            }
            Err(_) => {
                let e = format!("no response within {} ms", budget.as_millis());
                if verbose {
                    eprintln!("#{i} error: {e}");
                }
                report.record_error(e);
            }
        }
    }
    report
}

/// One request on the worker's kept-alive connection, (re)connecting when
/// there is none or the server closed it.
async fn request(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    p: &Prepared,
) -> std::result::Result<(u16, HeaderMap, Bytes), String> {
    let mut sender = match conn.take() {
        Some(s) if !s.is_closed() => s,
        _ => connect(&p.target).await?,
    };
    if sender.ready().await.is_err() {
        // The server closed the idle connection; that is not a failed request.
        sender = connect(&p.target).await?;
        sender.ready().await.map_err(|e| chain(&e))?;
    }
    let mut builder = Request::builder()
        .method(p.method.clone())
        .uri(p.target.path.as_str())
        .header(HOST, p.target.authority.as_str());
    for (k, v) in &p.headers {
        builder = builder.header(k, v);
    }
    let req = builder
        .body(Full::new(p.body.clone()))
        .map_err(|e| format!("building request: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| chain(&e))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading response body: {}", chain(&*e)))?
        .to_bytes();
    let closing = parts
        .headers
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if !closing {
        *conn = Some(sender);
    }
    Ok((parts.status.as_u16(), parts.headers, body))
}

async fn connect(t: &Target) -> std::result::Result<SendRequest<Full<Bytes>>, String> {
    let addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", t.host))?;
    let mut last = format!("{} resolved to no address", t.host);
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("handshake with {addr}: {}", chain(&e)))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(sender);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// An error with its causes, `outer: inner: ...`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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

    #[test]
    fn url_and_args_parsing() {
        let t = Target::parse("http://backend/").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.path.as_str(),
                t.authority.as_str()
            ),
            ("backend", 80, "/", "backend")
        );
        let t = Target::parse("http://198.18.0.12:8080/a/b?x=1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/a/b?x=1"));
        let t = Target::parse("http://backend").unwrap();
        assert_eq!(t.path, "/");
        for bad in ["https://x/", "backend/", "http:///x", "::"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_header_arg("x-a:  b c ").unwrap(),
            ("x-a".to_string(), "b c".to_string())
        );
        assert!(parse_header_arg("novalue").is_err());
        assert!(parse_header_arg(": v").is_err());

        let spec = ClientSpec::new("http://x/").count(3).header("a", "b");
        let args = spec.to_args();
        assert!(args.windows(2).any(|w| w == ["--count", "3"]));
        assert!(args.windows(2).any(|w| w == ["--header", "a: b"]));
        assert!(ClientSpec::new("http://x/").count(0).prepare().is_err());
        assert!(
            ClientSpec::new("http://x/")
                .concurrency(0)
                .prepare()
                .is_err()
        );
        assert!(
            ClientSpec::new("http://x/")
                .header("bad name", "v")
                .prepare()
                .is_err()
        );
        assert!(
            ClientSpec::new("http://x/")
                .method("GE T")
                .prepare()
                .is_err()
        );
    }
}
