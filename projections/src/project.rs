//! The projection loops. The read model runs on the consumer runtime
//! ([`fleet_consumer::runtime`]): it stores each batch's offsets in the store transaction
//! with its rows, skips records below them, and lets the runtime commit to the log as a
//! hint of where to resume.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::log::{ensure_topics, next_offsets};
use fleet_consumer::runtime::{ConsumerRuntime, Output, Processor, Settings};
use fleet_consumer::Backoff;
use fleet_event_log::{ConsumedRecord, EventLog, StartFrom};
use fleet_read_model::{Change, ReadModel, SampleSeries, StoreError, StoredOffset};
use fleet_schemas::{codec, topics, SampleBatch, Wire};
use fleet_timeseries::TimeSeriesStore;

use crate::metrics;
use crate::ProjectionsConfig;

/// Name under which the read-model projection stores its offsets.
pub const READ_MODEL_PROJECTION: &str = "readmodel";
/// The read-model projection's name on its dead letters.
pub const READ_MODEL_CONSUMER: &str = "readmodel";
/// The time-series projection's name on its dead letters.
pub const TIMESERIES_CONSUMER: &str = "timeseries";

/// The topics the read-model projection consumes (each decoded by [`to_change`]).
pub const READ_MODEL_TOPICS: &[&str] = &[
    topics::METRICS,
    topics::HEARTBEATS,
    topics::ALERTS,
    topics::AGENTS,
    topics::COMMANDS,
    topics::INVENTORY,
    topics::TICKETS,
    topics::RULES,
    topics::SAMPLES,
    topics::EVENTS,
    topics::CONFIG,
];

/// The topics the time-series projection consumes (metric reports, and the samples of the
/// standard write protocols: [`crate::timeseries::apply`]).
pub const TIMESERIES_TOPICS: &[&str] = &[topics::METRICS, topics::SAMPLES];

/// Readiness of the projection loops, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    read_model: Arc<AtomicBool>,
    timeseries: Arc<AtomicBool>,
}

impl Readiness {
    /// The flag the time-series projection's runtime sets while it consumes.
    pub(crate) fn timeseries_flag(&self) -> Arc<AtomicBool> {
        self.timeseries.clone()
    }

    /// `Ok` when both projections consume.
    pub fn check(&self) -> Result<(), String> {
        match (
            self.read_model.load(Ordering::Relaxed),
            self.timeseries.load(Ordering::Relaxed),
        ) {
            (true, true) => Ok(()),
            (false, _) => Err("read-model projection not running".into()),
            (_, false) => Err("time-series projection not running".into()),
        }
    }
}

/// Decodes a record of a read-model topic into a change, with `wire`, synchronously (its
/// writer schema resolved before: [`Wire::decode_known`]).
pub fn to_change(wire: &Wire, r: &ConsumedRecord) -> Result<Change, codec::CodecError> {
    use fleet_schemas::topics::RecordType as T;
    Ok(match topics::record_of(&r.topic) {
        Some(T::MetricReport) => Change::Report(Box::new(wire.decode_known(&r.value)?)),
        Some(T::Heartbeat) => Change::Heartbeat(wire.decode_known(&r.value)?),
        Some(T::AgentLifecycle) => Change::Lifecycle(wire.decode_known(&r.value)?),
        Some(T::CommandEvent) => Change::Command(Box::new(wire.decode_known(&r.value)?)),
        Some(T::SoftwareInventory) => Change::Inventory(Box::new(wire.decode_known(&r.value)?)),
        Some(T::TicketEvent) => Change::Ticket(Box::new(wire.decode_known(&r.value)?)),
        Some(T::RuleEvent) => Change::Rule(Box::new(wire.decode_known(&r.value)?)),
        Some(T::AlertEvent) => Change::Alert(wire.decode_known(&r.value)?),
        Some(T::SampleBatch) => Change::Series(series_of(&wire.decode_known(&r.value)?)),
        Some(T::AgentEvent) => Change::Event(Box::new(wire.decode_known(&r.value)?)),
        Some(T::RemoteConfigEvent) => Change::RemoteConfig(Box::new(wire.decode_known(&r.value)?)),
        Some(T::DeadLetter) | None => {
            return Err(codec::CodecError::NotProjected(r.topic.to_string()))
        }
    })
}

