//! Who calls an operator route, and what they may do.
//!
//! Every operator route sends `Authorization: Bearer <key>`; the [`Principal`] extractor
//! (the one place keys are checked: a handler that takes a `Principal` is authenticated)
//! turns the key into the caller:
//!
//! * the bootstrap key (the projections' `admin-api-key`; `fleetstream up` keeps it in
//!   `<data-dir>/admin-key`) is the user `admin` with role admin;
//! * a user API key (`fsu_...`, made by `POST /api/v1/users` or, by an admin,
//!   `POST /api/v1/users/{id}/keys`) is looked up in the registry by the SHA-256 of the
//!   key, and the stored hash is compared with the presented key's in constant time. A
//!   found key is remembered for the cache TTL (`api-key-cache-ttl`, default
//!   [`DEFAULT_CACHE_TTL`]); after that it is looked up again. So disabling a user or
//!   revoking a key takes effect on the instance that did it at once (its cache is
//!   cleared) and on every other API instance within the TTL: that is the bound.
//!
//! A missing, unknown or revoked key, or a disabled user's, is 401. [`require_admin`],
//! [`require_writer`], [`require_operator`] and [`require_viewer`] answer 403: admins may do
//! everything; operators and viewers only in their own tenant; viewers only read.
//!
//! Tenancy without an oracle: a route that names an object by id (an agent, alert,
//! command, rule) checks the caller's role first ([`require_writer`]: a viewer gets 403
//! for a real and a made-up id alike), then looks the object up, and answers another
//! tenant's object exactly as a missing one ([`require_operator_of`], [`not_found`]: 404,
//! the same body, no id in it). A route that names a tenant answers 403 for any tenant
//! but the caller's own, whether it exists or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use fleet_registry::{hash_secret, verify_secret, Registry, Role};
use fleet_service::client::ClientAddr;
use fleet_service::limit::{FailureLimit, KeyRateLimit};
use fleet_service::ApiError;
use serde::Serialize;

use crate::error::store_error;
use crate::state::AppState;

/// How long a resolved user key is remembered by default (`api-key-cache-ttl`).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most remembered keys (the cache is cleared when full).
const CACHE_MAX: usize = 10_000;
/// Name and id of the bootstrap administrator.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// Shortest bootstrap admin key (`admin-api-key`), in characters.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;
/// Least estimated strength of the bootstrap admin key, in bits (see [`check_admin_key`]).
pub const MIN_ADMIN_KEY_BITS: f64 = 128.0;

/// Checks the bootstrap admin key before the API starts: empty (no bootstrap key) or at
/// least [`MIN_ADMIN_KEY_CHARS`] characters whose estimated strength, length times log2 of
/// the number of distinct characters, is at least [`MIN_ADMIN_KEY_BITS`] (32 hex digits
/// pass; a word repeated, or `aaaa...`, does not). A generated key
/// (`openssl rand -base64 32`, or the `fsk_` key `fleetstream up` writes) passes.
pub fn check_admin_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Ok(());
    }
    let chars = key.chars().count();
    if chars < MIN_ADMIN_KEY_CHARS {
        return Err(format!(
            "the admin API key has {chars} characters, fewer than {MIN_ADMIN_KEY_CHARS}: \
             generate one, for example with `openssl rand -base64 32`"
        ));
    }
    let distinct = key.chars().collect::<std::collections::HashSet<_>>().len();
    #[allow(clippy::cast_precision_loss)] // key lengths are far below 2^52
    let bits = chars as f64 * (distinct as f64).log2();
    if bits < MIN_ADMIN_KEY_BITS || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the admin API key is too weak ({distinct} distinct characters in {chars}, or \
             blanks): generate one, for example with `openssl rand -base64 32`"
        ));
    }
    Ok(())
}

/// The bootstrap admin key kept in a file (`fleetstream up`'s `<data-dir>/admin-key`):
/// read, or generated once (`fsk_` and 43 random characters, mode 0600). A file that group
/// or others may access is made owner-only (0600) first, with a warning.
pub fn admin_key_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "The admin key file was accessible to others: made owner-only (0600).");
        }
        let key = std::fs::read_to_string(path)?.trim().to_owned();
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let key = fleet_registry::new_secret("fsk_");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{key}")?;
    Ok(key)
}

/// The caller of an operator route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// User id (`admin` for the bootstrap key).
    pub user_id: String,
    /// User name (`admin` for the bootstrap key); the actor in audit events.
    pub name: String,
    /// Role.
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
    /// Tenant of an operator or viewer.
    pub tenant_id: Option<String>,
}

