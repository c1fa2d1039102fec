//! `fleetstream replay`, `fleetstream verify` and `fleetstream export`: the topics are the
//! source of truth, and these make that usable.
//!
//! * `replay` rebuilds a projection (read model, time series, or both) into a fresh store
//!   by reading the projection's topics directly (a throw-away consumer group that never
//!   commits; each partition sought to the start of its window) up to the end offsets taken
//!   at start, and applying every record exactly as the live projection does: the same
//!   decoding ([`fleet_projections::project::to_change`],
//!   [`fleet_projections::project::report_points`]) and the same writes
//!   ([`fleet_projections::project::apply_with_retry`] with the offsets, in one transaction
//!   per batch; [`fleet_projections::project::write_with_retry`]).
//! * `verify` compares two stores of one projection and reports every difference
//!   ([`verify`]).
//! * `export` writes a window of a topic to a JSONL or Avro object container file
//!   ([`export`]).
//!
//! The registry (tenants, locations, registration tokens, agent credentials, users and
//! their API keys) and the audit log live in the read model's database but are not
//! derived from topics: a replay does not rebuild them and `verify` does not compare them.

mod export;
mod progress;
mod reader;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use fleet_event_log::{ConsumedRecord, EventLog};
use fleet_projections::project::{
    apply_with_retry, stored_offsets, to_change, READ_MODEL_PROJECTION, READ_MODEL_TOPICS,
    TIMESERIES_TOPICS,
};
use fleet_projections::ProjectionsConfig;
use fleet_stores::read_model::{Engine, SqlReadModel, REGISTRY_TABLES};
use fleet_timeseries::{TimeSeries, TimeSeriesStore as _, Writer};

pub(crate) use export::{export, ExportArgs};
pub(crate) use verify::{verify, VerifyArgs};

use progress::Progress;
use reader::{Span, Start};

/// Which projection a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProjectionKind {
    /// The read model (agents, alerts, commands, software, tickets, services, rules).
    ReadModel,
    /// The time-series store (every sample of every metric report, with its rollups).
    Timeseries,
    /// Both (give `--into` twice: a read-model URL and a time-series URL).
    All,
}

/// Options of `fleetstream replay`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Rebuild a projection (read model, time series) from the topics into a fresh store",
    long_about = "Rebuild a projection from the topics into a fresh store.\n\n\
Reads the projection's topics directly (a throw-away consumer group that never commits: the \
live projections' groups are not touched), from the beginning or from the first record at or \
after --from, up to the end offsets taken at start (records appended meanwhile are left for \
the live projection), and applies every record as the live projection does: the same \
decoding and the same store writes, in batches of --batch-size records (one read-model \
transaction per batch and worker, with the offsets). Shows records/s, each partition's position against \
its end offset and the ETA on stderr, then a summary on stdout.\n\n\
Not rebuilt: the registry (tenants, locations, registration tokens, agent credentials, users \
and API keys) and the audit log live in the read model's database but are not derived from \
topics. A fresh target holds none of them.\n\n\
The target must hold no projected data, unless --force. The embedded event log (file://) is \
open in one process at a time: stop `fleetstream up` (or the role using it) first.",
    after_help = "Examples:\n  \
fleetstream replay --projection read-model --config projections.toml \\\n      \
--into postgres://fleet:fleet@db:5432/fleet_rebuilt\n  \
fleetstream replay --projection all --event-log file://fleetstream-data/log \\\n      \
--into sqlite://rebuilt.db --into file://rebuilt-ts --from 24h\n  \
fleetstream verify --projection read-model \\\n      \
--live fleetstream-data/readmodel.db --rebuilt rebuilt.db"
)]
pub(crate) struct ReplayArgs {
    /// The projection to rebuild.
    #[arg(long, value_enum)]
    projection: ProjectionKind,
    /// The store to rebuild into: a read model (postgres://..., sqlite://path) or a
    /// time-series store (file:///dir, scylla://host:9042/keyspace). With `--projection
    /// all`, give it twice, once of each kind (a bare path is ambiguous there: use
    /// sqlite:// or file://).
    #[arg(long = "into", value_name = "URL", required = true)]
    into: Vec<String>,
    /// Read every topic from its oldest record (the default).
    #[arg(long, conflicts_with = "from")]
    from_beginning: bool,
    /// Start each partition at its first record at or after TIME: RFC 3339
    /// (2025-01-31T12:00:00Z) or a duration back from now (24h, 90m, 7d).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// The projections' TOML file (see config/projections.example.toml): its `event-log`,
    /// `event-log-options`, `schema-registry-url` (to read Confluent-framed records) and
    /// `timeseries-retention` are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Event log URL (kafka://host:9092,... or file:///dir), overriding the file's.
    #[arg(long, value_name = "URL")]
    event_log: Option<String>,
    /// Records per batch (one store write each, split among the workers). Larger than the
    /// live projections' `batch-size` (1000): a rebuild wants throughput, not latency, and
    /// a batch holding several reports per series recomputes each rollup bucket once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    batch_size: usize,
    /// Batches applied at once, each worker owning the partitions whose number is its
    /// index modulo N (one agent's records stay in order on one worker). Default: 4 when a
    /// target is PostgreSQL or ScyllaDB, 1 into embedded stores only (a single writer).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
    /// Replay into a target that already holds projected data. A read model's projected
    /// tables and its `readmodel` offsets are emptied first, so the result is a rebuild
    /// (the registry and the audit log are kept); a time-series store is written over
    /// (idempotent upserts: series and samples already there and not in the topics stay).
    #[arg(long)]
    force: bool,
}

