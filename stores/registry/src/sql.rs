//! [`Registry`] on PostgreSQL or SQLite: `sqlx::AnyPool` (a [`Database`], which the read
//! model may share), portable SQL (`$n` placeholders, BIGINT flags, TEXT hashes; see
//! `migrations/0002_registry.sql`), and the migrations of the registry's tables
//! ([`MIGRATIONS`]).
//!
//! Redeeming a token is one transaction: a conditional `UPDATE ... RETURNING` claims the
//! token only while it is unused and unexpired, then the credential is inserted. Of
//! concurrent redemptions exactly one claims the row:
//!
//! * PostgreSQL (READ COMMITTED): the losers wait on the row lock, then re-check the `WHERE`
//!   against the committed row, match nothing, and read why in a fresh snapshot.
//! * SQLite: the transaction opens with `BEGIN IMMEDIATE`, taking the one write lock up
//!   front (waiting up to the busy timeout), so the losers start after the winner
//!   committed. A deferred transaction could fail with `SQLITE_BUSY` instead of waiting.
//!
//! Lock contention that still surfaces (a busy timeout, a deadlock, a serialization failure)
//! rolled the transaction back, so the redemption is retried a few times before giving up
//! with [`StoreError::Unavailable`].
//!
//! Tenants and locations are enforced by foreign keys; the violations become
//! [`StoreError::NotFound`], unique violations [`StoreError::Conflict`].

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::error::{BoxDynError, ErrorKind};
use sqlx::Row;

use fleet_sql::{decode_error, Database, Engine, Migration, Migrations};

use crate::{
    verify_secret, AgentCredential, ApiKeyInfo, IngestKeyAuth, IngestKeyInfo, IngestKeyRefusal,
    KeyOwner, Location, NewAgent, NewIngestKey, NewToken, NewUser, RedeemRefusal, Redeemed,
    Registry, RequestKeyClaim, Result, Role, StoreError, Tenant, TokenInfo, User,
    INGEST_KEY_TOUCH_INTERVAL,
};

/// The migrations of the registry's tables, embedded. Their versions interleave with the
/// read model's (one sequence per database; see `fleet_sql::Database::migrate`); a unit test
/// checks this list matches the `migrations/` folder.
pub const MIGRATIONS: Migrations = Migrations {
    owner: "registry",
    list: &[
        Migration {
            version: 2,
            description: "registry",
            sql: include_str!("../migrations/0002_registry.sql"),
        },
        Migration {
            version: 5,
            description: "users",
            sql: include_str!("../migrations/0005_users.sql"),
        },
        Migration {
            version: 8,
            description: "request keys and key revocation",
            sql: include_str!("../migrations/0008_request_keys_and_key_revocation.sql"),
        },
        Migration {
            version: 9,
            description: "ingest keys",
            sql: include_str!("../migrations/0009_ingest_keys.sql"),
        },
    ],
};

/// Opens the registry a URL names: `postgres://...`, `sqlite://path` or a bare path to a
/// SQLite file (created if missing), and runs its migrations. To share one pool with the
/// read model, connect a [`Database`] and open both on clones of it.
pub async fn open_registry(url: &str) -> Result<std::sync::Arc<dyn Registry>> {
    Ok(std::sync::Arc::new(
        SqlRegistry::open(Database::connect(url).await?).await?,
    ))
}

/// The registry on PostgreSQL or SQLite.
#[derive(Debug, Clone)]
pub struct SqlRegistry {
    db: Database,
}

impl SqlRegistry {
    /// Runs the registry's migrations on `db` and serves the registry from its pool.
    pub async fn open(db: Database) -> Result<Self> {
        db.migrate(&MIGRATIONS).await?;
        tracing::info!(engine = db.engine().as_str(), target = %db.target(), "Registry ready.");
        Ok(SqlRegistry { db })
    }