impl Principal {
    /// The bootstrap administrator.
    pub fn bootstrap_admin() -> Principal {
        Principal {
            user_id: BOOTSTRAP_ADMIN.into(),
            name: BOOTSTRAP_ADMIN.into(),
            role: Role::Admin,
            tenant_id: None,
        }
    }

    /// Who did it, for the audit trail (the user's name, unique).
    pub fn actor(&self) -> String {
        self.name.clone()
    }
}

/// A resolved user key and when it was resolved.
type Entry = (Principal, Instant);

/// Resolved user keys by the hash of the key, each for `ttl`.
#[derive(Debug, Clone)]
pub(crate) struct KeyCache {
    entries: Arc<Mutex<HashMap<[u8; 32], Entry>>>,
    ttl: Duration,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(DEFAULT_CACHE_TTL)
    }
}

impl KeyCache {
    /// A cache remembering keys for `ttl` (zero: not at all).
    pub(crate) fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            entries: Arc::default(),
            ttl,
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Principal> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, hash: [u8; 32], p: Principal) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (p, Instant::now()));
    }

    /// Forgets every entry (after a user was disabled or a key revoked).
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The API key of a request: `Authorization: Bearer <key>`, or HTTP basic auth with the
/// key as the password (any user name), for clients that can only send credentials that
/// way (`promtool query instant` with `http://user:<key>@host/`, Grafana's basic auth).
/// 401 without one.
fn presented_key(headers: &HeaderMap) -> Result<String, ApiError> {
    use base64::Engine as _;
    let missing = || {
        unauthorized(
            "send Authorization: Bearer <API key> (or basic auth with the key as the password)",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(missing)?;
    let key = if let Some(k) = value.strip_prefix("Bearer ") {
        k.trim().to_owned()
    } else if let Some(b) = value.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|d| d.split_once(':').map(|(_, password)| password.to_owned()))
            .ok_or_else(missing)?
    } else {
        return Err(missing());
    };
    if key.is_empty() {
        return Err(missing());
    }
    Ok(key)
}

/// The limits around authentication (`auth-failures-per-minute`, `auth-failure-burst`,
/// `key-requests-per-second`, `key-request-burst`, `trusted-proxies` in the API's
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failed authentications (401) per minute per client address; 0: no limit.
    pub failures_per_minute: u32,
    /// Burst of the per-address failure bucket.
    pub failure_burst: u32,
    /// Requests per second per user (all of the user's keys; the bootstrap admin is one
    /// user); 0: no limit.
    pub requests_per_second: u32,
    /// Burst of the per-user bucket.
    pub request_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<fleet_service::client::ProxyNet>,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            failures_per_minute: 30,
            failure_burst: 30,
            requests_per_second: 50,
            request_burst: 200,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The limiters built from [`AuthLimits`].
#[derive(Debug)]
pub(crate) struct Limiters {
    failures: FailureLimit,
    per_user: KeyRateLimit<String>,
    pub(crate) trusted_proxies: Vec<fleet_service::client::ProxyNet>,
}

impl Limiters {
    pub(crate) fn new(l: &AuthLimits) -> Limiters {
        Limiters {
            failures: FailureLimit::new(l.failures_per_minute, l.failure_burst),
            per_user: KeyRateLimit::new("user", l.requests_per_second, l.request_burst),
            trusted_proxies: l.trusted_proxies.clone(),
        }
    }

    /// Drops the state of idle addresses and users.
    pub(crate) fn forget_idle(&self) {
        self.failures.forget_idle();
        self.per_user.forget_idle();
    }
}

/// How callers are recognised: the bootstrap key's hash and the cache of user keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keys {
    admin_key_hash: Option<[u8; 32]>,
    pub(crate) cache: KeyCache,
}

impl Keys {
    /// `admin_key` empty: no bootstrap key (user keys still work).
    pub(crate) fn new(admin_key: &str, cache: KeyCache) -> Keys {
        Keys {
            admin_key_hash: (!admin_key.is_empty()).then(|| hash_secret(admin_key)),
            cache,
        }
    }

    /// Who sent `headers`, if that is known without the registry: the bootstrap key, or
    /// a user key the cache holds. `Err` (401) when there is no key at all.
    fn known(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        let key = presented_key(headers)?;
        if let Some(expected) = &self.admin_key_hash {
            if verify_secret(&key, expected) {
                return Ok(Some(Principal::bootstrap_admin()));
            }
        }
        Ok(self.cache.get(&hash_secret(&key)))
    }

