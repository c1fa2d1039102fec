//! A window of a topic to a file, for analytics teams (`fleetstream export`).
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
//! The window: from the first offset at or after `from` (or the oldest record) to the
//! first offset at or after `to` (or the end offsets at start), per partition; records
//! whose timestamps fall outside `[from, to)` (timestamps need not grow with offsets)
//! are left out. The file is written next to `out` and renamed into place at the end.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use base64::Engine as _;
use fleet_event_log::{ConsumedRecord, EventLog};
use fleet_schemas::codec::{Catalog, KnownSchema, Wire};
use serde_json::Value;

use crate::error::{invalid, Context as _};
use crate::reader::{self, Start};
use crate::{rfc3339, Error, Progress, Result};

/// Output format of an export (a `clap` value with the feature `clap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ExportFormat {
    /// One JSON object per line, with the record's position and the decoded record.
    Jsonl,
    /// An Avro object container file with the record type's schema.
    Avro,
}

/// What to export, where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The topic.
    pub topic: String,
    /// Start of the window (µs); `None`: the oldest record.
    pub from: Option<i64>,
    /// End of the window (µs, exclusive); `None`: the end offsets at start.
    pub to: Option<i64>,
    /// The file format.
    pub format: ExportFormat,
    /// The file to write (replaced if it exists).
    pub out: PathBuf,
    /// Records per read.
    pub batch_size: usize,
}

/// What an export wrote and skipped.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Records written.
    pub written: u64,
    /// Records that did not decode (skipped).
    pub undecodable: u64,
    /// Records whose timestamps fall outside the window (skipped).
    pub outside: u64,
    /// Records of another type than the first one (Avro only; skipped).
    pub other_type: u64,
    /// Size of the file written.
    pub bytes: u64,
    /// From the start of reading to the end.
    pub elapsed: Duration,
    /// Windows not read to their end ([`crate::ReadOutcome::unfinished`]).
    pub unfinished: Vec<(String, u32, i64, i64)>,
}

impl ExportOptions {
    /// Checks the window is not empty.
    pub fn check(&self) -> Result<()> {
        if let (Some(f), Some(t)) = (self.from, self.to) {
            if t <= f {
                invalid!(
                    "--to ({}) must be after --from ({})",
                    rfc3339(t),
                    rfc3339(f)
                );
            }
        }
        Ok(())
    }
}

impl ExportReport {
    /// Records read per second (written and skipped).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        let read = self.written + self.undecodable + self.outside + self.other_type;
        if secs > 0.0 {
            read as f64 / secs
        } else {
            0.0
        }
    }
}

/// The Avro full name of the records of a catalog topic.
fn record_name(topic: &str) -> Option<&'static str> {
    fleet_schemas::topics::record_of(topic).map(|r| r.full_name())
}

/// An Avro value as JSON (see the module docs for the mapping).
pub fn avro_to_json(v: &Avro) -> Value {
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

impl Sink {
    fn avro_writer(
        file: &mut Option<std::fs::File>,
        schema: &'static KnownSchema,
        topic: &str,
    ) -> Result<apache_avro::Writer<'static, BufWriter<std::fs::File>>> {
        let f = file
            .take()
            .ok_or_else(|| Error::Internal("the Avro writer was created twice".into()))?;
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
        wire: &Wire,
        r: &ConsumedRecord,
        counts: &mut ExportReport,
        topic: &str,
    ) -> Result<()> {
        let (writer_schema, value) = match wire.decode_value(&r.value) {
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
                    return Err(Error::Internal("no Avro writer".into()));
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

    fn finish(self, topic: &str) -> Result<()> {
        match self {
            Sink::Jsonl(mut out) => {
                out.flush()?;
                out.into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?
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
                        .map_err(std::io::IntoInnerError::into_error)?
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

/// Writes the window `options` names of `log` to a file.
pub async fn export(
    log: Arc<dyn EventLog>,
    wire: Wire,
    options: &ExportOptions,
    progress: &mut dyn Progress,
) -> Result<ExportReport> {
    options.check()?;
    let (from_ms, to_ms) = (
        options.from.map(|t| t.div_euclid(1000)),
        options.to.map(|t| t.div_euclid(1000)),
    );
    let topic = options.topic.as_str();
    log.partition_count(topic)
        .await
        .with_context(|| format!("topic {topic}"))?;
    let start = from_ms.map_or(Start::Beginning, Start::Time);
    let spans = reader::plan(log.as_ref(), &[topic], start, to_ms).await?;
    progress.planned(&spans);

    let out = &options.out;
    let partial = partial_path(out);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut sink = match options.format {
        ExportFormat::Jsonl => Sink::Jsonl(BufWriter::new(file)),
        ExportFormat::Avro => Sink::Avro {
            file: Some(file),
            writer: None,
        },
    };
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ConsumedRecord>>(4);
    let reading = tokio::spawn(reader::read(
        log.clone(),
        wire.clone(),
        spans,
        options.batch_size.max(1),
        tx,
    ));
    let mut report = ExportReport::default();
    let written = async {
        while let Some(batch) = rx.recv().await {
            for r in &batch {
                let inside = from_ms.is_none_or(|f| r.timestamp_ms >= f)
                    && to_ms.is_none_or(|t| r.timestamp_ms < t);
                if inside {
                    sink.write(&wire, r, &mut report, topic)?;
                } else {
                    report.outside += 1;
                }
            }
            progress.advanced(&batch);
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = written {
        drop(rx);
        let _ = std::fs::remove_file(&partial);
        return Err(e).context(format!("writing {}", out.display()));
    }
    let outcome = reading
        .await
        .map_err(|e| Error::Internal(format!("the reader task failed: {e}")))??;
    progress.finished();
    report.elapsed = started.elapsed();
    sink.finish(topic)
        .with_context(|| format!("writing {}", out.display()))?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    report.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    report.unfinished = outcome.unfinished;
    Ok(report)
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
