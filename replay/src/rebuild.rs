//! Rebuilding a projection (read model, time series, or both) into a fresh store by
//! reading the projection's topics directly (a throw-away consumer group that never
//! commits; each partition sought to the start of its window) up to the end offsets taken
//! at start, and applying every record exactly as the live projection does: the same
//! decoding ([`fleet_projections::project::to_change`]) and the same writes
//! ([`fleet_projections::project::apply_with_retry`] with the offsets, in one transaction
//! per batch; the time-series engine's [`Writer`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_event_log::{ConsumedRecord, EventLog};
use fleet_projections::project::{
    apply_with_retry, stored_offsets, superseded_reports, to_change, READ_MODEL_PROJECTION,
    READ_MODEL_TOPICS, TIMESERIES_TOPICS,
};
use fleet_projections::ProjectionsConfig;
use fleet_read_model::{Engine, SqlReadModel};
use fleet_schemas::Wire;
use fleet_service::config::redact_url;
use fleet_timeseries::{TimeSeries, TimeSeriesStore as _, Writer};
use tokio::sync::mpsc;

use crate::error::{invalid, Context as _};
use crate::reader::{self, Start};
use crate::{Error, Forced, Progress, Result};

/// Which projection a replay rebuilds (a `clap` value with the feature `clap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ProjectionKind {
    /// The read model (agents, alerts, commands, software, tickets, services, rules).
    ReadModel,
    /// The time-series store (every sample of every metric report, with its rollups).
    Timeseries,
    /// Both (give `--into` twice: a read-model URL and a time-series URL).
    All,
}

impl ProjectionKind {
    /// The name the CLI gives it (`read-model`, `timeseries`, `all`).
    pub fn name(self) -> &'static str {
        match self {
            ProjectionKind::ReadModel => "read-model",
            ProjectionKind::Timeseries => "timeseries",
            ProjectionKind::All => "all",
        }
    }
}

/// What to replay, into what.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The projection to rebuild.
    pub projection: ProjectionKind,
    /// The targets: one URL, or with [`ProjectionKind::All`] a read model and a
    /// time-series store ([`targets`]).
    pub into: Vec<String>,
    /// Where each partition's window starts.
    pub start: Start,
    /// Records per batch (at least 1).
    pub batch_size: usize,
    /// Batches applied at once; `None`: [`default_jobs`].
    pub jobs: Option<usize>,
    /// Replay into targets that hold projected data (a read model's projected tables are
    /// emptied first; a time-series store is written over).
    pub force: bool,
}

/// What a replay did.
#[derive(Debug)]
pub struct ReplayReport {
    /// Records read and applied.
    pub records: u64,
    /// From the start of reading to the end.
    pub elapsed: Duration,
    /// Partitions that had records in their window.
    pub partitions: usize,
    /// Workers that applied batches.
    pub jobs: usize,
    /// Records read per topic.
    pub per_topic: BTreeMap<String, u64>,
    /// The read-model target, when one was rebuilt.
    pub read_model: Option<ReadModelOutcome>,
    /// The time-series target, when one was rebuilt.
    pub timeseries: Option<TimeSeriesOutcome>,
    /// Windows not read to their end ([`crate::ReadOutcome::unfinished`]).
    pub unfinished: Vec<(String, u32, i64, i64)>,
}

