//! The library on the embedded event log (no service needed): an export to JSONL and to
//! Avro, and a dead letter written back, each reporting its progress.

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context as _};
use fleet_event_log::{ConsumedRecord, EventLog, ProduceRecord};
use fleet_replay::deadletter::{Filter, Which};
use fleet_replay::export::{ExportFormat, ExportOptions};
use fleet_replay::{Progress, Span};
use fleet_schemas::{codec, topics, AvroBytes, DeadLetter, DeadLetterKind};

/// Counts what a run reported.
#[derive(Debug, Default)]
struct Seen {
    planned: u64,
    advanced: u64,
    finished: bool,
}

impl Progress for Seen {
    fn planned(&mut self, spans: &[Span]) {
        self.planned = spans.iter().map(Span::len).sum();
    }
    fn advanced(&mut self, batch: &[ConsumedRecord]) {
        self.advanced += batch.len() as u64;
    }
    fn finished(&mut self) {
        self.finished = true;
    }
}

async fn embedded_log(dir: &Path) -> anyhow::Result<Arc<dyn EventLog>> {
    let url = format!("file://{}", dir.join("log").display());
    std::fs::create_dir_all(dir.join("log"))?;
    let (url, options) = fleet_replay::deadletter::log_settings(None, Some(&url), None)?;
    // Opening it for dead letters creates the catalog's topics.
    Ok(fleet_replay::deadletter::open_log(&url, &options).await?)
}

fn dead_letter(source_topic: &str, source_offset: i64, value: &[u8]) -> DeadLetter {
    DeadLetter {
        event_id: format!("dl-{source_topic}-{source_offset}"),
        kind: DeadLetterKind::Decode,
        reason: "not a record".into(),
        consumer: "alert-evaluator".into(),
        group: "g".into(),
        tenant_id: None,
        source_topic: source_topic.into(),
        source_partition: 0,
        source_offset,
        source_key: Some(AvroBytes(b"agent-1".to_vec())),
        source_timestamp: 1_700_000_000_000,
        value: AvroBytes(value.to_vec()),
        replayed_partition: None,
        replayed_offset: None,
        occurred_at: fleet_schemas::time::now_micros(),
    }
}

async fn produce(log: &dyn EventLog, topic: &str, value: Vec<u8>) -> anyhow::Result<()> {
    log.produce(
        topic,
        vec![ProduceRecord {
            key: Some(b"k".to_vec()),
            value,
            timestamp_ms: None,
        }],
    )
    .await?;
    Ok(())
}

/// Exports with the plain wire, without progress.
async fn export(
    log: &Arc<dyn EventLog>,
    options: &ExportOptions,
) -> Result<fleet_replay::export::ExportReport, fleet_replay::Error> {
    fleet_replay::export::export(
        log.clone(),
        fleet_schemas::Wire::plain(),
        options,
        &mut fleet_replay::NoProgress,
    )
    .await
}

/// Records in an Avro container file.
fn avro_records(path: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::open(path)?;
    Ok(apache_avro::Reader::new(std::io::BufReader::new(file))?.count())
}

