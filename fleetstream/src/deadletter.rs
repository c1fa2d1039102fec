//! `fleetstream deadletter list` and `fleetstream deadletter replay`: inspect the records
//! consumers gave up on (`fleet.deadletter.v1`) and write them back to their topics after
//! a fix.
//!
//! Design of `replay`:
//!
//! * The dead letters to replay are named by their own position in `fleet.deadletter.v1`
//!   (the `DL` column of `list`: `OFFSET`, or `PARTITION:OFFSET`), or all of them
//!   (`--all`, narrowed by `--topic` / `--consumer`).
//! * One source record can have several dead letters (each consumer that gave up on it
//!   writes its own). The raw bytes of a source record are written back to its topic
//!   once, with its original key (so they land on the partition the key maps to, like
//!   the original), stamped now; every consumer of the topic reads them again. Consumers
//!   are idempotent (deterministic ids, upserts), so the ones that had processed the
//!   original see a duplicate they ignore.
//! * After the write, a `REPLAYED` record goes to `fleet.deadletter.v1` for each source
//!   record, with the source coordinates and the new partition and offset. A dead letter
//!   whose source record has such a record is "replayed": `list` shows where it went,
//!   `replay --all` skips it, and `replay --offset` naming it is refused (nothing is
//!   written) unless `--force`, which writes the bytes again and adds another `REPLAYED`.
//! * If the replayed bytes still fail, the consumer writes a new dead letter for the new
//!   coordinates: replaying never loops on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::{codec, ids, topics, AvroBytes, DeadLetter, DeadLetterKind};
use serde_json::json;

/// `fleetstream deadletter`.
#[derive(Debug, Args)]
#[command(
    about = "Inspect and replay the records consumers gave up on (fleet.deadletter.v1)",
    long_about = "Inspect and replay the records consumers gave up on.\n\n\
A consumer (the read-model and time-series projections, the alert evaluator, the ticketer, \
liveness, command timeouts, the gateway's command dispatcher and deactivation watcher) that \
cannot decode a record, or whose store or processing refuses it as invalid, writes it to \
fleet.deadletter.v1 with the reason, the source topic, partition, offset, key and timestamp \
and the raw bytes, then moves on; it commits past the record only once the log took the \
dead letter. Each one counts in fleet_deadletters_total{consumer,topic,reason} on /metrics.\n\n\
`list` shows them; `replay` writes their raw bytes back to their topics once the consumer \
(or the producer) is fixed, and marks them replayed.\n\n\
The event log comes from --event-log, --data-dir (a `fleetstream up` data directory) or the \
`event-log` key of --config (any role's TOML file). The embedded log (file://) is open in one \
process at a time: stop `fleetstream up` (or the role using it) first; Kafka needs no stop.",
    after_help = "Examples:\n  \
fleetstream deadletter list --data-dir fleetstream-data\n  \
fleetstream deadletter list --config processors.toml --topic fleet.metrics.v1 --since 24h --format json\n  \
fleetstream deadletter replay --config processors.toml --offset 12 --offset 13 --dry-run\n  \
fleetstream deadletter replay --event-log kafka://k1:9092 --all --topic fleet.rules.v1"
)]
pub(crate) struct DeadletterArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List dead letters: source topic/partition/offset, consumer, reason, size, time.
    #[command(
        long_about = "List the dead letters of fleet.deadletter.v1, oldest first: their own \
position (DL, what `replay --offset` takes), when the consumer gave up, the consumer, the kind \
(decode: not a record of the topic's type; process: decoded but refused as invalid), the source \
record (topic/partition/offset), its size in bytes, whether it was replayed (and where to), and \
the reason. A dead letter written twice (two instances, a crash before the commit) is shown \
once. --format json prints one JSON array with every field, the raw bytes in base64."
    )]
    List(ListArgs),
    /// Write dead letters' raw bytes back to their source topics.
    #[command(
        long_about = "Write the raw bytes of dead letters back to their source topics, so \
the (fixed) consumers read them again; then record on fleet.deadletter.v1 that they were \
replayed (a REPLAYED record naming the new partition and offset).\n\n\
Name dead letters by their DL position as `list` shows it (--offset, repeatable), or take \
every one not replayed yet (--all), narrowed by --topic and --consumer. A source record with \
dead letters from several consumers is written back once, with its original key (so it lands \
on the partition the key maps to). Every consumer of the topic reads it again; they are \
idempotent, so those that had processed it ignore it.\n\n\
A dead letter already replayed is refused (nothing is written) unless --force; --all skips \
such dead letters. --dry-run prints what would be written and writes nothing. If the bytes \
still fail, the consumer writes a new dead letter for their new offset.",
        group(clap::ArgGroup::new("which").required(true).args(["offset", "all"]))
    )]
    Replay(ReplayArgs),
}

