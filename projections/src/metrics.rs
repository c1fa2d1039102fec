//! Metrics the projections promise on `/metrics`.

/// Records applied, by projection and topic.
pub const RECORDS: &str = "fleet_projection_records_total";
/// Records skipped because the store already had them (replay after a restart).
pub const SKIPPED: &str = "fleet_projection_skipped_total";
/// Metric reports the read model did not decode: a later report of the same agent in
/// the batch supersedes them (it keeps each agent's newest report).
pub const COALESCED: &str = "fleet_projection_coalesced_total";
/// Records that could not be decoded.
pub const DECODE_ERRORS: &str = "fleet_projection_decode_errors_total";
/// Store write failures (retried).
pub const STORE_ERRORS: &str = "fleet_projection_store_errors_total";
/// Changes or points a store refused (skipped after logging), by projection.
pub const REFUSED: &str = "fleet_projection_refused_total";
/// Time to apply one batch, by projection.
pub const BATCH_SECONDS: &str = "fleet_projection_batch_seconds";
/// Consumer lag by group and topic.
pub const CONSUMER_LAG: &str = fleet_consumer::metrics::CONSUMER_LAG;

/// Dead letters written, by consumer (`readmodel`, `timeseries`), source topic and
/// reason (`decode`, `process`).
pub const DEADLETTERS: &str = fleet_consumer::metrics::DEADLETTERS_TOTAL;

/// Every metric name above.
pub const ALL: &[&str] = &[
    RECORDS,
    SKIPPED,
    COALESCED,
    DECODE_ERRORS,
    STORE_ERRORS,
    REFUSED,
    BATCH_SECONDS,
    CONSUMER_LAG,
    DEADLETTERS,
];
