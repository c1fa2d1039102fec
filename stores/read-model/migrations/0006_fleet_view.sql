-- The fleet view: liveness and tags of agents, their services, and the audit log.
-- Portable DDL as in 0001: TEXT, BIGINT only.

-- Tags (JSON array of strings) from AgentLifecycle events that carry them.
ALTER TABLE agents ADD COLUMN tags TEXT;
-- Time of the newest liveness event applied, and of the OFFLINE one if that was it
-- (NULL after ONLINE). An agent heard from after `offline_at` is online again.
ALTER TABLE agents ADD COLUMN liveness_at BIGINT;
ALTER TABLE agents ADD COLUMN offline_at BIGINT;

CREATE INDEX agents_tenant_location_idx ON agents (tenant_id, location_id);

-- Watched services of each agent, from its newest metric report.
CREATE TABLE agent_services (
    agent_id    TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    pid         BIGINT,
    observed_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, name)
);

CREATE INDEX agent_services_tenant_idx ON agent_services (tenant_id, status);

-- Who did what through the API: one row per accepted change.
CREATE TABLE audit_log (
    audit_id  TEXT NOT NULL PRIMARY KEY,
    tenant_id TEXT,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT
);

CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at);
CREATE INDEX audit_log_at_idx ON audit_log (at);
