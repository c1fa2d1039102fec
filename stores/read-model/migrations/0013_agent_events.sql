-- The agents' events (fleet.events.v1): a timeline per agent and per tenant, newest
-- first. Rows are kept for `[projections] events-retention` (the retention sweep removes
-- older ones). attributes: the record's map as JSON text (in key order). Portable DDL as
-- in 0001: TEXT, BIGINT only.

CREATE TABLE agent_events (
    event_id    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    message     TEXT NOT NULL,
    attributes  TEXT NOT NULL
);

CREATE INDEX agent_events_tenant_idx ON agent_events (tenant_id, occurred_at);
CREATE INDEX agent_events_agent_idx ON agent_events (agent_id, occurred_at);
CREATE INDEX agent_events_time_idx ON agent_events (occurred_at);
