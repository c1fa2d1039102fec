//! Agent authentication, and the rate limits around it.
//!
//! An agent sends `Authorization: Bearer <credential>`; the gateway looks the agent's
//! credential record up in the registry (cached for `auth-cache-secs`, a missing one
//! too), compares the SHA-256 of what was sent with the stored hash in constant time, and
//! refuses a deactivated agent. With `auth = "off"` a request without the header is
//! accepted and attributed to `default-tenant` (single-machine use), unless the agent id
//! has a credential in the registry: an enrolled agent always needs its credential, so
//! `off` never lets anyone act as an enrolled agent. A request with the header is always
//! checked.
//!
//! Order of the checks of an agent request ([`crate::admit`]), all from the headers,
//! before the body is read: the agent id; the client address's failure budget; the
//! credential; then the agent's own rate limit. Failed authentications (401) are charged
//! to the client address ([`FailureLimit`]), never to the agent named: someone else's
//! failures cannot use up an agent's bucket. An address past its failure budget gets 429,
//! except for a request whose credential the cache alone proves valid (an agent behind
//! the same NAT or proxy keeps working, and such a check costs no registry lookup).

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use fleet_service::ApiError;
use fleet_stores::registry::{verify_secret, AgentCredential, Registry};
use fleet_stores::StoreError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::client::ClientKey;

/// Whether agents must present a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every agent request needs a valid credential (enrolled agents only).
    #[default]
    Required,
    /// Requests without a credential are accepted as `default-tenant` (single machine).
    Off,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// Tenant the data is attributed to.
    pub tenant_id: String,
    /// Whether a credential was verified.
    pub authenticated: bool,
}

/// Most credential lookups cached; past it (after dropping expired entries) only found
/// credentials are cached, so a flood of made-up agent ids cannot grow the cache.
const MAX_CACHED: usize = 100_000;

/// Credential checks with a small cache in front of the registry.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    default_tenant: String,
    registry: Option<Arc<dyn Registry>>,
    ttl: Duration,
    /// Agent id → its credential (None: the registry has none), and when looked up. A
    /// cached "none" cannot hide a new agent: ids are random UUIDs made at registration.
    cache: Mutex<HashMap<String, (Option<AgentCredential>, Instant)>>,
}

/// What the headers alone decide.
enum FromHeaders<'a> {
    /// Decided without the credential record.
    Decided(Result<AgentIdentity, ApiError>),
    /// The credential record is needed; the secret sent, if any.
    Lookup(Option<&'a str>),
}

