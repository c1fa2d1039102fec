//! Metrics the processors promise on `/metrics`.

/// Records consumed, by processor and topic.
pub const RECORDS: &str = "fleet_processor_records_total";
/// Records that could not be decoded, by processor and topic.
pub const DECODE_ERRORS: &str = "fleet_processor_decode_errors_total";
/// Alert events emitted, by kind.
pub const ALERTS_EMITTED: &str = "fleet_processor_alerts_emitted_total";
/// Open alerts held by the evaluator.
pub const OPEN_ALERTS: &str = "fleet_processor_open_alerts";
/// (Rule, agent, subject) series the evaluator holds state for.
pub const RULE_SERIES: &str = "fleet_processor_rule_series";
/// Idle series whose state the evaluator dropped (`alert-evaluator.idle-after`); only once one is
/// dropped, so not in [`ALL`].
pub const RULE_SERIES_EVICTED: &str = "fleet_processor_rule_series_evicted_total";
/// Consumer lag (end offset minus position), by group and topic.
pub const CONSUMER_LAG: &str = fleet_consumer::metrics::CONSUMER_LAG;
/// Time to handle one batch.
pub const BATCH_SECONDS: &str = "fleet_processor_batch_seconds";
/// Dead letters written, by consumer (`alert-evaluator`, `ticketer`, `liveness`,
/// `command-timeouts`), source topic and reason (`decode`, `process`); only once one is
/// written, so not in [`ALL`].
pub const DEADLETTERS: &str = fleet_consumer::metrics::DEADLETTERS_TOTAL;

/// Every metric name above.
pub const ALL: &[&str] = &[
    RECORDS,
    DECODE_ERRORS,
    ALERTS_EMITTED,
    OPEN_ALERTS,
    RULE_SERIES,
    CONSUMER_LAG,
    BATCH_SECONDS,
];

// Ticketer, liveness and command timeouts. Each also reports `RECORDS`, `DECODE_ERRORS`,
// `BATCH_SECONDS` and `CONSUMER_LAG` with its own `processor` / `group` label.

/// Ticket events written, by kind and status.
pub const TICKETS_EMITTED: &str = "fleet_processor_tickets_emitted_total";
/// Agents this instance currently holds as offline (agents on its partitions).
pub const AGENTS_OFFLINE: &str = "fleet_processor_agents_offline";
/// ONLINE / OFFLINE events written, by kind.
pub const LIVENESS_EMITTED: &str = "fleet_processor_liveness_events_total";
/// Commands reported TIMED_OUT.
pub const COMMANDS_TIMED_OUT: &str = "fleet_processor_commands_timed_out_total";
/// Commands waiting for a result, on this instance's partitions.
pub const PENDING_COMMANDS: &str = "fleet_processor_pending_commands";

/// The ticketer's metric names.
pub const TICKETER: &[&str] = &[RECORDS, TICKETS_EMITTED, CONSUMER_LAG, BATCH_SECONDS];
/// The liveness processor's metric names.
pub const LIVENESS: &[&str] = &[RECORDS, AGENTS_OFFLINE, LIVENESS_EMITTED, BATCH_SECONDS];
/// The command-timeout processor's metric names.
pub const COMMAND_TIMEOUTS: &[&str] =
    &[RECORDS, COMMANDS_TIMED_OUT, PENDING_COMMANDS, BATCH_SECONDS];
