//! `fleetstream export`: a window of a topic to a file, for analytics teams.
//!
//! * `jsonl`: one JSON object per record: `topic`, `partition`, `offset`, `timestamp`
//!   (RFC 3339, the record's log timestamp), `timestamp_ms`, `key` (UTF-8, or null),
//!   `schema` (the Avro full name of the writer schema) and `record`, the decoded record
//!   (unions as their value, enums as their symbol, timestamps as µs since the epoch,
//!   bytes as base64, non-finite floats as the strings "NaN", "Infinity", "-Infinity").
//! * `avro`: an Avro object container file (deflate blocks) whose schema is the record
//!   type's current `.avsc`; records written with an older released version are resolved
//!   to it. Any Avro reader (fastavro, avro-tools, Spark) reads it.
//!
//! The window: from the first offset at or after `--from` (or the oldest record) to the
//! first offset at or after `--to` (or the end offsets at start), per partition; records
//! whose timestamps fall outside `[--from, --to)` (timestamps need not grow with offsets)
//! are left out. The file is written next to `--out` and renamed into place at the end.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use apache_avro::types::Value as Avro;
use base64::Engine as _;
use clap::ValueEnum;
use fleet_event_log::ConsumedRecord;
use fleet_schemas::codec::{self, Catalog, KnownSchema};
use serde_json::Value;

use super::progress::Progress;
use super::reader::{self, Start};
use super::{load_config, parse_time, rfc3339};

/// Output format of `fleetstream export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// One JSON object per line, with the record's position and the decoded record.
    Jsonl,
    /// An Avro object container file with the record type's schema.
    Avro,
}

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
    /// The projections' TOML file (for `event-log`, `event-log-options` and
    /// `schema-registry-url`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Event log URL (kafka://host:9092,... or file:///dir), overriding the file's.
    #[arg(long, value_name = "URL")]
    event_log: Option<String>,
}

/// The Avro full name of the records of a catalog topic.
fn record_name(topic: &str) -> Option<&'static str> {
    fleet_schemas::topics::record_of(topic).map(|r| r.full_name())
}

/// An Avro value as JSON (see the module docs for the mapping).
pub(crate) fn avro_to_json(v: &Avro) -> Value {
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or_else(
            || {
                Value::String(if f.is_nan() {
                    "NaN".into()
                } else if f > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                })
            },
            Value::Number,
        )
    };
    let bytes = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(*b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(*i),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Value::from(*i),
        Avro::Float(f) => float(f64::from(*f)),
        Avro::Double(f) => float(*f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => bytes(b),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s.clone()),
        Avro::Union(_, inner) => avro_to_json(inner),
        Avro::Array(items) => Value::Array(items.iter().map(avro_to_json).collect()),
        Avro::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Avro::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Avro::Uuid(u) => Value::String(u.to_string()),
        other => serde_json::to_value(format!("{other:?}")).unwrap_or(Value::Null),
    }
}

/// Where the records go.
enum Sink {
    Jsonl(BufWriter<std::fs::File>),
    /// The writer, created at the first record (or at the end, for an empty window of a
    /// catalog topic) with the record type's current schema.
    Avro {
        file: Option<std::fs::File>,
        writer: Option<Box<AvroOut>>,
    },
}

/// An Avro container file being written, with its schema.
type AvroOut = (
    &'static KnownSchema,
    apache_avro::Writer<'static, BufWriter<std::fs::File>>,
);

/// What an export wrote and skipped.
#[derive(Debug, Default)]
struct Counts {
    written: u64,
    undecodable: u64,
    outside: u64,
    other_type: u64,
}

