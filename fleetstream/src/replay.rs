//! `fleetstream replay`, `fleetstream verify` and `fleetstream export`: the topics are the
//! source of truth, and these make that usable.
//!
//! * `replay` rebuilds a projection (read model, time series, or both) into a fresh store
//!   ([`fleet_replay::rebuild`]).
//! * `verify` compares two stores of one projection and reports every difference
//!   ([`fleet_replay::verify`]).
//! * `export` writes a window of a topic to a JSONL or Avro object container file
//!   ([`fleet_replay::export`]).
//!
//! The work is the library's (`fleet-replay`); this module parses the arguments, shows the
//! progress and prints the summaries.

mod export;
mod progress;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use fleet_projections::project::READ_MODEL_PROJECTION;
use fleet_projections::ProjectionsConfig;
use fleet_registry::REGISTRY_TABLES;
use fleet_replay::rebuild::{ProjectionKind, ReplayOptions};
use fleet_replay::{rfc3339, Span, Start};
use fleet_schemas::Wire;
use fleet_service::config::redact_url;

pub(crate) use export::{export, ExportArgs};
pub(crate) use verify::{verify, VerifyArgs};

use progress::Shown;

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
    /// The projections' TOML file (see config/projections.example.toml): its `[event-log]`
    /// (the log, its options, and `schema-registry-url` to read Confluent-framed records)
    /// and `timeseries-retention` are used.
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
        cfg.event_log.url = url.to_owned();
    }
    Ok(cfg)
}

/// The wire the tools read with: with `schema-registry-url` set, one that fetches the
/// writer schemas of Confluent-framed records from the registry (read only: nothing is
/// registered, and it writes nothing). Single-object records decode either way.
pub(crate) fn read_with_registry(cfg: &ProjectionsConfig) -> anyhow::Result<Wire> {
    let url = cfg.event_log.schema_registry_url.trim();
    if url.is_empty() {
        return Ok(Wire::plain());
    }
    let client = fleet_schema_registry::SchemaRegistryClient::new(url)
        .with_context(|| format!("schema-registry-url = {url:?}"))?;
    fleet_schema_registry::wire(&client, &[])
        .with_context(|| format!("schema-registry-url = {url:?}"))
}

/// Parses the time a flag gives, if given ([`fleet_schemas::time::parse_instant`]): µs
/// since the epoch; the error names the flag.
pub(crate) fn parse_time(
    flag: &str,
    text: Option<&str>,
    now_micros: i64,
) -> anyhow::Result<Option<i64>> {
    let Some(text) = text.map(str::trim) else {
        return Ok(None);
    };
    fleet_schemas::time::parse_instant(text, now_micros)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag} {text:?} {e}"))
}

/// `fleetstream replay`.
#[allow(clippy::print_stdout)] // the summary is the command's output
pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref(), args.event_log.as_deref())?;
    let wire = read_with_registry(&cfg)?;
    // The targets are checked before anything is opened.
    fleet_replay::rebuild::targets(args.projection, &args.into)?;
    let start = match parse_time(
        "--from",
        args.from.as_deref(),
        fleet_schemas::time::now_micros(),
    )? {
        Some(t) => Start::Time(t.div_euclid(1000)),
        None => Start::Beginning,
    };
    let log = crate::roles::open_log(&cfg.event_log).await?;
    let engine = log.engine();
    let mut shown = Shown::new("replay", move |spans| describe_plan(spans, start, engine));
    let options = ReplayOptions {
        projection: args.projection,
        into: args.into,
        start,
        batch_size: args.batch_size,
        jobs: args.jobs.map(usize::from),
        force: args.force,
    };
    let report = fleet_replay::rebuild::replay(log, wire, &cfg, options, &mut shown).await?;

    let jobs = report.jobs;
    println!(
        "Replay finished in {:.1} s: {} records ({:.0} records/s) from {} partitions of {} topics, up to the end offsets taken at start ({jobs} worker{}).",
        report.elapsed.as_secs_f64(),
        report.records,
        report.rate(),
        report.partitions,
        report.per_topic.len(),
        if jobs == 1 { "" } else { "s" },
    );
    for (topic, n) in &report.per_topic {
        println!("  {topic:<22} {n} records");
    }
    if let Some(rm) = &report.read_model {
        println!(
            "  read model {} ({}): {} changes applied ({} older reports coalesced into a later one of their agent), {} undecodable records skipped; offsets stored as projection \"{READ_MODEL_PROJECTION}\".",
            redact_url(&rm.url),
            rm.engine,
            rm.changes,
            rm.coalesced,
            rm.undecodable
        );
    }
    if let Some(ts) = &report.timeseries {
        println!(
            "  time series {} ({}): {} records (reports, sample batches), {} points written, {} undecodable records skipped.",
            ts.url, ts.engine, ts.reports, ts.points, ts.undecodable
        );
    }
    if report.read_model.is_some() {
        println!(
            "Not rebuilt (not derived from topics): the registry ({}) and the audit log. A fresh \
             target holds none of them; copy them from the live database if the rebuilt one is \
             to serve the API.",
            REGISTRY_TABLES.join(", ")
        );
    }
    for (topic, p, next, end) in &report.unfinished {
        println!(
            "  warning: {topic}/{p} stopped at offset {next} of {end}: no record came for {} s (offsets with gaps?)",
            fleet_replay::IDLE_LIMIT.as_secs()
        );
    }
    Ok(())
}

/// Tells on stderr what the run will read.
fn describe_plan(spans: &[Span], start: Start, engine: &str) {
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
        "Reading {total} records from the {engine} log, from {from} to the end offsets now: {}.",
        topics.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_flags_parse_and_name_the_flag() {
        let now = 1_700_000_000_000_000;
        let at = |text| parse_time("--from", Some(text), now).ok().flatten();
        assert_eq!(at("now"), Some(now));
        assert_eq!(at(" 24h "), Some(now - 86_400_000_000));
        assert_eq!(at("90m"), Some(now - 5_400_000_000));
        assert_eq!(at("2023-11-14T22:13:20Z"), Some(1_700_000_000_000_000));
        assert_eq!(parse_time("--from", None, now).ok(), Some(None));
        let e = parse_time("--since", Some("yesterday-ish"), now).expect_err("not a time");
        let text = e.to_string();
        assert!(
            text.starts_with("--since \"yesterday-ish\" must be RFC 3339"),
            "{text}"
        );
        let e = parse_time("--to", Some("99999y"), i64::MIN / 2).expect_err("out of range");
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn replay_arguments_parse() {
        use crate::{parse, Command};
        let Ok(Command::Replay(args)) = parse(
            "replay --projection all --into sqlite://a.db --into file:///ts --from 24h --jobs 2",
        ) else {
            panic!("not a replay");
        };
        assert_eq!(args.projection, ProjectionKind::All);
        assert_eq!(args.into.len(), 2);
        assert_eq!(args.jobs, Some(2));
        assert_eq!(args.batch_size, 10_000);
        assert!(parse("replay --projection all").is_err());
        assert!(parse("replay --projection timeseries --into x --jobs 0").is_err());
        assert!(
            parse("replay --projection timeseries --into x --from 1h --from-beginning").is_err()
        );
    }
}