/// Loads the projections configuration, with `--event-log` over the file's.
pub(crate) fn load_config(
    file: Option<&std::path::Path>,
    event_log: Option<&str>,
) -> anyhow::Result<ProjectionsConfig> {
    let mut cfg: ProjectionsConfig = fleet_service::config::load("projections", file)?;
    if let Some(url) = event_log {
        cfg.event_log = url.to_owned();
    }
    Ok(cfg)
}

/// With `schema-registry-url` set, lets the decoder fetch the writer schemas of
/// Confluent-framed records from the registry (read only: nothing is registered).
/// Single-object records decode either way.
pub(crate) fn read_with_registry(cfg: &ProjectionsConfig) -> anyhow::Result<()> {
    let url = cfg.schema_registry_url.trim();
    if url.is_empty() {
        return Ok(());
    }
    fleet_schema_registry::install_ids(url, &[])
        .with_context(|| format!("schema-registry-url = {url:?}"))?;
    Ok(())
}

/// Parses a time: RFC 3339, `now`, or a duration back from now (`24h`, `90m`, `7d`).
/// Returns µs since the epoch.
pub(crate) fn parse_time(text: &str, now_micros: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_micros);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    match humantime::parse_duration(text) {
        Ok(d) => {
            let back = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            Ok(now_micros.saturating_sub(back))
        }
        Err(_) => bail!(
            "{text:?} is not a time: use RFC 3339 (2025-01-31T12:00:00Z) or a duration back \
             from now (24h, 90m, 7d)"
        ),
    }
}

/// RFC 3339 (UTC) of µs since the epoch, for messages.
pub(crate) fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{micros} µs"))
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

/// The read-model and time-series targets of `--into`.
fn targets(
    kind: ProjectionKind,
    into: &[String],
) -> anyhow::Result<(Option<String>, Option<String>)> {
    match kind {
        ProjectionKind::ReadModel | ProjectionKind::Timeseries => {
            let [url] = into else {
                bail!(
                    "--projection {} takes one --into, got {}",
                    kind.name(),
                    into.len()
                );
            };
            if is_read_model_url(url) == Some(kind == ProjectionKind::Timeseries) {
                bail!(
                    "--into {} is not a {} URL",
                    crate::roles::redact(url),
                    kind.name()
                );
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
                    None => bail!(
                        "--into {url}: with --projection all, name the kind: sqlite://{url} \
                         (read model) or file://{url} (time series)"
                    ),
                };
                if slot.replace(url.clone()).is_some() {
                    bail!("--projection all takes one read-model URL and one time-series URL in --into");
                }
            }
            match (rm, ts) {
                (Some(rm), Some(ts)) => Ok((Some(rm), Some(ts))),
                _ => bail!(
                    "--projection all needs --into twice: a read model (postgres://..., \
                     sqlite://path) and a time-series store (file:///dir, scylla://...)"
                ),
            }
        }
    }
}

