//! Metrics the processors promise on `/metrics`.

/// Records consumed, by processor and topic.
pub const RECORDS: &str = "fleet_processor_records_total";
/// Records that could not be decoded, by processor and topic.
pub const DECODE_ERRORS: &str = "fleet_processor_decode_errors_total";
/// Alert events emitted, by kind.
pub const ALERTS_EMITTED: &str = "fleet_processor_alerts_emitted_total";
/// Open alerts held by the evaluator.
pub const OPEN_ALERTS: &str = "fleet_processor_open_alerts";
/// Consumer lag (end offset minus position), by group and topic.
pub const CONSUMER_LAG: &str = fleet_ops::log::CONSUMER_LAG;
/// Time to handle one batch.
pub const BATCH_SECONDS: &str = "fleet_processor_batch_seconds";

/// Every metric name above.
pub const ALL: &[&str] = &[
    RECORDS,
    DECODE_ERRORS,
    ALERTS_EMITTED,
    OPEN_ALERTS,
    CONSUMER_LAG,
    BATCH_SECONDS,
];
