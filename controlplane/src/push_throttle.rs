//! At most N proxies at a time hold a config they have not answered yet.
//!
//! Each response is the whole mesh (hundreds of KiB at 10 000 endpoints),
//! and HTTP/2 holds its bytes in knitd until the proxy reads them. Without
//! a bound, one change sent to thousands of proxies at once puts every copy
//! in memory together. A stream takes a permit before it sends and gives it
//! back when the proxy ACKs or NACKs that response, when the stream ends,
//! or after a timeout (a proxy that never answers must not hold a permit).
//! Istio bounds its pushes the same way (100 at a time by default).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Proxies that may hold an unanswered config at once, by default.
pub const DEFAULT_MAX_CONCURRENT_PUSHES: usize = 100;
/// How long a proxy may take to answer before its permit is given back.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct PushThrottle {
    permits: Arc<Semaphore>,
    answer_timeout: Duration,
}

/// A permit held for one stream's unanswered response.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    /// When the permit is given back even without an answer.
    pub expires: Instant,
}

impl PushThrottle {
    /// `limit` is at least 1.
    pub fn new(limit: usize, answer_timeout: Duration) -> PushThrottle {
        PushThrottle {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            answer_timeout,
        }
    }

    /// Waits for a permit (`None` only if the semaphore were closed, which
    /// nothing does: the push then goes unthrottled).
    pub async fn acquire(&self) -> Option<InFlight> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        Some(InFlight {
            _permit: permit,
            expires: Instant::now() + self.answer_timeout,
        })
    }

    /// Restarts the answer timeout of a permit already held (a newer
    /// response sent before the last one was answered).
    pub fn renew(&self, held: &mut InFlight) {
        held.expires = Instant::now() + self.answer_timeout;
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_bounded_and_come_back_when_dropped() {
        let throttle = PushThrottle::new(2, Duration::from_secs(5));
        let a = throttle.acquire().await.expect("permit");
        let _b = throttle.acquire().await.expect("permit");
        assert_eq!(throttle.available(), 0);
        let third = tokio::time::timeout(Duration::from_millis(50), throttle.acquire()).await;
        assert!(third.is_err(), "a third permit while two are held");
        drop(a);
        assert_eq!(throttle.available(), 1);
        let mut c = throttle.acquire().await.expect("permit");
        let before = c.expires;
        tokio::time::sleep(Duration::from_millis(5)).await;
        throttle.renew(&mut c);
        assert!(c.expires > before);
        assert_eq!(PushThrottle::new(0, Duration::ZERO).available(), 1);
    }
}