    /// Who sent `headers` (401 if nobody we know).
    async fn principal(
        &self,
        registry: &dyn Registry,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        if let Some(p) = self.known(headers)? {
            return Ok(p);
        }
        let key = presented_key(headers)?;
        let hash = hash_secret(&key);
        let owner = registry.key_owner(hash).await.map_err(store_error)?;
        let Some(owner) = owner.filter(|o| verify_secret(&key, &o.key_hash)) else {
            return Err(unauthorized("unknown API key"));
        };
        if owner.user.disabled {
            return Err(unauthorized("this user is disabled"));
        }
        if owner.key.revoked_at.is_some() {
            return Err(unauthorized("this API key was revoked"));
        }
        let p = Principal {
            user_id: owner.user.user_id,
            name: owner.user.name,
            role: owner.user.role,
            tenant_id: owner.user.tenant_id,
        };
        self.cache.put(hash, p.clone());
        Ok(p)
    }
}

/// The caller of a route: a handler taking a `Principal` runs only for a known key (401
/// otherwise, before the body is read).
///
/// Around the key check: an address past its budget of failed authentications
/// (`auth-failures-per-minute`) gets 429 unless its key is known without the registry
/// (the bootstrap key, a cached user key: users behind the same NAT or proxy keep
/// working, and a flood of made-up keys costs no registry lookup); each 401 for a key
/// that was looked up is charged to the client address, never to a user (a request with
/// no key costs nothing and is always a plain 401); then the user's own request rate
/// (`key-requests-per-second`) applies, 429 past it.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let Ok(client) = ClientAddr::from_request_parts(parts, s).await;
        let key = client.key();
        let limits = &s.limiters;
        let p = match limits.failures.blocked(key) {
            Some(blocked) => match s.keys.known(&parts.headers) {
                Ok(Some(p)) => p,
                // No key at all costs nothing: 401 as ever.
                Err(no_key) => return Err(no_key),
                Ok(None) => {
                    crate::metrics::auth_refused(StatusCode::TOO_MANY_REQUESTS);
                    return Err(blocked);
                }
            },
            None => s
                .keys
                .principal(s.registry.as_ref(), &parts.headers)
                .await
                .inspect_err(|e| {
                    if e.status() == StatusCode::UNAUTHORIZED {
                        crate::metrics::auth_refused(StatusCode::UNAUTHORIZED);
                        // Only a key that was looked up counts against the address.
                        if presented_key(&parts.headers).is_ok() {
                            limits.failures.charge(key);
                        }
                    }
                })?,
        };
        limits.per_user.check(&p.user_id).inspect_err(|_| {
            crate::metrics::auth_refused(StatusCode::TOO_MANY_REQUESTS);
        })?;
        Ok(p)
    }
}