#[tokio::test]
async fn exports_write_every_record_of_the_window_and_count_the_rest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = embedded_log(dir.path()).await?;
    for offset in 0..3 {
        let d = dead_letter(topics::METRICS, offset, b"x");
        produce(
            log.as_ref(),
            topics::DEADLETTER,
            codec::Wire::plain().encode(&d)?,
        )
        .await?;
    }
    produce(log.as_ref(), topics::DEADLETTER, b"not avro".to_vec()).await?;

    let jsonl = dir.path().join("out.jsonl");
    let mut options = ExportOptions {
        topic: topics::DEADLETTER.into(),
        from: None,
        to: None,
        format: ExportFormat::Jsonl,
        out: jsonl.clone(),
        batch_size: 2,
    };
    let mut seen = Seen::default();
    let report = fleet_replay::export::export(
        log.clone(),
        fleet_schemas::Wire::plain(),
        &options,
        &mut seen,
    )
    .await?;
    ensure!(
        (report.written, report.undecodable, report.outside) == (3, 1, 0),
        "{report:?}"
    );
    ensure!(
        seen.planned == 4 && seen.advanced == 4 && seen.finished,
        "{seen:?}"
    );
    let text = std::fs::read_to_string(&jsonl)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(lines.len() == 3, "{text}");
    ensure!(lines[2]["offset"] == 2, "{text}");
    ensure!(
        lines[0]["record"]["source_topic"] == topics::METRICS,
        "{text}"
    );
    ensure!(
        lines[0]["record"]["value"] == "eA==",
        "bytes as base64: {text}"
    );

    options.format = ExportFormat::Avro;
    options.out = dir.path().join("out.avro");
    let report = export(&log, &options).await?;
    ensure!(report.written == 3, "{report:?}");
    let records = avro_records(&options.out)?;
    ensure!(records == 3, "{records} records in the Avro file");

    // A window that ends before it starts is refused before anything is written.
    options.from = Some(2_000);
    options.to = Some(1_000);
    options.out = dir.path().join("never.avro");
    let e = export(&log, &options)
        .await
        .err()
        .context("an empty window is an error")?;
    ensure!(matches!(e, fleet_replay::Error::Invalid(_)), "{e:?}");
    ensure!(!options.out.exists());
    Ok(())
}

#[tokio::test]
async fn exports_cover_the_samples_topic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = embedded_log(dir.path()).await?;
    let mut batch = fleet_schemas::fixtures::sample_batch("t1", 1_765_000_000_000_000);
    batch.samples[1].value = f64::from_bits(0x7ff0_0000_0000_0002);
    produce(
        log.as_ref(),
        topics::SAMPLES,
        codec::Wire::plain().encode(&batch)?,
    )
    .await?;
    let mut options = ExportOptions {
        topic: topics::SAMPLES.into(),
        from: None,
        to: None,
        format: ExportFormat::Jsonl,
        out: dir.path().join("samples.jsonl"),
        batch_size: 10,
    };
    let report = export(&log, &options).await?;
    ensure!(report.written == 1, "{report:?}");
    let text = std::fs::read_to_string(&options.out)?;
    let line: serde_json::Value = serde_json::from_str(text.trim())?;
    let record = &line["record"];
    ensure!(record["source"] == "PROMETHEUS_REMOTE_WRITE", "{text}");
    ensure!(
        record["samples"][2]["labels"][3]["name"] == "mode",
        "{text}"
    );
    ensure!(
        record["samples"][1]["value"] == "NaN",
        "the staleness marker: {text}"
    );
    options.format = ExportFormat::Avro;
    options.out = dir.path().join("samples.avro");
    export(&log, &options).await?;
    let records = avro_records(&options.out)?;
    ensure!(records == 1, "{records} records in the Avro file");
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_written_back_once_and_marked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = embedded_log(dir.path()).await?;
    let bytes = b"fixed bytes".to_vec();
    let d = dead_letter(topics::RULES, 5, &bytes);
    produce(
        log.as_ref(),
        topics::DEADLETTER,
        codec::Wire::plain().encode(&d)?,
    )
    .await?;

    let all =
        fleet_replay::deadletter::read_all(log.as_ref(), &fleet_schemas::Wire::plain()).await?;
    ensure!(all.letters.len() == 1, "{all:?}");
    let plan = fleet_replay::deadletter::plan(&all, &Which::All, &Filter::default(), false)?;
    ensure!(plan.todo.len() == 1 && plan.skipped.is_empty(), "{plan:?}");
    let at = fleet_replay::deadletter::write_back(
        log.as_ref(),
        &fleet_schemas::Wire::plain(),
        &plan.todo[0],
    )
    .await?;

    let mut written = Vec::new();
    fleet_consumer::log::read_to_end(
        log.as_ref(),
        &fleet_schemas::Wire::plain(),
        topics::RULES,
        |r| {
            written.push((r.partition, r.offset, r.key.clone(), r.value.clone()));
        },
    )
    .await?;
    ensure!(
        written == vec![(at.partition, at.offset, Some(b"agent-1".to_vec()), bytes)],
        "{written:?}"
    );
    let all =
        fleet_replay::deadletter::read_all(log.as_ref(), &fleet_schemas::Wire::plain()).await?;
    let replayed = all
        .replayed_to(&all.letters[0])
        .context("marked replayed")?;
    ensure!(
        replayed.letter.replayed_offset == Some(at.offset),
        "{replayed:?}"
    );
    // Replayed now: --all skips it, naming it is refused.
    let again = fleet_replay::deadletter::plan(&all, &Which::All, &Filter::default(), false)?;
    ensure!(
        again.todo.is_empty() && again.skipped.len() == 1,
        "{again:?}"
    );
    let named = Which::Positions(vec![(all.letters[0].partition, all.letters[0].offset)]);
    ensure!(fleet_replay::deadletter::plan(&all, &named, &Filter::default(), false).is_err());
    Ok(())
}

