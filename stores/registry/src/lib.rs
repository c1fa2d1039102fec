//! The registry seam: tenants, locations, registration tokens, agent credentials, and the
//! users of the query API with their API keys. Unlike the read model, the registry is not
//! projected from topics: it is the only copy of its data (the source of truth for
//! enrollment), so a rebuild never touches it.
//!
//! Redeeming a registration token is the one synchronous transactional step of the
//! system: of two concurrent redemptions of one token exactly one succeeds. Secrets
//! (token secrets, agent credentials, user API keys, ingest keys) are never stored: only
//! their SHA-256, and checks compare hashes in constant time ([`verify_secret`]).
//!
//! Ingest keys (`fsi_...`) let standard collectors (Prometheus remote-write, the
//! OpenTelemetry Collector, Telegraf) write samples for one tenant. The gateway checks one
//! per request through [`Registry::authenticate_ingest_key`] (behind its cache); the time
//! of last use is written at most once per [`INGEST_KEY_TOUCH_INTERVAL`] per key, so a
//! collector sending many requests a second does not write on every one.
//!
//! Without features this crate is the trait, its types and the secret helpers, with no
//! database driver (what the gateway needs); the `sql` feature (default) adds
//! [`SqlRegistry`] on PostgreSQL or SQLite ([`open_registry`]).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use fleet_sql::{Result, StoreError};

#[cfg(feature = "sql")]
mod sql;

/// The shared pool (from `fleet-sql`), to open the registry beside the read model.
#[cfg(feature = "sql")]
pub use fleet_sql::{Database, Engine};
#[cfg(feature = "sql")]
pub use sql::{open_registry, SqlRegistry, MIGRATIONS};

/// The registry's tables: the only copy of their data. They share the database with the
/// read model by default, whose rebuild and comparison leave them alone.
pub const REGISTRY_TABLES: &[&str] = &[
    "tenants",
    "locations",
    "registration_tokens",
    "agent_credentials",
    "users",
    "user_api_keys",
    "idempotency_keys",
    "ingest_keys",
];

/// The readable start of every ingest key, so that a leaked one is easy to find
/// (`fst_` tokens, `fsa_` agent credentials, `fsu_` user API keys, `fsk_` the bootstrap
/// admin key).
pub const INGEST_KEY_PREFIX: &str = "fsi_";

/// Shortest time between two writes of an ingest key's `last_used_at`, µs (one minute).
pub const INGEST_KEY_TOUCH_INTERVAL: i64 = 60_000_000;

/// A tenant (an MSP's client business).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Id (UUID string).
    pub tenant_id: String,
    /// Display name (unique).
    pub name: String,
    /// Creation time, µs.
    pub created_at: i64,
}

/// A location of a tenant (a site, an office).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Id (UUID string).
    pub location_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Display name (unique within the tenant).
    pub name: String,
    /// Creation time, µs.
    pub created_at: i64,
}

/// What to create a registration token with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Tenant the enrolled agent will belong to.
    pub tenant_id: String,
    /// Location the agent will be placed in, if any (must belong to the tenant).
    pub location_id: Option<String>,
    /// Device name the agent will get, if any.
    pub device_name: Option<String>,
    /// Expiry, µs.
    pub expires_at: i64,
    /// Who created it (user or key id), for the audit trail.
    pub created_by: String,
    /// Creation time, µs.
    pub created_at: i64,
}

/// A registration token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Id (UUID string), not secret.
    pub token_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Location.
    pub location_id: Option<String>,
    /// Device name.
    pub device_name: Option<String>,
    /// Expiry, µs.
    pub expires_at: i64,
    /// Creator.
    pub created_by: String,
    /// Creation time, µs.
    pub created_at: i64,
    /// When it was redeemed, µs.
    pub used_at: Option<i64>,
    /// Agent that redeemed it.
    pub used_by_agent: Option<String>,
}

/// The agent being enrolled by a redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// New agent id (UUID string).
    pub agent_id: String,
    /// SHA-256 of the agent credential (see [`hash_secret`]).
    pub credential_hash: [u8; 32],
    /// Machine facts as JSON text.
    pub facts_json: String,
    /// Redemption time, µs.
    pub now: i64,
}

/// A successful redemption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// Token id.
    pub token_id: String,
    /// Tenant of the new agent.
    pub tenant_id: String,
    /// Location of the new agent.
    pub location_id: Option<String>,
    /// Device name from the token.
    pub device_name: Option<String>,
}

/// Why a redemption failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedeemRefusal {
    /// No token has this secret.
    Unknown,
    /// The token expired.
    Expired,
    /// The token was already used.
    Used,
}

