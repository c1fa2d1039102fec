//! Who calls an operator route, and what they may do.
//!
//! Every operator route sends `Authorization: Bearer <key>`; [`principal`] turns the key
//! into a [`Principal`]:
//!
//! * the bootstrap key (the projections' `admin-api-key`; `fleetstream up` keeps it in
//!   `<data-dir>/admin-key`) is the user `admin` with role admin;
//! * a user API key (`fsu_...`, made by `POST /api/v1/users` or
//!   `POST /api/v1/users/{id}/keys`) is looked up in the registry by the SHA-256 of the
//!   key, and the stored hash is compared with the presented key's in constant time. A
//!   found key is remembered for [`CACHE_TTL`], so disabling a user takes effect within
//!   that time (at once through `POST /api/v1/users/{id}/disable`, which clears the cache).
//!
//! A missing, unknown or disabled user's key is 401. [`require_admin`],
//! [`require_operator`] and [`require_viewer`] answer 403: admins may do everything;
//! operators and viewers only in their own tenant (the message names the tenant); viewers
//! only read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use fleet_service::ApiError;
use fleet_stores::registry::{hash_secret, verify_secret, Registry, Role};
use serde::Serialize;

use crate::admin::store_error;

/// How long a resolved user key is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most remembered keys (the cache is cleared when full).
const CACHE_MAX: usize = 10_000;
/// Name and id of the bootstrap administrator.
pub const BOOTSTRAP_ADMIN: &str = "admin";

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

/// Resolved user keys by the hash of the key.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyCache {
    entries: Arc<Mutex<HashMap<[u8; 32], Entry>>>,
}

impl KeyCache {
    fn get(&self, hash: &[u8; 32]) -> Option<Principal> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, hash: [u8; 32], p: Principal) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (p, Instant::now()));
    }

    /// Forgets every entry (after a user was disabled).
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

/// The principal extractor: who sent `headers` (401 if nobody we know).
pub(crate) async fn principal(
    registry: &dyn Registry,
    admin_key_hash: Option<&[u8; 32]>,
    cache: &KeyCache,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthorized("send Authorization: Bearer <API key>"))?;
    if let Some(expected) = admin_key_hash {
        if verify_secret(key, expected) {
            return Ok(Principal::bootstrap_admin());
        }
    }
    let hash = hash_secret(key);
    if let Some(p) = cache.get(&hash) {
        return Ok(p);
    }
    let owner = registry.key_owner(hash).await.map_err(store_error)?;
    let Some(owner) = owner.filter(|o| verify_secret(key, &o.key_hash)) else {
        return Err(unauthorized("unknown API key"));
    };
    if owner.user.disabled {
        return Err(unauthorized("this user is disabled"));
    }
    let p = Principal {
        user_id: owner.user.user_id,
        name: owner.user.name,
        role: owner.user.role,
        tenant_id: owner.user.tenant_id,
    };
    cache.put(hash, p.clone());
    Ok(p)
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

/// May read in `tenant_id`: admins, and operators and viewers of that tenant.
pub fn require_viewer(p: &Principal, tenant_id: &str) -> Result<(), ApiError> {
    match p.role {
        Role::Admin => Ok(()),
        _ if p.tenant_id.as_deref() == Some(tenant_id) => Ok(()),
        _ => Err(
            forbidden(format!("{} may not access tenant {tenant_id}", p.name))
                .with_field("tenant_id"),
        ),
    }
}

/// May act in `tenant_id`: admins, and operators of that tenant.
pub fn require_operator(p: &Principal, tenant_id: &str) -> Result<(), ApiError> {
    require_viewer(p, tenant_id)?;
    match p.role {
        Role::Viewer => Err(forbidden(format!(
            "{} is a viewer of tenant {tenant_id}: viewers may only read",
            p.name
        ))),
        _ => Ok(()),
    }
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
    }
}
