-- The series index of the standard write protocols, from fleet.samples.v1: one row per
-- series of a tenant, with the unit of the time-series engine that holds it. The key is a
-- UUIDv5 of the series text (PostgreSQL's btree refuses keys over ~2.7 KB; series texts
-- may be 4 KiB). first_at is the earliest sample time; last_at the newest rounded down to
-- the hour, so steady writes change nothing. Portable DDL as in 0001: TEXT, BIGINT only.

CREATE TABLE sample_series (
    tenant_id  TEXT NOT NULL,
    series_id  TEXT NOT NULL,
    unit_id    TEXT NOT NULL,
    series     TEXT NOT NULL,
    metric     TEXT NOT NULL,
    labels     TEXT NOT NULL,
    first_at   BIGINT NOT NULL,
    last_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, series_id)
);

CREATE INDEX sample_series_metric_idx ON sample_series (tenant_id, metric);