/// Where the event log is.
#[derive(Debug, Args)]
struct LogArgs {
    /// A role's TOML file (gateway, processors or projections): its `event-log` and
    /// `event-log-options` are used, other keys ignored.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Event log URL (kafka://host:9092,... or file:///dir), overriding the file's.
    #[arg(long, value_name = "URL")]
    event_log: Option<String>,
    /// A `fleetstream up` data directory: its embedded log (DIR/log).
    #[arg(long, value_name = "DIR", conflicts_with = "event_log")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Only dead letters of records of this source topic (fleet.metrics.v1, ...).
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Only dead letters of this consumer (readmodel, timeseries, alert-evaluator,
    /// ticketer, liveness, command-timeouts, gateway-commands, gateway-deactivations).
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// Only dead letters written at or after TIME: RFC 3339 (2025-01-31T12:00:00Z) or a
    /// duration back from now (24h, 90m, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Show at most N (the newest N, oldest first).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON array, every field (raw bytes in base64).
    Json,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    log: LogArgs,
    /// A dead letter to replay: its position in fleet.deadletter.v1 as `list` shows it
    /// (OFFSET, or PARTITION:OFFSET). Repeatable.
    #[arg(long, value_name = "DL")]
    offset: Vec<String>,
    /// Every dead letter not replayed yet (narrowed by --topic and --consumer).
    #[arg(long)]
    all: bool,
    /// Only dead letters of records of this source topic.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Only dead letters of this consumer.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// Print what would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay dead letters already replayed (writes their bytes again).
    #[arg(long)]
    force: bool,
}

/// Runs `fleetstream deadletter ...`.
pub(crate) async fn run(args: DeadletterArgs) -> anyhow::Result<()> {
    match args.action {
        Action::List(a) => list(a).await,
        Action::Replay(a) => replay(a).await,
    }
}

// ------------------------------------------------------------------------ the event log

/// The roles' default event log.
const DEFAULT_EVENT_LOG: &str = "kafka://127.0.0.1:9092";

/// The event-log URL and engine options `args` name.
fn log_settings(args: &LogArgs) -> anyhow::Result<(String, fleet_event_log::EngineOptions)> {
    let mut url = DEFAULT_EVENT_LOG.to_owned();
    let mut options = fleet_event_log::EngineOptions::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let doc: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        match doc.get("event-log") {
            Some(toml::Value::String(s)) => url.clone_from(s),
            Some(_) => bail!("`event-log` in {} must be a string", path.display()),
            None if ["gateway", "processors", "projections"]
                .iter()
                .any(|t| doc.contains_key(*t)) =>
            {
                bail!(
                    "{} looks like a `fleetstream up` file (its roles always use the embedded \
                     log in the data directory): give --data-dir instead",
                    path.display()
                )
            }
            None => {}
        }
        if let Some(t) = doc.get("event-log-options") {
            let toml::Value::Table(t) = t else {
                bail!("`event-log-options` in {} must be a table", path.display());
            };
            for (k, v) in t {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                options.insert(k.clone(), v);
            }
        }
    }
    if let Some(dir) = &args.data_dir {
        let log = dir.join("log");
        let s = log
            .to_str()
            .with_context(|| format!("data directory {} is not valid UTF-8", dir.display()))?;
        url = format!("file://{s}");
    }
    if let Some(u) = &args.event_log {
        url.clone_from(u);
    }
    Ok((url, options))
}