    /// The database (its pool is shared by clones).
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// Attempts of a redemption that meets lock contention.
const REDEEM_ATTEMPTS: u32 = 4;
/// Pause before the second attempt; doubled before each further one.
const REDEEM_BACKOFF: Duration = Duration::from_millis(25);

const INSERT_TENANT: &str = "INSERT INTO tenants (tenant_id, name, created_at) VALUES ($1, $2, $3)";

const TENANT_COLUMNS: &str = "tenant_id, name, created_at";

const INSERT_LOCATION: &str = "\
INSERT INTO locations (location_id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)";

const LOCATION_COLUMNS: &str = "location_id, tenant_id, name, created_at";

const INSERT_TOKEN: &str = "\
INSERT INTO registration_tokens (token_id, secret_hash, tenant_id, location_id, device_name,
    expires_at, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const TOKEN_COLUMNS: &str = "token_id, tenant_id, location_id, device_name, expires_at, \
created_by, created_at, used_at, used_by_agent";

/// Claims an unused, unexpired token. `$1` now, `$2` the new agent, `$3` the secret hash.
const CLAIM_TOKEN: &str = "\
UPDATE registration_tokens SET used_at = $1, used_by_agent = $2
WHERE secret_hash = $3 AND used_at IS NULL AND expires_at > $1
RETURNING token_id, tenant_id, location_id, device_name";

/// Why a claim matched nothing.
const TOKEN_STATE: &str =
    "SELECT used_at, expires_at FROM registration_tokens WHERE secret_hash = $1";

const INSERT_CREDENTIAL: &str = "\
INSERT INTO agent_credentials (agent_id, tenant_id, location_id, credential_hash, active, facts,
    registered_at)
VALUES ($1, $2, $3, $4, 1, $5, $6)";

const SELECT_CREDENTIAL: &str = "\
SELECT agent_id, tenant_id, location_id, credential_hash, active FROM agent_credentials
WHERE agent_id = $1";

/// `$1` now, `$2` the agent.
const DEACTIVATE: &str = "\
UPDATE agent_credentials SET active = 0, deactivated_at = $1 WHERE agent_id = $2 AND active = 1";

/// [`DEACTIVATE`] restricted to tenant `$3`.
const DEACTIVATE_IN_TENANT: &str = "\
UPDATE agent_credentials SET active = 0, deactivated_at = $1
WHERE agent_id = $2 AND active = 1 AND tenant_id = $3";

const INSERT_USER: &str = "\
INSERT INTO users (user_id, name, role, tenant_id, disabled, created_at)
VALUES ($1, $2, $3, $4, 0, $5)";

const USER_COLUMNS: &str = "user_id, name, role, tenant_id, disabled, created_at";

const SET_USER_DISABLED: &str = "UPDATE users SET disabled = $1 WHERE user_id = $2";

const INSERT_API_KEY: &str = "\
INSERT INTO user_api_keys (key_id, key_hash, user_id, last4, created_at)
VALUES ($1, $2, $3, $4, $5)";

const API_KEY_COLUMNS: &str = "key_id, user_id, last4, created_at, revoked_at";

/// `$1` now, `$2` the key, `$3` its user. A revoked key keeps its first revocation time.
const REVOKE_API_KEY: &str = "\
UPDATE user_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE key_id = $2 AND user_id = $3";

/// Claims an idempotency id; a held one is left as it is (`$1` id, `$2` hash, `$3` now).
const CLAIM_REQUEST_KEY: &str = "\
INSERT INTO idempotency_keys (id, request_hash, created_at) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING";

const SELECT_REQUEST_KEY: &str = "SELECT request_hash FROM idempotency_keys WHERE id = $1";

const SELECT_KEY_OWNER: &str = "\
SELECT k.key_id, k.key_hash, k.last4, k.created_at AS key_created_at, k.revoked_at,
    u.user_id, u.name, u.role, u.tenant_id, u.disabled, u.created_at
FROM user_api_keys k JOIN users u ON u.user_id = k.user_id
WHERE k.key_hash = $1";

const INSERT_INGEST_KEY: &str = "\
INSERT INTO ingest_keys (key_id, key_hash, tenant_id, name, description, last4, created_by,
    created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const INGEST_KEY_COLUMNS: &str = "key_id, tenant_id, name, description, last4, created_by, \
created_at, revoked_at, last_used_at";

/// `$1` now, `$2` the key. A revoked key keeps its first revocation time.
const REVOKE_INGEST_KEY: &str =
    "UPDATE ingest_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE key_id = $2";

/// What authenticating a key needs, by its hash.
const SELECT_INGEST_KEY_BY_HASH: &str = "\
SELECT key_id, key_hash, tenant_id, revoked_at, last_used_at FROM ingest_keys
WHERE key_hash = $1";

