//! `fleetstream deadletter list` and `fleetstream deadletter replay`: inspect the records
//! consumers gave up on (`fleet.deadletter.v1`) and write them back to their topics after
//! a fix. How a replay works is [`fleet_replay::deadletter`]'s; this module parses the
//! arguments and prints.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use fleet_event_log::EventLog;
use fleet_replay::deadletter::{Entry, Filter, Which};
use fleet_replay::{rfc3339, rfc3339_secs};
use fleet_schemas::Wire;
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
`[event-log]` table of --config (any role's TOML file). The embedded log (file://) is open in one \
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
    /// A role's TOML file (gateway, processors or projections): its `[event-log]` `url`
    /// and `options` are used, other keys ignored.
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

async fn open_log(args: &LogArgs) -> anyhow::Result<Arc<dyn EventLog>> {
    let (url, options) = fleet_replay::deadletter::log_settings(
        args.config.as_deref(),
        args.event_log.as_deref(),
        args.data_dir.as_deref(),
    )?;
    Ok(fleet_replay::deadletter::open_log(&url, &options).await?)
}

// ---------------------------------------------------------------------------------- list

#[allow(clippy::print_stdout)] // the listing is the command's output
async fn list(args: ListArgs) -> anyhow::Result<()> {
    let filter = Filter {
        topic: args.topic,
        consumer: args.consumer,
    };
    filter.check()?;
    let now = fleet_schemas::time::now_micros();
    let since = crate::replay::parse_time("--since", args.since.as_deref(), now)?;
    let log = open_log(&args.log).await?;
    let all = fleet_replay::deadletter::read_all(log.as_ref(), &Wire::plain()).await?;
    let (shown, matching) = all.select(&filter, since, args.limit);
    match args.format {
        Format::Json => {
            let items: Vec<serde_json::Value> = shown
                .iter()
                .map(|e| to_json(e, all.replayed_to(e), all.replays_of(e)))
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
        Format::Table => {
            let rows: Vec<[String; 8]> = shown
                .iter()
                .map(|e| {
                    let d = &e.letter;
                    let status = match all.replayed_to(e) {
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
                        rfc3339_secs(d.occurred_at),
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
        "source_timestamp": rfc3339(d.source_timestamp.saturating_mul(1000)),
        "size": d.value.0.len(),
        "value_base64": b64(&d.value.0),
        "occurred_at": rfc3339_secs(d.occurred_at),
        "replayed": replayed.map(|r| json!({
            "partition": r.letter.replayed_partition,
            "offset": r.letter.replayed_offset,
            "at": rfc3339_secs(r.letter.occurred_at),
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

#[allow(clippy::print_stdout)] // what it did is the command's output
async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let filter = Filter {
        topic: args.topic,
        consumer: args.consumer,
    };
    filter.check()?;
    let which = if args.all {
        Which::All
    } else {
        Which::Positions(
            args.offset
                .iter()
                .map(|s| parse_position(s))
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let log = open_log(&args.log).await?;
    let all = fleet_replay::deadletter::read_all(log.as_ref(), &Wire::plain()).await?;
    let plan = fleet_replay::deadletter::plan(&all, &which, &filter, args.force)?;
    if !plan.skipped.is_empty() {
        let names: Vec<String> = plan.skipped.iter().map(|p| p.describe_replayed()).collect();
        println!(
            "Skipped {} source record(s) already replayed (--force to replay them again):\n  {}",
            plan.skipped.len(),
            names.join("\n  ")
        );
    }
    if plan.todo.is_empty() {
        println!("Nothing to replay.");
        return Ok(());
    }
    let verb = if args.dry_run {
        "Would replay"
    } else {
        "Replaying"
    };
    println!("{verb} {} source record(s):", plan.todo.len());
    let mut written = 0usize;
    for p in &plan.todo {
        let consumers: Vec<&str> = p
            .letters
            .iter()
            .map(|e| e.letter.consumer.as_str())
            .collect();
        let what = format!(
            "{} ({} bytes; dead letter {} of {})",
            p.source_text(),
            p.letters.first().map_or(0, |e| e.letter.value.0.len()),
            p.positions(),
            consumers.join(", ")
        );
        if args.dry_run {
            println!("  would write {what} back to {}", p.source.0);
            continue;
        }
        let at = fleet_replay::deadletter::write_back(log.as_ref(), &Wire::plain(), p).await?;
        written += 1;
        println!(
            "  wrote {what} back to {}/{}/{}",
            p.source.0, at.partition, at.offset
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
    fn replay_needs_offsets_or_all() {
        use crate::{parse, Command};
        assert!(parse("deadletter replay").is_err());
        assert!(parse("deadletter replay --all --topic fleet.rules.v1").is_ok());
        assert!(parse("deadletter replay --offset 1 --offset 2:3").is_ok());
        assert!(parse("deadletter list --event-log x --data-dir d").is_err());
        let Ok(Command::Deadletter(DeadletterArgs {
            action: Action::List(list),
        })) = parse("deadletter list --since 24h")
        else {
            panic!("not a list");
        };
        assert_eq!(list.limit, 100);
        assert_eq!(list.format, Format::Table);
    }

    #[test]
    fn long_reasons_are_cut_to_one_line() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
