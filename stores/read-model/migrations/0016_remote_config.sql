-- Remote configuration: the desired configuration per agent, tag and location (from
-- fleet.config.v1; the newest version of a key wins), and what each agent last said it
-- runs (from its heartbeats; the newest heartbeat wins).
-- Portable DDL as in 0001: TEXT, BIGINT, DOUBLE PRECISION only.

CREATE TABLE remote_configs (
    config_key TEXT NOT NULL PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    event      TEXT NOT NULL
);

CREATE INDEX remote_configs_tenant_idx ON remote_configs (tenant_id, config_key);

CREATE TABLE agent_config_applied (
    agent_id                TEXT NOT NULL PRIMARY KEY,
    tenant_id               TEXT NOT NULL,
    config_version          BIGINT,
    heartbeat_interval_secs DOUBLE PRECISION,
    reported_at             BIGINT NOT NULL
);
