//! The load client run inside pods (`knit-lab client`): HTTP/1.1 with
//! keep-alive (or h2 with prior knowledge), names resolved by the system
//! resolver (so a pod's hosts file applies), bounded in count and time, and
//! one JSON report at the end. With `--download`/`--upload` every request
//! moves a stretch of the deterministic pattern and checks it end to end.
//! With `--rate` requests start on a fixed schedule (open loop) instead of
//! one after another.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, TE};
use http::{Method, Uri};

pub use crate::client_run::run;
use crate::error::{LabError, Result};
pub use crate::report::{ClientReport, HttpResponse, MAX_ERRORS, TransferCheck};

/// Bodies above this are cut off (the echo's are a few hundred bytes).
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest `--download`/`--upload`.
pub const MAX_TRANSFER: u64 = 16 * 1024 * 1024 * 1024;
/// Upper bounds that keep every load loop finite.
pub const MAX_CONCURRENCY: u64 = 1024;
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Highest `--rate`, requests per second.
pub const MAX_RATE: u64 = 100_000;

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
    /// Requests per second on a fixed schedule: request `i` starts at
    /// `i / rate` seconds, whoever finished before it, on one of
    /// `concurrency` connections. A request whose start falls within
    /// `duration` is sent even when the connections are behind (and may
    /// end up to `timeout` after the duration); how far behind is in the
    /// report.
    pub rate: Option<u64>,
    pub headers: Vec<(String, String)>,
    pub method: String,
    /// Size of the request body (zeros), 0 for none.
    pub body_bytes: usize,
    /// One line per request on stderr.
    pub verbose: bool,
    /// GET `/bytes/<n>` on the URL's host and check the n pattern bytes.
    pub download: Option<u64>,
    /// POST n pattern bytes (chunked) to `/sha256` on the URL's host and
    /// check the digest the echo answers with.
    pub upload: Option<u64>,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Call the Echo service's unary method (h2c) with an n-byte message
    /// and check the status and the echo (see [`crate::grpc_frame`]).
    pub grpc_unary: Option<u64>,
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
            rate: None,
            headers: Vec::new(),
            method: "GET".to_string(),
            body_bytes: 0,
            verbose: false,
            download: None,
            upload: None,
            http2: false,
            grpc_unary: None,
        }
    }

    /// Each request downloads `n` pattern bytes from `/bytes/<n>`.
    pub fn download(mut self, n: u64) -> Self {
        self.download = Some(n);
        self
    }

    /// Each request uploads `n` pattern bytes to `/sha256`.
    pub fn upload(mut self, n: u64) -> Self {
        self.upload = Some(n);
        self
    }

    /// Each request is a gRPC unary call echoing `n` bytes.
    pub fn grpc_unary(mut self, n: u64) -> Self {
        self.grpc_unary = Some(n);
        self
    }

    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
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

    /// A fixed rate of `per_second` requests (see [`ClientSpec::rate`]).
    pub fn rate(mut self, per_second: u64) -> Self {
        self.rate = Some(per_second);
        self
    }

    /// The longest a run of this spec may take: its duration, plus one
    /// request timeout at a fixed rate (a request started at the end of
    /// the duration still gets its whole timeout).
    pub fn max_duration(&self) -> Duration {
        match self.rate {
            Some(_) => self.duration.saturating_add(self.timeout),
            None => self.duration,
        }
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
        if let Some(rate) = self.rate {
            args.push("--rate".to_string());
            args.push(rate.to_string());
        }
        for (k, v) in &self.headers {
            args.push("--header".to_string());
            args.push(format!("{k}: {v}"));
        }
        if self.verbose {
            args.push("--verbose".to_string());
        }
        if let Some(n) = self.download {
            args.push("--download".to_string());
            args.push(n.to_string());
        }
        if let Some(n) = self.upload {
            args.push("--upload".to_string());
            args.push(n.to_string());
        }
        if self.http2 {
            args.push("--http2".to_string());
        }
        if let Some(n) = self.grpc_unary {
            args.push("--grpc-unary".to_string());
            args.push(n.to_string());
        }
        args
    }

    /// Checks limits and parses the URL, method and headers.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
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
        if let Some(rate) = self.rate {
            if rate == 0 || rate > MAX_RATE {
                return Err(LabError::invalid(
                    "--rate",
                    format!("must be 1..={MAX_RATE} requests per second"),
                ));
            }
            if !self.interval.is_zero() {
                return Err(LabError::invalid(
                    "--rate",
                    "not with --interval-ms: the schedule decides when requests start",
                ));
            }
        }
        if self.body_bytes > MAX_BODY {
            return Err(LabError::invalid(
                "--body-bytes",
                format!("at most {MAX_BODY}"),
            ));
        }
        let mut target = Target::parse(&self.url)?;
        let mut method = Method::from_bytes(self.method.as_bytes())
            .map_err(|e| LabError::invalid("--method", format!("{:?}: {e}", self.method)))?;
        let transfer = match (self.download, self.upload, self.grpc_unary) {
            (None, None, None) => None,
            (Some(n), None, None) => {
                target.path = format!("/bytes/{n}");
                Some(Transfer::Download(n))
            }
            (None, Some(n), None) => {
                target.path = "/sha256".to_string();
                method = Method::POST;
                Some(Transfer::Upload(n))
            }
            (None, None, Some(n)) => {
                if n > MAX_BODY as u64 {
                    return Err(LabError::invalid(
                        "--grpc-unary",
                        format!("at most {MAX_BODY} bytes"),
                    ));
                }
                target.path = crate::grpc_frame::UNARY_PATH.to_string();
                method = Method::POST;
                Some(Transfer::GrpcUnary(n))
            }
            _ => {
                return Err(LabError::invalid(
                    "--download/--upload/--grpc-unary",
                    "one kind of checked request per run",
                ));
            }
        };
        if let Some(Transfer::Download(n) | Transfer::Upload(n)) = transfer
            && n > MAX_TRANSFER
        {
            return Err(LabError::invalid(
                "--download/--upload",
                format!("at most {MAX_TRANSFER} bytes"),
            ));
        }
        if transfer.is_some() && self.body_bytes > 0 {
            return Err(LabError::invalid(
                "--body-bytes",
                "not with --download/--upload/--grpc-unary",
            ));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| LabError::invalid("--header", format!("name {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| LabError::invalid("--header", format!("value {v:?}: {e}")))?;
            headers.append(name, value);
        }
        let body = match transfer {
            Some(Transfer::GrpcUnary(n)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(TE, HeaderValue::from_static("trailers"));
                crate::grpc_frame::request_body(n as usize)
            }
            _ => Bytes::from(vec![0u8; self.body_bytes]),
        };
        Ok(Prepared {
            target,
            method,
            headers,
            body,
            transfer,
            // gRPC runs over HTTP/2 only.
            http2: self.http2 || self.grpc_unary.is_some(),
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
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target> {
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

/// A checked transfer: each request moves this many pattern bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    Download(u64),
    Upload(u64),
    /// A gRPC unary call echoing this many bytes.
    GrpcUnary(u64),
}

/// A spec checked and parsed, ready for the workers.
pub(crate) struct Prepared {
    pub target: Target,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub transfer: Option<Transfer>,
    pub http2: bool,
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

    #[test]
    fn transfers_pick_path_and_method() {
        let p = ClientSpec::new("http://x:8080/ignored")
            .download(1000)
            .prepare()
            .unwrap();
        assert_eq!(p.target.path, "/bytes/1000");
        assert_eq!(p.transfer, Some(Transfer::Download(1000)));
        let p = ClientSpec::new("http://x:8080/")
            .upload(5)
            .http2(true)
            .prepare()
            .unwrap();
        assert_eq!(
            (p.target.path.as_str(), p.method.as_str()),
            ("/sha256", "POST")
        );
        assert!(p.http2);
        assert!(
            ClientSpec::new("http://x/")
                .download(1)
                .upload(1)
                .prepare()
                .is_err()
        );
        assert!(
            ClientSpec::new("http://x/")
                .upload(1)
                .body_bytes(3)
                .prepare()
                .is_err()
        );
        assert!(
            ClientSpec::new("http://x/")
                .download(MAX_TRANSFER + 1)
                .prepare()
                .is_err()
        );
        let spec = ClientSpec::new("http://x/").rate(200).count(2000);
        assert!(spec.prepare().is_ok());
        assert!(spec.to_args().windows(2).any(|w| w == ["--rate", "200"]));
        assert_eq!(spec.max_duration(), spec.duration + spec.timeout);
        assert!(ClientSpec::new("http://x/").rate(0).prepare().is_err());
        assert!(
            ClientSpec::new("http://x/")
                .rate(MAX_RATE + 1)
                .prepare()
                .is_err()
        );
        assert!(
            ClientSpec::new("http://x/")
                .rate(10)
                .interval(Duration::from_millis(5))
                .prepare()
                .is_err()
        );
        let args = ClientSpec::new("http://x/").upload(7).http2(true).to_args();
        assert!(args.windows(2).any(|w| w == ["--upload", "7"]));
        assert!(args.iter().any(|a| a == "--http2"));
    }
}