/// The tenant a change belongs to (named on its dead letter when the store refuses it).
fn change_tenant(c: &Change) -> &str {
    match c {
        Change::Report(r) => &r.tenant_id,
        Change::Heartbeat(h) => &h.tenant_id,
        Change::Alert(a) => &a.tenant_id,
        Change::Lifecycle(l) => &l.tenant_id,
        Change::Command(c) => &c.tenant_id,
        Change::Inventory(i) => &i.tenant_id,
        Change::Ticket(t) => &t.tenant_id,
        Change::Rule(r) => &r.tenant_id,
        Change::Series(s) => s.first().map_or("", |s| &s.tenant_id),
        Change::Event(e) => &e.tenant_id,
        Change::RemoteConfig(c) => &c.tenant_id,
    }
}

/// The series index entries of a sample batch: one per series, with the times of its
/// finite samples (a series whose samples are all NaN or ±Inf, or whose text is over the
/// time-series engine's name limit, has nothing stored and is not listed).
pub fn series_of(batch: &SampleBatch) -> Vec<SampleSeries> {
    let mut out: std::collections::BTreeMap<String, SampleSeries> = Default::default();
    for s in batch.samples.iter().filter(|s| s.value.is_finite()) {
        let text = s.series_text();
        if text.len() > fleet_timeseries::limits::MAX_NAME_BYTES {
            continue;
        }
        match out.entry(text) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let e = e.get_mut();
                e.first_at = e.first_at.min(s.timestamp);
                e.last_at = e.last_at.max(SampleSeries::last_step(s.timestamp));
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                let series = e.key().clone();
                e.insert(SampleSeries {
                    tenant_id: batch.tenant_id.clone(),
                    unit_id: s.unit_id(),
                    series,
                    metric: s.metric.clone(),
                    labels: s
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect(),
                    first_at: s.timestamp,
                    last_at: SampleSeries::last_step(s.timestamp),
                });
            }
        }
    }
    out.into_values().collect()
}

/// Series index rows this process knows the store holds (tenant, series → first, last),
/// so that a series written again with times inside what is stored costs nothing: its
/// entry is dropped before the store sees it. At most [`SeenSeries::MAX`] entries (then
/// it starts over: the store's upsert keeps the rows right either way).
#[derive(Debug, Default)]
pub struct SeenSeries {
    known: HashMap<(String, String), (i64, i64)>,
}

impl SeenSeries {
    /// Entries kept before starting over (about 200 bytes each).
    pub const MAX: usize = 1_000_000;

    /// Drops the entries of a [`Change::Series`] that would not change a stored row.
    pub fn filter(&self, change: &mut Change) {
        if let Change::Series(series) = change {
            series.retain(|s| {
                self.known
                    .get(&(s.tenant_id.clone(), s.series.clone()))
                    .is_none_or(|&(first, last)| s.first_at < first || s.last_at > last)
            });
        }
    }

    /// Records what a [`Change::Series`] the store applied wrote.
    pub fn record(&mut self, change: &Change) {
        let Change::Series(series) = change else {
            return;
        };
        if self.known.len() + series.len() > Self::MAX {
            self.known.clear();
        }
        for s in series {
            let e = self
                .known
                .entry((s.tenant_id.clone(), s.series.clone()))
                .or_insert((s.first_at, s.last_at));
            e.0 = e.0.min(s.first_at);
            e.1 = e.1.max(s.last_at);
        }
    }
}

/// Runs the read-model projection until `shutdown` resolves.
pub async fn run_read_model(
    log: Arc<dyn EventLog>,
    wire: Wire,
    store: Arc<dyn ReadModel>,
    config: ProjectionsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let applied: HashMap<(String, u32), i64> = store
        .offsets(READ_MODEL_PROJECTION)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.next_offset))
        .collect();
    let group = config.read_model_group.clone();
    let dead = DeadLetters::open(log.clone(), wire, READ_MODEL_CONSUMER, &group).await?;
    let settings = Settings::group(&group, READ_MODEL_TOPICS)
        .start(StartFrom::Earliest)
        .session_timeout(config.event_log.session_timeout)
        .batch_size(config.batch_size)
        .fetch_wait(config.fetch_wait)
        .batch_histogram(metrics::BATCH_SECONDS, "projection", "readmodel");
    let runtime = ConsumerRuntime::subscribe(log, settings, dead.clone())
        .await?
        .readiness(ready.read_model.clone());
    tracing::info!(%group, store = store.engine(), "Read-model projection starting.");
    let mut projection = ReadModelProjection {
        store,
        applied,
        dead,
        seen: SeenSeries::default(),
    };
    runtime.run(&mut projection, shutdown).await;
    Ok(())
}

/// The read-model projection on the consumer runtime.
struct ReadModelProjection {
    store: Arc<dyn ReadModel>,
    /// Next offset per partition stored with the rows: records below it are skipped.
    applied: HashMap<(String, u32), i64>,
    dead: DeadLetters,
    /// The series index rows written ([`SeenSeries`]).
    seen: SeenSeries,
}

