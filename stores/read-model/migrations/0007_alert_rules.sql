-- Alert rules, from fleet.rules.v1. The newest event of a rule wins; a deleted rule keeps
-- its row (deleted = 1) so that an older DEFINED replayed later cannot bring it back.
-- Portable DDL as in 0001: TEXT, BIGINT only.

CREATE TABLE alert_rules (
    rule_id    TEXT NOT NULL PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    deleted    BIGINT NOT NULL CHECK (deleted IN (0, 1)),
    updated_at BIGINT NOT NULL,
    event      TEXT NOT NULL
);

CREATE INDEX alert_rules_tenant_idx ON alert_rules (tenant_id, rule_id);