/// Replays the time-series projection from the log into a new embedded store.
async fn replay_timeseries(
    log: &Arc<dyn EventLog>,
    into: &Path,
) -> anyhow::Result<fleet_replay::rebuild::ReplayReport> {
    let options = fleet_replay::rebuild::ReplayOptions {
        projection: fleet_replay::rebuild::ProjectionKind::Timeseries,
        into: vec![format!("file://{}", into.display())],
        start: fleet_replay::Start::Beginning,
        batch_size: 2,
        jobs: None,
        force: false,
    };
    Ok(fleet_replay::rebuild::replay(
        log.clone(),
        codec::Wire::plain(),
        &fleet_projections::ProjectionsConfig::default(),
        options,
        &mut Seen::default(),
    )
    .await?)
}

/// `replay --projection timeseries` stores the samples topic's units and series, and
/// `verify` compares them: two rebuilds from one log agree; a rebuild that saw one more
/// batch has that batch's series as extra ones.
#[tokio::test]
async fn replay_and_verify_cover_the_samples_topic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = embedded_log(dir.path()).await?;
    let t = fleet_schemas::time::now_micros() - 3_600_000_000;
    let target = fleet_schemas::fixtures::sample_batch("t1", t);
    let host = fleet_schemas::fixtures::host_sample_batch("t1", t + 60_000_000);
    for b in [&target, &host] {
        produce(
            log.as_ref(),
            topics::SAMPLES,
            codec::Wire::plain().encode(b)?,
        )
        .await?;
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let report = replay_timeseries(&log, &a).await?;
    ensure!(
        report.per_topic.get(topics::SAMPLES) == Some(&2),
        "{report:?}"
    );
    let ts = report.timeseries.context("a time-series outcome")?;
    // The fixture: node_load1 at two times and a cpu counter, 3 samples per batch.
    ensure!(ts.points == 6, "{ts:?}");
    replay_timeseries(&log, &b).await?;
    let retention = fleet_timeseries::Retention::default();
    let now = fleet_schemas::time::now_micros();
    let window = fleet_replay::verify::window(retention, None, None, now)?;
    let url = |p: &Path| format!("file://{}", p.display());
    let same = fleet_replay::verify::time_series(&url(&a), &url(&b), retention, window).await?;
    ensure!(same.diffs.is_empty(), "{:?}", same.diffs);
    ensure!(same.live_series == 4 && same.samples == 6, "{same:?}");

    let mut more = fleet_schemas::fixtures::sample_batch("t1", t + 120_000_000);
    for s in &mut more.samples {
        s.labels[0].value = "web-9:9100".into();
    }
    more.samples.truncate(2);
    produce(
        log.as_ref(),
        topics::SAMPLES,
        codec::Wire::plain().encode(&more)?,
    )
    .await?;
    let c = dir.path().join("c");
    replay_timeseries(&log, &c).await?;
    let differ = fleet_replay::verify::time_series(&url(&a), &url(&c), retention, window).await?;
    let extra: Vec<String> = differ
        .diffs
        .iter()
        .filter_map(|d| match d {
            fleet_replay::verify::SeriesDiff::ExtraSeries(k) => {
                Some(format!("{} {}", k.agent_id, k.series))
            }
            _ => None,
        })
        .collect();
    ensure!(
        extra
            == [
                r#"~{instance="web-9:9100",job="node"} node_load1{instance="web-9:9100",job="node"}"#
            ],
        "{:?}",
        differ.diffs
    );
    Ok(())
}
