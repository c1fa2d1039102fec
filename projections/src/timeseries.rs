//! The time-series projection: `fleet.metrics.v1` into the time-series engine.
//!
//! Reports go into the engine's head ([`fleet_timeseries::Writer`]) as they are read, so
//! they are queryable at once in this process. The consumer commits only the offsets of
//! the engine's last checkpoint (its low-water mark): everything before them is in sealed
//! chunks or checkpoint segments, everything after is replayed on top of the restored
//! head after a crash, which seals the same chunks. When this member gains a partition it
//! loads the partition's checkpoint and seeks to its offset (the start of the partition
//! when the store has none: a fresh store is rebuilt from the log); when it loses one,
//! the partition's agents leave the head.
//!
//! A record that is not a metric report is a dead letter (DECODE); a report whose time
//! is beyond ±2^62 µs one too (PROCESS). Reports older than their agent's newest by more
//! than the out-of-order allowance are counted (`fleet_timeseries_late_refused_total`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_consumer::deadletter::{decode_retrying, DeadLetters, Reason};
use fleet_consumer::log::{ensure_topics, LagGauge};
use fleet_event_log::{CommitOffset, ConsumedRecord, Consumer, EventLog};
use fleet_schemas::{topics, MetricReport};
use fleet_timeseries::engine::{CommitPoint, Ingested};
use fleet_timeseries::{Error as TsError, TimeSeries, Writer};

use crate::project::{Readiness, TIMESERIES_CONSUMER, TIMESERIES_TOPICS};

/// Awaits a store call again while the store is unavailable (with a growing pause, about
/// an hour in all), else gives its result.
macro_rules! retrying {
    ($call:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $call.await {
                Err(e) if TsError::is_retriable(&e) && attempt < 720 => {
                    attempt += 1;
                    ::metrics::counter!(metrics::STORE_ERRORS, "projection" => "timeseries")
                        .increment(1);
                    tracing::warn!(error = %e, attempt, "Time-series store unavailable; retrying.");
                    tokio::time::sleep(fleet_consumer::retry_backoff(attempt)).await;
                }
                other => break other,
            }
        }
    }};
}
use crate::{metrics, ProjectionsConfig};

/// Runs the time-series projection until `shutdown` resolves; checkpoints on the way out.
pub async fn run_timeseries(
    log: Arc<dyn EventLog>,
    ts: Arc<TimeSeries>,
    config: ProjectionsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let mut consumer = crate::project::subscribe(
        log.as_ref(),
        &config.timeseries_group,
        TIMESERIES_TOPICS,
        &config,
    )
    .await?;
    let dead =
        DeadLetters::open(log.clone(), TIMESERIES_CONSUMER, &config.timeseries_group).await?;
    let mut p = Projection {
        writer: ts.writer(),
        dead,
        held: BTreeSet::new(),
        lag: LagGauge::new(&config.timeseries_group, Duration::from_secs(5)),
    };
    ready.set_timeseries(true);
    tracing::info!(group = %config.timeseries_group, store = ts.store().engine(), "Time-series projection running.");
    tokio::pin!(shutdown);
    loop {
        // A partition gained before the poll is sought first (its records come from the
        // checkpoint on), one gained during it: its records of this poll are dropped and
        // come again from the checkpoint.
        let before = p.follow_assignment(consumer.as_mut()).await?;
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            b = consumer.poll(config.batch_size, Duration::from_millis(500)) => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "Poll failed; retrying.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Vec::new()
                }
            },
        };
        p.follow_assignment(consumer.as_mut()).await?;
        let batch: Vec<ConsumedRecord> = batch
            .into_iter()
            .filter(|r| before.contains(&(r.topic.to_string(), r.partition)))
            .collect();
        p.handle(consumer.as_mut(), &batch).await;
        p.lag.observe(&batch);
        p.lag.refresh(log.as_ref()).await;
    }
    // A clean stop saves the head, so a restart replays nothing.
    match retrying!(p.writer.checkpoint()) {
        Ok(points) => commit(consumer.as_mut(), &points).await,
        Err(e) => {
            tracing::error!(error = %e, "Final checkpoint failed; the next start replays from the last one.")
        }
    }
    ready.set_timeseries(false);
    Ok(())
}

