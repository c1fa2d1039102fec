//! The one back-off of every retry loop: 0.2 s more after each failed attempt, at most 5 s.
//!
//! Used wherever a consumer waits for something that may pass (a log that cannot take a
//! write or a poll, a store or a schema registry that does not answer, a processor that
//! cannot take its partitions yet). Linear, not exponential: the waits are for services
//! that come back within seconds, and a consumer must notice that soon.

use std::future::Future;
use std::time::Duration;

/// The wait before retry number `attempt` (counted from 1): 0.2 s × `attempt`, at most 5 s.
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt.clamp(1, 25)))
}

/// Counts the failed attempts of one retry loop and says how long to wait before the next
/// ([`retry_backoff`]).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// No attempt failed yet.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// Counts a failed attempt; returns the wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        retry_backoff(self.attempt)
    }

    /// Counts a failed attempt and waits before the next one.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failed attempts so far (for logs).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// An attempt succeeded: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs `attempt` until it succeeds, waiting [`Backoff`] between failures (each logged as
/// a warning naming `what`). Returns `None` when `shutdown` resolves first.
pub async fn retry_until<T, E, F, Fut>(
    what: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new();
    loop {
        let result = tokio::select! {
            biased;
            _ = &mut *shutdown => return None,
            r = attempt() => r,
        };
        match result {
            Ok(v) => return Some(v),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(what, error = %e, attempt = backoff.attempt(), "Failed; retrying.");
                tokio::select! {
                    biased;
                    _ = &mut *shutdown => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_a_fifth_of_a_second_up_to_five_seconds() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(400));
        assert_eq!(b.attempt(), 2);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(5));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(retry_backoff(0), retry_backoff(1));
    }

    #[tokio::test]
    async fn retry_until_retries_failures_and_stops_on_shutdown() {
        let mut calls = 0;
        let mut never = std::pin::pin!(std::future::pending::<()>());
        let got = retry_until("test", &mut never, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(format!("attempt {n} failed"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Some(3));

        let mut now = std::pin::pin!(std::future::ready(()));
        let got: Option<()> =
            retry_until("test", &mut now, || async { Err::<(), _>("always") }).await;
        assert_eq!(got, None);
    }
}
