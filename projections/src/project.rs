//! The projection loops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_event_log::{ConsumedRecord, Consumer, ConsumerOptions, EventLog, StartFrom};
use fleet_ops::log::{ensure_topics, next_offsets, LagGauge};
use fleet_schemas::samples::samples;
use fleet_schemas::{
    codec, topics, AgentLifecycle, AlertEvent, CommandEvent, Heartbeat, MetricReport,
    SoftwareInventory, TicketEvent,
};
use fleet_stores::{Change, Point, ReadModel, StoreError, StoredOffset, TimeSeriesStore};

use crate::metrics;
use crate::ProjectionsConfig;

/// Name under which the read-model projection stores its offsets.
pub const READ_MODEL_PROJECTION: &str = "readmodel";

/// Readiness of the projection loops, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    read_model: Arc<AtomicBool>,
    timeseries: Arc<AtomicBool>,
}

impl Readiness {
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
        &[
            topics::METRICS,
            topics::HEARTBEATS,
            topics::ALERTS,
            topics::AGENTS,
            topics::COMMANDS,
            topics::INVENTORY,
            topics::TICKETS,
            topics::RULES,
        ],
        &config,
    )
    .await?;
    ready.read_model.store(true, Ordering::Relaxed);
    tracing::info!(group = %config.read_model_group, store = store.engine(), "Read-model projection running.");
    let mut handler = ReadModelBatches {
        store: store.as_ref(),
        applied,
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
}

impl BatchHandler for ReadModelBatches<'_> {
    async fn handle(&mut self, consumer: &mut dyn Consumer, batch: &[ConsumedRecord]) {
        apply_read_model_batch(self.store, consumer, &mut self.applied, batch).await;
    }
}

#[tracing::instrument(name = "project_batch", skip_all, fields(projection = "readmodel", records = batch.len()))]
async fn apply_read_model_batch(
    store: &dyn ReadModel,
    consumer: &mut dyn Consumer,
    applied: &mut HashMap<(String, u32), i64>,
    batch: &[ConsumedRecord],
) {
    let started = Instant::now();
    let mut changes = Vec::with_capacity(batch.len());
    for r in batch {
        let done = applied
            .get(&(r.topic.to_string(), r.partition))
            .copied()
            .unwrap_or(0);
        if r.offset < done {
            ::metrics::counter!(metrics::SKIPPED, "projection" => "readmodel").increment(1);
            continue;
        }
        match to_change(r) {
            Ok(c) => changes.push(c),
            Err(e) => {
                ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "readmodel", "topic" => r.topic.to_string())
                    .increment(1);
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "Undecodable record skipped.");
            }
        }
    }
    let commits = next_offsets(batch);
    let stored: Vec<StoredOffset> = commits
        .iter()
        .map(|c| StoredOffset {
            topic: c.topic.clone(),
            partition: c.partition,
            next_offset: c.next_offset,
        })
        .collect();
    apply_with_retry(store, &changes, &stored).await;
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
/// logged.
async fn apply_with_retry(store: &dyn ReadModel, changes: &[Change], offsets: &[StoredOffset]) {
    let mut attempt = 0u32;
    loop {
        match store.apply(READ_MODEL_PROJECTION, changes, offsets).await {
            Ok(()) => return,
            Err(StoreError::Unavailable(e)) => {
                attempt += 1;
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "readmodel")
                    .increment(1);
                tracing::warn!(error = %e, attempt, "Read model unavailable; retrying the batch.");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Read model refused the batch; applying it change by change.");
                for change in changes {
                    if let Err(e) = retry_unavailable(|| {
                        store.apply(READ_MODEL_PROJECTION, std::slice::from_ref(change), &[])
                    })
                    .await
                    {
                        ::metrics::counter!(metrics::REFUSED, "projection" => "readmodel")
                            .increment(1);
                        tracing::error!(error = %e, ?change, "Change refused by the read model; skipped.");
                    }
                }
                if let Err(e) =
                    retry_unavailable(|| store.apply(READ_MODEL_PROJECTION, &[], offsets)).await
                {
                    tracing::error!(error = %e, "Storing offsets failed; the batch will be applied again (idempotent).");
                }
                return;
            }
        }
    }
}

