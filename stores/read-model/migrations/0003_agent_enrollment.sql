-- Enrollment facts of agents, from fleet.agents.v1 (AgentRegistered / AgentUpdated /
-- AgentDeactivated). Portable DDL as in 0001: TEXT, BIGINT only.

ALTER TABLE agents ADD COLUMN location_id TEXT;
ALTER TABLE agents ADD COLUMN device_name TEXT;
ALTER TABLE agents ADD COLUMN hostname TEXT;
ALTER TABLE agents ADD COLUMN facts TEXT;
ALTER TABLE agents ADD COLUMN enrollment TEXT;
ALTER TABLE agents ADD COLUMN registered_at BIGINT;
ALTER TABLE agents ADD COLUMN deactivated_at BIGINT;