/// The tenant a read is limited to: the one `requested` names (if the caller may read
/// it), else the caller's own; `None` (every tenant) only for an admin who named none.
pub fn read_scope(p: &Principal, requested: Option<&str>) -> Result<Option<String>, ApiError> {
    match (requested, p.tenant_id.as_deref()) {
        (Some(t), _) => {
            require_viewer(p, t)?;
            Ok(Some(t.to_owned()))
        }
        (None, Some(own)) => Ok(Some(own.to_owned())),
        (None, None) => {
            require_admin(p)?;
            Ok(None)
        }
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Admins only.
pub fn require_admin(p: &Principal) -> Result<(), ApiError> {
    match p.role {
        Role::Admin => Ok(()),
        _ => Err(forbidden(format!(
            "{} is {}: this needs an admin",
            p.name,
            p.role.as_str()
        ))),
    }
}

/// May change things at all: admins and operators; viewers only read. Checked before
/// anything is looked up.
pub fn require_writer(p: &Principal) -> Result<(), ApiError> {
    match p.role {
        Role::Viewer => Err(forbidden(format!(
            "{} is a viewer: viewers may only read",
            p.name
        ))),
        Role::Admin | Role::Operator => Ok(()),
    }
}

/// May read in `tenant_id` (a tenant the caller named): admins, and operators and viewers
/// of that tenant. Any other tenant is 403, existing or not.
pub fn require_viewer(p: &Principal, tenant_id: &str) -> Result<(), ApiError> {
    match p.role {
        Role::Admin => Ok(()),
        _ if p.tenant_id.as_deref() == Some(tenant_id) => Ok(()),
        _ => Err(
            forbidden(format!("{} may access its own tenant only", p.name)).with_field("tenant_id"),
        ),
    }
}

/// May act in `tenant_id` (a tenant the caller named): admins, and operators of that
/// tenant. The role is checked first.
pub fn require_operator(p: &Principal, tenant_id: &str) -> Result<(), ApiError> {
    require_writer(p)?;
    require_viewer(p, tenant_id)
}

/// May act on an object of `tenant_id` that the caller named by id (after
/// [`require_writer`]): admins, and operators of that tenant. Another tenant's object is
/// `missing`, the answer an unknown id gets.
pub fn require_operator_of(
    p: &Principal,
    tenant_id: &str,
    missing: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    require_writer(p)?;
    match p.role {
        Role::Admin => Ok(()),
        _ if p.tenant_id.as_deref() == Some(tenant_id) => Ok(()),
        _ => Err(missing()),
    }
}

/// 404 for an object named by id that the caller cannot see: unknown, or another
/// tenant's. The body is the same for both and names only the field.
pub fn not_found(what: &str, field: &str) -> ApiError {
    ApiError::not_found(format!("no such {what}")).with_field(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, tenant: Option<&str>) -> Principal {
        Principal {
            user_id: "u1".into(),
            name: "bob".into(),
            role,
            tenant_id: tenant.map(str::to_owned),
        }
    }

    #[test]
    fn the_admin_key_file_is_made_once_and_kept_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin-key");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let key = admin_key_file(&path).expect("made");
        assert!(
            key.starts_with("fsk_") && check_admin_key(&key).is_ok(),
            "{key}"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(admin_key_file(&path).expect("read"), key, "kept");
        // Readable by group and others: repaired, the key kept.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(admin_key_file(&path).expect("read"), key);
        assert_eq!(mode(&path), 0o600, "made owner-only");
    }

    #[test]
    fn weak_admin_keys_are_refused() {
        assert!(check_admin_key("").is_ok(), "no bootstrap key");
        for ok in [
            "fsk_FzM3k9sQn1b7m2Lr0x8v5cW4tY6uPaE1dGhJkZ_3qRs".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
            format!("fsk_e2e_{}", "3f2a9c1e7b4d4e0f8a6b5c2d1e9f7a3b"),
        ] {
            assert_eq!(check_admin_key(&ok), Ok(()), "{ok}");
        }
        for weak in [
            "fsk_test-admin-key".to_owned(),
            "a".repeat(64),
            "abab".repeat(16),
            "correct horse battery staple and more words".to_owned(),
        ] {
            assert!(check_admin_key(&weak).is_err(), "{weak}");
        }
    }

    #[test]
    fn roles_and_tenants() {
        let admin = Principal::bootstrap_admin();
        let op = user(Role::Operator, Some("a"));
        let viewer = user(Role::Viewer, Some("a"));
        assert!(require_admin(&admin).is_ok());
        assert_eq!(
            require_admin(&op).err().map(|e| e.status()),
            Some(StatusCode::FORBIDDEN)
        );
        assert!(require_operator(&admin, "b").is_ok());
        assert!(require_operator(&op, "a").is_ok());
        assert_eq!(
            require_operator(&op, "b").err().map(|e| e.status()),
            Some(StatusCode::FORBIDDEN)
        );
        assert!(require_viewer(&viewer, "a").is_ok());
        assert!(require_viewer(&viewer, "b").is_err());
        assert_eq!(
            require_operator(&viewer, "a").err().map(|e| e.status()),
            Some(StatusCode::FORBIDDEN)
        );
        // Objects named by id: another tenant's is the caller's "missing"; a viewer is
        // refused for its role first, whatever the object.
        let missing = || not_found("agent", "agent_id");
        assert!(require_operator_of(&op, "a", missing).is_ok());
        assert!(require_operator_of(&admin, "b", missing).is_ok());
        assert_eq!(
            require_operator_of(&op, "b", missing)
                .err()
                .map(|e| e.status()),
            Some(StatusCode::NOT_FOUND)
        );
        for t in ["a", "b"] {
            assert_eq!(
                require_operator_of(&viewer, t, missing)
                    .err()
                    .map(|e| e.status()),
                Some(StatusCode::FORBIDDEN)
            );
        }
        assert!(require_writer(&viewer).is_err() && require_writer(&op).is_ok());
    }
}
