//! Synchronising on conditions instead of sleeping: tests poll readiness
//! endpoints, config versions and counters until they hold or a deadline passes.

use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// How often a condition is re-checked.
const POLL: Duration = Duration::from_millis(75);

/// Calls `f` every ~75 ms until it returns `Ok(true)`. An `Err` from `f` is
/// not fatal (the condition may become checkable later) but is remembered;
/// after `timeout` the error names `what` and the last failure.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_until_every(what, timeout, POLL, f)
}

/// [`wait_until`] re-checking every `poll`: for conditions that are
/// costly to check (each check of a pod runs a process in it) and change
/// slowly (certificate renewals), while load runs on the same cores.
pub fn wait_until_every(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        let last_was_false = match f() {
            Ok(true) => return Ok(()),
            Ok(false) => true,
            Err(e) => {
                last_error = Some(e.to_string());
                false
            }
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let last = match (last_was_false, last_error) {
                (true, Some(e)) => format!("condition still false (an earlier check failed: {e})"),
                (true, None) => "condition still false".to_string(),
                (false, e) => e.unwrap_or_default(),
            };
            return Err(LabError::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        thread::sleep(poll.min(timeout - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_true() {
        let mut calls = 0;
        wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            Ok(calls >= 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn timeout_names_what_and_last_error() {
        let mut calls = 0;
        let err = wait_until("the moon", Duration::from_millis(200), || {
            calls += 1;
            Err(LabError::invalid("probe", format!("attempt {calls}")))
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("waiting for the moon"), "{text}");
        assert!(text.contains(&format!("attempt {calls}")), "{text}");
        assert!(calls >= 2, "polled only {calls} times");
    }

    #[test]
    fn timeout_after_false_mentions_earlier_error() {
        let mut calls = 0;
        let err = wait_until("x", Duration::from_millis(150), || {
            calls += 1;
            if calls == 1 {
                Err(LabError::invalid("probe", "boom"))
            } else {
                Ok(false)
            }
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("still false") && text.contains("boom"),
            "{text}"
        );
    }
}