impl Authenticator {
    /// A checker; `registry` may be absent only with `AuthMode::Off`.
    pub fn new(
        mode: AuthMode,
        default_tenant: &str,
        registry: Option<Arc<dyn Registry>>,
        ttl: Duration,
    ) -> Self {
        Authenticator {
            mode,
            default_tenant: default_tenant.to_owned(),
            registry,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a cached credential (after a deactivation event, or a registration).
    pub fn invalidate(&self, agent_id: &str) {
        self.cache.lock().remove(agent_id);
    }

    /// Checks the caller of an agent endpoint (may ask the registry).
    pub async fn authenticate(
        &self,
        agent_id: &str,
        headers: &HeaderMap,
    ) -> Result<AgentIdentity, ApiError> {
        match self.read_headers(headers) {
            FromHeaders::Decided(d) => d,
            FromHeaders::Lookup(secret) => {
                let cred = self.credential(agent_id).await?;
                self.decide(secret, cred.as_ref())
            }
        }
    }

    /// Checks the caller from the headers and the cache alone: None when that needs the
    /// registry (no fresh cache entry).
    pub fn authenticate_cached(
        &self,
        agent_id: &str,
        headers: &HeaderMap,
    ) -> Option<Result<AgentIdentity, ApiError>> {
        match self.read_headers(headers) {
            FromHeaders::Decided(d) => Some(d),
            FromHeaders::Lookup(secret) => {
                let cred = self.cached(agent_id)?;
                Some(self.decide(secret, cred.as_ref()))
            }
        }
    }

    /// Whether the agent still has an active credential (a socket's periodic check; the
    /// cache answers within `auth-cache-secs`, then the registry).
    pub async fn still_active(&self, agent_id: &str) -> Result<bool, ApiError> {
        Ok(self.credential(agent_id).await?.is_some_and(|c| c.active))
    }

    fn read_headers<'a>(&self, headers: &'a HeaderMap) -> FromHeaders<'a> {
        let secret = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => match v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                Some(s) => Some(s),
                None => {
                    return FromHeaders::Decided(Err(unauthorized(
                        "Authorization must be `Bearer <agent credential>`",
                    )))
                }
            },
        };
        match (secret, self.mode) {
            (None, AuthMode::Required) => FromHeaders::Decided(Err(unauthorized(
                "missing agent credential: enroll with `fleetstream agent enroll` (token in FLEET_AGENT_TOKEN) and send Authorization: Bearer <credential>",
            ))),
            // No registry: nobody is enrolled, so nobody's credential is missing.
            (None, AuthMode::Off) if self.registry.is_none() => {
                FromHeaders::Decided(Ok(self.anonymous()))
            }
            (secret, _) => FromHeaders::Lookup(secret),
        }
    }

    /// The decision once the agent's credential record (if any) is known.
    fn decide(
        &self,
        secret: Option<&str>,
        cred: Option<&AgentCredential>,
    ) -> Result<AgentIdentity, ApiError> {
        let (secret, cred) = match (secret, cred) {
            // auth = "off" (see read_headers): an id never enrolled.
            (None, None) => return Ok(self.anonymous()),
            (None, Some(_)) => {
                return Err(unauthorized(
                    "this agent id is enrolled: send its credential (Authorization: Bearer <credential>)",
                ))
            }
            (Some(_), None) => return Err(unauthorized("unknown agent or wrong credential")),
            (Some(s), Some(c)) => (s, c),
        };
        if !verify_secret(secret, &cred.credential_hash) {
            return Err(unauthorized("unknown agent or wrong credential"));
        }
        if !cred.active {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_deactivated",
                "this agent was deactivated; enroll it again",
            ));
        }
        Ok(AgentIdentity {
            tenant_id: cred.tenant_id.clone(),
            authenticated: true,
        })
    }

    fn anonymous(&self) -> AgentIdentity {
        AgentIdentity {
            tenant_id: self.default_tenant.clone(),
            authenticated: false,
        }
    }

    /// A fresh cache entry: Some(None) means "the registry has no credential for it".
    fn cached(&self, agent_id: &str) -> Option<Option<AgentCredential>> {
        let cache = self.cache.lock();
        let (c, at) = cache.get(agent_id)?;
        (at.elapsed() < self.ttl).then(|| c.clone())
    }

    async fn credential(&self, agent_id: &str) -> Result<Option<AgentCredential>, ApiError> {
        if let Some(c) = self.cached(agent_id) {
            return Ok(c);
        }
        let Some(registry) = &self.registry else {
            return Err(ApiError::unavailable(
                "agent credentials cannot be checked: no registry configured",
                30,
            ));
        };
        let found = registry
            .agent_credential(agent_id)
            .await
            .map_err(registry_error)?;
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        if found.is_some() || cache.len() < MAX_CACHED {
            cache.insert(agent_id.to_owned(), (found.clone(), Instant::now()));
        }
        Ok(found)
    }
}

/// The answer to a registry failure: 503 with a generic message (the detail, which may
/// name the database's host, is logged, not sent to a caller not yet authenticated).
pub(crate) fn registry_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "Registry unavailable.");
            ApiError::unavailable("the agent registry is unavailable; retry later", 5)
        }
        other => ApiError::internal(other),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Keyed token buckets (`governor`).
#[derive(Debug)]
struct Buckets<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `rate` per `period` with bursts of `burst` (at least `rate`); a rate of 0 disables.
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

/// Per-agent request rate limit (token bucket), charged only once the agent is
/// authenticated.
#[derive(Debug)]
pub struct AgentRateLimit {
    buckets: Buckets<String>,
}

impl AgentRateLimit {
    /// `per_second` requests per second per agent with bursts of `burst`; 0 disables.
    pub fn new(per_second: u32, burst: u32) -> AgentRateLimit {
        AgentRateLimit {
            buckets: Buckets::new(per_second, burst, false),
        }
    }

    /// Takes one request from the agent's bucket, or answers 429 with Retry-After.
    pub fn check(&self, agent_id: &str) -> Result<(), ApiError> {
        self.buckets.take(&agent_id.to_owned()).map_err(|wait| {
            let secs = retry_secs(wait);
            ApiError::too_many_requests(
                format!("rate limit for agent {agent_id} exceeded; retry after {secs} s"),
                secs,
            )
        })
    }

    /// Drops the state of agents that have been idle (bounded memory).
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
/// bucket; an address whose bucket is empty is blocked until it holds one again (see the
/// module docs for what a blocked address may still do).
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
