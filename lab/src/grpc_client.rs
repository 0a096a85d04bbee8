//! `knit-lab grpc-client`: calls the grpc-echo (unary, a bidirectional
//! stream, or the slow method under a deadline) and reports the replies, the
//! trailer, the final gRPC status and the time taken.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::client_run::chain;
use crate::error::{LabError, Result};
use crate::grpc::TRAILER;
use crate::grpc::pb::echo_client::EchoClient;
use crate::grpc::pb::{EchoReply, EchoRequest, SlowRequest};
use crate::outcome::{Outcome, elapsed_ms};

/// Which method the client calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GrpcMode {
    /// `count` unary calls.
    #[default]
    Unary,
    /// One stream carrying `count` messages, each awaited before the next.
    Bidi,
    /// `count` calls of `Slow` sleeping `slow_ms`.
    Slow,
}

/// What `knit-lab grpc-client` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GrpcClientSpec {
    /// http:// URL of the server (h2c); the host resolves through the system resolver.
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value_t = GrpcMode::Unary)]
    pub mode: GrpcMode,
    /// Calls (unary, slow) or messages on the stream (bidi).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Deadline of each call (of the whole stream in bidi): sent as
    /// grpc-timeout and enforced by the client, which then reports DEADLINE_EXCEEDED.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// How long each `Slow` call asks the server to sleep.
    #[arg(long, default_value_t = 1000)]
    pub slow_ms: u64,
    /// The status every call must end with (name like DEADLINE_EXCEEDED, or number).
    #[arg(long, default_value = "OK")]
    pub expect: String,
    /// Deadline for connecting.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Hard cap on the whole run.
    #[arg(long, default_value_t = 60_000)]
    pub duration_ms: u64,
}

impl GrpcClientSpec {
    pub fn new(url: &str, mode: GrpcMode) -> GrpcClientSpec {
        GrpcClientSpec {
            url: url.to_string(),
            mode,
            count: 1,
            deadline_ms: None,
            slow_ms: 1000,
            expect: "OK".to_string(),
            timeout_ms: 5000,
            duration_ms: 60_000,
        }
    }

    pub fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }

    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline_ms = Some(d.as_millis() as u64);
        self
    }

    pub fn slow(mut self, d: Duration) -> Self {
        self.slow_ms = d.as_millis() as u64;
        self
    }

    /// The status code every call must end with.
    pub fn expect(mut self, code: Code) -> Self {
        self.expect = code_name(code).to_string();
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.duration_ms = d.as_millis() as u64;
        self
    }

    pub fn to_args(&self) -> Vec<String> {
        let mode = match self.mode {
            GrpcMode::Unary => "unary",
            GrpcMode::Bidi => "bidi",
            GrpcMode::Slow => "slow",
        };
        let mut args = vec![
            "--url".into(),
            self.url.clone(),
            "--mode".into(),
            mode.into(),
            "--count".into(),
            self.count.to_string(),
            "--slow-ms".into(),
            self.slow_ms.to_string(),
            "--expect".into(),
            self.expect.clone(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
            "--duration-ms".into(),
            self.duration_ms.to_string(),
        ];
        if let Some(d) = self.deadline_ms {
            args.push("--deadline-ms".into());
            args.push(d.to_string());
        }
        args
    }

    fn validate(&self) -> Result<Code> {
        crate::outcome::check_bounds(self.count, self.timeout_ms, self.duration_ms)?;
        if self.deadline_ms == Some(0) {
            return Err(LabError::invalid("--deadline-ms", "must be positive"));
        }
        if !self.url.starts_with("http://") {
            return Err(LabError::invalid(
                "--url",
                format!("{:?}: needs http:// (h2c)", self.url),
            ));
        }
        parse_code(&self.expect).ok_or_else(|| {
            LabError::invalid("--expect", format!("{:?} is no gRPC status", self.expect))
        })
    }
}

/// The JSON report of `knit-lab grpc-client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub url: String,
    pub mode: GrpcMode,
    /// Calls made (unary, slow) or messages sent (bidi).
    pub sent: u64,
    /// Replies that echoed their request.
    pub replies: u64,
    /// Replies per answering pod.
    pub by_pod: BTreeMap<String, u64>,
    /// The `x-echo-trailer` value of the last call that had one.
    #[serde(default)]
    pub trailer: Option<String>,
    /// Status of the last call: numeric code, canonical name, message.
    pub code: i32,
    pub code_name: String,
    pub message: String,
    /// Calls per final status name.
    pub codes: BTreeMap<String, u64>,
    pub connect_ms: u64,
    pub elapsed_ms: u64,
}

