//! The client's JSON report and how responses are tallied into it.

use std::collections::BTreeMap;

use http::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

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
    /// The first few distinct transport error messages.
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
    /// The only response, when exactly one request was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<HttpResponse>,
}

impl ClientReport {
    /// Counts one response.
    pub fn record_response(&mut self, status: u16, headers: &HeaderMap, body: &[u8], keep: bool) {
        self.sent += 1;
        if (200..300).contains(&status) {
            self.ok += 1;
        }
        *self.statuses.entry(status).or_insert(0) += 1;
        if let Some(pod) = pod_of(body) {
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
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&message) {
            self.errors.push(message);
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
            if self.errors.len() < MAX_ERRORS && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        if other.last.is_some() {
            self.last = other.last;
        }
        self.elapsed_ms = self.elapsed_ms.max(other.elapsed_ms);
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

pub(crate) fn pod_of(body: &[u8]) -> Option<String> {
    // Only echo bodies name a pod; anything else (proxy errors) is not counted.
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("pod")?.as_str().map(str::to_string)
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
        a.merge(b);
        assert_eq!((a.sent, a.ok, a.failed), (11, 1, 10));
        assert_eq!(a.by_pod["p"], 1);
        assert_eq!(a.elapsed_ms, 40);
        let last = a.last.as_ref().unwrap();
        assert_eq!(last.header("X-TEST"), Some("1, 2"));
        assert_eq!(last.json().unwrap()["pod"], "p");
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
        let v = serde_json::to_value(&r).unwrap();
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
