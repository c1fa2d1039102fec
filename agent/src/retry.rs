//! Retry delays ([`Backoff`]) and the "send until acknowledged" loop shared by events,
//! inventory and command results.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::transport::SendOutcome;

/// Shortest delay a full-jitter backoff returns, so a drawn zero never makes a tight loop.
const MIN_FULL_JITTER: Duration = Duration::from_millis(10);

/// Exponential backoff: `initial`, doubling per consecutive failure, capped at `max`.
///
/// * [`Backoff::new`] draws each delay from [half, full] of that bound (the sender's
///   retries, where some spacing is wanted);
/// * [`Backoff::full_jitter`] draws it from [0, full] ("full jitter", for reconnects, so
///   agents that lost the gateway together do not come back together).
///
/// A server's `Retry-After` is a floor (with up to 10 % jitter so agents told the same
/// value do not return in lockstep).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    full_jitter: bool,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
            full_jitter: false,
        }
    }

    pub(crate) fn full_jitter(initial: Duration, max: Duration) -> Self {
        Self {
            full_jitter: true,
            ..Self::new(initial, max)
        }
    }

    /// The bound of the next delay before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        self.initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }

    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let own = if self.full_jitter {
            exp.mul_f64(rand::random_range(0.0..=1.0))
                .max(MIN_FULL_JITTER.min(exp))
        } else {
            exp.mul_f64(rand::random_range(0.5..=1.0))
        };
        match retry_after {
            Some(after) => own.max(after + after.mul_f64(rand::random_range(0.0..=0.1))),
            None => own,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How [`deliver_until_acked`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// The gateway acknowledged it.
    Acked,
    /// The gateway refused it for good (4xx other than 401/403/404/405/408/413/429); logged.
    Rejected,
    /// The agent is stopping; it was not acknowledged.
    Stopped,
}

/// Calls `attempt` until the gateway acknowledges (2xx / `ack`), it refuses for good, or
/// `cancel` fires. Retries wait with `backoff` (honouring `Retry-After`); a refused
/// credential waits `auth_retry`. `what` names the payload in logs.
pub(crate) async fn deliver_until_acked<F, Fut>(
    what: &str,
    mut attempt: F,
    backoff: &mut Backoff,
    auth_retry: Duration,
    cancel: &CancellationToken,
) -> Delivered
where
    F: FnMut() -> Fut,
    Fut: Future<Output = SendOutcome>,
{
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Delivered::Stopped,
            o = attempt() => o,
        };
        let delay = match outcome {
            SendOutcome::Sent(_) => {
                backoff.reset();
                return Delivered::Acked;
            }
            SendOutcome::Rejected {
                status,
                error,
                body,
            } => {
                let message = error.map(|e| e.error.message).unwrap_or(body);
                error!(what, status, %message, "Gateway rejected it; dropping it.");
                return Delivered::Rejected;
            }
            SendOutcome::Unauthorized { status, .. } => {
                warn!(what, status, retry_in = ?auth_retry, "Gateway refused the credential; will retry.");
                auth_retry
            }
            SendOutcome::RetryLater {
                retry_after,
                reason,
            } => {
                let delay = backoff.next_delay(retry_after);
                if failures == 0 {
                    warn!(what, %reason, retry_in = ?delay, "Sending failed; will retry.");
                } else {
                    debug!(what, %reason, retry_in = ?delay, "Sending failed again.");
                }
                delay
            }
        };
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Delivered::Stopped,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d0 = b.next_delay(None);
        assert!(
            d0 >= Duration::from_millis(500) && d0 <= Duration::from_secs(1),
            "{d0:?}"
        );
        let d1 = b.next_delay(None);
        assert!(
            d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
            "{d1:?}"
        );
        for _ in 0..40 {
            assert!(b.next_delay(None) <= Duration::from_secs(60));
        }
        let d = b.next_delay(Some(Duration::from_secs(300)));
        assert!(
            d >= Duration::from_secs(300) && d <= Duration::from_secs(330),
            "{d:?}"
        );
        b.reset();
        let d = b.next_delay(Some(Duration::from_secs(5)));
        assert!(
            d >= Duration::from_secs(5) && d <= Duration::from_millis(5500),
            "{d:?}"
        );
    }

    #[test]
    fn full_jitter_stays_under_the_growing_cap() {
        let mut b = Backoff::full_jitter(Duration::from_secs(1), Duration::from_secs(8));
        let ceilings: Vec<Duration> = (0..6)
            .map(|_| {
                let cap = b.ceiling();
                let d = b.next_delay(None);
                assert!(d <= cap && d >= MIN_FULL_JITTER, "{d:?} > {cap:?}");
                cap
            })
            .collect();
        assert_eq!(
            ceilings,
            [1, 2, 4, 8, 8, 8].map(Duration::from_secs).to_vec(),
            "doubles then caps"
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn delivery_retries_until_acked_and_stops_on_reject_or_cancel() {
        use fleet_schemas::api::IngestAccepted;
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = AtomicU32::new(0);
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let cancel = CancellationToken::new();
        let r = deliver_until_acked(
            "test",
            || async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    SendOutcome::RetryLater {
                        retry_after: None,
                        reason: "down".into(),
                    }
                } else {
                    SendOutcome::Sent(IngestAccepted {
                        accepted: 1,
                        config: None,
                        rejected: vec![],
                    })
                }
            },
            &mut b,
            Duration::from_millis(1),
            &cancel,
        )
        .await;
        assert_eq!((r, calls.load(Ordering::Relaxed)), (Delivered::Acked, 3));
        let r = deliver_until_acked(
            "test",
            || async {
                SendOutcome::Rejected {
                    status: 400,
                    error: None,
                    body: String::new(),
                }
            },
            &mut b,
            Duration::from_millis(1),
            &cancel,
        )
        .await;
        assert_eq!(r, Delivered::Rejected);
        cancel.cancel();
        let r = deliver_until_acked(
            "test",
            || async {
                SendOutcome::RetryLater {
                    retry_after: None,
                    reason: "down".into(),
                }
            },
            &mut b,
            Duration::from_millis(1),
            &cancel,
        )
        .await;
        assert_eq!(r, Delivered::Stopped);
    }
}
