-- Remote commands with their audit trail (fleet.commands.v1), installed software
-- (fleet.inventory.v1) and tickets (fleet.tickets.v1). Projected tables: a read-model
-- rebuild drops and replays them.
--
-- Portable DDL as in 0001: TEXT, BIGINT and DOUBLE PRECISION only, µs timestamps, flags
-- as BIGINT 0/1 with a CHECK (no BOOLEAN: sqlx's Any driver cannot decode SQLite's).
-- Besides:
--   * commands.status_rank and status_at (the step and time of the event that set the
--     status) make the upsert order-tolerant: a step only replaces the status when it is
--     further along (requested < approved < dispatched < running < timed out < completed),
--     or as far along and earlier. See `stores/src/read_model/commands.rs`.
--   * commands.args is a JSON object in TEXT.
--   * software.arch is '' for a package without an architecture: a primary-key column
--     cannot be NULL on PostgreSQL.
--   * tickets.status_rank (open 1, acknowledged 2, resolved 3): the status never moves
--     back; content_rank is the rank of the event whose fields are shown (ties of time).

CREATE TABLE commands (
    command_id        TEXT NOT NULL PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    agent_id          TEXT NOT NULL,
    command_type      TEXT NOT NULL,
    args              TEXT NOT NULL,
    requires_approval BIGINT NOT NULL CHECK (requires_approval IN (0, 1)),
    timeout_secs      BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('requested', 'awaiting_approval',
                          'approved', 'dispatched', 'running', 'succeeded', 'failed',
                          'timed_out', 'refused')),
    status_rank       BIGINT NOT NULL,
    status_at         BIGINT NOT NULL,
    requested_by      TEXT,
    requested_at      BIGINT,
    approved_by       TEXT,
    approved_at       BIGINT,
    dispatched_at     BIGINT,
    started_at        BIGINT,
    finished_at       BIGINT,
    exit_code         BIGINT,
    stdout            TEXT,
    stderr            TEXT,
    output_truncated  BIGINT NOT NULL CHECK (output_truncated IN (0, 1)),
    message           TEXT,
    first_seen_at     BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE INDEX commands_agent_idx ON commands (agent_id, first_seen_at, command_id);
CREATE INDEX commands_tenant_idx ON commands (tenant_id, first_seen_at);

-- One row per lifecycle event but PROGRESS: who requested, approved, dispatched; how it
-- ended (detail: the COMPLETED status, the TIMED_OUT message).
CREATE TABLE command_audit (
    event_id   TEXT NOT NULL PRIMARY KEY,
    command_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT,
    detail     TEXT,
    at         BIGINT NOT NULL
);

CREATE INDEX command_audit_command_idx ON command_audit (command_id, at);

-- The newest inventory of each agent; `software` holds its packages.
CREATE TABLE software_inventory (
    agent_id      TEXT NOT NULL PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    source        TEXT NOT NULL,
    digest        TEXT NOT NULL,
    package_count BIGINT NOT NULL,
    collected_at  BIGINT NOT NULL
);

CREATE INDEX software_inventory_tenant_idx ON software_inventory (tenant_id, agent_id);

CREATE TABLE software (
    tenant_id TEXT NOT NULL,
    agent_id  TEXT NOT NULL,
    name      TEXT NOT NULL,
    version   TEXT NOT NULL,
    arch      TEXT NOT NULL,
    PRIMARY KEY (agent_id, name, arch)
);

CREATE INDEX software_tenant_name_idx ON software (tenant_id, name);

CREATE TABLE tickets (
    ticket_id   TEXT NOT NULL PRIMARY KEY,
    alert_id    TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    status_rank  BIGINT NOT NULL,
    content_rank BIGINT NOT NULL,
    priority    TEXT NOT NULL,
    severity    TEXT NOT NULL,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    location_id TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE INDEX tickets_tenant_created_idx ON tickets (tenant_id, created_at);
CREATE INDEX tickets_status_created_idx ON tickets (status, created_at);
CREATE INDEX tickets_created_idx ON tickets (created_at);
