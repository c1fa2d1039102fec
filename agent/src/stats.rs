//! The agent's counters: [`Stats`], updated by every task while the agent runs, and
//! [`StatsSnapshot`], a copy of them at one instant. Relaxed atomics: each counter is
//! exact, a snapshot is not one consistent cut across them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the agent did, readable while it runs (see [`Agent::stats`](crate::Agent::stats)).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) collected: AtomicU64,
    pub(crate) collect_failures: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) rejected_batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) dropped_oldest: AtomicU64,
    pub(crate) spool_corrupt: AtomicU64,
    pub(crate) spool_errors: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) spooled_bytes: AtomicU64,
    pub(crate) in_memory: AtomicU64,
    pub(crate) ws_connects: AtomicU64,
    pub(crate) ws_disconnects: AtomicU64,
    pub(crate) http_fallbacks: AtomicU64,
    pub(crate) commands_received: AtomicU64,
    pub(crate) commands_run: AtomicU64,
    pub(crate) commands_refused: AtomicU64,
    pub(crate) commands_duplicate: AtomicU64,
    pub(crate) command_results_sent: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) inventories_sent: AtomicU64,
    pub(crate) config_updates: AtomicU64,
    pub(crate) custom_series_skipped: AtomicU64,
    pub(crate) custom_script_failures: AtomicU64,
}

/// A copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Reports collected.
    pub collected: u64,
    /// Collections that failed (a panic in a collector; logged).
    pub collect_failures: u64,
    /// Reports the gateway accepted.
    pub sent: u64,
    /// Batches the gateway answered with 2xx.
    pub batches_sent: u64,
    /// Reports the gateway refused one by one inside an accepted batch (not retried).
    pub refused: u64,
    /// Reports in batches the gateway rejected whole with a 4xx (dropped, not retried).
    pub rejected: u64,
    /// Batches rejected whole.
    pub rejected_batches: u64,
    /// Send attempts that will be retried (gateway unavailable, network error, ...).
    pub retries: u64,
    /// Sends refused with 401 or 403 (the batch stays spooled).
    pub auth_failures: u64,
    /// Oldest reports dropped because the spool (or the in-memory fallback) was full.
    pub dropped_oldest: u64,
    /// Corrupt spool entries skipped and removed.
    pub spool_corrupt: u64,
    /// Spool operations that failed (logged; reports fall back to memory).
    pub spool_errors: u64,
    /// Reports lost: held only in memory (the spool failing) when the agent stopped.
    pub lost: u64,
    /// Heartbeats the gateway accepted.
    pub heartbeats_sent: u64,
    /// Heartbeats that failed (not retried: the next one follows).
    pub heartbeat_failures: u64,
    /// Reports in the spool now.
    pub spooled: u64,
    /// Bytes of reports in the spool now.
    pub spooled_bytes: u64,
    /// Reports held in memory now because the spool could not take them.
    pub in_memory: u64,
    /// WebSocket connections established (the first and every reconnect).
    pub ws_connects: u64,
    /// WebSocket connections lost.
    pub ws_disconnects: u64,
    /// Requests sent over HTTP because the socket was down.
    pub http_fallbacks: u64,
    /// Commands received (pushed or polled), duplicates included.
    pub commands_received: u64,
    /// Commands started (processes run, or config updates applied).
    pub commands_run: u64,
    /// Commands refused (not allowed, bad arguments).
    pub commands_refused: u64,
    /// Commands received again after they ran (not run again).
    pub commands_duplicate: u64,
    /// Command results the gateway acknowledged.
    pub command_results_sent: u64,
    /// Events the gateway acknowledged.
    pub events_sent: u64,
    /// Events dropped (queue full, or rejected by the gateway).
    pub events_dropped: u64,
    /// Inventories the gateway acknowledged.
    pub inventories_sent: u64,
    /// Interval changes applied (server `config` messages and `update_config`).
    pub config_updates: u64,
    /// Custom metrics skipped: bad lines, not finite values, duplicate series, textfiles
    /// skipped whole, series past `custom-max-series` (counted at each reading).
    pub custom_series_skipped: u64,
    /// Custom-metric script runs that failed (could not start, exit code not 0, timed
    /// out, output past its bound).
    pub custom_script_failures: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            collected: get(&self.collected),
            collect_failures: get(&self.collect_failures),
            sent: get(&self.sent),
            batches_sent: get(&self.batches_sent),
            refused: get(&self.refused),
            rejected: get(&self.rejected),
            rejected_batches: get(&self.rejected_batches),
            retries: get(&self.retries),
            auth_failures: get(&self.auth_failures),
            dropped_oldest: get(&self.dropped_oldest),
            spool_corrupt: get(&self.spool_corrupt),
            spool_errors: get(&self.spool_errors),
            lost: get(&self.lost),
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeat_failures: get(&self.heartbeat_failures),
            spooled: get(&self.spooled),
            spooled_bytes: get(&self.spooled_bytes),
            in_memory: get(&self.in_memory),
            ws_connects: get(&self.ws_connects),
            ws_disconnects: get(&self.ws_disconnects),
            http_fallbacks: get(&self.http_fallbacks),
            commands_received: get(&self.commands_received),
            commands_run: get(&self.commands_run),
            commands_refused: get(&self.commands_refused),
            commands_duplicate: get(&self.commands_duplicate),
            command_results_sent: get(&self.command_results_sent),
            events_sent: get(&self.events_sent),
            events_dropped: get(&self.events_dropped),
            inventories_sent: get(&self.inventories_sent),
            config_updates: get(&self.config_updates),
            custom_series_skipped: get(&self.custom_series_skipped),
            custom_script_failures: get(&self.custom_script_failures),
        }
    }
}

/// Adds `n` to `counter`.
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Adds one to `counter`.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
