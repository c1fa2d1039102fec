-- Users of the query API and their API keys (registry tables, not projected: a read-model
-- rebuild must keep them).
--
-- Portable like 0002 (TEXT and BIGINT only, µs timestamps). sqlx's Any driver cannot
-- decode SQLite's BOOLEAN, so `disabled` is BIGINT 0/1 with a CHECK. Besides:
--   * role is 'admin', 'operator' or 'viewer'; an admin has no tenant, an operator or a
--     viewer exactly one (CHECK), held to an existing tenant by a foreign key.
--   * An API key is stored as the SHA-256 of its secret (64 lowercase hex digits in TEXT,
--     as the hashes of 0002) with its last four characters for display; the secret itself
--     is never stored.

CREATE TABLE users (
    user_id    TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    tenant_id  TEXT REFERENCES tenants (tenant_id),
    disabled   BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at BIGINT NOT NULL,
    CHECK ((role = 'admin' AND tenant_id IS NULL) OR (role <> 'admin' AND tenant_id IS NOT NULL))
);

CREATE TABLE user_api_keys (
    key_id     TEXT NOT NULL PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    last4      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX user_api_keys_user_idx ON user_api_keys (user_id, created_at);