impl Sink {
    fn avro_writer(
        file: &mut Option<std::fs::File>,
        schema: &'static KnownSchema,
        topic: &str,
    ) -> anyhow::Result<apache_avro::Writer<'static, BufWriter<std::fs::File>>> {
        let f = file.take().context("the Avro writer was created twice")?;
        let mut w = apache_avro::Writer::with_codec(
            &schema.schema,
            BufWriter::new(f),
            apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
        );
        w.add_user_metadata("fleetstream.topic".into(), topic)?;
        w.add_user_metadata("fleetstream.schema_file".into(), schema.file)?;
        Ok(w)
    }

    fn write(
        &mut self,
        r: &ConsumedRecord,
        counts: &mut Counts,
        topic: &str,
    ) -> anyhow::Result<()> {
        let (writer_schema, value) = match codec::decode_value(&r.value) {
            Ok(v) => v,
            Err(e) => {
                counts.undecodable += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "Undecodable record skipped.");
                return Ok(());
            }
        };
        match self {
            Sink::Jsonl(out) => {
                // Written field by field, so the position comes first on every line.
                let key = r
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                writeln!(
                    out,
                    "{{\"topic\":{},\"partition\":{},\"offset\":{},\"timestamp\":{},\"timestamp_ms\":{},\"key\":{},\"schema\":{},\"record\":{}}}",
                    serde_json::to_string(&*r.topic)?,
                    r.partition,
                    r.offset,
                    serde_json::to_string(&rfc3339(r.timestamp_ms.saturating_mul(1000)))?,
                    r.timestamp_ms,
                    serde_json::to_string(&key)?,
                    serde_json::to_string(&writer_schema.full_name)?,
                    serde_json::to_string(&avro_to_json(&value))?,
                )?;
            }
            Sink::Avro { file, writer } => {
                if writer.is_none() {
                    let current = Catalog::get()
                        .current(&writer_schema.full_name)
                        .unwrap_or(writer_schema);
                    *writer = Some(Box::new((
                        current,
                        Self::avro_writer(file, current, topic)?,
                    )));
                }
                let Some((schema, w)) = writer.as_deref_mut() else {
                    bail!("no Avro writer");
                };
                if writer_schema.full_name != schema.full_name {
                    counts.other_type += 1;
                    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, found = %writer_schema.full_name, expected = %schema.full_name, "Record of another type skipped.");
                    return Ok(());
                }
                let value = if writer_schema.fingerprint == schema.fingerprint {
                    value
                } else {
                    value.resolve(&schema.schema).with_context(|| {
                        format!(
                            "resolving {}/{} offset {} to the current schema",
                            r.topic, r.partition, r.offset
                        )
                    })?
                };
                w.append_value_ref(&value)?;
            }
        }
        counts.written += 1;
        Ok(())
    }

    fn finish(self, topic: &str) -> anyhow::Result<()> {
        match self {
            Sink::Jsonl(mut out) => {
                out.flush()?;
                out.into_inner()
                    .map_err(|e| anyhow::anyhow!("flushing: {e}"))?
                    .sync_all()?;
            }
            Sink::Avro { mut file, writer } => {
                let writer = match writer {
                    Some(out) => Some(out.1),
                    // No record: an empty container file, if the topic's type is known.
                    None => match record_name(topic).and_then(|n| Catalog::get().current(n)) {
                        Some(schema) => Some(Self::avro_writer(&mut file, schema, topic)?),
                        None => None,
                    },
                };
                if let Some(w) = writer {
                    let out = w.into_inner()?;
                    out.into_inner()
                        .map_err(|e| anyhow::anyhow!("flushing: {e}"))?
                        .sync_all()?;
                }
            }
        }
        Ok(())
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// `fleetstream export`.
#[allow(clippy::print_stdout)] // the summary is the command's output
pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let cfg = load_config(args.config.as_deref(), args.event_log.as_deref())?;
    super::read_with_registry(&cfg)?;
    let now = fleet_schemas::time::now_micros();
    let from = args
        .from
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let to = args.to.as_deref().map(|t| parse_time(t, now)).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            bail!(
                "--to ({}) must be after --from ({})",
                rfc3339(t),
                rfc3339(f)
            );
        }
    }
    let (from_ms, to_ms) = (
        from.map(|t| t.div_euclid(1000)),
        to.map(|t| t.div_euclid(1000)),
    );
    let log = crate::roles::open_log(&cfg.event_log, &cfg.event_log_options).await?;
    log.partition_count(&args.topic)
        .await
        .with_context(|| format!("topic {}", args.topic))?;
    let start = from_ms.map_or(Start::Beginning, Start::Time);
    let spans = reader::plan(log.as_ref(), &[args.topic.as_str()], start, to_ms).await?;
    let total: u64 = spans.iter().map(reader::Span::len).sum();
    eprintln!(
        "Exporting up to {total} records of {} ({} partitions) from {} to {} into {}.",
        args.topic,
        spans.len(),
        from.map_or("the beginning".to_owned(), rfc3339),
        to.map_or("the end offsets now".to_owned(), rfc3339),
        args.out.display()
    );

    let partial = partial_path(&args.out);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut sink = match args.format {
        ExportFormat::Jsonl => Sink::Jsonl(BufWriter::new(file)),
        ExportFormat::Avro => Sink::Avro {
            file: Some(file),
            writer: None,
        },
    };
    let mut progress = Progress::new("export", &spans);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ConsumedRecord>>(4);
    let reading = tokio::spawn(reader::read(log.clone(), spans, cfg.batch_size.max(1), tx));
    let mut counts = Counts::default();
    let written = async {
        while let Some(batch) = rx.recv().await {
            for r in &batch {
                let inside = from_ms.is_none_or(|f| r.timestamp_ms >= f)
                    && to_ms.is_none_or(|t| r.timestamp_ms < t);
                if inside {
                    sink.write(r, &mut counts, &args.topic)?;
                } else {
                    counts.outside += 1;
                }
            }
            progress.advance(&batch);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        drop(rx);
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("writing {}", args.out.display())));
    }
    let outcome = reading.await.context("the reader task failed")??;
    progress.finish();
    sink.finish(&args.topic)
        .with_context(|| format!("writing {}", args.out.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("renaming {} to {}", partial.display(), args.out.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "Exported {} records of {} to {} ({}, {bytes} bytes) in {:.1} s ({:.0} records/s).",
        counts.written,
        args.topic,
        args.out.display(),
        match args.format {
            ExportFormat::Jsonl => "JSON lines",
            ExportFormat::Avro => "Avro object container file",
        },
        progress.elapsed().as_secs_f64(),
        progress.rate()
    );
    if counts.outside + counts.undecodable + counts.other_type > 0 {
        println!(
            "  skipped: {} outside the time window, {} undecodable, {} of another record type",
            counts.outside, counts.undecodable, counts.other_type
        );
    }
    for (topic, p, next, end) in &outcome.unfinished {
        println!(
            "  warning: {topic}/{p} stopped at offset {next} of {end}: no record came for {} s",
            reader::IDLE_LIMIT.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avro_values_map_to_json() {
        let v = Avro::Record(vec![
            ("a".into(), Avro::Union(1, Box::new(Avro::Long(5)))),
            ("b".into(), Avro::Enum(0, "RAISED".into())),
            ("c".into(), Avro::Double(f64::NAN)),
            ("d".into(), Avro::Bytes(vec![1, 2, 3])),
            ("e".into(), Avro::TimestampMicros(7)),
        ]);
        assert_eq!(
            avro_to_json(&v),
            serde_json::json!({"a": 5, "b": "RAISED", "c": "NaN", "d": "AQID", "e": 7})
        );
    }

    #[test]
    fn catalog_topics_have_record_names() {
        for t in fleet_schemas::topics::ALL {
            assert!(record_name(t.name).is_some(), "{}", t.name);
        }
    }
}
