//! The client's JSON report and how responses are tallied into it.

use std::collections::BTreeMap;

use http::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::histogram::Histogram;

/// Distinct transport error messages kept in a report.
pub const MAX_ERRORS: usize = 5;

/// A response as the client saw it (the `last` of a single-request report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).map_err(|e| LabError::parse("response body as JSON", e))
    }
}

/// The check of one `--download` or `--upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCheck {
    /// `download` or `upload`.
    pub direction: String,
    /// Bytes that arrived (downloads) or that the echo says it received (uploads).
    pub bytes: u64,
    pub expected_bytes: u64,
    pub sha256: String,
    pub expected_sha256: String,
    /// Why the check failed; `None` when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl TransferCheck {
    pub fn passed(&self) -> bool {
        self.problem.is_none()
    }

    pub(crate) fn download(r: &crate::pattern::CheckResult) -> TransferCheck {
        TransferCheck {
            direction: "download".to_string(),
            bytes: r.bytes,
            expected_bytes: r.expected_bytes,
            sha256: r.sha256.clone(),
            expected_sha256: r.expected_sha256.clone(),
            problem: r.problem(),
        }
    }

    /// Checks the echo's `{"bytes": n, "sha256": "<hex>"}` answer to an upload.
    pub(crate) fn upload(expected_bytes: u64, expected_sha256: &str, body: &[u8]) -> TransferCheck {
        let mut check = TransferCheck {
            direction: "upload".to_string(),
            expected_bytes,
            expected_sha256: expected_sha256.to_string(),
            ..TransferCheck::default()
        };
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                check.problem = Some(format!("the answer is not JSON: {e}"));
                return check;
            }
        };
        check.bytes = v["bytes"].as_u64().unwrap_or(0);
        check.sha256 = v["sha256"].as_str().unwrap_or_default().to_string();
        check.problem = if check.bytes != expected_bytes {
            Some(format!(
                "the echo received {} bytes, expected {expected_bytes}",
                check.bytes
            ))
        } else if check.sha256 != expected_sha256 {
            Some(format!(
                "the echo's sha256 {:?} differs from the pattern's {expected_sha256}",
                check.sha256
            ))
        } else {
            None
        };
        check
    }
}

/// The JSON report `knit-lab client` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Requests attempted (responses + transport failures).
    pub sent: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Requests that got no response (connect, reset, timeout...).
    pub failed: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Responses per answering pod, from the echo body's `pod`.
    pub by_pod: BTreeMap<String, u64>,
    /// Proxy-generated responses per `x-knit-error` reason.
    pub knit_errors: BTreeMap<String, u64>,
    /// The first few distinct error messages (transport failures and failed
    /// transfer checks).
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
    /// Request and response body bytes.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// Transfers checked (2xx answers to `--download`/`--upload`), and those
    /// that failed their check (not counted as `ok`).
    #[serde(default)]
    pub verified: u64,
    #[serde(default)]
    pub mismatched: u64,
    /// The slowest request, from its start to its answer or failure.
    #[serde(default)]
    pub max_latency_ms: u64,
    /// With a fixed rate: the longest a request started after its slot in
    /// the schedule (a measure of the client falling behind).
    #[serde(default)]
    pub max_start_lag_ms: u64,
    /// Latency of every request that got a response (any status), in
    /// microseconds. With a fixed rate it is measured from the request's
    /// slot in the schedule, not from when it was sent, so time spent
    /// waiting for a free connection counts (no coordinated omission);
    /// without a rate, from when the request started.
    #[serde(default, skip_serializing_if = "Histogram::is_empty")]
    pub latency: Histogram,
    /// With a fixed rate: how late each request was sent after its slot.
    #[serde(default, skip_serializing_if = "Histogram::is_empty")]
    pub start_lag: Histogram,
    /// The first failed transfer check, else the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferCheck>,
    /// The only response, when exactly one request was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<HttpResponse>,
}

impl ClientReport {
    /// Counts one response.
    pub fn record_response(&mut self, status: u16, headers: &HeaderMap, body: &[u8], keep: bool) {
        self.record_checked(status, headers, body, keep, None);
    }

