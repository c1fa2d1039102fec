//! The time-series projection: `fleet.metrics.v1` and `fleet.samples.v1` into the
//! time-series engine.
//!
//! It runs on the consumer runtime ([`fleet_consumer::runtime`]) as a processor that
//! commits less than it read. Reports go into the engine's head ([`fleet_timeseries::Writer`])
//! as they are read, so they are queryable at once in this process. The runtime commits
//! only the offsets of the engine's last checkpoint (the low-water mark the processor
//! reports): everything before them is in sealed
//! chunks or checkpoint segments, everything after is replayed on top of the restored
//! head after a crash, which seals the same chunks. When this member gains a partition it
//! loads the partition's checkpoint and seeks to its offset (the start of the partition
//! when the store has none: a fresh store is rebuilt from the log); when it loses one,
//! the partition's agents leave the head.
//!
//! Samples of the standard write protocols go to the unit of their source (a scrape
//! target, a host, else the series itself: `fleet_schemas::series`), stored like an agent
//! whose id is `~` and the source's labels (`~{instance="a:9100",job="node"}`), each series
//! named by its text (`up{instance="a:9100",job="node"}`);
//! [`fleet_timeseries::Writer::ingest_samples`] has the rules.
//!
//! A record that does not decode is a dead letter (DECODE); a report whose time is beyond
//! ±2^62 µs one too (PROCESS), and so is a sample batch with samples that can never be
//! stored (a time beyond ±2^62 µs, a series text over the engine's name limit: PROCESS,
//! naming the first; the batch's other samples are stored). Reports older than their
//! agent's newest by more than the out-of-order allowance are counted
//! (`fleet_timeseries_late_refused_total`), as are samples not stored
//! (`fleet_timeseries_samples_skipped_total{reason}`: staleness NaNs among them).

use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::log::ensure_topics;
use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{CommitOffset, ConsumedRecord, EventLog, StartFrom};
use fleet_schemas::codec::CodecError;
use fleet_schemas::Wire;
use fleet_schemas::{topics, MetricReport, SampleBatch};
use fleet_timeseries::engine::{CommitPoint, Ingested};
use fleet_timeseries::{Error as TsError, SamplesIngested, TimeSeries, Writer};

use crate::project::{Readiness, TIMESERIES_CONSUMER, TIMESERIES_TOPICS};
use crate::{metrics, ProjectionsConfig};

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

/// Runs the time-series projection until `shutdown` resolves; checkpoints on the way out.
pub async fn run_timeseries(
    log: Arc<dyn EventLog>,
    wire: Wire,
    ts: Arc<TimeSeries>,
    config: ProjectionsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let group = config.timeseries_group.clone();
    let dead = DeadLetters::open(log.clone(), wire, TIMESERIES_CONSUMER, &group).await?;
    let settings = Settings::group(&group, TIMESERIES_TOPICS)
        .start(StartFrom::Earliest)
        .session_timeout(config.event_log.session_timeout)
        .batch_size(config.batch_size)
        .fetch_wait(config.fetch_wait)
        .batch_histogram(metrics::BATCH_SECONDS, "projection", "timeseries");
    let runtime = ConsumerRuntime::subscribe(log, settings, dead.clone())
        .await?
        .readiness(ready.timeseries_flag());
    tracing::info!(%group, store = ts.store().engine(), "Time-series projection starting.");
    let mut projection = Projection {
        writer: ts.writer(),
        dead,
    };
    runtime.run(&mut projection, shutdown).await;
    Ok(())
}

/// The time-series projection on the consumer runtime: commits the engine's checkpoints.
struct Projection {
    writer: Writer,
    dead: DeadLetters,
}

impl Processor for Projection {
    /// Restores each partition gained from its checkpoint and seeks it there (the start
    /// of the partition when the store has none); the agents of a lost one leave the head.
    async fn on_assigned(&mut self, assignment: &mut Assignment<'_>) -> anyhow::Result<Output> {
        for (topic, partition) in assignment.removed() {
            tracing::info!(%topic, partition, "Partition lost; its agents leave the head.");
            self.writer.revoke(&topic, partition);
        }
        for (topic, partition) in assignment.added() {
            let resume = retrying!(self.writer.assign(&topic, partition))?;
            let offset = resume.unwrap_or(0);
            tracing::info!(%topic, partition, offset, restored = resume.is_some(), "Partition taken; head restored from its checkpoint.");
            assignment.seek(&topic, partition, offset).await?;
        }
        Ok(Output::new())
    }