impl Processor for ReadModelProjection {
    /// Applies the batch with its offsets in one store transaction; the runtime then
    /// commits the same offsets to the log (only a hint: the store has them).
    #[tracing::instrument(name = "project_batch", skip_all, fields(projection = "readmodel", records = batch.len()))]
    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let mut changes = Vec::with_capacity(batch.len());
        // The record each change came from (for its dead letter if the store refuses it).
        let mut sources: Vec<&ConsumedRecord> = Vec::with_capacity(batch.len());
        let superseded = superseded_reports(self.dead.wire(), batch);
        for (r, superseded) in batch.iter().zip(superseded) {
            let done = self
                .applied
                .get(&(r.topic.to_string(), r.partition))
                .copied()
                .unwrap_or(0);
            if r.offset < done {
                ::metrics::counter!(metrics::SKIPPED, "projection" => "readmodel").increment(1);
                continue;
            }
            if superseded {
                ::metrics::counter!(metrics::COALESCED, "projection" => "readmodel").increment(1);
                continue;
            }
            match to_change(self.dead.wire(), r) {
                Ok(mut c) => {
                    self.seen.filter(&mut c);
                    if matches!(&c, Change::Series(s) if s.is_empty()) {
                        continue;
                    }
                    changes.push(c);
                    sources.push(r);
                }
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "readmodel", "topic" => r.topic.to_string())
                        .increment(1);
                    self.dead.note(r, Reason::decode(e));
                }
            }
        }
        // The offsets go into the store with the rows: dead letters first.
        self.dead.flush().await;
        let stored = stored_offsets(batch);
        let store = self.store.as_ref();
        let refused = apply_or_refuse(store, &changes, &stored).await;
        for (i, c) in changes.iter().enumerate() {
            if !refused.iter().any(|(r, _)| *r == i) {
                self.seen.record(c);
            }
        }
        if !refused.is_empty() {
            for (i, e) in refused {
                if let (Some(r), Some(c)) = (sources.get(i), changes.get(i)) {
                    self.dead
                        .note(r, Reason::process(e).tenant(change_tenant(c)));
                }
            }
            self.dead.flush().await;
            store_offsets(store, &stored).await;
        }
        for o in stored {
            self.applied.insert((o.topic, o.partition), o.next_offset);
        }
        for r in batch {
            ::metrics::counter!(metrics::RECORDS, "projection" => "readmodel", "topic" => r.topic.to_string()).increment(1);
        }
        // The store holds the offsets; the log's commit is only where to resume.
        Output::new()
    }
}

/// Which records of `batch` are metric reports that a later report of the same agent in
/// the batch supersedes: one collected at the same time or later, with no lifecycle
/// record of the agent in between. The read model keeps only each agent's newest report
/// (the later of two with the same time), so these need not be decoded: only their
/// [`ReportHead`] is read. A report whose head does not decode is not superseded (its
/// full decoding then sends it to the dead letters, as before). Also used by
/// `fleetstream replay`.
pub fn superseded_reports(wire: &Wire, batch: &[ConsumedRecord]) -> Vec<bool> {
    use fleet_schemas::topics::RecordType as T;
    use fleet_schemas::{AgentLifecycle, MetricReport, ReportHead};
    let mut out = vec![false; batch.len()];
    // (tenant, agent) → the newest collection time among its reports later in the batch.
    let mut newest: HashMap<(String, String), i64> = HashMap::new();
    for (i, r) in batch.iter().enumerate().rev() {
        match topics::record_of(&r.topic) {
            Some(T::MetricReport) => {
                let Ok(h) =
                    wire.decode_known_part::<MetricReport, ReportHead>(&r.value, Into::into)
                else {
                    continue;
                };
                match newest.entry((h.tenant_id, h.agent_id)) {
                    Entry::Occupied(e) if *e.get() >= h.occurred_at => out[i] = true,
                    Entry::Occupied(mut e) => {
                        e.insert(h.occurred_at);
                    }
                    Entry::Vacant(e) => {
                        e.insert(h.occurred_at);
                    }
                }
            }
            Some(T::AgentLifecycle) => {
                // Reports before it are applied before it: none of them is superseded by
                // one after it.
                // One that does not decode here: whose it is is unknown, so no earlier
                // report is superseded.
                match wire.decode_known::<AgentLifecycle>(&r.value) {
                    Ok(l) => {
                        newest.remove(&(l.tenant_id, l.agent_id));
                    }
                    Err(_) => newest.clear(),
                }
            }
            _ => {}
        }
    }
    out
}