    /// Counts one response whose transfer may have been checked: a 2xx is
    /// `ok` only if its check passed.
    pub fn record_checked(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        keep: bool,
        check: Option<TransferCheck>,
    ) {
        self.sent += 1;
        let passed = check.as_ref().is_none_or(TransferCheck::passed);
        if (200..300).contains(&status) && passed {
            self.ok += 1;
        }
        if let Some(check) = check {
            self.verified += 1;
            if let Some(problem) = &check.problem {
                self.mismatched += 1;
                self.note_error(format!("{} check failed: {problem}", check.direction));
            }
            self.keep_check(check);
        }
        *self.statuses.entry(status).or_insert(0) += 1;
        if let Some(pod) = pod_of(headers, body) {
            *self.by_pod.entry(pod).or_insert(0) += 1;
        }
        for reason in headers.get_all("x-knit-error") {
            let reason = String::from_utf8_lossy(reason.as_bytes())
                .trim()
                .to_string();
            *self.knit_errors.entry(reason).or_insert(0) += 1;
        }
        if keep {
            self.last = Some(HttpResponse {
                status,
                headers: header_map(headers),
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
    }

    /// Counts one request that got no response.
    pub fn record_error(&mut self, message: String) {
        self.sent += 1;
        self.failed += 1;
        self.note_error(message);
    }

    fn note_error(&mut self, message: String) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&message) {
            self.errors.push(message);
        }
    }

    /// A failed check stays; otherwise the latest replaces the one before.
    fn keep_check(&mut self, check: TransferCheck) {
        if self.transfer.as_ref().is_none_or(TransferCheck::passed) {
            self.transfer = Some(check);
        }
    }

    /// Adds another worker's counts to this one.
    pub fn merge(&mut self, other: ClientReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.by_pod {
            *self.by_pod.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.knit_errors {
            *self.knit_errors.entry(k).or_insert(0) += v;
        }
        for e in other.errors {
            self.note_error(e);
        }
        if other.last.is_some() {
            self.last = other.last;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.verified += other.verified;
        self.mismatched += other.mismatched;
        if let Some(check) = other.transfer {
            self.keep_check(check);
        }
        self.elapsed_ms = self.elapsed_ms.max(other.elapsed_ms);
        self.max_latency_ms = self.max_latency_ms.max(other.max_latency_ms);
        self.max_start_lag_ms = self.max_start_lag_ms.max(other.max_start_lag_ms);
        self.latency.merge(&other.latency);
        self.start_lag.merge(&other.start_lag);
    }

    /// Notes how long one request took.
    pub fn record_latency(&mut self, took: std::time::Duration) {
        self.max_latency_ms = self.max_latency_ms.max(millis(took));
    }

    /// Notes how late one request started after its slot.
    pub fn record_start_lag(&mut self, lag: std::time::Duration) {
        self.max_start_lag_ms = self.max_start_lag_ms.max(millis(lag));
        self.start_lag.record(lag);
    }

    /// Responses with this status.
    pub fn status_count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Every request sent got a 2xx.
    pub fn all_ok(&self) -> bool {
        self.sent > 0 && self.ok == self.sent
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The pod that answered: the echo body's `pod`, else its `x-echo-pod`
/// header (bodies of `/bytes/<n>` are not JSON). Proxy-generated responses
/// have neither and are not counted.
pub(crate) fn pod_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("pod")?.as_str().map(str::to_string));
    from_body.or_else(|| {
        headers
            .get(crate::echo::POD_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

pub(crate) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn aggregation_counts_statuses_pods_and_knit_errors() {
        let mut r = ClientReport::default();
        r.record_response(
            200,
            &headers(&[]),
            br#"{"pod":"backend-1","path":"/"}"#,
            false,
        );
        r.record_response(200, &headers(&[]), br#"{"pod":"backend-2"}"#, false);
        r.record_response(204, &headers(&[]), br#"{"pod":"backend-1"}"#, false);
        r.record_response(
            503,
            &headers(&[("x-knit-error", "no_endpoints")]),
            b"no endpoints",
            false,
        );
        r.record_response(
            502,
            &headers(&[("x-knit-error", "upstream_connect_failed")]),
            b"",
            false,
        );
        r.record_response(
            503,
            &headers(&[("x-knit-error", "no_endpoints")]),
            b"{\"pod\": 7}",
            false,
        );
        r.record_error("connecting to 1.2.3.4:80: refused".to_string());
        r.record_error("connecting to 1.2.3.4:80: refused".to_string());
        assert_eq!(r.sent, 8);
        assert_eq!(r.ok, 3);
        assert_eq!(r.failed, 2);
        assert_eq!(
            r.statuses,
            BTreeMap::from([(200, 2), (204, 1), (502, 1), (503, 2)])
        );
        assert_eq!(
            r.by_pod,
            BTreeMap::from([("backend-1".to_string(), 2), ("backend-2".to_string(), 1)])
        );
        assert_eq!(
            r.knit_errors,
            BTreeMap::from([
                ("no_endpoints".to_string(), 2),
                ("upstream_connect_failed".to_string(), 1)
            ])
        );
        assert_eq!(
            r.errors,
            vec!["connecting to 1.2.3.4:80: refused"],
            "duplicates kept once"
        );
        assert!(r.last.is_none());
        assert!(!r.all_ok());
        assert_eq!(r.status_count(503), 2);
        assert_eq!(r.status_count(404), 0);
    }

    #[test]
    fn errors_are_capped_and_merge_adds_up() {
        let mut a = ClientReport::default();
        for i in 0..10 {
            a.record_error(format!("e{i}"));
        }
        assert_eq!(a.errors.len(), MAX_ERRORS);
        assert_eq!(a.failed, 10);

        let mut b = ClientReport::default();
        b.record_response(
            200,
            &headers(&[("X-Test", "1"), ("x-test", "2")]),
            br#"{"pod":"p"}"#,
            true,
        );
        b.elapsed_ms = 40;
        a.elapsed_ms = 30;
        b.record_latency(std::time::Duration::from_millis(7));
        a.record_latency(std::time::Duration::from_millis(3));
        a.record_start_lag(std::time::Duration::from_millis(12));
        b.latency.record(std::time::Duration::from_micros(900));
        a.latency.record(std::time::Duration::from_micros(100));
        a.merge(b);
        assert_eq!(a.latency.count, 2);
        assert_eq!((a.latency.min_us, a.latency.max_us), (100, 900));
        assert_eq!(a.start_lag.count, 1);
        assert_eq!((a.sent, a.ok, a.failed), (11, 1, 10));
        assert_eq!((a.max_latency_ms, a.max_start_lag_ms), (7, 12));
        assert_eq!(a.by_pod["p"], 1);
        assert_eq!(a.elapsed_ms, 40);
        let last = a.last.as_ref().unwrap();
        assert_eq!(last.header("X-TEST"), Some("1, 2"));
        assert_eq!(last.json().unwrap()["pod"], "p");
    }

    #[test]
    fn transfer_checks_decide_ok() {
        let sha = crate::pattern::pattern_sha256(10);
        let good = format!(r#"{{"pod":"b","bytes":10,"sha256":"{sha}"}}"#);
        let check = TransferCheck::upload(10, &sha, good.as_bytes());
        assert!(check.passed(), "{check:?}");
        let short = TransferCheck::upload(11, &sha, good.as_bytes());
        assert!(
            short
                .problem
                .as_ref()
                .unwrap()
                .contains("received 10 bytes, expected 11")
        );
        let wrong = TransferCheck::upload(10, "00", good.as_bytes());
        assert!(wrong.problem.as_ref().unwrap().contains("differs"));
        assert!(TransferCheck::upload(10, &sha, b"<html>").problem.is_some());

        let mut r = ClientReport::default();
        r.record_checked(200, &headers(&[]), good.as_bytes(), false, Some(check));
        r.record_checked(
            200,
            &headers(&[]),
            good.as_bytes(),
            false,
            Some(short.clone()),
        );
        r.record_checked(
            200,
            &headers(&[]),
            good.as_bytes(),
            false,
            Some(TransferCheck::upload(10, &sha, good.as_bytes())),
        );
        assert_eq!((r.sent, r.ok, r.verified, r.mismatched), (3, 2, 3, 1));
        assert_eq!(r.transfer.as_ref(), Some(&short), "the failure is kept");
        assert!(r.errors[0].starts_with("upload check failed"), "{r:?}");
        assert!(!r.all_ok());

        let mut pc = crate::pattern::PatternCheck::new(5);
        pc.update(&crate::pattern::pattern(5));
        let d = TransferCheck::download(&pc.finish());
        assert!(d.passed() && d.direction == "download" && d.bytes == 5);

        // The pod of a body that is not JSON comes from the header.
        let mut r = ClientReport::default();
        r.record_response(200, &headers(&[("x-echo-pod", "dl")]), b"\x00\x01", false);
        assert_eq!(r.by_pod["dl"], 1);
    }

    #[test]
    fn old_reports_still_parse() {
        let v = serde_json::json!({
            "sent": 1, "ok": 1, "failed": 0, "statuses": {"200": 1}, "by_pod": {},
            "knit_errors": {}, "errors": [], "elapsed_ms": 3
        });
        let r: ClientReport = serde_json::from_value(v).unwrap();
        assert_eq!((r.verified, r.bytes_sent, r.transfer), (0, 0, None));
    }

    #[test]
    fn report_json_shape() {
        let mut r = ClientReport::default();
        r.record_response(
            200,
            &headers(&[("x-knit-error", "none")]),
            br#"{"pod":"a"}"#,
            true,
        );
        r.elapsed_ms = 5;
        r.latency.record(std::time::Duration::from_micros(250));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["latency"]["count"], 1);
        assert!(
            v.get("start_lag").is_none(),
            "empty histograms are left out"
        );
        assert_eq!(v["sent"], 1);
        assert_eq!(v["statuses"], serde_json::json!({"200": 1}));
        assert_eq!(v["by_pod"], serde_json::json!({"a": 1}));
        assert_eq!(v["knit_errors"], serde_json::json!({"none": 1}));
        assert_eq!(v["last"]["status"], 200);
        let back: ClientReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);

        let without_last = serde_json::to_value(ClientReport::default()).unwrap();
        assert!(without_last.get("last").is_none());
    }
}
