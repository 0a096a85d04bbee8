//! What the lab's protocol clients (grpc-, ws-, tls-, banner-, tcp-client)
//! share: a report that says `ok` or the first reason it is not, the
//! duration cap, bounds on their options, and connecting by name through the
//! system resolver (so a pod's hosts file applies).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{LabError, Result};

/// Upper bounds that keep every client finite.
pub const MAX_COUNT: u64 = 1_000_000;
pub const MAX_DURATION_MS: u64 = 3_600_000;

/// A report with an overall verdict and the first reason against it.
pub(crate) trait Outcome {
    fn reason_slot(&mut self) -> &mut Option<String>;
    fn set_ok(&mut self, ok: bool);
    fn set_elapsed(&mut self, ms: u64);

    /// Records a failed check; the first reason is the one reported.
    fn fail(&mut self, reason: String) {
        let slot = self.reason_slot();
        if slot.is_none() {
            *slot = Some(reason);
        }
    }
}

/// Milliseconds since `start`.
pub(crate) fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Settles a report after its run: the run's own error or the duration cap
/// becomes the reason, `ok` is whether there is none.
pub(crate) fn finish<R: Outcome>(
    mut report: R,
    result: std::result::Result<std::result::Result<(), String>, tokio::time::error::Elapsed>,
    duration_ms: u64,
    start: Instant,
) -> R {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => report.fail(reason),
        Err(_) => report.fail(format!(
            "did not finish within the duration cap of {duration_ms} ms"
        )),
    }
    let ok = report.reason_slot().is_none();
    report.set_ok(ok);
    report.set_elapsed(elapsed_ms(start));
    report
}

/// Checks the options every client has.
pub(crate) fn check_bounds(count: u64, timeout_ms: u64, duration_ms: u64) -> Result<()> {
    if count == 0 || count > MAX_COUNT {
        return Err(LabError::invalid(
            "--count",
            format!("must be 1..={MAX_COUNT}"),
        ));
    }
    if timeout_ms == 0 {
        return Err(LabError::invalid("--timeout-ms", "must be positive"));
    }
    if duration_ms == 0 || duration_ms > MAX_DURATION_MS {
        return Err(LabError::invalid(
            "--duration-ms",
            format!("must be 1..={MAX_DURATION_MS}"),
        ));
    }
    Ok(())
}

/// Resolves `host` with the system resolver and connects to the first
/// address that accepts, within `timeout` per attempt.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::result::Result<TcpStream, String> {
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            format!(
                "resolving {host}: no answer within {} ms",
                timeout.as_millis()
            )
        })?
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last = format!("{host} resolved to no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
            Err(_) => {
                last = format!(
                    "connecting to {addr}: no answer within {} ms",
                    timeout.as_millis()
                )
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct R {
        ok: bool,
        reason: Option<String>,
        ms: u64,
    }

    impl Outcome for R {
        fn reason_slot(&mut self) -> &mut Option<String> {
            &mut self.reason
        }
        fn set_ok(&mut self, ok: bool) {
            self.ok = ok;
        }
        fn set_elapsed(&mut self, ms: u64) {
            self.ms = ms;
        }
    }

    #[tokio::test]
    async fn first_reason_wins_and_decides_ok() {
        let start = Instant::now();
        let r = finish(R::default(), Ok(Ok(())), 10, start);
        assert!(r.ok && r.reason.is_none());

        let mut r = R::default();
        r.fail("first".into());
        r.fail("second".into());
        let r = finish(r, Ok(Err("run error".into())), 10, start);
        assert!(!r.ok);
        assert_eq!(r.reason.as_deref(), Some("first"));

        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        let r = finish(R::default(), Err(elapsed), 250, start);
        assert_eq!(
            r.reason.as_deref(),
            Some("did not finish within the duration cap of 250 ms")
        );
    }

    #[test]
    fn bounds() {
        check_bounds(1, 1, 1).unwrap();
        assert!(check_bounds(0, 1, 1).is_err());
        assert!(check_bounds(1, 0, 1).is_err());
        assert!(check_bounds(1, 1, 0).is_err());
        assert!(check_bounds(MAX_COUNT + 1, 1, 1).is_err());
        assert!(check_bounds(1, 1, MAX_DURATION_MS + 1).is_err());
    }
}
