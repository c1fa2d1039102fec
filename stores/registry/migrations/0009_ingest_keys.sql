-- Ingest keys: what standard collectors (Prometheus remote-write, the OpenTelemetry
-- Collector, Telegraf) authenticate with to write samples for one tenant (a registry
-- table, not projected: a read-model rebuild must keep it).
--
-- Portable like 0002 (TEXT and BIGINT only, µs timestamps).
--   * key_hash: the SHA-256 of the key (`fsi_` and 43 random characters) as 64 lowercase
--     hex digits, as the hashes of 0002 and 0005; the key itself is never stored. last4
--     holds its last four characters for display.
--   * revoked_at: when it was revoked (NULL: it works). A revoked key is kept for the
--     listing and the audit trail.
--   * last_used_at: when it last authenticated a request, written at most once a minute
--     per key (the gateway caches keys besides), so a busy collector does not write on
--     every request.
--   * Names need not be unique: a key is rotated by creating one of the same name, then
--     revoking the old one.

CREATE TABLE ingest_keys (
    key_id       TEXT NOT NULL PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    tenant_id    TEXT NOT NULL REFERENCES tenants (tenant_id),
    name         TEXT NOT NULL,
    description  TEXT,
    last4        TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

CREATE INDEX ingest_keys_tenant_idx ON ingest_keys (tenant_id, created_at);