impl ReplayReport {
    /// Records per second over the run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

/// What a replay wrote to the read model.
#[derive(Debug)]
pub struct ReadModelOutcome {
    /// The target's URL.
    pub url: String,
    /// `postgres` or `sqlite`.
    pub engine: &'static str,
    /// Changes applied.
    pub changes: u64,
    /// Metric reports not decoded: a later report of the same agent in the batch
    /// superseded them (as the live projection does).
    pub coalesced: u64,
    /// Records that did not decode (skipped, as the live projection does).
    pub undecodable: u64,
}

/// What a replay wrote to the time-series store.
#[derive(Debug)]
pub struct TimeSeriesOutcome {
    /// The target's URL.
    pub url: String,
    /// The chunk engine (`embedded`, `cql`).
    pub engine: String,
    /// Records applied (metric reports and sample batches).
    pub reports: u64,
    /// Points written.
    pub points: u64,
    /// Records that did not decode (skipped, as the live projection does).
    pub undecodable: u64,
}

/// Whether a URL names a read model (else a time-series store); `None` when it could be
/// either (a bare path).
fn is_read_model_url(url: &str) -> Option<bool> {
    if url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite:")
    {
        Some(true)
    } else if url.starts_with("file://") || url.starts_with("scylla://") {
        Some(false)
    } else {
        None
    }
}

/// The read-model and time-series targets among `into`.
pub fn targets(kind: ProjectionKind, into: &[String]) -> Result<(Option<String>, Option<String>)> {
    match kind {
        ProjectionKind::ReadModel | ProjectionKind::Timeseries => {
            let [url] = into else {
                invalid!(
                    "--projection {} takes one --into, got {}",
                    kind.name(),
                    into.len()
                );
            };
            if is_read_model_url(url) == Some(kind == ProjectionKind::Timeseries) {
                invalid!("--into {} is not a {} URL", redact_url(url), kind.name());
            }
            Ok(if kind == ProjectionKind::ReadModel {
                (Some(url.clone()), None)
            } else {
                (None, Some(url.clone()))
            })
        }
        ProjectionKind::All => {
            let (mut rm, mut ts) = (None, None);
            for url in into {
                let slot = match is_read_model_url(url) {
                    Some(true) => &mut rm,
                    Some(false) => &mut ts,
                    None => invalid!(
                        "--into {url}: with --projection all, name the kind: sqlite://{url} \
                         (read model) or file://{url} (time series)"
                    ),
                };
                if slot.replace(url.clone()).is_some() {
                    invalid!("--projection all takes one read-model URL and one time-series URL in --into");
                }
            }
            match (rm, ts) {
                (Some(rm), Some(ts)) => Ok((Some(rm), Some(ts))),
                _ => invalid!(
                    "--projection all needs --into twice: a read model (postgres://..., \
                     sqlite://path) and a time-series store (file:///dir, scylla://...)"
                ),
            }
        }
    }
}

/// What the workers wrote.
#[derive(Debug, Default)]
struct Counts {
    /// Read model: changes applied, reports superseded in their batch, records that did
    /// not decode.
    changes: u64,
    coalesced: u64,
    rm_undecodable: u64,
    /// Time series: records (reports and sample batches), points, records that did not
    /// decode.
    reports: u64,
    points: u64,
    ts_undecodable: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.changes += other.changes;
        self.coalesced += other.coalesced;
        self.rm_undecodable += other.rm_undecodable;
        self.reports += other.reports;
        self.points += other.points;
        self.ts_undecodable += other.ts_undecodable;
    }
}

/// Applies a batch to the read model exactly as the live projection does: decode each
/// record (but reports a later one of the same agent supersedes), apply the changes with the batch's next offsets in one transaction.
async fn apply_read_model(
    store: &SqlReadModel,
    wire: &Wire,
    batch: &[ConsumedRecord],
    counts: &mut Counts,
) {
    let records: Vec<ConsumedRecord> = batch
        .iter()
        .filter(|r| READ_MODEL_TOPICS.contains(&&*r.topic))
        .cloned()
        .collect();
    if records.is_empty() {
        return;
    }
    let mut changes = Vec::with_capacity(records.len());
    for (r, superseded) in records.iter().zip(superseded_reports(wire, &records)) {
        if superseded {
            counts.coalesced += 1;
            continue;
        }
        match to_change(wire, r) {
            Ok(c) => changes.push(c),
            Err(e) => {
                counts.rm_undecodable += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "Undecodable record skipped (as the live projection does).");
            }
        }
    }
    let offsets = stored_offsets(&records);
    apply_with_retry(store, &changes, &offsets).await;
    counts.changes += changes.len() as u64;
}

/// Feeds a batch's reports and sample batches to the time-series writer as the live
/// projection does (the same path, [`fleet_projections::timeseries::apply`]: head, sealing
/// by event time), without wall-clock checkpoints: the replay writes one at the end.
async fn apply_timeseries(
    writer: &tokio::sync::Mutex<Writer>,
    wire: &Wire,
    batch: &[ConsumedRecord],
    counts: &mut Counts,
) -> Result<()> {
    use fleet_projections::timeseries::{apply, Applied, ApplyError};
    let mut writer = writer.lock().await;
    for r in batch
        .iter()
        .filter(|r| TIMESERIES_TOPICS.contains(&&*r.topic))
    {
        match apply(&mut writer, wire, r).await {
            Ok(applied) => {
                counts.reports += 1;
                counts.points += match applied {
                    Applied::Report {
                        ingested: fleet_timeseries::engine::Ingested::Stored(n),
                        ..
                    } => n as u64,
                    Applied::Samples { ingested, .. } => ingested.stored as u64,
                    Applied::Report { .. } => 0,
                };
            }
            Err(ApplyError::Decode(e)) => {
                counts.ts_undecodable += 1;
                writer.skip(&r.topic, r.partition, r.offset);
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "Undecodable record skipped (as the live projection does).");
            }
            Err(ApplyError::Store(e)) => return Err(e.into()),
        }
    }
    writer.after_batch().await?;
    Ok(())
}