async fn open_log(args: &LogArgs) -> anyhow::Result<Arc<dyn EventLog>> {
    let (url, options) = log_settings(args)?;
    if let Some(path) = url.strip_prefix("file://") {
        if !Path::new(path).exists() {
            bail!("no embedded event log at {path} (wrong --data-dir or --event-log?)");
        }
    }
    let log = fleet_event_log::open(&url, &options)
        .await
        .with_context(|| {
            if url.starts_with("kafka://") {
                format!("opening the event log at {url}")
            } else {
                format!(
                    "opening the event log at {url} (the embedded log is open in one process at a \
                 time: stop `fleetstream up` or the role using it first)"
                )
            }
        })?;
    match log.partition_count(topics::DEADLETTER).await {
        Ok(_) => {}
        // A log no role ran on yet: create the catalog's topics as the roles would.
        Err(fleet_event_log::LogError::UnknownTopic(_)) => {
            fleet_consumer::log::ensure_topics(log.as_ref()).await?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", topics::DEADLETTER)),
    }
    Ok(log)
}

// --------------------------------------------------------------- reading the dead letters

/// One record of `fleet.deadletter.v1` with its position.
#[derive(Debug, Clone)]
struct Entry {
    partition: u32,
    offset: i64,
    letter: DeadLetter,
}

impl Entry {
    /// The `DL` of `list`: `OFFSET` on partition 0, else `PARTITION:OFFSET`.
    fn position(&self) -> String {
        if self.partition == 0 {
            self.offset.to_string()
        } else {
            format!("{}:{}", self.partition, self.offset)
        }
    }
}

type Coords = (String, i32, i64);

fn coords(d: &DeadLetter) -> Coords {
    (d.source_topic.clone(), d.source_partition, d.source_offset)
}

/// Every dead letter (duplicates by event id dropped) and, per source record, its
/// REPLAYED records in topic order.
struct DeadLetterTopic {
    letters: Vec<Entry>,
    replays: HashMap<Coords, Vec<Entry>>,
    unreadable: u64,
}

async fn read_all(log: &dyn EventLog) -> anyhow::Result<DeadLetterTopic> {
    let mut letters = Vec::new();
    let mut replays: HashMap<Coords, Vec<Entry>> = HashMap::new();
    let mut unreadable = 0u64;
    let mut ids = HashSet::new();
    fleet_consumer::log::read_to_end(log, topics::DEADLETTER, |r| {
        match codec::decode::<DeadLetter>(&r.value) {
            Ok(letter) => {
                let e = Entry {
                    partition: r.partition,
                    offset: r.offset,
                    letter,
                };
                if e.letter.kind == DeadLetterKind::Replayed {
                    replays.entry(coords(&e.letter)).or_default().push(e);
                } else if ids.insert(e.letter.event_id.clone()) {
                    letters.push(e);
                }
            }
            Err(_) => unreadable += 1,
        }
    })
    .await
    .context("reading fleet.deadletter.v1")?;
    letters.sort_by_key(|e| (e.letter.occurred_at, e.partition, e.offset));
    for v in replays.values_mut() {
        v.sort_by_key(|e| (e.partition, e.offset));
    }
    Ok(DeadLetterTopic {
        letters,
        replays,
        unreadable,
    })
}

/// Parses a time: RFC 3339, `now`, or a duration back from now (`24h`, `90m`, `7d`).
/// Returns µs since the epoch.
fn parse_time(text: &str, now_micros: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_micros);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(now_micros.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
        Err(_) => bail!(
            "--since {text:?} is not a time: use RFC 3339 (2025-01-31T12:00:00Z) or a duration \
             back from now (24h, 90m, 7d)"
        ),
    }
}

fn rfc3339_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{micros}µs"))
}

fn rfc3339_millis(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{millis}ms"))
}