/// The offsets to store with the changes of `records`: the next offset per partition.
/// Also used by `fleetstream replay`.
pub fn stored_offsets<'a>(
    records: impl IntoIterator<Item = &'a ConsumedRecord>,
) -> Vec<StoredOffset> {
    next_offsets(records)
        .into_iter()
        .map(|c| StoredOffset {
            topic: c.topic,
            partition: c.partition,
            next_offset: c.next_offset,
        })
        .collect()
}

/// Applies a batch, retrying while the store is unavailable. A batch the store refuses for
/// any other reason is applied change by change so one bad change cannot stall the
/// projection or take the rest of the batch with it; refused changes are counted and
/// logged. Also used by `fleetstream replay`, so a rebuild applies exactly what the live
/// projection applies.
pub async fn apply_with_retry(store: &dyn ReadModel, changes: &[Change], offsets: &[StoredOffset]) {
    if !apply_or_refuse(store, changes, offsets).await.is_empty() {
        store_offsets(store, offsets).await;
    }
}

/// [`apply_with_retry`] without storing the offsets when the store refused changes: those
/// are returned (index in `changes`, error) so the caller can write their dead letters
/// first, then [`store_offsets`]. Empty when the batch and its offsets are stored.
async fn apply_or_refuse(
    store: &dyn ReadModel,
    changes: &[Change],
    offsets: &[StoredOffset],
) -> Vec<(usize, StoreError)> {
    let applied = until_available("readmodel", u32::MAX, || {
        store.apply(READ_MODEL_PROJECTION, changes, offsets)
    })
    .await;
    let Err(e) = applied else {
        return Vec::new();
    };
    tracing::warn!(error = %e, "Read model refused the batch; applying it change by change.");
    let mut refused = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if let Err(e) = until_available("readmodel", SINGLE_ATTEMPTS, || {
            store.apply(READ_MODEL_PROJECTION, std::slice::from_ref(change), &[])
        })
        .await
        {
            ::metrics::counter!(metrics::REFUSED, "projection" => "readmodel").increment(1);
            tracing::error!(error = %e, ?change, "Change refused by the read model; skipped.");
            refused.push((i, e));
        }
    }
    if refused.is_empty() {
        // Every change went in on its own: only the offsets are left.
        store_offsets(store, offsets).await;
    }
    refused
}

/// Stores a batch's offsets alone (after its changes were applied one by one).
async fn store_offsets(store: &dyn ReadModel, offsets: &[StoredOffset]) {
    let stored = until_available("readmodel", SINGLE_ATTEMPTS, || {
        store.apply(READ_MODEL_PROJECTION, &[], offsets)
    })
    .await;
    if let Err(e) = stored {
        tracing::error!(error = %e, "Storing offsets failed; the batch will be applied again (idempotent).");
    }
}