impl Outcome for GrpcReport {
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

impl GrpcReport {
    fn record_status(&mut self, status: &Status) {
        self.code = status.code() as i32;
        self.code_name = code_name(status.code()).to_string();
        self.message = status.message().to_string();
        *self.codes.entry(self.code_name.clone()).or_insert(0) += 1;
    }

    fn record_trailer(&mut self, metadata: &MetadataMap) {
        if let Some(v) = metadata.get(TRAILER).and_then(|v| v.to_str().ok()) {
            self.trailer = Some(v.to_string());
        }
    }

    /// Checks one reply against what was sent.
    fn record_reply(&mut self, what: &str, sent: &str, reply: &EchoReply) {
        *self.by_pod.entry(reply.pod.clone()).or_insert(0) += 1;
        if reply.message == sent && !reply.pod.is_empty() {
            self.replies += 1;
        } else {
            self.fail(format!(
                "{what}: reply {:?} from pod {:?} does not echo {sent:?}",
                reply.message, reply.pod
            ));
        }
    }
}

/// The canonical name of a gRPC status code (as in the gRPC spec).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status code from its canonical name (any case) or number.
pub fn parse_code(s: &str) -> Option<Code> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (0..=16).contains(&n).then(|| Code::from_i32(n));
    }
    (0..=16)
        .map(Code::from_i32)
        .find(|c| code_name(*c).eq_ignore_ascii_case(s))
}

/// Runs the client; errors only for unusable options.
pub async fn run_client(spec: &GrpcClientSpec) -> Result<GrpcReport> {
    let expect = spec.validate()?;
    let mut report = GrpcReport {
        url: spec.url.clone(),
        mode: spec.mode,
        code_name: String::new(),
        ..GrpcReport::default()
    };
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(spec.duration_ms),
        calls(spec, expect, &mut report, start),
    )
    .await;
    Ok(crate::outcome::finish(
        report,
        result,
        spec.duration_ms,
        start,
    ))
}

async fn calls(
    spec: &GrpcClientSpec,
    expect: Code,
    report: &mut GrpcReport,
    start: Instant,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let endpoint = Endpoint::from_shared(spec.url.clone())
        .map_err(|e| format!("url {:?}: {e}", spec.url))?
        .connect_timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            let status = Status::unavailable(format!("connecting: {}", chain(&e)));
            report.record_status(&status);
            return Err(status.message().to_string());
        }
        Err(_) => {
            let status =
                Status::unavailable(format!("no connection within {} ms", spec.timeout_ms));
            report.record_status(&status);
            return Err(status.message().to_string());
        }
    };
    report.connect_ms = elapsed_ms(start);
    let mut client = EchoClient::new(channel);
    let deadline = spec.deadline_ms.map(Duration::from_millis);
    match spec.mode {
        GrpcMode::Unary | GrpcMode::Slow => {
            for i in 0..spec.count {
                report.sent += 1;
                let what = format!("call {i}");
                let message = format!("{:?} call {i} from knit-lab grpc-client", spec.mode);
                let result = match spec.mode {
                    GrpcMode::Unary => {
                        let req = with_deadline(
                            EchoRequest {
                                message: message.clone(),
                            },
                            deadline,
                        );
                        within(deadline, client.unary(req)).await
                    }
                    _ => {
                        let req = SlowRequest {
                            millis: spec.slow_ms,
                            message: message.clone(),
                        };
                        within(deadline, client.slow(with_deadline(req, deadline))).await
                    }
                };
                match result {
                    Ok(resp) => {
                        report.record_trailer(resp.metadata());
                        report.record_status(&Status::ok(""));
                        report.record_reply(&what, &message, resp.get_ref());
                        if !resp.metadata().contains_key(TRAILER) {
                            report.fail(format!("{what}: no {TRAILER} trailer"));
                        }
                    }
                    Err(status) => {
                        report.record_trailer(status.metadata());
                        report.record_status(&status);
                    }
                }
                check_code(report, &what, expect);
            }
        }
        GrpcMode::Bidi => {
            let result = within(deadline, bidi(&mut client, spec.count, deadline, report)).await;
            let status = match result {
                Ok(()) => Status::ok(""),
                Err(status) => status,
            };
            report.record_trailer(status.metadata());
            report.record_status(&status);
            check_code(report, "the stream", expect);
        }
    }
    Ok(())
}

fn check_code(report: &mut GrpcReport, what: &str, expect: Code) {
    if report.code != expect as i32 {
        let reason = format!(
            "{what} ended with {} ({}), expected {}",
            report.code_name,
            report.message,
            code_name(expect)
        );
        report.fail(reason);
    }
}