/// Workers by default: several when a target is a server that runs transactions in
/// parallel (PostgreSQL, ScyllaDB), one when every target is embedded (one writer at a
/// time: more workers would only wait for each other).
pub fn default_jobs(rm: Option<&SqlReadModel>, ts: Option<&TimeSeries>) -> usize {
    let rm_parallel = rm.is_some_and(|s| s.engine_kind() == Engine::Postgres);
    let ts_parallel = ts.is_some_and(|s| s.engine() == "cql");
    if rm_parallel || ts_parallel {
        4
    } else {
        1
    }
}

/// Applies the batches of its partitions to the stores and hands each back, with what it
/// wrote, for the progress.
async fn worker(
    wire: Wire,
    rm: Option<Arc<SqlReadModel>>,
    ts: Option<Arc<tokio::sync::Mutex<Writer>>>,
    mut batches: mpsc::Receiver<Vec<ConsumedRecord>>,
    done: mpsc::UnboundedSender<(Vec<ConsumedRecord>, Counts)>,
) -> Result<()> {
    while let Some(batch) = batches.recv().await {
        let mut rm_counts = Counts::default();
        let mut ts_counts = Counts::default();
        let rm_part = async {
            if let Some(store) = &rm {
                apply_read_model(store, &wire, &batch, &mut rm_counts).await;
            }
        };
        let ts_part = async {
            match &ts {
                Some(writer) => apply_timeseries(writer, &wire, &batch, &mut ts_counts).await,
                None => Ok(()),
            }
        };
        let ((), ts_done) = tokio::join!(rm_part, ts_part);
        ts_done?;
        rm_counts.add(&ts_counts);
        if done.send((batch, rm_counts)).is_err() {
            break; // the run stopped
        }
    }
    Ok(())
}

