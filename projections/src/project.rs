//! The projection loops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_event_log::{ConsumedRecord, Consumer, ConsumerOptions, EventLog, StartFrom};
use fleet_ops::deadletter::{DeadLetters, Reason};
use fleet_ops::log::{ensure_topics, next_offsets, LagGauge};
use fleet_schemas::{
    codec, topics, AgentLifecycle, AlertEvent, CommandEvent, Heartbeat, MetricReport,
    SoftwareInventory, TicketEvent,
};
use fleet_stores::{Change, ReadModel, StoreError, StoredOffset};
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
];

/// The topics the time-series projection consumes (metric reports).
pub const TIMESERIES_TOPICS: &[&str] = &[topics::METRICS];

/// Readiness of the projection loops, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    read_model: Arc<AtomicBool>,
    timeseries: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the time-series projection as consuming (or not).
    pub(crate) fn set_timeseries(&self, running: bool) {
        self.timeseries.store(running, Ordering::Relaxed);
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

/// Decodes a record of a read-model topic into a change.
pub fn to_change(r: &ConsumedRecord) -> Result<Change, codec::CodecError> {
    Ok(match &*r.topic {
        topics::METRICS => Change::Report(Box::new(codec::decode::<MetricReport>(&r.value)?)),
        topics::HEARTBEATS => Change::Heartbeat(codec::decode::<Heartbeat>(&r.value)?),
        topics::AGENTS => Change::Lifecycle(codec::decode::<AgentLifecycle>(&r.value)?),
        topics::COMMANDS => Change::Command(Box::new(codec::decode::<CommandEvent>(&r.value)?)),
        topics::INVENTORY => {
            Change::Inventory(Box::new(codec::decode::<SoftwareInventory>(&r.value)?))
        }
        topics::TICKETS => Change::Ticket(Box::new(codec::decode::<TicketEvent>(&r.value)?)),
        topics::RULES => Change::Rule(Box::new(codec::decode::<fleet_schemas::RuleEvent>(
            &r.value,
        )?)),
        _ => Change::Alert(codec::decode::<AlertEvent>(&r.value)?),
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
    }
}

/// Runs the read-model projection until `shutdown` resolves.
pub async fn run_read_model(
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadModel>,
    config: ProjectionsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let applied: HashMap<(String, u32), i64> = store
        .offsets(READ_MODEL_PROJECTION)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.next_offset))
        .collect();
    let mut consumer = subscribe(
        log.as_ref(),
        &config.read_model_group,
        READ_MODEL_TOPICS,
        &config,
    )
    .await?;
    let dead =
        DeadLetters::open(log.clone(), READ_MODEL_CONSUMER, &config.read_model_group).await?;
    ready.read_model.store(true, Ordering::Relaxed);
    tracing::info!(group = %config.read_model_group, store = store.engine(), "Read-model projection running.");
    let mut handler = ReadModelBatches {
        store: store.as_ref(),
        applied,
        dead,
    };
    let group = config.read_model_group.clone();
    consume(
        log.as_ref(),
        consumer.as_mut(),
        &group,
        config.batch_size,
        shutdown,
        &mut handler,
    )
    .await;
    ready.read_model.store(false, Ordering::Relaxed);
    Ok(())
}

/// Handles one polled batch of a projection.
trait BatchHandler {
    async fn handle(&mut self, consumer: &mut dyn Consumer, batch: &[ConsumedRecord]);
}

/// The loop every projection runs: poll, handle, track lag, until `shutdown`.
async fn consume(
    log: &dyn EventLog,
    consumer: &mut dyn Consumer,
    group: &str,
    batch_size: usize,
    shutdown: impl std::future::Future<Output = ()>,
    handler: &mut impl BatchHandler,
) {
    let mut lag = LagGauge::new(group, Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            b = poll(consumer, batch_size) => b,
        };
        if !batch.is_empty() {
            handler.handle(consumer, &batch).await;
            lag.observe(&batch);
        }
        lag.refresh(log).await;
    }
}

struct ReadModelBatches<'a> {
    store: &'a dyn ReadModel,
    applied: HashMap<(String, u32), i64>,
    dead: DeadLetters,
}

impl BatchHandler for ReadModelBatches<'_> {
    async fn handle(&mut self, consumer: &mut dyn Consumer, batch: &[ConsumedRecord]) {
        apply_read_model_batch(self.store, consumer, &mut self.applied, &self.dead, batch).await;
    }
}