/// Records a use (`$1` now, `$2` the key) unless one at or after `$3` (now minus the touch
/// interval) is recorded: of instances racing to record, the first wins, the rest change
/// nothing.
const TOUCH_INGEST_KEY: &str = "\
UPDATE ingest_keys SET last_used_at = $1
WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)";

/// Why one redemption attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// A statement failed; `what` says which, for the message.
    Sql {
        what: &'static str,
        error: sqlx::Error,
    },
    /// The claim matched nothing, yet the token then read as unused and unexpired: it was
    /// committed, or released by a rolled-back redemption, between the two statements
    /// (PostgreSQL; SQLite's write lock rules it out). Another attempt decides.
    Raced,
}

fn at(what: &'static str) -> impl FnOnce(sqlx::Error) -> AttemptError {
    move |error| AttemptError::Sql { what, error }
}

impl SqlRegistry {
    /// Maps a statement's error: a unique violation is a [`StoreError::Conflict`] saying
    /// `conflict`, anything else as [`Database::error`] classifies it (retry or internal).
    fn registry_error(
        &self,
        what: &str,
        e: sqlx::Error,
        conflict: impl FnOnce() -> String,
    ) -> StoreError {
        if constraint(&e) == Some(ErrorKind::UniqueViolation) {
            return StoreError::Conflict(conflict());
        }
        self.db.error(what, e)
    }

    /// Every row `sql` returns (with `arg` bound to `$1`, if any), decoded by `from_row`;
    /// `what` names the rows in errors.
    async fn rows<T>(
        &self,
        sql: &str,
        arg: Option<&str>,
        what: &str,
        from_row: fn(&AnyRow) -> Result<T, BoxDynError>,
    ) -> Result<Vec<T>> {
        let mut q = sqlx::query(sql);
        if let Some(arg) = arg {
            q = q.bind(arg);
        }
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db.error(&format!("list {what}"), e))?;
        rows.iter()
            .map(from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error(what, e))
    }

    /// Says which of a token's tenant and location is missing after a foreign key refused
    /// it.
    async fn token_target_missing(&self, token: &NewToken) -> StoreError {
        match self.get_tenant(&token.tenant_id).await {
            Ok(None) => StoreError::NotFound(format!("tenant {}", token.tenant_id)),
            Ok(Some(_)) => StoreError::NotFound(format!(
                "location {} in tenant {}",
                token.location_id.as_deref().unwrap_or("(none)"),
                token.tenant_id
            )),
            Err(e) => e,
        }
    }

    /// One redemption in one transaction (see the module documentation).
    async fn redeem_once(
        &self,
        hash_hex: &str,
        credential_hex: &str,
        agent: &NewAgent,
    ) -> Result<Result<Redeemed, RedeemRefusal>, AttemptError> {
        let mut tx = match self.db.engine() {
            Engine::Postgres => self.db.pool().begin().await,
            Engine::Sqlite => self.db.pool().begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(at("begin"))?;

        let claimed = sqlx::query(CLAIM_TOKEN)
            .bind(agent.now)
            .bind(agent.agent_id.as_str())
            .bind(hash_hex)
            .fetch_optional(&mut *tx)
            .await
            .map_err(at("claim token"))?;

        let Some(row) = claimed else {
            let state = sqlx::query(TOKEN_STATE)
                .bind(hash_hex)
                .fetch_optional(&mut *tx)
                .await
                .map_err(at("read token"))?;
            tx.rollback().await.map_err(at("rollback"))?;
            let Some(state) = state else {
                return Ok(Err(RedeemRefusal::Unknown));
            };
            let used_at: Option<i64> = state.try_get("used_at").map_err(at("read token"))?;
            let expires_at: i64 = state.try_get("expires_at").map_err(at("read token"))?;
            return if used_at.is_some() {
                Ok(Err(RedeemRefusal::Used))
            } else if expires_at <= agent.now {
                Ok(Err(RedeemRefusal::Expired))
            } else {
                Err(AttemptError::Raced)
            };
        };
        let redeemed = Redeemed {
            token_id: row.try_get("token_id").map_err(at("claim token"))?,
            tenant_id: row.try_get("tenant_id").map_err(at("claim token"))?,
            location_id: row.try_get("location_id").map_err(at("claim token"))?,
            device_name: row.try_get("device_name").map_err(at("claim token"))?,
        };

        sqlx::query(INSERT_CREDENTIAL)
            .bind(agent.agent_id.as_str())
            .bind(redeemed.tenant_id.as_str())
            .bind(redeemed.location_id.as_deref())
            .bind(credential_hex)
            .bind(agent.facts_json.as_str())
            .bind(agent.now)
            .execute(&mut *tx)
            .await
            .map_err(at("store credential"))?;
        tx.commit().await.map_err(at("commit"))?;
        Ok(Ok(redeemed))
    }

    /// Whether a failed attempt rolled back in a way another attempt may not meet.
    fn worth_retrying(&self, e: &AttemptError) -> bool {
        match e {
            AttemptError::Raced => true,
            AttemptError::Sql { error, .. } => is_contention(self.db.engine(), error),
        }
    }
}