/// Opens the read-model target and checks it holds no projected data (or, with `force`,
/// empties the projected tables).
async fn open_read_model_target(
    url: &str,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Arc<SqlReadModel>> {
    let store = SqlReadModel::connect(url)
        .await
        .map(Arc::new)
        .with_context(|| format!("opening the read model {}", redact_url(url)))?;
    let rows = store.projected_row_count(READ_MODEL_PROJECTION).await?;
    if rows > 0 {
        if !force {
            invalid!(
                "the read model {} is not empty ({rows} projected rows and offsets): replay \
                 into a fresh database, or pass --force to empty its projected tables first \
                 (the registry and the audit log are kept)",
                redact_url(url)
            );
        }
        let removed = store.clear_projected(READ_MODEL_PROJECTION).await?;
        progress.forced(&Forced::ReadModelEmptied {
            url: redact_url(url),
            rows: removed,
        });
    }
    Ok(store)
}

/// Opens the time-series target and checks it holds no series (unless `force`).
async fn open_timeseries_target(
    url: &str,
    cfg: &ProjectionsConfig,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Arc<TimeSeries>> {
    // No wall-clock checkpoints while replaying: one at the end.
    let engine = fleet_timeseries::EngineConfig {
        checkpoint_interval: Duration::from_secs(365 * 24 * 3600),
        ..cfg.timeseries_engine.clone()
    };
    let store = fleet_timeseries::open(url, cfg.timeseries_retention, engine)
        .await
        .with_context(|| format!("opening the time-series store {url}"))?;
    let some = store.list_series(1).await?;
    if let Some(first) = some.first() {
        if !force {
            invalid!(
                "the time-series store {url} is not empty (it has series, {} of agent {} \
                 among them): replay into an empty one, or pass --force to write over it",
                first.series,
                first.agent_id
            );
        }
        progress.forced(&Forced::TimeSeriesWrittenOver {
            url: url.to_owned(),
        });
    }
    Ok(store)
}

/// Rebuilds the projection `options` names from `log` (the projections' configuration
/// `cfg` gives the time-series retention and engine settings).
pub async fn replay(
    log: Arc<dyn EventLog>,
    wire: Wire,
    cfg: &ProjectionsConfig,
    options: ReplayOptions,
    progress: &mut dyn Progress,
) -> Result<ReplayReport> {
    let batch_size = options.batch_size.max(1);
    let (rm_url, ts_url) = targets(options.projection, &options.into)?;
    let rm = match &rm_url {
        Some(url) => Some(open_read_model_target(url, options.force, progress).await?),
        None => None,
    };
    let ts = match &ts_url {
        Some(url) => Some(open_timeseries_target(url, cfg, options.force, progress).await?),
        None => None,
    };

    let mut topics: Vec<&str> = Vec::new();
    if rm.is_some() {
        topics.extend(READ_MODEL_TOPICS);
    }
    if ts.is_some() {
        for t in TIMESERIES_TOPICS {
            if !topics.contains(t) {
                topics.push(t);
            }
        }
    }
    let spans = reader::plan(log.as_ref(), &topics, options.start, None).await?;
    progress.planned(&spans);
    let started = Instant::now();

    let jobs = options
        .jobs
        .unwrap_or_else(|| default_jobs(rm.as_deref(), ts.as_deref()))
        .max(1);
    // One writer feeds the engine (workers take turns with it).
    let writer = ts
        .as_ref()
        .map(|ts| Arc::new(tokio::sync::Mutex::new(ts.writer())));
    let (tx, mut rx) = mpsc::channel::<Vec<ConsumedRecord>>(4);
    let reading = tokio::spawn(reader::read(
        log.clone(),
        wire.clone(),
        spans.clone(),
        batch_size,
        tx,
    ));
    // Workers, each owning the partitions whose number is its index modulo `jobs`: records
    // keyed by agent (the same partition number on every agent-keyed topic) stay with one
    // worker and in order, so workers never touch the same rows.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut senders = Vec::with_capacity(jobs);
    let mut workers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let (wtx, wrx) = mpsc::channel::<Vec<ConsumedRecord>>(2);
        senders.push(wtx);
        workers.push(tokio::spawn(worker(
            wire.clone(),
            rm.clone(),
            writer.clone(),
            wrx,
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    let dispatching = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut parts: Vec<Vec<ConsumedRecord>> = vec![Vec::new(); jobs];
            for r in batch {
                let i = r.partition as usize % jobs;
                parts[i].push(r);
            }
            for (part, sender) in parts.into_iter().zip(&senders) {
                if !part.is_empty() && sender.send(part).await.is_err() {
                    return Err(Error::Internal("a replay worker stopped".into()));
                }
            }
        }
        Ok(())
    });
    // The batches come back here once applied (until every worker is done).
    let (mut records, mut counts) = (0u64, Counts::default());
    let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
    while let Some((batch, c)) = done_rx.recv().await {
        counts.add(&c);
        records += batch.len() as u64;
        for r in &batch {
            *per_topic.entry(r.topic.to_string()).or_default() += 1;
        }
        progress.advanced(&batch);
    }
    for w in workers {
        w.await
            .map_err(|e| Error::Internal(format!("a replay worker failed: {e}")))??;
    }
    dispatching
        .await
        .map_err(|e| Error::Internal(format!("the replay dispatcher failed: {e}")))??;
    // The open windows and every partition's position go into a checkpoint, so a live
    // projection pointed at the rebuilt store resumes after the replayed records.
    if let Some(writer) = &writer {
        writer.lock().await.checkpoint().await?;
    }
    let outcome = reading
        .await
        .map_err(|e| Error::Internal(format!("the reader task failed: {e}")))??;
    progress.finished();
    let elapsed = started.elapsed();

    let read_model = match (rm_url, &rm) {
        (Some(url), Some(store)) => Some(ReadModelOutcome {
            url,
            engine: store.engine_kind().as_str(),
            changes: counts.changes,
            coalesced: counts.coalesced,
            undecodable: counts.rm_undecodable,
        }),
        _ => None,
    };
    let timeseries = match (ts_url, &ts) {
        (Some(url), Some(store)) => Some(TimeSeriesOutcome {
            url,
            engine: store.engine().to_owned(),
            reports: counts.reports,
            points: counts.points,
            undecodable: counts.ts_undecodable,
        }),
        _ => None,
    };
    if let Some(store) = rm {
        store.close().await;
    }
    Ok(ReplayReport {
        records,
        elapsed,
        partitions: spans.iter().filter(|s| !s.is_empty()).count(),
        jobs,
        per_topic,
        read_model,
        timeseries,
        unfinished: outcome.unfinished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_kind() {
        let one =
            |k, urls: &[&str]| targets(k, &urls.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            one(ProjectionKind::ReadModel, &["x.db"]).ok(),
            Some((Some("x.db".into()), None))
        );
        assert!(one(ProjectionKind::ReadModel, &["file:///ts"]).is_err());
        assert_eq!(
            one(ProjectionKind::All, &["file:///ts", "sqlite://x.db"]).ok(),
            Some((Some("sqlite://x.db".into()), Some("file:///ts".into())))
        );
        assert!(one(ProjectionKind::All, &["x.db", "file:///ts"]).is_err());
        assert!(one(ProjectionKind::All, &["sqlite://a", "sqlite://b"]).is_err());
        assert!(one(ProjectionKind::Timeseries, &["a", "b"]).is_err());
    }
}