impl ProjectionKind {
    fn name(self) -> &'static str {
        match self {
            ProjectionKind::ReadModel => "read-model",
            ProjectionKind::Timeseries => "timeseries",
            ProjectionKind::All => "all",
        }
    }
}

/// What the replay wrote, for the summary.
#[derive(Debug, Default)]
struct Counts {
    /// Records read per topic.
    per_topic: BTreeMap<String, u64>,
    /// Read model: changes applied, records that did not decode.
    changes: u64,
    rm_undecodable: u64,
    /// Time series: reports, points, reports that did not decode.
    reports: u64,
    points: u64,
    ts_undecodable: u64,
}

/// Applies a batch to the read model exactly as the live projection does: decode each
/// record, apply the changes with the batch's next offsets in one transaction.
async fn apply_read_model(store: &SqlReadModel, batch: &[ConsumedRecord], counts: &mut Counts) {
    let records: Vec<ConsumedRecord> = batch
        .iter()
        .filter(|r| READ_MODEL_TOPICS.contains(&&*r.topic))
        .cloned()
        .collect();
    if records.is_empty() {
        return;
    }
    let mut changes = Vec::with_capacity(records.len());
    for r in &records {
        match to_change(r) {
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

/// Feeds a batch's reports to the time-series writer as the live projection does (the
/// same engine: head, sealing by event time), without wall-clock checkpoints: the replay
/// writes one at the end.
async fn apply_timeseries(
    writer: &tokio::sync::Mutex<Writer>,
    batch: &[ConsumedRecord],
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let mut writer = writer.lock().await;
    for r in batch
        .iter()
        .filter(|r| TIMESERIES_TOPICS.contains(&&*r.topic))
    {
        match fleet_schemas::codec::decode::<fleet_schemas::MetricReport>(&r.value) {
            Ok(report) => {
                counts.reports += 1;
                if let fleet_timeseries::engine::Ingested::Stored(n) = writer
                    .ingest(&r.topic, r.partition, r.offset, &report)
                    .await?
                {
                    counts.points += n as u64;
                }
            }
            Err(e) => {
                counts.ts_undecodable += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "Undecodable report skipped (as the live projection does).");
            }
        }
    }
    writer.after_batch().await?;
    Ok(())
}

/// Workers by default: several when a target is a server that runs transactions in
/// parallel (PostgreSQL, ScyllaDB), one when every target is embedded (one writer at a
/// time: more workers would only wait for each other).
fn default_jobs(rm: Option<&SqlReadModel>, ts: Option<&TimeSeries>) -> usize {
    let rm_parallel = rm.is_some_and(|s| s.engine_kind() == Engine::Postgres);
    let ts_parallel = ts.is_some_and(|s| s.engine() == "cql");
    if rm_parallel || ts_parallel {
        4
    } else {
        1
    }
}

/// Applies the batches of its partitions to the stores and counts them.
async fn worker(
    rm: Option<Arc<SqlReadModel>>,
    ts: Option<Arc<tokio::sync::Mutex<Writer>>>,
    mut batches: tokio::sync::mpsc::Receiver<Vec<ConsumedRecord>>,
    shared: Arc<Mutex<(Progress, Counts)>>,
) -> anyhow::Result<()> {
    while let Some(batch) = batches.recv().await {
        let mut rm_counts = Counts::default();
        let mut ts_counts = Counts::default();
        let rm_part = async {
            if let Some(store) = &rm {
                apply_read_model(store, &batch, &mut rm_counts).await;
            }
        };
        let ts_part = async {
            match &ts {
                Some(writer) => apply_timeseries(writer, &batch, &mut ts_counts).await,
                None => Ok(()),
            }
        };
        let ((), ts_done) = tokio::join!(rm_part, ts_part);
        ts_done?;
        let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let (progress, counts) = &mut *guard;
        counts.changes += rm_counts.changes;
        counts.rm_undecodable += rm_counts.rm_undecodable;
        counts.reports += ts_counts.reports;
        counts.points += ts_counts.points;
        counts.ts_undecodable += ts_counts.ts_undecodable;
        for r in &batch {
            *counts.per_topic.entry(r.topic.to_string()).or_default() += 1;
        }
        progress.advance(&batch);
    }
    Ok(())
}

/// Opens the read-model target and checks it holds no projected data (or, with `force`,
/// empties the projected tables).
async fn open_read_model_target(url: &str, force: bool) -> anyhow::Result<Arc<SqlReadModel>> {
    let store = fleet_stores::open_sql(url)
        .await
        .with_context(|| format!("opening the read model {}", crate::roles::redact(url)))?;
    let rows = store.projected_row_count(READ_MODEL_PROJECTION).await?;
    if rows > 0 {
        if !force {
            bail!(
                "the read model {} is not empty ({rows} projected rows and offsets): replay \
                 into a fresh database, or pass --force to empty its projected tables first \
                 (the registry and the audit log are kept)",
                crate::roles::redact(url)
            );
        }
        let removed = store.clear_projected(READ_MODEL_PROJECTION).await?;
        eprintln!(
            "--force: emptied the projected tables of {} ({removed} rows); the registry and \
             the audit log are kept.",
            crate::roles::redact(url)
        );
    }
    Ok(store)
}

/// Opens the time-series target and checks it holds no series (unless `force`).
async fn open_timeseries_target(
    url: &str,
    cfg: &ProjectionsConfig,
    force: bool,
) -> anyhow::Result<Arc<TimeSeries>> {
    // No wall-clock checkpoints while replaying: one at the end.
    let engine = fleet_timeseries::EngineConfig {
        checkpoint_interval: std::time::Duration::from_secs(365 * 24 * 3600),
        ..cfg.timeseries_engine.clone()
    };
    let store = fleet_timeseries::open(url, cfg.timeseries_retention, engine)
        .await
        .with_context(|| format!("opening the time-series store {url}"))?;
    let some = store.list_series(1).await?;
    if let Some(first) = some.first() {
        if !force {
            bail!(
                "the time-series store {url} is not empty (it has series, {} of agent {} \
                 among them): replay into an empty one, or pass --force to write over it",
                first.series,
                first.agent_id
            );
        }
        eprintln!(
            "--force: writing over the time-series store {url}; what it holds and the topics \
             do not is left as it is."
        );
    }
    Ok(store)
}

/// `fleetstream replay`.
#[allow(clippy::print_stdout)] // the summary is the command's output
pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref(), args.event_log.as_deref())?;
    read_with_registry(&cfg)?;
    let batch_size = args.batch_size.max(1);
    let (rm_url, ts_url) = targets(args.projection, &args.into)?;
    let start = match &args.from {
        Some(t) => Start::Time(parse_time(t, fleet_schemas::time::now_micros())?.div_euclid(1000)),
        None => Start::Beginning,
    };
    let log = crate::roles::open_log(&cfg.event_log, &cfg.event_log_options).await?;

    let rm = match &rm_url {
        Some(url) => Some(open_read_model_target(url, args.force).await?),
        None => None,
    };
    let ts = match &ts_url {
        Some(url) => Some(open_timeseries_target(url, &cfg, args.force).await?),
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
    let spans = reader::plan(log.as_ref(), &topics, start, None).await?;
    describe_plan(&spans, start, log.as_ref());

    let jobs = args
        .jobs
        .map_or_else(|| default_jobs(rm.as_deref(), ts.as_deref()), usize::from);
    // One writer feeds the engine (workers take turns with it).
    let writer = ts
        .as_ref()
        .map(|ts| Arc::new(tokio::sync::Mutex::new(ts.writer())));
    let progress = Progress::new("replay", &spans);
    let shared = Arc::new(Mutex::new((progress, Counts::default())));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ConsumedRecord>>(4);
    let reading = tokio::spawn(reader::read(log.clone(), spans.clone(), batch_size, tx));
    // Workers, each owning the partitions whose number is its index modulo `jobs`: records
    // keyed by agent (the same partition number on every agent-keyed topic) stay with one
    // worker and in order, so workers never touch the same rows.
    let mut senders = Vec::with_capacity(jobs);
    let mut workers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let (wtx, wrx) = tokio::sync::mpsc::channel::<Vec<ConsumedRecord>>(2);
        senders.push(wtx);
        workers.push(tokio::spawn(worker(
            rm.clone(),
            writer.clone(),
            wrx,
            Arc::clone(&shared),
        )));
    }
    while let Some(batch) = rx.recv().await {
        let mut parts: Vec<Vec<ConsumedRecord>> = vec![Vec::new(); jobs];
        for r in batch {
            let i = r.partition as usize % jobs;
            parts[i].push(r);
        }
        for (part, sender) in parts.into_iter().zip(&senders) {
            if !part.is_empty() && sender.send(part).await.is_err() {
                bail!("a replay worker stopped");
            }
        }
    }
    drop(senders);
    for w in workers {
        w.await.context("a replay worker failed")??;
    }
    // The open windows and every partition's position go into a checkpoint, so a live
    // projection pointed at the rebuilt store resumes after the replayed records.
    if let Some(writer) = &writer {
        writer.lock().await.checkpoint().await?;
    }
    let outcome = reading.await.context("the reader task failed")??;
    let (mut progress, counts) = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
        Err(_) => bail!("a replay worker is still running"),
    };
    progress.finish();

    let secs = progress.elapsed().as_secs_f64();
    println!(
        "Replay finished in {secs:.1} s: {} records ({:.0} records/s) from {} partitions of {} topics, up to the end offsets taken at start ({jobs} worker{}).",
        progress.done(),
        progress.rate(),
        spans.iter().filter(|s| s.len() > 0).count(),
        counts.per_topic.len(),
        if jobs == 1 { "" } else { "s" },
    );
    for (topic, n) in &counts.per_topic {
        println!("  {topic:<22} {n} records");
    }
    if let (Some(url), Some(store)) = (&rm_url, &rm) {
        println!(
            "  read model {} ({}): {} changes applied, {} undecodable records skipped; offsets stored as projection \"{READ_MODEL_PROJECTION}\".",
            crate::roles::redact(url),
            store.engine_kind().as_str(),
            counts.changes,
            counts.rm_undecodable
        );
    }
    if let (Some(url), Some(store)) = (&ts_url, &ts) {
        println!(
            "  time series {url} ({}): {} reports, {} points written, {} undecodable reports skipped.",
            store.engine(),
            counts.reports,
            counts.points,
            counts.ts_undecodable
        );
    }
    if rm.is_some() {
        println!(
            "Not rebuilt (not derived from topics): the registry ({}) and the audit log. A fresh \
             target holds none of them; copy them from the live database if the rebuilt one is \
             to serve the API.",
            REGISTRY_TABLES.join(", ")
        );
    }
    if !outcome.unfinished.is_empty() {
        for (topic, p, next, end) in &outcome.unfinished {
            println!(
                "  warning: {topic}/{p} stopped at offset {next} of {end}: no record came for {} s (offsets with gaps?)",
                reader::IDLE_LIMIT.as_secs()
            );
        }
    }
    if let Some(store) = rm {
        store.close().await;
    }
    Ok(())
}

/// Tells on stderr what the run will read.
fn describe_plan(spans: &[Span], start: Start, log: &dyn EventLog) {
    let total: u64 = spans.iter().map(Span::len).sum();
    let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
    for s in spans {
        *per_topic.entry(&s.topic).or_default() += s.len();
    }
    let from = match start {
        Start::Beginning => "the beginning".to_owned(),
        Start::Time(ms) => rfc3339(ms.saturating_mul(1000)),
    };
    let topics: Vec<String> = per_topic.iter().map(|(t, n)| format!("{t} {n}")).collect();
    eprintln!(
        "Reading {total} records from the {} log, from {from} to the end offsets now: {}.",
        log.engine(),
        topics.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = 1_700_000_000_000_000;
        assert_eq!(parse_time("now", now).ok(), Some(now));
        assert_eq!(parse_time("24h", now).ok(), Some(now - 86_400_000_000));
        assert_eq!(parse_time("90m", now).ok(), Some(now - 5_400_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now).ok(),
            Some(1_700_000_000_000_000)
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

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
