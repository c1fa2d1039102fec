-- Notifications (issue 15): channels, routes and silences per tenant (written by the API,
-- the only copy of their data: not projected, never emptied by a rebuild), and the
-- notifier's outbox of deliveries with every attempt. Portable DDL as in 0001: TEXT,
-- BIGINT and BYTEA (SQLite keeps the blob as it is).

CREATE TABLE notification_channels (
    channel_id  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    settings    TEXT NOT NULL,
    secret      TEXT,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE INDEX notification_channels_tenant_idx ON notification_channels (tenant_id);

CREATE TABLE notification_routes (
    route_id        TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    channel_ids     TEXT NOT NULL,
    matcher         TEXT NOT NULL,
    group_window_ms BIGINT NOT NULL,
    send_resolved   BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL
);

CREATE INDEX notification_routes_tenant_idx ON notification_routes (tenant_id);

CREATE TABLE notification_silences (
    silence_id  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    comment     TEXT NOT NULL,
    matcher     TEXT NOT NULL,
    starts_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE INDEX notification_silences_tenant_idx ON notification_silences (tenant_id, expires_at);

-- One row per (alert event, channel): status pending, delivered or dead; due_at is when
-- it may be sent (grouping window, back-off), claimed_until the lease of the notifier
-- instance sending it; group_id the delivery that opened its route's grouping window
-- (itself when alone): deliveries of one group go out in one message. source_*: where
-- the alert came from, for the dead letter.
CREATE TABLE notification_deliveries (
    delivery_id      TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    route_id         TEXT,
    group_id         TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    alert_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    alert            TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    due_at           BIGINT NOT NULL,
    claimed_until    BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    source_topic     TEXT,
    source_partition BIGINT,
    source_offset    BIGINT,
    source_timestamp BIGINT,
    source_key       BYTEA,
    source_value     BYTEA
);

CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (status, due_at);
CREATE INDEX notification_deliveries_tenant_idx ON notification_deliveries (tenant_id, created_at);
CREATE INDEX notification_deliveries_channel_idx ON notification_deliveries (channel_id, created_at);
CREATE INDEX notification_deliveries_alert_idx ON notification_deliveries (alert_id);

CREATE TABLE notification_attempts (
    delivery_id TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    message_id  TEXT NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    status_code BIGINT,
    latency_ms  BIGINT NOT NULL,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