#[tracing::instrument(name = "project_batch", skip_all, fields(projection = "readmodel", records = batch.len()))]
async fn apply_read_model_batch(
    store: &dyn ReadModel,
    consumer: &mut dyn Consumer,
    applied: &mut HashMap<(String, u32), i64>,
    dead: &DeadLetters,
    batch: &[ConsumedRecord],
) {
    let started = Instant::now();
    let mut changes = Vec::with_capacity(batch.len());
    // The record each change came from (for its dead letter if the store refuses it).
    let mut sources: Vec<&ConsumedRecord> = Vec::with_capacity(batch.len());
    for r in batch {
        let done = applied
            .get(&(r.topic.to_string(), r.partition))
            .copied()
            .unwrap_or(0);
        if r.offset < done {
            ::metrics::counter!(metrics::SKIPPED, "projection" => "readmodel").increment(1);
            continue;
        }
        match retry_transient(r, || to_change(r)).await {
            Ok(c) => {
                changes.push(c);
                sources.push(r);
            }
            Err(e) => {
                ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "readmodel", "topic" => r.topic.to_string())
                    .increment(1);
                dead.note(r, Reason::decode(e));
            }
        }
    }
    // The offsets go into the store with the rows: dead letters first.
    dead.flush().await;
    let commits = next_offsets(batch);
    let stored: Vec<StoredOffset> = commits
        .iter()
        .map(|c| StoredOffset {
            topic: c.topic.clone(),
            partition: c.partition,
            next_offset: c.next_offset,
        })
        .collect();
    let refused = apply_or_refuse(store, &changes, &stored).await;
    if !refused.is_empty() {
        for (i, e) in refused {
            if let (Some(r), Some(c)) = (sources.get(i), changes.get(i)) {
                dead.note(r, Reason::process(e).tenant(change_tenant(c)));
            }
        }
        dead.flush().await;
        store_offsets(store, &stored).await;
    }
    for o in stored {
        applied.insert((o.topic, o.partition), o.next_offset);
    }
    for r in batch {
        ::metrics::counter!(metrics::RECORDS, "projection" => "readmodel", "topic" => r.topic.to_string()).increment(1);
    }
    if let Err(e) = consumer.commit(&commits).await {
        // The store holds the offsets; the log's commit is only where to resume.
        tracing::warn!(error = %e, "Commit to the log failed; the store has the offsets.");
    }
    ::metrics::histogram!(metrics::BATCH_SECONDS, "projection" => "readmodel")
        .record(started.elapsed().as_secs_f64());
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
    let mut attempt = 0u32;
    loop {
        match store.apply(READ_MODEL_PROJECTION, changes, offsets).await {
            Ok(()) => return Vec::new(),
            Err(StoreError::Unavailable(e)) => {
                attempt += 1;
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "readmodel")
                    .increment(1);
                tracing::warn!(error = %e, attempt, "Read model unavailable; retrying the batch.");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Read model refused the batch; applying it change by change.");
                let mut refused = Vec::new();
                for (i, change) in changes.iter().enumerate() {
                    if let Err(e) = retry_unavailable(|| {
                        store.apply(READ_MODEL_PROJECTION, std::slice::from_ref(change), &[])
                    })
                    .await
                    {
                        ::metrics::counter!(metrics::REFUSED, "projection" => "readmodel")
                            .increment(1);
                        tracing::error!(error = %e, ?change, "Change refused by the read model; skipped.");
                        refused.push((i, e));
                    }
                }
                if refused.is_empty() {
                    // Every change went in on its own: only the offsets are left.
                    store_offsets(store, offsets).await;
                }
                return refused;
            }
        }
    }
}

/// Stores a batch's offsets alone (after its changes were applied one by one).
async fn store_offsets(store: &dyn ReadModel, offsets: &[StoredOffset]) {
    if let Err(e) = retry_unavailable(|| store.apply(READ_MODEL_PROJECTION, &[], offsets)).await {
        tracing::error!(error = %e, "Storing offsets failed; the batch will be applied again (idempotent).");
    }
}

async fn retry_unavailable<F, Fut>(mut f: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(StoreError::Unavailable(_)) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

/// Decodes with `decode`, retrying while the failure is transient (the schema registry
/// holding the writer schema could not be asked): the same bytes decode once it answers,
/// so such a record is never a dead letter.
async fn retry_transient<T>(
    r: &ConsumedRecord,
    mut decode: impl FnMut() -> Result<T, codec::CodecError>,
) -> Result<T, codec::CodecError> {
    let mut attempt = 0u32;
    loop {
        match decode() {
            Err(e) if e.is_retriable() => {
                attempt += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, attempt, error = %e, "Writer schema unavailable; retrying the record (not a dead letter).");
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt.min(25)))
}

/// Removes time series past retention every `config.retention-sweep-interval` (the first
/// sweep at start), until `shutdown` resolves: [`TimeSeriesStore::expire`] at the current
/// time, logged with the rows it removed. A failed sweep is logged and retried at the
/// next interval.
pub async fn run_retention_sweeps(
    store: Arc<dyn TimeSeriesStore>,
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
    }
}

pub(crate) async fn subscribe(
    log: &dyn EventLog,
    group: &str,
    topics: &[&str],
    config: &ProjectionsConfig,
) -> anyhow::Result<Box<dyn Consumer>> {
    let options = ConsumerOptions {
        start: StartFrom::Earliest,
        session_timeout: Duration::from_millis(config.session_timeout_ms),
    };
    Ok(log.subscribe(group, topics, options).await?)
}

async fn poll(consumer: &mut dyn Consumer, max: usize) -> Vec<ConsumedRecord> {
    match consumer.poll(max, Duration::from_millis(500)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "Poll failed; retrying.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}
