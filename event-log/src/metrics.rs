//! Metric names of the event log (the `metrics` crate facade), defined once.
//!
//! Every counter carries an `engine` label (`kafka`, `embedded`); per-topic counters also a
//! `topic` label.

/// Records acknowledged by the log (`engine`, `topic`).
pub const PRODUCED_RECORDS: &str = "fleet_log_produced_records_total";
/// Produce calls that failed (`engine`, `topic`).
pub const PRODUCE_ERRORS: &str = "fleet_log_produce_errors_total";
/// Records handed to consumers by `poll` (`engine`, `topic`).
pub const CONSUMED_RECORDS: &str = "fleet_log_consumed_records_total";
/// Transient consumer errors (brokers down, transport) drained by `poll` (`engine`).
pub const CONSUMER_ERRORS: &str = "fleet_log_consumer_errors_total";
/// Offset commits of consumer groups (`engine`).
pub const COMMITS: &str = "fleet_log_commits_total";
/// Group membership changes that moved partitions (`engine`).
pub const REBALANCES: &str = "fleet_log_rebalances_total";
/// Embedded engine: requests (produce / commit / create topic) folded into one durable
/// transaction by the group-commit writer (histogram).
pub const GROUP_COMMIT_REQUESTS: &str = "fleet_log_group_commit_requests";
/// Embedded engine: records written by one durable transaction (histogram).
pub const GROUP_COMMIT_RECORDS: &str = "fleet_log_group_commit_records";