fn check_topic(topic: Option<&str>) -> anyhow::Result<()> {
    if let Some(t) = topic {
        if topics::find(t).is_none() {
            let names: Vec<&str> = topics::ALL.iter().map(|t| t.name).collect();
            bail!(
                "--topic {t:?} is not a Fleetstream topic: one of {}",
                names.join(", ")
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- list

#[allow(clippy::print_stdout)] // the listing is the command's output
async fn list(args: ListArgs) -> anyhow::Result<()> {
    check_topic(args.topic.as_deref())?;
    let now = fleet_schemas::time::now_micros();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?;
    let log = open_log(&args.log).await?;
    let all = read_all(log.as_ref()).await?;
    let mut shown: Vec<&Entry> = all
        .letters
        .iter()
        .filter(|e| {
            args.topic
                .as_deref()
                .is_none_or(|t| e.letter.source_topic == t)
        })
        .filter(|e| {
            args.consumer
                .as_deref()
                .is_none_or(|c| e.letter.consumer == c)
        })
        .filter(|e| since.is_none_or(|s| e.letter.occurred_at >= s))
        .collect();
    let matching = shown.len();
    if shown.len() > args.limit {
        shown.drain(..shown.len() - args.limit);
    }
    let replayed_to = |e: &Entry| all.replays.get(&coords(&e.letter)).and_then(|v| v.last());
    match args.format {
        Format::Json => {
            let items: Vec<serde_json::Value> = shown
                .iter()
                .map(|e| to_json(e, replayed_to(e), all.replays.get(&coords(&e.letter))))
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
        Format::Table => {
            let rows: Vec<[String; 8]> = shown
                .iter()
                .map(|e| {
                    let d = &e.letter;
                    let status = match replayed_to(e) {
                        Some(r) => format!(
                            "replayed to {}/{}/{}",
                            r.letter.source_topic,
                            r.letter.replayed_partition.unwrap_or(-1),
                            r.letter.replayed_offset.unwrap_or(-1)
                        ),
                        None => "-".to_owned(),
                    };
                    [
                        e.position(),
                        rfc3339_micros(d.occurred_at),
                        d.consumer.clone(),
                        d.kind.as_str().to_owned(),
                        d.source(),
                        d.value.0.len().to_string(),
                        status,
                        one_line(&d.reason, 100),
                    ]
                })
                .collect();
            print_table(
                &[
                    "DL", "TIME", "CONSUMER", "KIND", "SOURCE", "BYTES", "STATUS", "REASON",
                ],
                &rows,
            );
            let mut summary = format!(
                "{} dead letter{} shown",
                shown.len(),
                if shown.len() == 1 { "" } else { "s" }
            );
            if matching > shown.len() {
                summary.push_str(&format!(
                    " (the newest of {matching}; --limit {} to see more)",
                    matching
                ));
            }
            if all.unreadable > 0 {
                summary.push_str(&format!(
                    "; {} record(s) of fleet.deadletter.v1 did not decode",
                    all.unreadable
                ));
            }
            println!("{summary}.");
        }
    }
    Ok(())
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[allow(clippy::print_stdout)]
fn print_table(header: &[&str; 8], rows: &[[String; 8]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn to_json(e: &Entry, replayed: Option<&Entry>, replays: Option<&Vec<Entry>>) -> serde_json::Value {
    let d = &e.letter;
    json!({
        "dead_letter_partition": e.partition,
        "dead_letter_offset": e.offset,
        "event_id": d.event_id,
        "kind": d.kind.as_str(),
        "reason": d.reason,
        "consumer": d.consumer,
        "group": d.group,
        "tenant_id": d.tenant_id,
        "source_topic": d.source_topic,
        "source_partition": d.source_partition,
        "source_offset": d.source_offset,
        "source_key": d.source_key.as_ref().and_then(|k| std::str::from_utf8(&k.0).ok()),
        "source_key_base64": d.source_key.as_ref().map(|k| b64(&k.0)),
        "source_timestamp": rfc3339_millis(d.source_timestamp),
        "size": d.value.0.len(),
        "value_base64": b64(&d.value.0),
        "occurred_at": rfc3339_micros(d.occurred_at),
        "replayed": replayed.map(|r| json!({
            "partition": r.letter.replayed_partition,
            "offset": r.letter.replayed_offset,
            "at": rfc3339_micros(r.letter.occurred_at),
            "times": replays.map_or(0, Vec::len),
        })),
    })
}

// -------------------------------------------------------------------------------- replay

/// Parses a `DL` argument: `OFFSET` (partition 0) or `PARTITION:OFFSET`.
fn parse_position(text: &str) -> anyhow::Result<(u32, i64)> {
    let bad = || {
        anyhow::anyhow!(
            "--offset {text:?}: give a dead letter's position as `deadletter list` shows it \
             (OFFSET, or PARTITION:OFFSET)"
        )
    };
    let (p, o) = match text.split_once(':') {
        Some((p, o)) => (p.trim().parse::<u32>().map_err(|_| bad())?, o),
        None => (0, text),
    };
    let o = o.trim().parse::<i64>().map_err(|_| bad())?;
    if o < 0 {
        return Err(bad());
    }
    Ok((p, o))
}

/// One source record to write back, with the dead letters that name it.
struct Plan<'a> {
    source: Coords,
    letters: Vec<&'a Entry>,
    /// Earlier replays of it (a forced replay).
    earlier: Option<&'a Entry>,
}

#[allow(clippy::print_stdout)] // what it did is the command's output
async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    check_topic(args.topic.as_deref())?;
    let wanted: Vec<(u32, i64)> = args
        .offset
        .iter()
        .map(|s| parse_position(s))
        .collect::<anyhow::Result<_>>()?;
    let log = open_log(&args.log).await?;
    let all = read_all(log.as_ref()).await?;
    let by_position: HashMap<(u32, i64), &Entry> = all
        .letters
        .iter()
        .map(|e| ((e.partition, e.offset), e))
        .collect();
    let filter = |e: &Entry| {
        args.topic
            .as_deref()
            .is_none_or(|t| e.letter.source_topic == t)
            && args
                .consumer
                .as_deref()
                .is_none_or(|c| e.letter.consumer == c)
    };
    let mut selected: Vec<&Entry> = Vec::new();
    if args.all {
        selected.extend(all.letters.iter().filter(|e| filter(e)));
    } else {
        let mut missing = Vec::new();
        for pos in &wanted {
            match by_position.get(pos) {
                Some(e) if filter(e) => selected.push(e),
                Some(e) => bail!(
                    "dead letter {} is of {} (consumer {}), not of the --topic / --consumer given",
                    e.position(),
                    e.letter.source_topic,
                    e.letter.consumer
                ),
                None => missing.push(if pos.0 == 0 {
                    pos.1.to_string()
                } else {
                    format!("{}:{}", pos.0, pos.1)
                }),
            }
        }
        if !missing.is_empty() {
            bail!(
                "no dead letter at {} in fleet.deadletter.v1 (see `fleetstream deadletter list`; \
                 REPLAYED records cannot be replayed)",
                missing.join(", ")
            );
        }
    }
    // One write per source record, in the order of the source topic.
    let mut plans: BTreeMap<Coords, Plan<'_>> = BTreeMap::new();
    for e in selected {
        let source = coords(&e.letter);
        plans
            .entry(source.clone())
            .or_insert_with(|| Plan {
                earlier: all.replays.get(&source).and_then(|v| v.last()),
                source,
                letters: Vec::new(),
            })
            .letters
            .push(e);
    }
    let (mut todo, done): (Vec<Plan<'_>>, Vec<Plan<'_>>) = plans
        .into_values()
        .partition(|p| p.earlier.is_none() || args.force);
    if !done.is_empty() {
        let names: Vec<String> = done
            .iter()
            .map(|p| {
                let r = p.earlier.map(|r| &r.letter);
                format!(
                    "{}/{}/{} (dead letter {}, replayed to {}/{} at {})",
                    p.source.0,
                    p.source.1,
                    p.source.2,
                    positions(&p.letters),
                    r.and_then(|r| r.replayed_partition).unwrap_or(-1),
                    r.and_then(|r| r.replayed_offset).unwrap_or(-1),
                    r.map_or_else(String::new, |r| rfc3339_micros(r.occurred_at)),
                )
            })
            .collect();
        if args.all {
            println!(
                "Skipped {} source record(s) already replayed (--force to replay them again):\n  {}",
                done.len(),
                names.join("\n  ")
            );
        } else {
            bail!(
                "already replayed, so nothing was written (--force to replay again):\n  {}",
                names.join("\n  ")
            );
        }
    }
    if todo.is_empty() {
        println!("Nothing to replay.");
        return Ok(());
    }
    let verb = if args.dry_run {
        "Would replay"
    } else {
        "Replaying"
    };
    println!("{verb} {} source record(s):", todo.len());
    let mut written = 0usize;
    for plan in &mut todo {
        let first = &plan.letters[0].letter;
        let consumers: Vec<&str> = plan
            .letters
            .iter()
            .map(|e| e.letter.consumer.as_str())
            .collect();
        let what = format!(
            "{}/{}/{} ({} bytes; dead letter {} of {})",
            plan.source.0,
            plan.source.1,
            plan.source.2,
            first.value.0.len(),
            positions(&plan.letters),
            consumers.join(", ")
        );
        if args.dry_run {
            println!("  would write {what} back to {}", plan.source.0);
            continue;
        }
        let record = ProduceRecord {
            key: first.source_key.as_ref().map(|k| k.0.clone()),
            value: first.value.0.clone(),
            timestamp_ms: None,
        };
        let pos = log
            .produce(&plan.source.0, vec![record])
            .await
            .with_context(|| format!("writing {what} back"))?;
        let Some(at) = pos.first().copied() else {
            bail!("the log acknowledged no position for {what}");
        };
        let new_partition = i32::try_from(at.partition).unwrap_or(i32::MAX);
        let now = fleet_schemas::time::now_micros();
        let marker = DeadLetter {
            event_id: ids::v5(&[
                &plan.source.0,
                &plan.source.1.to_string(),
                &plan.source.2.to_string(),
                "REPLAYED",
                &at.partition.to_string(),
                &at.offset.to_string(),
            ])
            .to_string(),
            kind: DeadLetterKind::Replayed,
            reason: format!(
                "written back to {}/{}/{} by `fleetstream deadletter replay`{}",
                plan.source.0,
                at.partition,
                at.offset,
                if plan.earlier.is_some() {
                    " --force"
                } else {
                    ""
                }
            ),
            consumer: "deadletter-replay".into(),
            group: String::new(),
            tenant_id: first.tenant_id.clone(),
            source_topic: plan.source.0.clone(),
            source_partition: plan.source.1,
            source_offset: plan.source.2,
            source_key: first.source_key.clone(),
            source_timestamp: first.source_timestamp,
            value: AvroBytes::default(),
            replayed_partition: Some(new_partition),
            replayed_offset: Some(at.offset),
            occurred_at: now,
        };
        let value = codec::encode(&marker)?;
        log.produce(
            topics::DEADLETTER,
            vec![ProduceRecord {
                key: Some(marker.event_id.as_bytes().to_vec()),
                value,
                timestamp_ms: Some(now.div_euclid(1000)),
            }],
        )
        .await
        .with_context(|| {
            format!(
                "{what} was written back to {}/{}/{}, but marking it replayed failed: a second \
                 replay would write it again",
                plan.source.0, at.partition, at.offset
            )
        })?;
        written += 1;
        println!(
            "  wrote {what} back to {}/{}/{}",
            plan.source.0, at.partition, at.offset
        );
    }
    if args.dry_run {
        println!("Dry run: nothing written.");
    } else {
        println!(
            "Replayed {written} source record(s); each is marked replayed in fleet.deadletter.v1."
        );
    }
    Ok(())
}

fn positions(letters: &[&Entry]) -> String {
    letters
        .iter()
        .map(|e| e.position())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_as_list_prints_them() {
        assert_eq!(parse_position("12").ok(), Some((0, 12)));
        assert_eq!(parse_position("2:7").ok(), Some((2, 7)));
        assert!(parse_position("-1").is_err());
        assert!(parse_position("x").is_err());
        assert!(parse_position("1:").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_durations_back() {
        let now = 1_800_000_000_000_000;
        assert_eq!(parse_time("now", now).ok(), Some(now));
        assert_eq!(parse_time("1h", now).ok(), Some(now - 3_600_000_000));
        assert_eq!(
            parse_time("2027-01-15T08:00:00Z", now).ok(),
            Some(1_800_000_000_000_000)
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn the_event_log_comes_from_flags_or_any_role_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("processors.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nevent-log = \"kafka://k1:9092\"\n[event-log-options]\n\"linger.ms\" = \"5\"\n",
        )
        .expect("write");
        let args =
            |config: Option<PathBuf>, event_log: Option<&str>, data_dir: Option<&str>| LogArgs {
                config,
                event_log: event_log.map(str::to_owned),
                data_dir: data_dir.map(PathBuf::from),
            };
        let (url, opts) = log_settings(&args(Some(file.clone()), None, None)).expect("settings");
        assert_eq!(url, "kafka://k1:9092");
        assert_eq!(opts.get("linger.ms").map(String::as_str), Some("5"));
        let (url, _) = log_settings(&args(Some(file), Some("file:///x"), None)).expect("settings");
        assert_eq!(url, "file:///x");
        let (url, _) = log_settings(&args(None, None, Some("/data"))).expect("settings");
        assert_eq!(url, "file:///data/log");
        let (url, _) = log_settings(&args(None, None, None)).expect("settings");
        assert_eq!(url, DEFAULT_EVENT_LOG);
        let up = dir.path().join("fleetstream.toml");
        std::fs::write(&up, "[processors]\ngroup = \"g\"\n").expect("write");
        assert!(log_settings(&args(Some(up), None, None)).is_err());
    }
}
