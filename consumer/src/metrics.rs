//! Metrics every consumer on the runtime reports (each processor adds its own records and
//! batch-time metrics, named for it).

/// Gauge: records between a consumer group's positions and the end of the partitions it
/// read from, by `group` and `topic` (refreshed at most every 5 s; throw-away groups do not
/// report it).
pub const CONSUMER_LAG: &str = "fleet_consumer_lag";

/// Counter: dead letters written, by `consumer`, source `topic` and `reason` (`decode`,
/// `process`).
pub const DEADLETTERS_TOTAL: &str = "fleet_deadletters_total";