/// One stream: each message is sent after the previous echo arrived, so
/// the server must answer as messages come, not when the stream ends.
async fn bidi(
    client: &mut EchoClient<Channel>,
    count: u64,
    deadline: Option<Duration>,
    report: &mut GrpcReport,
) -> std::result::Result<(), Status> {
    let (tx, rx) = mpsc::channel::<EchoRequest>(1);
    let resp = client
        .bidi_stream(with_deadline(ReceiverStream::new(rx), deadline))
        .await?;
    let mut inbound = resp.into_inner();
    for i in 0..count {
        let message = format!("stream message {i} from knit-lab grpc-client");
        tx.send(EchoRequest {
            message: message.clone(),
        })
        .await
        .map_err(|_| Status::unavailable(format!("the stream closed before message {i}")))?;
        report.sent += 1;
        match inbound.message().await? {
            Some(reply) => {
                report.record_reply(&format!("message {i}"), &message, &reply);
                if reply.seq != i {
                    report.fail(format!("message {i}: reply has seq {}", reply.seq));
                }
            }
            None => {
                return Err(Status::unknown(format!(
                    "stream ended before the echo of message {i}"
                )));
            }
        }
    }
    drop(tx);
    if let Some(extra) = inbound.message().await? {
        report.fail(format!(
            "unexpected reply after the last message: {extra:?}"
        ));
    }
    match inbound.trailers().await? {
        Some(trailers) if trailers.contains_key(TRAILER) => {
            report.record_trailer(&trailers);
        }
        _ => report.fail(format!("the stream ended without a {TRAILER} trailer")),
    }
    Ok(())
}

fn with_deadline<T>(msg: T, deadline: Option<Duration>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(d) = deadline {
        // Sent as grpc-timeout, so the server and any proxy see it too.
        req.set_timeout(d);
    }
    req
}

/// Runs a call under the client's own deadline, as gRPC clients do: when
/// it passes, the call is DEADLINE_EXCEEDED whatever arrives later. A
/// failure that arrives after the deadline (a server or proxy enforcing the
/// same grpc-timeout) counts as the deadline too.
async fn within<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = std::result::Result<T, Status>>,
) -> std::result::Result<T, Status> {
    let Some(d) = deadline else { return call.await };
    let started = Instant::now();
    let exceeded = |detail: String| {
        Status::deadline_exceeded(format!("deadline of {} ms exceeded{detail}", d.as_millis()))
    };
    match tokio::time::timeout(d, call).await {
        Ok(Err(status)) if started.elapsed() >= d && status.code() != Code::DeadlineExceeded => {
            let mut s = exceeded(format!(
                " (then: {} {})",
                code_name(status.code()),
                status.message()
            ));
            *s.metadata_mut() = status.metadata().clone();
            Err(s)
        }
        Ok(result) => result,
        Err(_) => Err(exceeded(String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_round_trip() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            assert_eq!(parse_code(code_name(code)), Some(code));
            assert_eq!(parse_code(&n.to_string()), Some(code));
        }
        assert_eq!(
            parse_code("deadline_exceeded"),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(parse_code("17"), None);
        assert_eq!(parse_code("NOPE"), None);
    }

    #[test]
    fn args_round_trip_through_the_cli() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            spec: GrpcClientSpec,
        }
        let spec = GrpcClientSpec::new("http://grpc-echo:50051", GrpcMode::Slow)
            .count(3)
            .deadline(Duration::from_millis(200))
            .slow(Duration::from_millis(1500))
            .expect(Code::DeadlineExceeded);
        let mut argv = vec!["grpc-client".to_string()];
        argv.extend(spec.to_args());
        let parsed = Cli::try_parse_from(argv).unwrap().spec;
        assert_eq!(parsed, spec);
        assert_eq!(parsed.validate().unwrap(), Code::DeadlineExceeded);
        assert!(
            GrpcClientSpec::new("https://x", GrpcMode::Unary)
                .validate()
                .is_err()
        );
        assert!(
            GrpcClientSpec::new("http://x", GrpcMode::Unary)
                .count(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn report_parses_back() {
        let mut r = GrpcReport {
            url: "http://x".into(),
            mode: GrpcMode::Bidi,
            ..GrpcReport::default()
        };
        r.record_status(&Status::deadline_exceeded("late"));
        r.record_reply(
            "m",
            "hi",
            &EchoReply {
                message: "hi".into(),
                pod: "p".into(),
                seq: 0,
            },
        );
        r.record_reply(
            "m",
            "hi",
            &EchoReply {
                message: "ho".into(),
                pod: "p".into(),
                seq: 1,
            },
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mode"], "bidi");
        assert_eq!(v["code"], 4);
        assert_eq!(v["code_name"], "DEADLINE_EXCEEDED");
        assert_eq!(v["by_pod"]["p"], 2);
        assert_eq!(v["replies"], 1);
        assert!(v["reason"].as_str().unwrap().contains("does not echo"));
        let back: GrpcReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