/// The kind of a constraint violation, if `e` is one.
fn constraint(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}

/// Lock contention that rolled the transaction back, so trying again is safe: SQLite
/// `SQLITE_BUSY` / `SQLITE_LOCKED` (with their extended codes), PostgreSQL serialization
/// failure and deadlock.
fn is_contention(engine: Engine, e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    match engine {
        Engine::Postgres => code == "40001" || code == "40P01",
        Engine::Sqlite => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
    }
}

/// 64 lowercase hex digits.
fn to_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses what [`to_hex`] wrote (either case).
fn from_hex(s: &str) -> Result<[u8; 32], BoxDynError> {
    fn nibble(c: u8) -> Result<u8, BoxDynError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", char::from(c)).into()),
        }
    }
    if s.len() != 64 {
        return Err(format!("a hash of {} hex digits, expected 64", s.len()).into());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, BoxDynError> {
    Ok(Tenant {
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn location_from_row(row: &AnyRow) -> Result<Location, BoxDynError> {
    Ok(Location {
        location_id: row.try_get("location_id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenInfo, BoxDynError> {
    Ok(TokenInfo {
        token_id: row.try_get("token_id")?,
        tenant_id: row.try_get("tenant_id")?,
        location_id: row.try_get("location_id")?,
        device_name: row.try_get("device_name")?,
        expires_at: row.try_get("expires_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        used_at: row.try_get("used_at")?,
        used_by_agent: row.try_get("used_by_agent")?,
    })
}

fn credential_from_row(row: &AnyRow) -> Result<AgentCredential, BoxDynError> {
    let hash: String = row.try_get("credential_hash")?;
    let active: i64 = row.try_get("active")?;
    Ok(AgentCredential {
        agent_id: row.try_get("agent_id")?,
        tenant_id: row.try_get("tenant_id")?,
        location_id: row.try_get("location_id")?,
        credential_hash: from_hex(&hash)?,
        active: match active {
            0 => false,
            1 => true,
            other => return Err(format!("active flag {other}, expected 0 or 1").into()),
        },
    })
}

fn flag(name: &str, v: i64) -> Result<bool, BoxDynError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("{name} flag {other}, expected 0 or 1").into()),
    }
}

fn user_from_row(row: &AnyRow) -> Result<User, BoxDynError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| format!("unknown role {role:?}"))?,
        tenant_id: row.try_get("tenant_id")?,
        created_at: row.try_get("created_at")?,
        disabled: flag("disabled", row.try_get("disabled")?)?,
    })
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKeyInfo, BoxDynError> {
    Ok(ApiKeyInfo {
        key_id: row.try_get("key_id")?,
        user_id: row.try_get("user_id")?,
        last4: row.try_get("last4")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn key_owner_from_row(row: &AnyRow) -> Result<KeyOwner, BoxDynError> {
    let user = user_from_row(row)?;
    let hash: String = row.try_get("key_hash")?;
    Ok(KeyOwner {
        key: ApiKeyInfo {
            key_id: row.try_get("key_id")?,
            user_id: user.user_id.clone(),
            last4: row.try_get("last4")?,
            created_at: row.try_get("key_created_at")?,
            revoked_at: row.try_get("revoked_at")?,
        },
        key_hash: from_hex(&hash)?,
        user,
    })
}

fn ingest_key_from_row(row: &AnyRow) -> Result<IngestKeyInfo, BoxDynError> {
    Ok(IngestKeyInfo {
        key_id: row.try_get("key_id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        last4: row.try_get("last4")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// A key found by its hash: (key id, stored hash, tenant, revoked at, last used at).
type IngestKeyRow = (String, [u8; 32], String, Option<i64>, Option<i64>);

fn ingest_key_auth_from_row(row: &AnyRow) -> Result<IngestKeyRow, BoxDynError> {
    let hash: String = row.try_get("key_hash")?;
    Ok((
        row.try_get("key_id")?,
        from_hex(&hash)?,
        row.try_get("tenant_id")?,
        row.try_get("revoked_at")?,
        row.try_get("last_used_at")?,
    ))
}

/// At most 4 characters of a secret, for display.
fn check_last4(last4: &str) -> Result<()> {
    if last4.chars().count() > 4 {
        return Err(StoreError::InvalidQuery(
            "last4 holds at most 4 characters".into(),
        ));
    }
    Ok(())
}

/// A name must say something.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(StoreError::InvalidQuery(format!(
            "the {what} name is empty"
        )));
    }
    Ok(())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[async_trait]
impl Registry for SqlRegistry {
    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn create_tenant(&self, name: &str, now: i64) -> Result<Tenant> {
        check_name("tenant", name)?;
        let tenant = Tenant {
            tenant_id: new_id(),
            name: name.to_owned(),
            created_at: now,
        };
        sqlx::query(INSERT_TENANT)
            .bind(tenant.tenant_id.as_str())
            .bind(tenant.name.as_str())
            .bind(tenant.created_at)
            .execute(self.db.pool())
            .await
            .map_err(|e| {
                self.registry_error("create tenant", e, || {
                    format!("a tenant named {name:?} already exists")
                })
            })?;
        Ok(tenant)
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
        self.rows(&sql, None, "tenants", tenant_from_row).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1"
        ))
        .bind(tenant_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(|e| self.db.error("get tenant", e))?;
        row.as_ref()
            .map(tenant_from_row)
            .transpose()
            .map_err(|e| decode_error("tenant", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn create_location(&self, tenant_id: &str, name: &str, now: i64) -> Result<Location> {
        check_name("location", name)?;
        let location = Location {
            location_id: new_id(),
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            created_at: now,
        };
        let inserted = sqlx::query(INSERT_LOCATION)
            .bind(location.location_id.as_str())
            .bind(tenant_id)
            .bind(name)
            .bind(now)
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(location),
            Err(e) if constraint(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StoreError::NotFound(format!("tenant {tenant_id}")))
            }
            Err(e) => Err(self.registry_error("create location", e, || {
                format!("tenant {tenant_id} already has a location named {name:?}")
            })),
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_locations(&self, tenant_id: &str) -> Result<Vec<Location>> {
        let sql = format!(
            "SELECT {LOCATION_COLUMNS} FROM locations WHERE tenant_id = $1 \
             ORDER BY name, location_id"
        );
        self.rows(&sql, Some(tenant_id), "locations", location_from_row)
            .await
    }

    #[tracing::instrument(
        skip(self, token, secret_hash),
        fields(
            engine = self.db.engine().as_str(),
            tenant_id = %token.tenant_id,
            location_id = ?token.location_id,
        )
    )]
    async fn create_token(&self, token: &NewToken, secret_hash: [u8; 32]) -> Result<TokenInfo> {
        if token.expires_at <= token.created_at {
            return Err(StoreError::InvalidQuery(format!(
                "the token expires ({}) before it is created ({})",
                token.expires_at, token.created_at
            )));
        }
        let info = TokenInfo {
            token_id: new_id(),
            tenant_id: token.tenant_id.clone(),
            location_id: token.location_id.clone(),
            device_name: token.device_name.clone(),
            expires_at: token.expires_at,
            created_by: token.created_by.clone(),
            created_at: token.created_at,
            used_at: None,
            used_by_agent: None,
        };
        let inserted = sqlx::query(INSERT_TOKEN)
            .bind(info.token_id.as_str())
            .bind(to_hex(&secret_hash))
            .bind(info.tenant_id.as_str())
            .bind(info.location_id.as_deref())
            .bind(info.device_name.as_deref())
            .bind(info.expires_at)
            .bind(info.created_by.as_str())
            .bind(info.created_at)
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(info),
            Err(e) if constraint(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(self.token_target_missing(token).await)
            }
            Err(e) => Err(self.registry_error("create token", e, || {
                "a registration token with this secret already exists: generate a new secret".into()
            })),
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_tokens(&self, tenant_id: &str) -> Result<Vec<TokenInfo>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM registration_tokens WHERE tenant_id = $1 \
             ORDER BY created_at DESC, token_id DESC"
        );
        self.rows(&sql, Some(tenant_id), "registration tokens", token_from_row)
            .await
    }

    #[tracing::instrument(
        skip(self, secret_hash, agent),
        fields(engine = self.db.engine().as_str(), agent_id = %agent.agent_id)
    )]
    async fn redeem_token(
        &self,
        secret_hash: [u8; 32],
        agent: &NewAgent,
    ) -> Result<std::result::Result<Redeemed, RedeemRefusal>> {
        let hash_hex = to_hex(&secret_hash);
        let credential_hex = to_hex(&agent.credential_hash);
        let mut backoff = REDEEM_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.redeem_once(&hash_hex, &credential_hex, agent).await {
                Ok(outcome) => {
                    match &outcome {
                        Ok(r) => {
                            tracing::debug!(token_id = %r.token_id, tenant_id = %r.tenant_id, "Token redeemed.")
                        }
                        Err(refusal) => tracing::debug!(?refusal, "Token refused."),
                    }
                    return Ok(outcome);
                }
                Err(e) if attempt < REDEEM_ATTEMPTS && self.worth_retrying(&e) => {
                    tracing::debug!(attempt, error = ?e, "Redemption met contention; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(AttemptError::Raced) => {
                    return Err(StoreError::Unavailable(format!(
                        "redeem token on {} {}: the token changed during the redemption; retry",
                        self.db.engine().as_str(),
                        self.db.target()
                    )))
                }
                Err(AttemptError::Sql { what, error }) => {
                    return Err(self.registry_error(what, error, || {
                        format!("agent {} is already registered", agent.agent_id)
                    }))
                }
            }
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn agent_credential(&self, agent_id: &str) -> Result<Option<AgentCredential>> {
        let row = sqlx::query(SELECT_CREDENTIAL)
            .bind(agent_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db.error("get agent credential", e))?;
        row.as_ref()
            .map(credential_from_row)
            .transpose()
            .map_err(|e| decode_error("agent credential", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn deactivate_agent(
        &self,
        tenant_id: Option<&str>,
        agent_id: &str,
        now: i64,
    ) -> Result<bool> {
        let q = match tenant_id {
            None => sqlx::query(DEACTIVATE).bind(now).bind(agent_id),
            Some(tenant_id) => sqlx::query(DEACTIVATE_IN_TENANT)
                .bind(now)
                .bind(agent_id)
                .bind(tenant_id),
        };
        let done = q
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db.error("deactivate agent", e))?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(skip(self, user), fields(engine = self.db.engine().as_str(), name = %user.name))]
    async fn create_user(&self, user: &NewUser) -> Result<User> {
        check_name("user", &user.name)?;
        match (user.role, user.tenant_id.as_deref()) {
            (Role::Admin, Some(_)) => {
                return Err(StoreError::InvalidQuery(
                    "an admin belongs to no tenant".into(),
                ))
            }
            (Role::Operator | Role::Viewer, None) => {
                return Err(StoreError::InvalidQuery(format!(
                    "an {} belongs to a tenant: name one",
                    user.role.as_str()
                )))
            }
            _ => {}
        }
        let created = User {
            user_id: new_id(),
            name: user.name.clone(),
            role: user.role,
            tenant_id: user.tenant_id.clone(),
            created_at: user.created_at,
            disabled: false,
        };
        let inserted = sqlx::query(INSERT_USER)
            .bind(created.user_id.as_str())
            .bind(created.name.as_str())
            .bind(created.role.as_str())
            .bind(created.tenant_id.as_deref())
            .bind(created.created_at)
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(created),
            Err(e) if constraint(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StoreError::NotFound(format!(
                    "tenant {}",
                    user.tenant_id.as_deref().unwrap_or("")
                )))
            }
            Err(e) => Err(self.registry_error("create user", e, || {
                format!("a user named {:?} already exists", user.name)
            })),
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_users(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
        self.rows(&sql, None, "users", user_from_row).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_user(&self, user_id: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
        ))
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(|e| self.db.error("get user", e))?;
        row.as_ref()
            .map(user_from_row)
            .transpose()
            .map_err(|e| decode_error("user", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn set_user_disabled(&self, user_id: &str, disabled: bool) -> Result<bool> {
        let done = sqlx::query(SET_USER_DISABLED)
            .bind(i64::from(disabled))
            .bind(user_id)
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db.error("disable user", e))?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(skip(self, key_hash), fields(engine = self.db.engine().as_str()))]
    async fn create_api_key(
        &self,
        user_id: &str,
        key_hash: [u8; 32],
        last4: &str,
        now: i64,
    ) -> Result<ApiKeyInfo> {
        check_last4(last4)?;
        let info = ApiKeyInfo {
            key_id: new_id(),
            user_id: user_id.to_owned(),
            last4: last4.to_owned(),
            created_at: now,
            revoked_at: None,
        };
        let inserted = sqlx::query(INSERT_API_KEY)
            .bind(info.key_id.as_str())
            .bind(to_hex(&key_hash))
            .bind(user_id)
            .bind(last4)
            .bind(now)
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(info),
            Err(e) if constraint(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StoreError::NotFound(format!("user {user_id}")))
            }
            Err(e) => Err(self.registry_error("create API key", e, || {
                "an API key with this secret already exists: generate a new secret".into()
            })),
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKeyInfo>> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM user_api_keys WHERE user_id = $1 \
             ORDER BY created_at DESC, key_id DESC"
        );
        self.rows(&sql, Some(user_id), "API keys", api_key_from_row)
            .await
    }

    #[tracing::instrument(skip(self, key_hash), fields(engine = self.db.engine().as_str()))]
    async fn key_owner(&self, key_hash: [u8; 32]) -> Result<Option<KeyOwner>> {
        let row = sqlx::query(SELECT_KEY_OWNER)
            .bind(to_hex(&key_hash))
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db.error("find API key", e))?;
        row.as_ref()
            .map(key_owner_from_row)
            .transpose()
            .map_err(|e| decode_error("API key", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn revoke_api_key(&self, user_id: &str, key_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(REVOKE_API_KEY)
            .bind(now)
            .bind(key_id)
            .bind(user_id)
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db.error("revoke API key", e))?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(skip(self, request_hash), fields(engine = self.db.engine().as_str()))]
    async fn claim_request_key(
        &self,
        id: &str,
        request_hash: [u8; 32],
        now: i64,
    ) -> Result<RequestKeyClaim> {
        let hash = to_hex(&request_hash);
        let inserted = sqlx::query(CLAIM_REQUEST_KEY)
            .bind(id)
            .bind(hash.as_str())
            .bind(now)
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db.error("claim idempotency key", e))?;
        if inserted.rows_affected() == 1 {
            return Ok(RequestKeyClaim::New);
        }
        // Held: rows are never deleted, so the holder is there to compare with.
        let row = sqlx::query(SELECT_REQUEST_KEY)
            .bind(id)
            .fetch_one(self.db.pool())
            .await
            .map_err(|e| self.db.error("read idempotency key", e))?;
        let held: String = row
            .try_get("request_hash")
            .map_err(|e| decode_error("idempotency key", e.into()))?;
        let held = from_hex(&held).map_err(|e| decode_error("idempotency key", e))?;
        Ok(if held == request_hash {
            RequestKeyClaim::Same
        } else {
            RequestKeyClaim::Different
        })
    }

    #[tracing::instrument(
        skip(self, key, key_hash),
        fields(engine = self.db.engine().as_str(), tenant_id = %key.tenant_id)
    )]
    async fn create_ingest_key(
        &self,
        key: &NewIngestKey,
        key_hash: [u8; 32],
        last4: &str,
    ) -> Result<IngestKeyInfo> {
        check_name("ingest key", &key.name)?;
        if key
            .description
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            return Err(StoreError::InvalidQuery(
                "the ingest key's description is blank: leave it out".into(),
            ));
        }
        check_last4(last4)?;
        let info = IngestKeyInfo {
            key_id: new_id(),
            tenant_id: key.tenant_id.clone(),
            name: key.name.clone(),
            description: key.description.clone(),
            last4: last4.to_owned(),
            created_by: key.created_by.clone(),
            created_at: key.created_at,
            revoked_at: None,
            last_used_at: None,
        };
        let inserted = sqlx::query(INSERT_INGEST_KEY)
            .bind(info.key_id.as_str())
            .bind(to_hex(&key_hash))
            .bind(info.tenant_id.as_str())
            .bind(info.name.as_str())
            .bind(info.description.as_deref())
            .bind(last4)
            .bind(info.created_by.as_str())
            .bind(info.created_at)
            .execute(self.db.pool())
            .await;
        match inserted {
            Ok(_) => Ok(info),
            Err(e) if constraint(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StoreError::NotFound(format!("tenant {}", key.tenant_id)))
            }
            Err(e) => Err(self.registry_error("create ingest key", e, || {
                "an ingest key with this secret already exists: generate a new secret".into()
            })),
        }
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_ingest_keys(&self, tenant_id: &str) -> Result<Vec<IngestKeyInfo>> {
        let sql = format!(
            "SELECT {INGEST_KEY_COLUMNS} FROM ingest_keys WHERE tenant_id = $1 \
             ORDER BY created_at DESC, key_id DESC"
        );
        self.rows(&sql, Some(tenant_id), "ingest keys", ingest_key_from_row)
            .await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn revoke_ingest_key(
        &self,
        tenant_id: Option<&str>,
        key_id: &str,
        now: i64,
    ) -> Result<Option<IngestKeyInfo>> {
        let row = match tenant_id {
            None => {
                sqlx::query(&format!(
                    "{REVOKE_INGEST_KEY} RETURNING {INGEST_KEY_COLUMNS}"
                ))
                .bind(now)
                .bind(key_id)
                .fetch_optional(self.db.pool())
                .await
            }
            Some(tenant_id) => {
                sqlx::query(&format!(
                    "{REVOKE_INGEST_KEY} AND tenant_id = $3 RETURNING {INGEST_KEY_COLUMNS}"
                ))
                .bind(now)
                .bind(key_id)
                .bind(tenant_id)
                .fetch_optional(self.db.pool())
                .await
            }
        }
        .map_err(|e| self.db.error("revoke ingest key", e))?;
        row.as_ref()
            .map(ingest_key_from_row)
            .transpose()
            .map_err(|e| decode_error("ingest key", e))
    }

    #[tracing::instrument(skip(self, secret), fields(engine = self.db.engine().as_str()))]
    async fn authenticate_ingest_key(
        &self,
        secret: &str,
        now: i64,
    ) -> Result<std::result::Result<IngestKeyAuth, IngestKeyRefusal>> {
        let row = sqlx::query(SELECT_INGEST_KEY_BY_HASH)
            .bind(to_hex(&crate::hash_secret(secret)))
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db.error("find ingest key", e))?;
        let Some(row) = row else {
            return Ok(Err(IngestKeyRefusal::Unknown));
        };
        let (key_id, hash, tenant_id, revoked_at, last_used_at) =
            ingest_key_auth_from_row(&row).map_err(|e| decode_error("ingest key", e))?;
        if !verify_secret(secret, &hash) {
            return Ok(Err(IngestKeyRefusal::Unknown));
        }
        if revoked_at.is_some() {
            return Ok(Err(IngestKeyRefusal::Revoked));
        }
        let due = now.saturating_sub(INGEST_KEY_TOUCH_INTERVAL);
        if last_used_at.is_none_or(|t| t <= due) {
            // The use is a hint for people: a failure to record it refuses nothing.
            if let Err(e) = sqlx::query(TOUCH_INGEST_KEY)
                .bind(now)
                .bind(key_id.as_str())
                .bind(due)
                .execute(self.db.pool())
                .await
            {
                tracing::warn!(%key_id, error = %self.db.error("record ingest key use", e), "Ingest key use not recorded.");
            }
        }
        Ok(Ok(IngestKeyAuth { key_id, tenant_id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_list_matches_the_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        MIGRATIONS.check_folder(&dir).expect("every file listed");
    }

    #[test]
    fn hex_round_trips() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i * 8).expect("small") ^ 0xa5;
        }
        let hex = to_hex(&bytes);
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(from_hex(&hex).expect("parses"), bytes);
        assert_eq!(from_hex(&hex.to_uppercase()).expect("either case"), bytes);
        assert_eq!(&to_hex(&[0xff; 32])[..4], "ffff");
        assert!(from_hex(&hex[..62]).is_err(), "too short");
        assert!(from_hex(&format!("{}zz", &hex[..62])).is_err(), "not hex");
    }

    #[test]
    fn hex_of_a_known_hash() {
        let hash = crate::hash_secret("abc");
        assert_eq!(
            to_hex(&hash),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
