//! Ingest keys: how standard collectors (Prometheus remote-write, the OpenTelemetry
//! Collector, Telegraf) authenticate, and the [`IngestCaller`] extractor that endpoints
//! taking their writes use.
//!
//! A key (`fsi_...`, made with `POST /api/v1/admin/ingest-keys` of the query API) is
//! accepted in `Authorization` as any of:
//!
//! * `Bearer <key>` (Prometheus' `authorization`, the OpenTelemetry Collector's headers);
//! * `Basic base64(<anything>:<key>)`: the key is the password, the user name is ignored
//!   (Prometheus' `basic_auth`, Telegraf's `username`/`password`);
//! * `Token <key>` (InfluxDB v2 clients, Telegraf's `token`);
//! * on InfluxDB 1.x's `/write` only, and only without an `Authorization` header: the
//!   query parameter `p=<key>` (`u` is ignored), as 1.x clients send credentials. A key
//!   in a URL can end up in proxies' access logs: prefer a header where the client can.
//!
//! Scheme names are case-insensitive (RFC 9110). The key is checked from the headers
//! alone: [`IngestCaller`] is a `FromRequestParts` extractor, so a handler taking it
//! before its body reads (and inflates) nothing of a body sent by someone refused.
//!
//! Around the check, exactly as for agents (`admit`): an address past its budget of
//! failed authentications (`auth-failures-per-minute`) gets 429 unless its key is one the
//! cache alone proves valid (collectors behind one NAT or proxy keep working); each 401 is
//! charged to the client address. A registry that cannot answer is a 503 that names no
//! host (`auth::registry_error`). `auth = "off"` does not apply here: every write through
//! an ingest key needs a valid one.
//!
//! Cache: the registry's answer for a key (its tenant, or unknown, or revoked) is kept for
//! `auth-cache` (30 s by default) in the gateway's one registry cache
//! (`cache.rs`, by the SHA-256 of the key, at most 100,000 keys), so a
//! collector sending 100 requests a second costs one registry lookup per `auth-cache`, and
//! the registry writes the key's last use at most once a minute besides. **A revoked key is
//! refused by every gateway within `auth-cache` of its revocation** (no event announces
//! a revocation; the cached answer expires).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use fleet_registry::{hash_secret, IngestKeyAuth, IngestKeyRefusal, Registry, INGEST_KEY_PREFIX};
use fleet_service::client::ClientAddr;
use fleet_service::ApiError;

use crate::auth::{registry_error, MAX_CACHED};
use crate::cache::TtlCache;
use crate::GatewayState;

/// Whom an ingest request writes for: the tenant of the key it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestCaller {
    /// Tenant the samples belong to.
    pub tenant_id: String,
    /// The key's id (for logs and counters; not secret).
    pub key_id: String,
}

impl From<IngestKeyAuth> for IngestCaller {
    fn from(a: IngestKeyAuth) -> Self {
        IngestCaller {
            tenant_id: a.tenant_id,
            key_id: a.key_id,
        }
    }
}

/// What the registry said of a key.
type Answer = Result<IngestKeyAuth, IngestKeyRefusal>;

/// Ingest key checks with the gateway's registry cache in front of the registry.
#[derive(Debug)]
pub struct IngestKeys {
    registry: Option<Arc<dyn Registry>>,
    /// SHA-256 of a key → the registry's answer.
    cache: TtlCache<[u8; 32], Answer>,
}

const HOW: &str = "send an ingest key (fsi_...) as `Authorization: Bearer <key>`, as the \
password of HTTP basic auth, or as `Authorization: Token <key>`";

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The ingest key of a request: in `Authorization`, or on `/write` without that header in
/// the query parameter `p` (see the module documentation); or 401.
pub fn presented_key_of(parts: &Parts) -> Result<String, ApiError> {
    if parts.uri.path() == "/write" && parts.headers.get(header::AUTHORIZATION).is_none() {
        let password = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "p")
            .map(|(_, v)| v.into_owned());
        if let Some(key) = password {
            return checked(key);
        }
    }
    presented_key(&parts.headers)
}

