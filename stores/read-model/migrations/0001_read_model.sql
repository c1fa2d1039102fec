-- The read model: agents with their latest metrics, alerts, and the offsets of the
-- projections that wrote them.
--
-- One portable DDL for PostgreSQL and SQLite (through sqlx's Any driver):
--   * types are TEXT, BIGINT, DOUBLE PRECISION only. Timestamps are BIGINT µs since the
--     epoch (UTC). No SERIAL: every primary key is a natural key or a text id.
--   * No BOOLEAN columns: SQLite reports a BOOLEAN column's declared type as `Bool`, which
--     sqlx 0.8's Any driver cannot map, so any row holding one fails to decode. Use BIGINT
--     0/1 instead.
--   * Text ordering follows the database collation (PostgreSQL) or bytes (SQLite); paging by
--     id only needs `>` and ORDER BY to agree within one engine, which they do.

CREATE TABLE agents (
    agent_id         TEXT NOT NULL PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    first_seen_at    BIGINT NOT NULL,
    last_seen_at     BIGINT NOT NULL,
    last_metrics_at  BIGINT,
    cpu_percent      DOUBLE PRECISION,
    memory_percent   DOUBLE PRECISION,
    disk_percent_max DOUBLE PRECISION,
    load_1           DOUBLE PRECISION,
    uptime_seconds   BIGINT,
    latest_report    TEXT
);

CREATE INDEX agents_tenant_idx ON agents (tenant_id, agent_id);

CREATE TABLE alerts (
    alert_id        TEXT NOT NULL PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    agent_id        TEXT NOT NULL,
    rule_id         TEXT NOT NULL,
    rule_name       TEXT NOT NULL,
    metric          TEXT NOT NULL,
    subject         TEXT,
    severity        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    operator        TEXT NOT NULL,
    threshold       DOUBLE PRECISION NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    message         TEXT NOT NULL,
    raised_at       BIGINT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    resolved_at     BIGINT,
    resolved_value  DOUBLE PRECISION,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX alerts_tenant_raised_idx ON alerts (tenant_id, raised_at);
CREATE INDEX alerts_agent_raised_idx ON alerts (agent_id, raised_at);
CREATE INDEX alerts_raised_idx ON alerts (raised_at);

CREATE TABLE projection_offsets (
    projection  TEXT NOT NULL,
    topic       TEXT NOT NULL,
    partition   BIGINT NOT NULL CHECK (partition >= 0),
    next_offset BIGINT NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (projection, topic, partition)
);