/// What the gateway needs to authenticate an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCredential {
    /// Agent.
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Location.
    pub location_id: Option<String>,
    /// SHA-256 of the credential.
    pub credential_hash: [u8; 32],
    /// False once deactivated.
    pub active: bool,
}

/// Role of a user of the query API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every tenant (has no tenant).
    Admin,
    /// Reads and acts within one tenant.
    Operator,
    /// Reads within one tenant.
    Viewer,
}

impl Role {
    /// `admin`, `operator` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// What to create a user with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Display and login name (unique).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant: required for operators and viewers, absent for admins.
    pub tenant_id: Option<String>,
    /// Creation time, µs.
    pub created_at: i64,
}

/// A user of the query API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id (UUID string).
    pub user_id: String,
    /// Name (unique).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant (operators and viewers).
    pub tenant_id: Option<String>,
    /// Creation time, µs.
    pub created_at: i64,
    /// A disabled user's keys stop working.
    pub disabled: bool,
}

/// A user's API key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// Id (UUID string), not secret.
    pub key_id: String,
    /// Owner.
    pub user_id: String,
    /// Last four characters of the secret, for display.
    pub last4: String,
    /// Creation time, µs.
    pub created_at: i64,
    /// When it was revoked, µs (a revoked key stops working).
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// What [`Registry::claim_request_key`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKeyClaim {
    /// The id was free: it is now held by this request.
    New,
    /// The id was held by the same request (a retry).
    Same,
    /// The id is held by a different request.
    Different,
}

/// The user an API key belongs to, found by the key's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The user (possibly disabled: the caller decides).
    pub user: User,
    /// The key.
    pub key: ApiKeyInfo,
    /// SHA-256 of the key's secret, as stored.
    pub key_hash: [u8; 32],
}

/// What to create an ingest key with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIngestKey {
    /// Tenant the key writes for.
    pub tenant_id: String,
    /// Display name (what sends with it: `prometheus-eu`, `telegraf`).
    pub name: String,
    /// Longer description, if any.
    pub description: Option<String>,
    /// Who created it (the user's name), for the audit trail.
    pub created_by: String,
    /// Creation time, µs.
    pub created_at: i64,
}

/// An ingest key as listed (never its secret nor its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestKeyInfo {
    /// Id (UUID string), not secret.
    pub key_id: String,
    /// Tenant the key writes for.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Last four characters of the secret, for display.
    pub last4: String,
    /// Creator.
    pub created_by: String,
    /// Creation time, µs.
    pub created_at: i64,
    /// When it was revoked, µs (a revoked key stops working).
    pub revoked_at: Option<i64>,
    /// When it last authenticated a request, µs, to within
    /// [`INGEST_KEY_TOUCH_INTERVAL`] (and the gateway's cache time).
    pub last_used_at: Option<i64>,
}

/// Whom a valid ingest key writes for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestKeyAuth {
    /// The key's id.
    pub key_id: String,
    /// Its tenant.
    pub tenant_id: String,
}

/// Why an ingest key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngestKeyRefusal {
    /// No key has this secret.
    Unknown,
    /// The key was revoked.
    Revoked,
}

