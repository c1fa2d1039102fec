//! Rate limits every service applies the same way: token buckets keyed by a client
//! address or a credential ([`KeyRateLimit`], [`AddressLimit`]), and a budget of failed
//! authentications per client address ([`FailureLimit`]) that blocks an address which
//! spends it. Every refusal is a 429 with `Retry-After`. A rate of 0 disables a limit.
//! Idle keys are dropped by `forget_idle`, which the service calls now and then, so a
//! flood of made-up keys cannot grow the state without bound.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::client::ClientKey;
use crate::ApiError;

/// Keyed token buckets (`governor`).
#[derive(Debug)]
struct Buckets<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `rate` per second (or per minute) with bursts of `burst` (at least `rate`); a rate
    /// of 0 disables.
    fn new(rate: u32, burst: u32, per_minute: bool) -> Buckets<K> {
        let limiter = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst.max(rate)).unwrap_or(r);
            let quota = if per_minute {
                Quota::per_minute(r)
            } else {
                Quota::per_second(r)
            };
            RateLimiter::keyed(quota.allow_burst(burst))
        });
        Buckets { limiter }
    }

    /// Takes one from `key`'s bucket; when it is empty, how long until it holds one.
    fn take(&self, key: &K) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
    }
}

/// Whole seconds to wait (at least 1), for `Retry-After`.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Requests per second per key (an agent, an API key), charged only once the caller is
/// authenticated: nobody else's requests can use up a key's bucket.
#[derive(Debug)]
pub struct KeyRateLimit<K: Hash + Eq + Clone + Display> {
    what: &'static str,
    buckets: Buckets<K>,
}

impl<K: Hash + Eq + Clone + Display> KeyRateLimit<K> {
    /// `per_second` requests per second per key with bursts of `burst`; 0 disables.
    /// `what` names the key in the 429's message (`agent`, `API key`).
    pub fn new(what: &'static str, per_second: u32, burst: u32) -> KeyRateLimit<K> {
        KeyRateLimit {
            what,
            buckets: Buckets::new(per_second, burst, false),
        }
    }

    /// Takes one request from the key's bucket, or answers 429 with Retry-After.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        self.buckets.take(key).map_err(|wait| {
            let secs = retry_secs(wait);
            ApiError::too_many_requests(
                format!(
                    "rate limit for {} {key} exceeded; retry after {secs} s",
                    self.what
                ),
                secs,
            )
        })
    }

    /// Drops the state of idle keys (bounded memory).
    pub fn forget_idle(&self) {
        self.buckets.forget_idle();
    }
}

/// A per-client-address limit on requests of one kind (registrations).
#[derive(Debug)]
pub struct AddressLimit {
    what: &'static str,
    buckets: Buckets<ClientKey>,
}

impl AddressLimit {
    /// `per_minute` requests per minute per address with bursts of `burst`; 0 disables.
    /// `what` names the requests in the 429's message.
    pub fn new(what: &'static str, per_minute: u32, burst: u32) -> AddressLimit {
        AddressLimit {
            what,
            buckets: Buckets::new(per_minute, burst, true),
        }
    }

    /// Takes one request of `key`, or answers 429 with Retry-After.
    pub fn check(&self, key: ClientKey) -> Result<(), ApiError> {
        self.buckets.take(&key).map_err(|wait| {
            let secs = retry_secs(wait);
            ApiError::too_many_requests(
                format!(
                    "too many {} from this address; retry after {secs} s",
                    self.what
                ),
                secs,
            )
        })
    }

    /// Drops the state of idle addresses.
    pub fn forget_idle(&self) {
        self.buckets.forget_idle();
    }
}

/// Failed authentications per client address: each 401 takes one from the address's
/// bucket; an address whose bucket is empty is blocked until it holds one again. What a
/// blocked address may still do is the service's choice (the gateway lets in a
/// credential its cache alone proves valid; the query API lets in nothing).
#[derive(Debug)]
pub struct FailureLimit {
    buckets: Buckets<ClientKey>,
    blocked: Mutex<HashMap<ClientKey, Instant>>,
}

impl FailureLimit {
    /// `per_minute` failures per minute per address with bursts of `burst`; 0 disables.
    pub fn new(per_minute: u32, burst: u32) -> FailureLimit {
        FailureLimit {
            buckets: Buckets::new(per_minute, burst, true),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// The 429 for an address that used up its failures, if it did.
    pub fn blocked(&self, key: ClientKey) -> Option<ApiError> {
        let mut blocked = self.blocked.lock();
        let until = *blocked.get(&key)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&key);
            return None;
        }
        let secs = retry_secs(until - now);
        Some(ApiError::too_many_requests(
            format!("too many failed authentications from this address; retry after {secs} s"),
            secs,
        ))
    }

    /// Counts one failed authentication of `key`.
    pub fn charge(&self, key: ClientKey) {
        if let Err(wait) = self.buckets.take(&key) {
            tracing::warn!(client = %key, "Too many failed authentications; address blocked for a while.");
            self.blocked.lock().insert(key, Instant::now() + wait);
        }
    }

    /// Drops the state of idle addresses and ended blocks.
    pub fn forget_idle(&self) {
        self.buckets.forget_idle();
        let now = Instant::now();
        self.blocked.lock().retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientAddr;

    fn key(s: &str) -> ClientKey {
        ClientAddr(Some(s.parse().expect("ip"))).key()
    }

    #[test]
    fn an_address_is_blocked_after_its_failure_burst_and_only_it() {
        let limit = FailureLimit::new(3, 3);
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        for _ in 0..3 {
            assert!(limit.blocked(a).is_none());
            limit.charge(a);
        }
        assert!(limit.blocked(a).is_none(), "the burst itself is allowed");
        limit.charge(a);
        let refused = limit.blocked(a).expect("blocked after the burst");
        assert_eq!(refused.status().as_u16(), 429);
        assert!(limit.blocked(b).is_none(), "another address is not blocked");
    }

    #[test]
    fn a_zero_rate_disables_a_limit() {
        let limit = KeyRateLimit::<String>::new("API key", 0, 0);
        let failures = FailureLimit::new(0, 0);
        for _ in 0..1000 {
            assert!(limit.check(&"k".to_owned()).is_ok());
            failures.charge(key("192.0.2.9"));
        }
        assert!(failures.blocked(key("192.0.2.9")).is_none());
    }

    #[test]
    fn a_key_past_its_burst_gets_a_429_naming_it() {
        let limit = KeyRateLimit::<String>::new("API key", 1, 2);
        let k = "key-1".to_owned();
        assert!(limit.check(&k).is_ok());
        assert!(limit.check(&k).is_ok());
        let e = limit.check(&k).expect_err("past the burst");
        assert_eq!(e.status().as_u16(), 429);
        let detail = format!("{:?}", e.into_parts().1);
        assert!(detail.contains("API key key-1"), "{detail}");
        assert!(limit.check(&"key-2".to_owned()).is_ok());
    }
}
