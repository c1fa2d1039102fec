-- Fleet-wide commands (command groups) and the two ways a command ends undelivered.
-- Portable DDL as in 0001: TEXT, BIGINT only, flags as BIGINT 0/1 with a CHECK.
--
--   * commands gets `group_id` (from REQUESTED of command_event v2; NULL: a single
--     command) and the statuses `rejected` and `cancelled`. The status CHECK cannot be
--     altered in place on SQLite, so the table is rebuilt with its rows (same columns plus
--     group_id) and indexes.
--   * status_rank is scaled by ten to make room between approved and dispatched:
--     requested 10, approved 20, rejected / cancelled 25, dispatched 30, running 40,
--     timed out 50, completed 60. A dispatch that raced a cancel (the gateway handed the
--     command on before it read the CANCELLED) still outranks it: what happened wins.
--   * command_groups is written by the API when a group is requested (not projected from
--     a topic, like audit_log: a rebuild keeps it). Its members are the commands rows with
--     its group_id; their counts by status are one GROUP BY on commands_group_idx.

CREATE TABLE commands_v17 (
    command_id        TEXT NOT NULL PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    agent_id          TEXT NOT NULL,
    command_type      TEXT NOT NULL,
    args              TEXT NOT NULL,
    requires_approval BIGINT NOT NULL CHECK (requires_approval IN (0, 1)),
    timeout_secs      BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('requested', 'awaiting_approval',
                          'approved', 'dispatched', 'running', 'succeeded', 'failed',
                          'timed_out', 'refused', 'rejected', 'cancelled')),
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
    updated_at        BIGINT NOT NULL,
    group_id          TEXT
);

INSERT INTO commands_v17 (command_id, tenant_id, agent_id, command_type, args,
    requires_approval, timeout_secs, status, status_rank, status_at, requested_by,
    requested_at, approved_by, approved_at, dispatched_at, started_at, finished_at, exit_code,
    stdout, stderr, output_truncated, message, first_seen_at, updated_at, group_id)
SELECT command_id, tenant_id, agent_id, command_type, args, requires_approval, timeout_secs,
    status, status_rank * 10, status_at, requested_by, requested_at, approved_by, approved_at,
    dispatched_at, started_at, finished_at, exit_code, stdout, stderr, output_truncated,
    message, first_seen_at, updated_at, NULL
FROM commands;

DROP TABLE commands;

ALTER TABLE commands_v17 RENAME TO commands;

CREATE INDEX commands_agent_idx ON commands (agent_id, first_seen_at, command_id);
CREATE INDEX commands_tenant_idx ON commands (tenant_id, first_seen_at);
CREATE INDEX commands_group_idx ON commands (group_id, status);

CREATE TABLE command_groups (
    group_id          TEXT NOT NULL PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    target            TEXT NOT NULL,
    command_type      TEXT NOT NULL,
    args              TEXT NOT NULL,
    timeout_secs      BIGINT NOT NULL,
    requires_approval BIGINT NOT NULL CHECK (requires_approval IN (0, 1)),
    requested_by      TEXT NOT NULL,
    requested_at      BIGINT NOT NULL,
    agent_count       BIGINT NOT NULL
);

CREATE INDEX command_groups_tenant_idx ON command_groups (tenant_id, requested_at, group_id);