/// Runs `f` until the store answers anything but unavailable, or `attempts` calls were
/// unavailable; waits the back-off between calls (each unavailable answer counted and
/// logged for `projection`). Returns the last answer.
async fn until_available<F, Fut>(
    projection: &'static str,
    attempts: u32,
    mut f: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Err(StoreError::Unavailable(e)) if backoff.attempt() < attempts => {
                let wait = backoff.next_delay();
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => projection).increment(1);
                tracing::warn!(projection, error = %e, attempt = backoff.attempt(), "Store unavailable; retrying.");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Attempts for one change or point applied on its own (after its batch was refused).
const SINGLE_ATTEMPTS: u32 = 50;

/// Removes time series and agent events past retention every
/// `config.retention-sweep-interval` (the first sweep at start), until `shutdown`
/// resolves: [`TimeSeriesStore::expire`] at the current time and
/// [`ReadModel::expire_events`] of the events older than `config.events-retention`, each
/// logged with the rows it removed. A failed sweep is logged and retried at the
/// next interval.
pub async fn run_retention_sweeps(
    store: Arc<dyn TimeSeriesStore>,
    read_model: Arc<dyn ReadModel>,
    config: ProjectionsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let every = config.retention_sweep_interval;
    anyhow::ensure!(
        every >= Duration::from_secs(1),
        "retention-sweep-interval must be at least 1s, got {every:?}"
    );
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let now = fleet_schemas::time::now_micros();
        match store.expire(now).await {
            Ok(rows) => tracing::info!(
                store = store.engine(),
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Time series past retention removed."
            ),
            Err(e) => {
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "retention")
                    .increment(1);
                tracing::warn!(store = store.engine(), error = %e, "Retention sweep failed; retrying at the next interval.");
            }
        }
        let keep = i64::try_from(config.events_retention.as_micros()).unwrap_or(i64::MAX);
        match read_model.expire_events(now.saturating_sub(keep)).await {
            Ok(rows) => tracing::info!(
                store = read_model.engine(),
                rows,
                "Agent events past retention removed."
            ),
            Err(e) => {
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "retention")
                    .increment(1);
                tracing::warn!(store = read_model.engine(), error = %e, "Event retention sweep failed; retrying at the next interval.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::codec::Record;
    use fleet_schemas::fixtures::{agent_registered, heartbeat, metric_report};

    fn record<T: Record>(offset: i64, value: &T) -> ConsumedRecord {
        ConsumedRecord {
            topic: T::TOPIC.into(),
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: None,
            value: Wire::plain().encode(value).expect("encode"),
        }
    }

    #[test]
    fn only_reports_a_later_one_of_their_agent_supersedes_are_skipped() {
        let batch = vec![
            record(0, &metric_report("t", "a", 100)), // superseded by offset 2
            record(1, &metric_report("t", "b", 100)), // b's only report
            record(2, &metric_report("t", "a", 200)), // superseded by offset 3 (same time)
            record(3, &metric_report("t", "a", 200)),
            record(4, &metric_report("t", "a", 150)), // older than offset 3: kept, loses
            record(5, &metric_report("u", "a", 50)),  // another tenant's agent a
            record(6, &heartbeat("t", "c", 100, 1)),
            record(7, &metric_report("t", "c", 100)), // before c's lifecycle: kept
            record(8, &agent_registered("t", "c", 150)),
            record(9, &metric_report("t", "c", 200)),
        ];
        let got = superseded_reports(&Wire::plain(), &batch);
        assert_eq!(
            got,
            vec![true, false, true, false, false, false, false, false, false, false]
        );
    }

    #[test]
    fn a_report_whose_head_does_not_decode_is_left_to_the_full_decoding() {
        let mut bad = record(0, &metric_report("t", "a", 100));
        bad.value.truncate(bad.value.len() - 3);
        let batch = vec![bad, record(1, &metric_report("t", "a", 200))];
        assert_eq!(
            superseded_reports(&Wire::plain(), &batch),
            vec![false, false]
        );
        // A lifecycle record that does not decode: no earlier report is superseded.
        let mut life = record(1, &agent_registered("t", "a", 150));
        life.value.truncate(10);
        let batch = vec![
            record(0, &metric_report("t", "a", 100)),
            life,
            record(2, &metric_report("t", "a", 200)),
        ];
        assert_eq!(
            superseded_reports(&Wire::plain(), &batch),
            vec![false, false, false]
        );
    }

    /// Series index entries already stored with times inside the stored ones are dropped;
    /// a new series or a time beyond either end stays.
    #[test]
    fn seen_series_drop_what_the_store_has() {
        let batch = fleet_schemas::fixtures::sample_batch("t1", 7_200_000_000);
        let mut first = Change::Series(series_of(&batch));
        let Change::Series(s) = &first else {
            unreachable!()
        };
        assert_eq!(s.len(), 2, "two series: {s:?}");
        assert_eq!(s[1].first_at, 7_200_000_000 - 15_000_000, "{s:?}");
        assert_eq!(s[1].last_at, 7_200_000_000, "{s:?}");
        let mut seen = SeenSeries::default();
        seen.filter(&mut first);
        assert!(matches!(&first, Change::Series(s) if s.len() == 2));
        seen.record(&first);
        // Same batch again, and one 10 minutes later: nothing new.
        for at in [7_200_000_000, 7_800_000_000] {
            let mut again =
                Change::Series(series_of(&fleet_schemas::fixtures::sample_batch("t1", at)));
            seen.filter(&mut again);
            assert!(
                matches!(&again, Change::Series(s) if s.is_empty()),
                "{again:?}"
            );
        }
        // An hour later: the coarse last time moves.
        let mut later = Change::Series(series_of(&fleet_schemas::fixtures::sample_batch(
            "t1",
            10_800_000_000,
        )));
        seen.filter(&mut later);
        assert!(
            matches!(&later, Change::Series(s) if s.len() == 2),
            "{later:?}"
        );
        // Another tenant's series are new.
        let mut other = Change::Series(series_of(&fleet_schemas::fixtures::sample_batch(
            "t2",
            7_200_000_000,
        )));
        seen.filter(&mut other);
        assert!(matches!(&other, Change::Series(s) if s.len() == 2));
    }
}