/// The registry.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Creates a tenant; a duplicate name is `StoreError::Conflict`, a blank one
    /// `StoreError::InvalidQuery`.
    async fn create_tenant(&self, name: &str, now: i64) -> Result<Tenant>;
    /// All tenants, by name.
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    /// One tenant.
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>>;
    /// Creates a location; unknown tenant is `StoreError::NotFound`, duplicate name
    /// within the tenant `StoreError::Conflict`, a blank name `StoreError::InvalidQuery`.
    async fn create_location(&self, tenant_id: &str, name: &str, now: i64) -> Result<Location>;
    /// Locations of a tenant, by name.
    async fn list_locations(&self, tenant_id: &str) -> Result<Vec<Location>>;
    /// Stores a token under the SHA-256 of its secret (the caller generated the secret
    /// and shows it once). Unknown tenant or a location of another tenant is
    /// `StoreError::NotFound`; an expiry not after the creation time
    /// `StoreError::InvalidQuery`.
    async fn create_token(&self, token: &NewToken, secret_hash: [u8; 32]) -> Result<TokenInfo>;
    /// Tokens of a tenant, newest first.
    async fn list_tokens(&self, tenant_id: &str) -> Result<Vec<TokenInfo>>;
    /// Redeems the token whose secret hashes to `secret_hash` and records the new agent's
    /// credential, atomically: of concurrent redemptions of one token exactly one gets
    /// `Ok(Ok(..))`, the others `Ok(Err(RedeemRefusal::Used))`. An agent id that already
    /// has a credential is `StoreError::Conflict` and leaves the token unused.
    async fn redeem_token(
        &self,
        secret_hash: [u8; 32],
        agent: &NewAgent,
    ) -> Result<std::result::Result<Redeemed, RedeemRefusal>>;
    /// The credential record of an agent.
    async fn agent_credential(&self, agent_id: &str) -> Result<Option<AgentCredential>>;
    /// Deactivates an agent (its credential stops working); false if unknown or already
    /// inactive. `tenant_id` restricts to a tenant.
    async fn deactivate_agent(
        &self,
        tenant_id: Option<&str>,
        agent_id: &str,
        now: i64,
    ) -> Result<bool>;

    /// Creates a user. A role and tenant that do not fit (an admin with a tenant, an
    /// operator or viewer without one) or a blank name is `StoreError::InvalidQuery`; an
    /// unknown tenant `StoreError::NotFound`; a duplicate name `StoreError::Conflict`.
    async fn create_user(&self, user: &NewUser) -> Result<User>;
    /// All users, by name.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// One user.
    async fn get_user(&self, user_id: &str) -> Result<Option<User>>;
    /// Disables or re-enables a user; false if unknown.
    async fn set_user_disabled(&self, user_id: &str, disabled: bool) -> Result<bool>;
    /// Stores an API key of a user under the SHA-256 of its secret (the caller generated
    /// the secret and shows it once). Unknown user is `StoreError::NotFound`; a hash
    /// already stored `StoreError::Conflict`; `last4` longer than 4 characters
    /// `StoreError::InvalidQuery`.
    async fn create_api_key(
        &self,
        user_id: &str,
        key_hash: [u8; 32],
        last4: &str,
        now: i64,
    ) -> Result<ApiKeyInfo>;
    /// Keys of a user, newest first.
    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKeyInfo>>;
    /// The key whose secret hashes to `key_hash`, with its user (also when the user is
    /// disabled or the key revoked: the caller decides).
    async fn key_owner(&self, key_hash: [u8; 32]) -> Result<Option<KeyOwner>>;
    /// Revokes key `key_id` of user `user_id` (it stops working; a second revocation keeps
    /// the first time); false if the user has no such key.
    async fn revoke_api_key(&self, user_id: &str, key_id: &str, now: i64) -> Result<bool>;

    /// Binds `id` (the command or rule id an `Idempotency-Key` names) to the request whose
    /// canonical form hashes to `request_hash`, atomically: of concurrent claims of a free
    /// id exactly one is [`RequestKeyClaim::New`]; later claims are `Same` or `Different`.
    async fn claim_request_key(
        &self,
        id: &str,
        request_hash: [u8; 32],
        now: i64,
    ) -> Result<RequestKeyClaim>;

    /// Stores an ingest key under the SHA-256 of its secret (the caller generated the
    /// secret with [`INGEST_KEY_PREFIX`] and shows it once). Unknown tenant is
    /// `StoreError::NotFound`; a blank name or description, or `last4` longer than 4
    /// characters, `StoreError::InvalidQuery`; a hash already stored
    /// `StoreError::Conflict`.
    async fn create_ingest_key(
        &self,
        key: &NewIngestKey,
        key_hash: [u8; 32],
        last4: &str,
    ) -> Result<IngestKeyInfo>;
    /// Ingest keys of a tenant (revoked ones too), newest first.
    async fn list_ingest_keys(&self, tenant_id: &str) -> Result<Vec<IngestKeyInfo>>;
    /// Revokes ingest key `key_id` (it stops working; a second revocation keeps the first
    /// time) and returns it; None if there is no such key (in `tenant_id`, when given).
    async fn revoke_ingest_key(
        &self,
        tenant_id: Option<&str>,
        key_id: &str,
        now: i64,
    ) -> Result<Option<IngestKeyInfo>>;
    /// The tenant of the ingest key `secret`, compared in constant time with the stored
    /// hash, or why not. Records the use (`last_used_at = now`) when the last recorded
    /// one is [`INGEST_KEY_TOUCH_INTERVAL`] old or more, so a key in constant use is
    /// written about once a minute.
    async fn authenticate_ingest_key(
        &self,
        secret: &str,
        now: i64,
    ) -> Result<std::result::Result<IngestKeyAuth, IngestKeyRefusal>>;
}

/// SHA-256 of a high-entropy secret (tokens and credentials are 256-bit random values,
/// so a fast hash is the right tool; no password stretching needed).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `expected`, compared in constant time.
pub fn verify_secret(secret: &str, expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq as _;
    hash_secret(secret).ct_eq(expected).into()
}

/// A new random secret: 32 bytes from the OS, URL-safe base64 without padding, with a
/// readable prefix (`fst_` tokens, `fsa_` agent credentials, `fsu_` user API keys, `fsi_`
/// ingest keys).
pub fn new_secret(prefix: &str) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
