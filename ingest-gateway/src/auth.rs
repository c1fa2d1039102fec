//! Agent authentication, and the rate limits around it.
//!
//! An agent sends `Authorization: Bearer <credential>`; the gateway looks the agent's
//! credential record up in the registry (cached for `auth-cache`, a missing one
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

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use fleet_registry::{verify_secret, AgentCredential, Registry, StoreError};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::cache::TtlCache;

pub use fleet_service::limit::{AddressLimit, FailureLimit, KeyRateLimit};

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
pub(crate) const MAX_CACHED: usize = 100_000;

/// Credential checks with a small cache in front of the registry.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    default_tenant: String,
    registry: Option<Arc<dyn Registry>>,
    /// Agent id → its credential (None: the registry has none). A cached "none" cannot
    /// hide a new agent: ids are random UUIDs made at registration.
    cache: TtlCache<String, Option<AgentCredential>>,
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
            cache: TtlCache::new(ttl, MAX_CACHED),
        }
    }

    /// Forgets a cached credential (after a deactivation event, or a registration).
    pub fn invalidate(&self, agent_id: &str) {
        self.cache.remove(agent_id);
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
    /// cache answers within `auth-cache`, then the registry).
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
        self.cache.get(agent_id)
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
        self.cache
            .insert(agent_id.to_owned(), found.clone(), found.is_some());
        Ok(found)
    }
}

/// The answer to a registry failure: 503 with a generic message (the detail, which may
/// name the database's host, is logged, not sent to a caller not yet authenticated).
pub(crate) fn registry_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "Registry unavailable.");
            ApiError::unavailable("the registry is unavailable; retry later", 5)
        }
        other => ApiError::internal(other),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Per-agent request rate limit, charged only once the agent is authenticated.
pub type AgentRateLimit = KeyRateLimit<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_outage_is_a_503_without_its_address() {
        // Issue 11, finding 9: the 503 a caller not yet authenticated got named the
        // registry's host and database.
        let m = "agent credential on postgres db.internal.example:5432/fleet_prod: refused";
        for e in [
            registry_error(StoreError::Unavailable(m.into())),
            registry_error(StoreError::Internal(m.into())),
        ] {
            let (status, detail, _) = e.into_parts();
            assert!(status.is_server_error(), "{status}");
            let text = format!("{detail:?}");
            for secret in ["db.internal", "5432", "fleet_prod", "postgres"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}
