-- The registry: tenants, their locations, registration tokens and agent credentials.
--
-- Portable like 0001 (TEXT and BIGINT only, µs timestamps, no BOOLEAN). Besides:
--   * Ids are UUIDv4 strings made by the store.
--   * Hashes (SHA-256 of a token secret or an agent credential) are stored as 64 lowercase
--     hex digits in TEXT: one column type both engines declare and sqlx's Any driver
--     decodes alike (PostgreSQL's BYTEA is not a type name SQLite's sqlx driver knows).
--     Secrets themselves are never stored.
--   * Flags are BIGINT 0/1 with a CHECK.
--   * Foreign keys hold every row to its tenant, and a location named by a token or a
--     credential to the same tenant (composite key). SQLite enforces them because every
--     connection sets `PRAGMA foreign_keys = ON`. A NULL location_id is not checked
--     (MATCH SIMPLE, the default of both engines).

CREATE TABLE tenants (
    tenant_id  TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE locations (
    location_id TEXT NOT NULL PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (tenant_id),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name),
    -- The target of the composite foreign keys below.
    UNIQUE (location_id, tenant_id)
);

CREATE TABLE registration_tokens (
    token_id      TEXT NOT NULL PRIMARY KEY,
    secret_hash   TEXT NOT NULL UNIQUE CHECK (length(secret_hash) = 64),
    tenant_id     TEXT NOT NULL REFERENCES tenants (tenant_id),
    location_id   TEXT,
    device_name   TEXT,
    expires_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    used_at       BIGINT,
    used_by_agent TEXT,
    FOREIGN KEY (location_id, tenant_id) REFERENCES locations (location_id, tenant_id)
);

CREATE INDEX registration_tokens_tenant_idx ON registration_tokens (tenant_id, created_at);

CREATE TABLE agent_credentials (
    agent_id        TEXT NOT NULL PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    location_id     TEXT,
    credential_hash TEXT NOT NULL CHECK (length(credential_hash) = 64),
    active          BIGINT NOT NULL CHECK (active IN (0, 1)),
    facts           TEXT NOT NULL,
    registered_at   BIGINT NOT NULL,
    deactivated_at  BIGINT,
    FOREIGN KEY (location_id, tenant_id) REFERENCES locations (location_id, tenant_id)
);

CREATE INDEX agent_credentials_tenant_idx ON agent_credentials (tenant_id, agent_id);