struct Projection {
    writer: Writer,
    dead: DeadLetters,
    /// Partitions held, as of the last look at the assignment.
    held: BTreeSet<(String, u32)>,
    lag: LagGauge,
}

impl Projection {
    /// Restores the partitions gained since the last look (seeking each to its
    /// checkpoint) and forgets those lost. Returns the partitions held now.
    async fn follow_assignment(
        &mut self,
        consumer: &mut dyn Consumer,
    ) -> anyhow::Result<BTreeSet<(String, u32)>> {
        let now: BTreeSet<(String, u32)> = consumer.assignment().into_iter().collect();
        for (topic, partition) in self.held.difference(&now) {
            tracing::info!(%topic, partition, "Partition lost; its agents leave the head.");
            self.writer.revoke(topic, *partition);
        }
        for (topic, partition) in now.difference(&self.held) {
            let resume = retrying!(self.writer.assign(topic, *partition))?;
            let offset = resume.unwrap_or(0);
            tracing::info!(%topic, partition, offset, restored = resume.is_some(), "Partition taken; head restored from its checkpoint.");
            consumer.seek(topic, *partition, offset).await?;
        }
        self.held = now.clone();
        Ok(now)
    }

    #[tracing::instrument(name = "project_batch", skip_all, fields(projection = "timeseries", records = batch.len()))]
    async fn handle(&mut self, consumer: &mut dyn Consumer, batch: &[ConsumedRecord]) {
        if batch.is_empty() {
            // An idle poll still checkpoints when one is due (and seals idle agents).
            return self.after_batch(consumer).await;
        }
        let started = Instant::now();
        for r in batch {
            let report = match decode_retrying::<MetricReport>(r) {
                Ok(report) => report,
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "timeseries", "topic" => r.topic.to_string())
                        .increment(1);
                    self.dead.note(r, Reason::decode(e));
                    // Read, and past it once the dead letter is written.
                    self.writer.skip(&r.topic, r.partition, r.offset);
                    continue;
                }
            };
            let ingested = loop {
                match self
                    .writer
                    .ingest(&r.topic, r.partition, r.offset, &report)
                    .await
                {
                    Ok(i) => break i,
                    Err(e) => {
                        // Loading an evicted agent back failed: the store is down.
                        tracing::warn!(error = %e, "Time-series store unavailable; retrying the report.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            if ingested == Ingested::OutOfRange {
                ::metrics::counter!(metrics::REFUSED, "projection" => "timeseries").increment(1);
                self.dead.note(
                    r,
                    Reason::process(format!(
                        "collection time {} µs is beyond ±2^62 µs from the epoch",
                        report.occurred_at
                    ))
                    .tenant(&report.tenant_id),
                );
            }
        }
        ::metrics::counter!(metrics::RECORDS, "projection" => "timeseries", "topic" => topics::METRICS)
            .increment(batch.len() as u64);
        self.after_batch(consumer).await;
        ::metrics::histogram!(metrics::BATCH_SECONDS, "projection" => "timeseries")
            .record(started.elapsed().as_secs_f64());
    }

    /// Seals what closed and checkpoints when due; commits the checkpoint's offsets.
    async fn after_batch(&mut self, consumer: &mut dyn Consumer) {
        // Dead letters are written before any offset past them is committed.
        self.dead.flush().await;
        match retrying!(self.writer.after_batch()) {
            Ok(Some(points)) => commit(consumer, &points).await,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Sealing or checkpointing failed for good; the records will be read again after a restart.")
            }
        }
    }
}

/// Commits a checkpoint's offsets; a failure only means a longer replay after a restart.
async fn commit(consumer: &mut dyn Consumer, points: &[CommitPoint]) {
    let offsets: Vec<CommitOffset> = points
        .iter()
        .map(|(topic, partition, next_offset)| CommitOffset {
            topic: topic.clone(),
            partition: *partition,
            next_offset: *next_offset,
        })
        .collect();
    if let Err(e) = consumer.commit(&offsets).await {
        tracing::warn!(error = %e, "Commit failed; the store holds the checkpoint.");
    }
}