/// Writes points, retrying while the store is unavailable; points refused for another
/// reason are written one by one and the refused ones counted, logged and skipped.
async fn write_with_retry(store: &dyn TimeSeriesStore, points: &[Point]) {
    let mut attempt = 0u32;
    loop {
        match store.write(points).await {
            Ok(()) => return,
            Err(StoreError::Unavailable(e)) => {
                attempt += 1;
                ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "timeseries")
                    .increment(1);
                tracing::warn!(error = %e, attempt, "Time-series store unavailable; retrying the batch.");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Time-series store refused the batch; writing point by point.");
                for p in points {
                    if let Err(e) = retry_unavailable(|| store.write(std::slice::from_ref(p))).await
                    {
                        ::metrics::counter!(metrics::REFUSED, "projection" => "timeseries")
                            .increment(1);
                        tracing::error!(error = %e, series = %p.series, agent_id = %p.agent_id, "Point refused; skipped.");
                    }
                }
                return;
            }
        }
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

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt.min(25)))
}

/// Converts a report into time-series points.
pub fn to_points(r: &MetricReport) -> Vec<Point> {
    samples(r)
        .into_iter()
        .filter(|s| s.value.is_finite())
        .map(|s| Point {
            tenant_id: r.tenant_id.clone(),
            agent_id: r.agent_id.clone(),
            series: s.series(),
            ts_micros: r.occurred_at,
            value: s.value,
        })
        .collect()
}

/// Runs the time-series projection until `shutdown` resolves.
pub async fn run_timeseries(
    log: Arc<dyn EventLog>,
    store: Arc<dyn TimeSeriesStore>,
    config: ProjectionsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let mut consumer = subscribe(
        log.as_ref(),
        &config.timeseries_group,
        &[topics::METRICS],
        &config,
    )
    .await?;
    ready.timeseries.store(true, Ordering::Relaxed);
    tracing::info!(group = %config.timeseries_group, store = store.engine(), "Time-series projection running.");
    let mut handler = TimeSeriesBatches {
        store: store.as_ref(),
    };
    let group = config.timeseries_group.clone();
    consume(
        log.as_ref(),
        consumer.as_mut(),
        &group,
        config.batch_size,
        shutdown,
        &mut handler,
    )
    .await;
    ready.timeseries.store(false, Ordering::Relaxed);
    Ok(())
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

struct TimeSeriesBatches<'a> {
    store: &'a dyn TimeSeriesStore,
}

impl BatchHandler for TimeSeriesBatches<'_> {
    async fn handle(&mut self, consumer: &mut dyn Consumer, batch: &[ConsumedRecord]) {
        write_timeseries_batch(self.store, consumer, batch).await;
    }
}

#[tracing::instrument(name = "project_batch", skip_all, fields(projection = "timeseries", records = batch.len()))]
async fn write_timeseries_batch(
    store: &dyn TimeSeriesStore,
    consumer: &mut dyn Consumer,
    batch: &[ConsumedRecord],
) {
    let started = Instant::now();
    let mut points = Vec::with_capacity(batch.len() * 20);
    for r in batch {
        match codec::decode::<MetricReport>(&r.value) {
            Ok(report) => points.extend(to_points(&report)),
            Err(e) => {
                ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "timeseries", "topic" => r.topic.to_string())
                    .increment(1);
                tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "Undecodable report skipped.");
            }
        }
    }
    write_with_retry(store, &points).await;
    ::metrics::counter!(metrics::RECORDS, "projection" => "timeseries", "topic" => topics::METRICS)
        .increment(batch.len() as u64);
    if let Err(e) = consumer.commit(&next_offsets(batch)).await {
        tracing::warn!(error = %e, "Commit failed; the batch will be written again (idempotent).");
    }
    ::metrics::histogram!(metrics::BATCH_SECONDS, "projection" => "timeseries")
        .record(started.elapsed().as_secs_f64());
}

async fn subscribe(
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