    #[tracing::instrument(name = "project_batch", skip_all, fields(projection = "timeseries", records = batch.len()))]
    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        for r in batch {
            self.ingest(r).await;
            ::metrics::counter!(metrics::RECORDS, "projection" => "timeseries", "topic" => r.topic.to_string())
                .increment(1);
        }
        self.after_batch().await
    }

    /// An idle poll still checkpoints when one is due (and seals idle agents).
    async fn on_tick(&mut self, handled: usize) -> Output {
        if handled == 0 {
            self.after_batch().await
        } else {
            Output::new()
        }
    }

    /// A clean stop saves the head, so a restart replays nothing.
    async fn on_shutdown(&mut self) -> Output {
        self.dead.flush().await;
        match retrying!(self.writer.checkpoint()) {
            Ok(points) => Output::upto(offsets(&points)),
            Err(e) => {
                tracing::error!(error = %e, "Final checkpoint failed; the next start replays from the last one.");
                Output::upto(Vec::new())
            }
        }
    }
}

impl Projection {
    /// Puts one record into the head (a dead letter when it is not storable).
    async fn ingest(&mut self, r: &ConsumedRecord) {
        let applied = loop {
            match apply(&mut self.writer, self.dead.wire(), r).await {
                Ok(applied) => break applied,
                Err(ApplyError::Decode(e)) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "projection" => "timeseries", "topic" => r.topic.to_string())
                        .increment(1);
                    self.dead.note(r, Reason::decode(e));
                    // Read, and past it once the dead letter is written.
                    self.writer.skip(&r.topic, r.partition, r.offset);
                    return;
                }
                Err(ApplyError::Store(e)) => {
                    // Loading an evicted agent back failed: the store is down.
                    tracing::warn!(error = %e, "Time-series store unavailable; retrying the record.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let refused = match applied {
            Applied::Report {
                ingested: Ingested::OutOfRange,
                tenant,
                occurred_at,
            } => Some((
                tenant,
                format!("collection time {occurred_at} µs is beyond ±2^62 µs from the epoch"),
            )),
            Applied::Samples { ingested, tenant } if ingested.refused() > 0 => Some((
                tenant,
                format!(
                    "{} of the batch's samples can never be stored (the others were): {}",
                    ingested.refused(),
                    ingested.first_refused.as_deref().unwrap_or("")
                ),
            )),
            _ => None,
        };
        if let Some((tenant, reason)) = refused {
            ::metrics::counter!(metrics::REFUSED, "projection" => "timeseries").increment(1);
            self.dead.note(r, Reason::process(reason).tenant(&tenant));
        }
    }

    /// Seals what closed and checkpoints when due; names the checkpoint's offsets to
    /// commit (nothing when no checkpoint was due).
    async fn after_batch(&mut self) -> Output {
        // Dead letters are written before a checkpoint stores an offset past them.
        self.dead.flush().await;
        match retrying!(self.writer.after_batch()) {
            Ok(Some(points)) => Output::upto(offsets(&points)),
            Ok(None) => Output::upto(Vec::new()),
            Err(e) => {
                tracing::error!(error = %e, "Sealing or checkpointing failed for good; the records will be read again after a restart.");
                Output::upto(Vec::new())
            }
        }
    }
}

/// A checkpoint's offsets, as the runtime commits them.
fn offsets(points: &[CommitPoint]) -> Vec<CommitOffset> {
    points
        .iter()
        .map(|(topic, partition, next_offset)| CommitOffset {
            topic: topic.clone(),
            partition: *partition,
            next_offset: *next_offset,
        })
        .collect()
}

/// What [`apply`] did with a record.
#[derive(Debug)]
pub enum Applied {
    /// A metric report of `fleet.metrics.v1`.
    Report {
        /// How it fared.
        ingested: Ingested,
        /// Its tenant.
        tenant: String,
        /// Its collection time (µs).
        occurred_at: i64,
    },
    /// A sample batch of `fleet.samples.v1`.
    Samples {
        /// How its samples fared.
        ingested: SamplesIngested,
        /// Its tenant.
        tenant: String,
    },
}

/// Why [`apply`] did not apply a record.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The record is not what its topic holds: a dead letter (the writer has not moved
    /// past it: [`Writer::skip`]).
    #[error("{0}")]
    Decode(#[from] CodecError),
    /// The store failed (loading an evicted agent back): try again.
    #[error("{0}")]
    Store(#[from] TsError),
}

/// Decodes a record of a time-series topic ([`crate::project::TIMESERIES_TOPICS`]) and
/// feeds it to `writer`: the one path of the live projection and of `fleetstream replay`.
pub async fn apply(
    writer: &mut Writer,
    wire: &Wire,
    r: &ConsumedRecord,
) -> Result<Applied, ApplyError> {
    if &*r.topic == topics::SAMPLES {
        let batch: SampleBatch = wire.decode_known(&r.value)?;
        let ingested = writer
            .ingest_samples(&r.topic, r.partition, r.offset, &batch)
            .await?;
        return Ok(Applied::Samples {
            ingested,
            tenant: batch.tenant_id,
        });
    }
    let report: MetricReport = wire.decode_known(&r.value)?;
    let ingested = writer
        .ingest(&r.topic, r.partition, r.offset, &report)
        .await?;
    Ok(Applied::Report {
        ingested,
        tenant: report.tenant_id,
        occurred_at: report.occurred_at,
    })
}
