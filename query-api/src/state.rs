//! What every handler gets: the stores, the log events are written to, and how callers
//! are recognised.

use std::sync::Arc;

use axum::http::StatusCode;
use fleet_event_log::EventLog;
use fleet_read_model::ReadModel;
use fleet_registry::{hash_secret, Registry, RequestKeyClaim};
use fleet_schemas::Wire;
use fleet_service::ApiError;
use fleet_timeseries::TimeSeriesStore;
use serde::Serialize;

use crate::auth::{AuthLimits, KeyCache, Keys, Limiters, Principal};
use crate::error::store_error;

/// Command types that need approval unless configured otherwise
/// (`approval-required-commands`).
pub const DEFAULT_APPROVAL_REQUIRED: &[&str] = &["run_script"];

/// The API's state (cheap to clone: shared handles).
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) read_model: Arc<dyn ReadModel>,
    pub(crate) timeseries: Arc<dyn TimeSeriesStore>,
    pub(crate) log: Arc<dyn EventLog>,
    /// How the events the API writes (commands, rules, tags, lifecycle) are encoded.
    pub(crate) wire: Wire,
    pub(crate) keys: Keys,
    pub(crate) gateway_url: String,
    pub(crate) approval_required: Arc<Vec<String>>,
    pub(crate) limiters: Arc<Limiters>,
    /// Stored samples for PromQL (the Prometheus HTTP API): [`AppState::new`] reads them
    /// from its read model and time-series store ([`crate::samples::StoredSamples`]).
    pub(crate) series_source: Arc<dyn fleet_promql::SeriesSource>,
    /// Open command streams per user (`routes::command_output`).
    pub(crate) streams: Arc<crate::routes::command_output::StreamSlots>,
}

impl fleet_service::client::TrustedProxies for AppState {
    fn trusted_proxies(&self) -> &[fleet_service::client::ProxyNet] {
        &self.limiters.trusted_proxies
    }
}

impl AppState {
    /// State over the stores and the log, with no bootstrap admin key (see
    /// [`AppState::with_admin_key`]), the default key cache TTL and the default command
    /// types that need approval. The events it writes are encoded with `wire`.
    pub fn new(
        registry: Arc<dyn Registry>,
        read_model: Arc<dyn ReadModel>,
        timeseries: Arc<dyn TimeSeriesStore>,
        log: Arc<dyn EventLog>,
        wire: Wire,
    ) -> AppState {
        let series_source = Arc::new(crate::samples::StoredSamples::new(
            read_model.clone(),
            timeseries.clone(),
        ));
        AppState {
            series_source,
            registry,
            read_model,
            timeseries,
            log,
            wire,
            keys: Keys::default(),
            limiters: Arc::new(Limiters::new(&AuthLimits::default())),
            streams: Arc::default(),
            gateway_url: "http://127.0.0.1:8080".into(),
            approval_required: Arc::new(
                DEFAULT_APPROVAL_REQUIRED
                    .iter()
                    .map(|t| (*t).to_owned())
                    .collect(),
            ),
        }
    }

    /// Where the Prometheus HTTP API reads stored samples from.
    pub fn series_source(&self) -> &Arc<dyn fleet_promql::SeriesSource> {
        &self.series_source
    }

    /// Sets where the Prometheus HTTP API reads stored samples from.
    #[must_use]
    pub fn with_series_source(mut self, source: Arc<dyn fleet_promql::SeriesSource>) -> Self {
        self.series_source = source;
        self
    }

    /// The settings of an `[api]` table: the bootstrap key, the gateway URL, the command
    /// types that need approval, the key cache TTL and the limits.
    #[must_use]
    pub fn with_config(self, c: &crate::ApiConfig) -> Self {
        self.with_admin_key(&c.admin_api_key)
            .with_gateway_url(&c.gateway_url)
            .with_approval_required(c.approval_required_commands.clone())
            .with_key_cache_ttl(c.api_key_cache_ttl)
            .with_auth_limits(&c.auth_limits())
    }

    /// The limits around authentication (see [`AuthLimits`]; its default otherwise).
    #[must_use]
    pub fn with_auth_limits(mut self, limits: &AuthLimits) -> Self {
        self.limiters = Arc::new(Limiters::new(limits));
        self
    }

    /// Drops the limiters' state of idle addresses and users; call now and then.
    pub fn forget_idle(&self) {
        self.limiters.forget_idle();
    }

    /// The bootstrap administrator's key (`admin-api-key`); empty: none.
    #[must_use]
    pub fn with_admin_key(mut self, admin_key: &str) -> Self {
        self.keys = Keys::new(admin_key, self.keys.cache.clone());
        self
    }

    /// The gateway URL agents enroll at, used in the install command of new tokens.
    #[must_use]
    pub fn with_gateway_url(mut self, url: &str) -> Self {
        url.trim_end_matches('/').clone_into(&mut self.gateway_url);
        self
    }

    /// Remembers resolved user keys for `ttl` (`api-key-cache-ttl`): the longest time
    /// another API instance may still accept a key after it was revoked or its user
    /// disabled.
    #[must_use]
    pub fn with_key_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.keys.cache = KeyCache::new(ttl);
        self
    }

    /// The command types that always need approval (`approval-required-commands`).
    #[must_use]
    pub fn with_approval_required(mut self, command_types: Vec<String>) -> Self {
        self.approval_required = Arc::new(command_types);
        self
    }

    /// Records that `p` did `action` to `target` in `tenant` (`GET /api/v1/audit`). The
    /// change has happened already, so a failure to record it is logged (and counted),
    /// not returned.
    pub(crate) async fn audit(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        action: &str,
        target: &str,
        details: Option<serde_json::Value>,
    ) {
        let entry = fleet_read_model::AuditEntry {
            audit_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.map(str::to_owned),
            at: fleet_schemas::time::now_micros(),
            actor: p.actor(),
            action: action.to_owned(),
            target: target.to_owned(),
            details,
        };
        if let Err(e) = self.read_model.record_audit(&entry).await {
            ::metrics::counter!(crate::metrics::AUDIT_FAILURES).increment(1);
            tracing::warn!(error = %e, action, target, "cannot record an audit entry");
        }
    }

    /// Binds `id` (named by an `Idempotency-Key`) to `request`, compared by the SHA-256 of
    /// its JSON (serialize maps as `BTreeMap`, so equal requests are equal text). The first
    /// request under a key and its retries pass; another request is 409.
    pub(crate) async fn claim_idempotent(
        &self,
        id: &str,
        request: &impl Serialize,
    ) -> Result<RequestKeyClaim, ApiError> {
        let canonical = serde_json::to_string(request).map_err(ApiError::internal)?;
        let claim = self
            .registry
            .claim_request_key(
                id,
                hash_secret(&canonical),
                fleet_schemas::time::now_micros(),
            )
            .await
            .map_err(store_error)?;
        if claim == RequestKeyClaim::Different {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request: use a new key",
            )
            .with_field("Idempotency-Key"));
        }
        Ok(claim)
    }
}
