//! The query API's configuration: the `[api]` table of the projections file (read by
//! `fleetstream api` and by `fleetstream projections` when it serves the API) and of
//! `fleetstream.toml` under `up`; environment `FLEET_API__*`.

use std::time::Duration;

use fleet_service::client::ProxyNet;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthLimits, DEFAULT_CACHE_TTL};
use crate::state::DEFAULT_APPROVAL_REQUIRED;

/// Settings of the query API. Every key has a default; see the `[api]` table of
/// `config/projections.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ApiConfig {
    /// Key of the bootstrap administrator (the user `admin` with role admin): send
    /// `Authorization: Bearer <key>`. Empty disables it (user API keys still work).
    pub admin_api_key: String,
    /// How long an API instance remembers a resolved user API key (`"10s"`). Revoking a
    /// key or disabling a user takes effect at once on the instance that did it, and on
    /// every other instance within this time. `"0s"` checks the registry on every request.
    #[serde(with = "humantime_serde")]
    pub api_key_cache_ttl: Duration,
    /// Gateway URL agents enroll at, used in the install command of new tokens.
    pub gateway_url: String,
    /// Command types that always need approval by a second user (besides requests that
    /// say `requires_approval: true`).
    pub approval_required_commands: Vec<String>,
    /// Failed authentications (401) per minute per client address before the address
    /// gets 429 for a while (a key known without a registry lookup still works); 0: no
    /// limit.
    pub auth_failures_per_minute: u32,
    /// Burst of the per-address failure bucket.
    pub auth_failure_burst: u32,
    /// Requests per second per user (all of its keys); 0: no limit.
    pub key_requests_per_second: u32,
    /// Burst of the per-user bucket.
    pub key_request_burst: u32,
    /// Reverse proxies (addresses or networks like `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client the per-address limit applies to.
    pub trusted_proxies: Vec<ProxyNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let limits = AuthLimits::default();
        ApiConfig {
            admin_api_key: String::new(),
            api_key_cache_ttl: DEFAULT_CACHE_TTL,
            gateway_url: "http://127.0.0.1:8080".into(),
            approval_required_commands: DEFAULT_APPROVAL_REQUIRED
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            auth_failures_per_minute: limits.failures_per_minute,
            auth_failure_burst: limits.failure_burst,
            key_requests_per_second: limits.requests_per_second,
            key_request_burst: limits.request_burst,
            trusted_proxies: limits.trusted_proxies,
        }
    }
}

impl ApiConfig {
    /// The limits around authentication these settings give.
    pub fn auth_limits(&self) -> AuthLimits {
        AuthLimits {
            failures_per_minute: self.auth_failures_per_minute,
            failure_burst: self.auth_failure_burst,
            requests_per_second: self.key_requests_per_second,
            request_burst: self.key_request_burst,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}