/// The ingest key in `Authorization` (see the module documentation), or 401.
pub fn presented_key(headers: &HeaderMap) -> Result<String, ApiError> {
    use base64::Engine as _;
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized(&format!("missing credentials: {HOW}")))?;
    let malformed = || unauthorized(&format!("malformed Authorization header: {HOW}"));
    let (scheme, rest) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .ok_or_else(malformed)?;
    let rest = rest.trim();
    let key = if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(malformed)?;
        let (_user, password) = decoded.split_once(':').ok_or_else(malformed)?;
        password.to_owned()
    } else {
        return Err(malformed());
    };
    checked(key)
}

/// `key` if it has the form of an ingest key, else 401.
fn checked(key: String) -> Result<String, ApiError> {
    if !key.starts_with(INGEST_KEY_PREFIX) || key.len() == INGEST_KEY_PREFIX.len() {
        return Err(unauthorized(&format!("not an ingest key: {HOW}")));
    }
    Ok(key)
}

impl IngestKeys {
    /// Checks against `registry` (none: every check is a 503), trusting an answer for
    /// `ttl` (`auth-cache`).
    pub fn new(registry: Option<Arc<dyn Registry>>, ttl: Duration) -> Self {
        IngestKeys {
            registry,
            cache: TtlCache::new(ttl, MAX_CACHED),
        }
    }

    /// The caller, if the headers and the cache alone decide it: None when the registry
    /// must be asked.
    pub fn authenticate_cached(&self, parts: &Parts) -> Option<Result<IngestCaller, ApiError>> {
        let key = match presented_key_of(parts) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        self.cache.get(&hash_secret(&key)).map(decide)
    }

    /// The caller of an ingest endpoint (may ask the registry).
    pub async fn authenticate(&self, parts: &Parts) -> Result<IngestCaller, ApiError> {
        let key = presented_key_of(parts)?;
        let hash = hash_secret(&key);
        if let Some(answer) = self.cache.get(&hash) {
            return decide(answer);
        }
        let Some(registry) = &self.registry else {
            return Err(ApiError::unavailable(
                "ingest keys cannot be checked: no registry configured",
                30,
            ));
        };
        let answer = registry
            .authenticate_ingest_key(&key, fleet_schemas::time::now_micros())
            .await
            .map_err(registry_error)?;
        self.cache.insert(hash, answer.clone(), answer.is_ok());
        decide(answer)
    }
}

fn decide(answer: Answer) -> Result<IngestCaller, ApiError> {
    match answer {
        Ok(a) => Ok(a.into()),
        Err(IngestKeyRefusal::Unknown) => Err(unauthorized("unknown ingest key")),
        Err(IngestKeyRefusal::Revoked) => Err(unauthorized("this ingest key was revoked")),
    }
}

/// The caller of an ingest endpoint: a handler taking an `IngestCaller` runs only for a
/// valid ingest key, checked before anything reads the body (401 otherwise; 429 for an
/// address past its failure budget; 503 when the registry cannot answer).
impl FromRequestParts<GatewayState> for IngestCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &GatewayState) -> Result<Self, ApiError> {
        let Ok(client) = ClientAddr::from_request_parts(parts, state).await;
        let keys = &state.ingest_keys;
        let parts = &*parts;
        crate::gate(
            state,
            client,
            "ingest_key",
            || keys.authenticate_cached(parts),
            keys.authenticate(parts),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header"));
        h
    }

    #[test]
    fn the_key_is_read_from_bearer_basic_and_token() {
        let key = "fsi_abc-DEF_123";
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        for value in [
            format!("Bearer {key}"),
            format!("bearer  {key} "),
            format!("Token {key}"),
            format!("TOKEN {key}"),
            basic(&format!("prometheus:{key}")),
            basic(&format!(":{key}")),
            format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("u:{key}"))
            ),
        ] {
            assert_eq!(
                presented_key(&with(&value)).ok().as_deref(),
                Some(key),
                "{value}"
            );
        }
        for value in [
            String::from("Bearer"),
            String::from("Bearer "),
            format!("Digest {key}"),
            String::from("Basic !!!"),
            basic(key),
            basic(&format!("{key}:")),
            String::from("Bearer fsi_"),
            String::from("Bearer fsu_abc"),
            String::from("Token fsa_abc"),
        ] {
            let e = presented_key(&with(&value)).expect_err(&value);
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{value}");
        }
        let e = presented_key(&HeaderMap::new()).expect_err("none");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }
}
