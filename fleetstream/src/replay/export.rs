//! `fleetstream export`: a window of a topic to a file, for analytics teams
//! ([`fleet_replay::export`] says what is written).

use std::path::PathBuf;

use fleet_replay::export::{ExportFormat, ExportOptions};
use fleet_replay::{rfc3339, Span};

use super::progress::Shown;
use super::{load_config, parse_time};

/// Options of `fleetstream export`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Write a window of a topic to a JSONL or Avro object container file",
    long_about = "Write the records of one topic between two times to a file, for analytics \
teams: JSONL (one object per record: topic, partition, offset, timestamp, key, schema and the \
decoded record) or an Avro object container file with the record type's schema, which any \
Avro reader (fastavro, avro-tools, Spark) reads.\n\n\
The window runs from the first offset at or after --from (default: the oldest record) to the \
first offset at or after --to (default: the end offsets at start), in every partition; records \
whose timestamps fall outside it are left out. Reads directly, with a throw-away consumer \
group (no live group is touched). Progress on stderr, a summary on stdout. Records that do \
not decode are counted and skipped.\n\n\
The embedded event log (file://) is open in one process at a time: stop `fleetstream up` \
first.",
    after_help = "Examples:\n  \
fleetstream export --topic fleet.alerts.v1 --from 24h --format jsonl \\\n      \
--out alerts.jsonl --config projections.toml\n  \
fleetstream export --topic fleet.metrics.v1 --from 2025-01-31T00:00:00Z \\\n      \
--to 2025-02-01T00:00:00Z --format avro --out metrics.avro --event-log kafka://k1:9092"
)]
pub(crate) struct ExportArgs {
    /// The topic (fleet.metrics.v1, fleet.alerts.v1, ...).
    #[arg(long)]
    topic: String,
    /// Start of the window: RFC 3339 or a duration back from now (24h); default: the
    /// oldest record.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of the window (exclusive): RFC 3339 or a duration back from now; default: the
    /// end offsets at start.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// The file format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// The file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The projections' TOML file (for its `[event-log]`: the log, its options and
    /// `schema-registry-url`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Event log URL (kafka://host:9092,... or file:///dir), overriding the file's.
    #[arg(long, value_name = "URL")]
    event_log: Option<String>,
}

/// `fleetstream export`.
#[allow(clippy::print_stdout)] // the summary is the command's output
pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref(), args.event_log.as_deref())?;
    let wire = super::read_with_registry(&cfg)?;
    let now = fleet_schemas::time::now_micros();
    let from = parse_time("--from", args.from.as_deref(), now)?;
    let to = parse_time("--to", args.to.as_deref(), now)?;
    let options = ExportOptions {
        topic: args.topic,
        from,
        to,
        format: args.format,
        out: args.out,
        batch_size: cfg.batch_size,
    };
    options.check()?;
    let log = crate::roles::open_log(&cfg.event_log).await?;
    let (topic, out) = (options.topic.clone(), options.out.clone());
    let mut shown = Shown::new("export", move |spans: &[Span]| {
        let total: u64 = spans.iter().map(Span::len).sum();
        eprintln!(
            "Exporting up to {total} records of {topic} ({} partitions) from {} to {} into {}.",
            spans.len(),
            from.map_or("the beginning".to_owned(), rfc3339),
            to.map_or("the end offsets now".to_owned(), rfc3339),
            out.display()
        );
    });
    let report = fleet_replay::export::export(log, wire, &options, &mut shown).await?;
    println!(
        "Exported {} records of {} to {} ({}, {} bytes) in {:.1} s ({:.0} records/s).",
        report.written,
        options.topic,
        options.out.display(),
        match options.format {
            ExportFormat::Jsonl => "JSON lines",
            ExportFormat::Avro => "Avro object container file",
        },
        report.bytes,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    if report.outside + report.undecodable + report.other_type > 0 {
        println!(
            "  skipped: {} outside the time window, {} undecodable, {} of another record type",
            report.outside, report.undecodable, report.other_type
        );
    }
    for (topic, p, next, end) in &report.unfinished {
        println!(
            "  warning: {topic}/{p} stopped at offset {next} of {end}: no record came for {} s",
            fleet_replay::IDLE_LIMIT.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_arguments_parse() {
        use crate::{parse, Command};
        let Ok(Command::Export(args)) =
            parse("export --topic fleet.alerts.v1 --from 24h --format avro --out a.avro")
        else {
            panic!("not an export");
        };
        assert_eq!(args.format, ExportFormat::Avro);
        assert_eq!(args.from.as_deref(), Some("24h"));
        assert_eq!(args.to, None);
        assert!(parse("export --topic t --format csv --out a").is_err());
        assert!(parse("export --topic t --format jsonl").is_err());
    }
}
