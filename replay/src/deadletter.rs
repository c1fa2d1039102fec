//! Dead letters (`fleet.deadletter.v1`): reading them, choosing which to write back, and
//! writing them back (`fleetstream deadletter list | replay`).
//!
//! Design of a replay:
//!
//! * The dead letters to replay are named by their own position in `fleet.deadletter.v1`
//!   (`OFFSET`, or `PARTITION:OFFSET`: [`Entry::position`]), or all of them, narrowed by
//!   source topic and consumer ([`Filter`]).
//! * One source record can have several dead letters (each consumer that gave up on it
//!   writes its own). The raw bytes of a source record are written back to its topic
//!   once, with its original key (so they land on the partition the key maps to, like
//!   the original), stamped now; every consumer of the topic reads them again. Consumers
//!   are idempotent (deterministic ids, upserts), so the ones that had processed the
//!   original see a duplicate they ignore.
//! * After the write, a `REPLAYED` record goes to `fleet.deadletter.v1` for each source
//!   record, with the source coordinates and the new partition and offset. A dead letter
//!   whose source record has such a record is "replayed": a listing shows where it went,
//!   replaying all skips it, and naming it is refused (nothing is written) unless forced,
//!   which writes the bytes again and adds another `REPLAYED`.
//! * If the replayed bytes still fail, the consumer writes a new dead letter for the new
//!   coordinates: replaying never loops on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use fleet_event_log::{EventLog, ProduceRecord, RecordPosition};
use fleet_schemas::{ids, topics, AvroBytes, DeadLetter, DeadLetterKind, Wire};

use crate::error::{invalid, Context as _};
use crate::{rfc3339_secs, Error, Result};

// ------------------------------------------------------------------------ the event log

/// The roles' default event log.
pub const DEFAULT_EVENT_LOG: &str = "kafka://127.0.0.1:9092";

/// The event-log URL and engine options: `url` and `options` of the `[event-log]` table of
/// a role's TOML file `config` (other keys ignored), then `data_dir`'s embedded log (a
/// `fleetstream up` data directory: `DIR/log`), then `event_log`; else
/// [`DEFAULT_EVENT_LOG`].
pub fn log_settings(
    config: Option<&Path>,
    event_log: Option<&str>,
    data_dir: Option<&Path>,
) -> Result<(String, fleet_event_log::EngineOptions)> {
    let mut url = DEFAULT_EVENT_LOG.to_owned();
    let mut options = fleet_event_log::EngineOptions::new();
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let doc: toml::Table = toml::from_str(&text).map_err(|e| Error::Context {
            context: format!("{} is not valid TOML", path.display()),
            source: Box::new(Error::Other(Box::new(e))),
        })?;
        if ["gateway", "processors", "projections"]
            .iter()
            .any(|t| doc.contains_key(*t))
        {
            invalid!(
                "{} looks like a `fleetstream up` file (its roles always use the embedded \
                 log in the data directory): give --data-dir instead",
                path.display()
            )
        }
        let table = match doc.get("event-log") {
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => invalid!("`event-log` in {} must be a table", path.display()),
            None => None,
        };
        match table.and_then(|t| t.get("url")) {
            Some(toml::Value::String(s)) => url.clone_from(s),
            Some(_) => invalid!("`event-log.url` in {} must be a string", path.display()),
            None => {}
        }
        if let Some(t) = table.and_then(|t| t.get("options")) {
            let toml::Value::Table(t) = t else {
                invalid!("`event-log.options` in {} must be a table", path.display());
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
    if let Some(dir) = data_dir {
        let log = dir.join("log");
        let Some(s) = log.to_str() else {
            invalid!("data directory {} is not valid UTF-8", dir.display());
        };
        url = format!("file://{s}");
    }
    if let Some(u) = event_log {
        url = u.to_owned();
    }
    Ok((url, options))
}

/// Opens the event log at `url` for dead letters: an embedded log must exist; a log no
/// role ran on yet gets the catalog's topics, as the roles would create them.
pub async fn open_log(
    url: &str,
    options: &fleet_event_log::EngineOptions,
) -> Result<Arc<dyn EventLog>> {
    if let Some(path) = url.strip_prefix("file://") {
        if !Path::new(path).exists() {
            invalid!("no embedded event log at {path} (wrong --data-dir or --event-log?)");
        }
    }
    let log = fleet_event_log::open(url, options).await.with_context(|| {
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
        Err(fleet_event_log::LogError::UnknownTopic(_)) => {
            fleet_consumer::log::ensure_topics(log.as_ref())
                .await
                .map_err(|e| Error::Other(e.into()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", topics::DEADLETTER)),
    }
    Ok(log)
}

// --------------------------------------------------------------- reading the dead letters

/// One record of `fleet.deadletter.v1` with its position.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its partition in `fleet.deadletter.v1`.
    pub partition: u32,
    /// Its offset there.
    pub offset: i64,
    /// The record.
    pub letter: DeadLetter,
}

impl Entry {
    /// Its position as listings show it: `OFFSET` on partition 0, else
    /// `PARTITION:OFFSET`.
    pub fn position(&self) -> String {
        if self.partition == 0 {
            self.offset.to_string()
        } else {
            format!("{}:{}", self.partition, self.offset)
        }
    }
}

/// A source record: topic, partition, offset.
pub type Coords = (String, i32, i64);

fn coords(d: &DeadLetter) -> Coords {
    (d.source_topic.clone(), d.source_partition, d.source_offset)
}

/// Every dead letter of `fleet.deadletter.v1` and the replays of their source records.
#[derive(Debug)]
pub struct DeadLetters {
    /// The dead letters (duplicates by event id dropped), oldest first.
    pub letters: Vec<Entry>,
    /// Per source record, its REPLAYED records in topic order.
    pub replays: HashMap<Coords, Vec<Entry>>,
    /// Records of the topic that did not decode.
    pub unreadable: u64,
}

impl DeadLetters {
    /// The REPLAYED records of `e`'s source record, oldest first.
    pub fn replays_of(&self, e: &Entry) -> Option<&Vec<Entry>> {
        self.replays.get(&coords(&e.letter))
    }

    /// The last REPLAYED record of `e`'s source record.
    pub fn replayed_to(&self, e: &Entry) -> Option<&Entry> {
        self.replays_of(e).and_then(|v| v.last())
    }

    /// The dead letters `filter` takes, written at or after `since` (µs), the newest
    /// `limit` of them (oldest first), and how many matched.
    pub fn select(
        &self,
        filter: &Filter,
        since: Option<i64>,
        limit: usize,
    ) -> (Vec<&Entry>, usize) {
        let mut shown: Vec<&Entry> = self
            .letters
            .iter()
            .filter(|e| filter.takes(e))
            .filter(|e| since.is_none_or(|s| e.letter.occurred_at >= s))
            .collect();
        let matching = shown.len();
        if shown.len() > limit {
            shown.drain(..shown.len() - limit);
        }
        (shown, matching)
    }
}

/// Reads every record of `fleet.deadletter.v1`.
pub async fn read_all(log: &dyn EventLog, wire: &Wire) -> Result<DeadLetters> {
    let mut letters = Vec::new();
    let mut replays: HashMap<Coords, Vec<Entry>> = HashMap::new();
    let mut unreadable = 0u64;
    let mut ids = HashSet::new();
    fleet_consumer::log::read_to_end(log, wire, topics::DEADLETTER, |r| {
        match wire.decode_known::<DeadLetter>(&r.value) {
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
    Ok(DeadLetters {
        letters,
        replays,
        unreadable,
    })
}

/// Which dead letters a listing or a replay takes: of a source topic, of a consumer.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only dead letters of records of this source topic.
    pub topic: Option<String>,
    /// Only dead letters of this consumer.
    pub consumer: Option<String>,
}

impl Filter {
    /// Checks the topic is one of the catalog's.
    pub fn check(&self) -> Result<()> {
        if let Some(t) = &self.topic {
            if topics::find(t).is_none() {
                let names: Vec<&str> = topics::ALL.iter().map(|t| t.name).collect();
                invalid!(
                    "--topic {t:?} is not a Fleetstream topic: one of {}",
                    names.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Whether it takes `e`.
    pub fn takes(&self, e: &Entry) -> bool {
        self.topic
            .as_deref()
            .is_none_or(|t| e.letter.source_topic == t)
            && self
                .consumer
                .as_deref()
                .is_none_or(|c| e.letter.consumer == c)
    }
}

// -------------------------------------------------------------------------------- replay

/// The dead letters to replay.
#[derive(Debug, Clone)]
pub enum Which {
    /// Every one the filter takes that is not replayed yet.
    All,
    /// These, by (partition, offset) in `fleet.deadletter.v1`.
    Positions(Vec<(u32, i64)>),
}

/// One source record to write back, with the dead letters that name it.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The source record.
    pub source: Coords,
    /// The dead letters of it taken.
    pub letters: Vec<&'a Entry>,
    /// Its last replay, if it was replayed already.
    pub earlier: Option<&'a Entry>,
}

impl Plan<'_> {
    /// `topic/partition/offset` of the source record.
    pub fn source_text(&self) -> String {
        format!("{}/{}/{}", self.source.0, self.source.1, self.source.2)
    }

    /// The positions of its dead letters (`12, 13`).
    pub fn positions(&self) -> String {
        self.letters
            .iter()
            .map(|e| e.position())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The source record, its dead letters and where it was replayed to, for messages.
    pub fn describe_replayed(&self) -> String {
        let r = self.earlier.map(|r| &r.letter);
        format!(
            "{} (dead letter {}, replayed to {}/{} at {})",
            self.source_text(),
            self.positions(),
            r.and_then(|r| r.replayed_partition).unwrap_or(-1),
            r.and_then(|r| r.replayed_offset).unwrap_or(-1),
            r.map_or_else(String::new, |r| rfc3339_secs(r.occurred_at)),
        )
    }
}

/// The source records a replay writes back, and those it skips (replayed already).
#[derive(Debug)]
pub struct ReplayPlan<'a> {
    /// To write back, in the order of the source topics.
    pub todo: Vec<Plan<'a>>,
    /// Replayed already and not forced (only with [`Which::All`]: naming one is an error).
    pub skipped: Vec<Plan<'a>>,
}

/// Plans a replay: one write per source record, in the order of the source topic. Naming
/// a dead letter that is not there, not of `filter`, or (unless `force`) replayed
/// already is an error, and nothing is to be written.
pub fn plan<'a>(
    all: &'a DeadLetters,
    which: &Which,
    filter: &Filter,
    force: bool,
) -> Result<ReplayPlan<'a>> {
    let mut selected: Vec<&Entry> = Vec::new();
    match which {
        Which::All => selected.extend(all.letters.iter().filter(|e| filter.takes(e))),
        Which::Positions(wanted) => {
            let by_position: HashMap<(u32, i64), &Entry> = all
                .letters
                .iter()
                .map(|e| ((e.partition, e.offset), e))
                .collect();
            let mut missing = Vec::new();
            for pos in wanted {
                match by_position.get(pos) {
                    Some(e) if filter.takes(e) => selected.push(e),
                    Some(e) => invalid!(
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
                invalid!(
                    "no dead letter at {} in fleet.deadletter.v1 (see `fleetstream deadletter list`; \
                     REPLAYED records cannot be replayed)",
                    missing.join(", ")
                );
            }
        }
    }
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
    let (todo, skipped): (Vec<Plan<'_>>, Vec<Plan<'_>>) = plans
        .into_values()
        .partition(|p| p.earlier.is_none() || force);
    if !skipped.is_empty() && matches!(which, Which::Positions(_)) {
        let names: Vec<String> = skipped.iter().map(Plan::describe_replayed).collect();
        invalid!(
            "already replayed, so nothing was written (--force to replay again):\n  {}",
            names.join("\n  ")
        );
    }
    Ok(ReplayPlan { todo, skipped })
}

/// Writes a planned source record back to its topic, then a REPLAYED record naming where
/// it went to `fleet.deadletter.v1`. Returns where it went.
pub async fn write_back(
    log: &dyn EventLog,
    wire: &Wire,
    plan: &Plan<'_>,
) -> Result<RecordPosition> {
    let Some(first) = plan.letters.first().map(|e| &e.letter) else {
        return Err(Error::Internal(format!(
            "no dead letter of {}",
            plan.source_text()
        )));
    };
    let what = format!(
        "{} ({} bytes; dead letter {})",
        plan.source_text(),
        first.value.0.len(),
        plan.positions()
    );
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
        return Err(Error::Internal(format!(
            "the log acknowledged no position for {what}"
        )));
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
    let value = wire.encode(&marker)?;
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
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead letter of `consumer` for `topic`/0/`offset`, at `dl` in fleet.deadletter.v1.
    fn letter(dl: i64, consumer: &str, topic: &str, offset: i64) -> Entry {
        Entry {
            partition: 0,
            offset: dl,
            letter: DeadLetter {
                event_id: format!("e{dl}"),
                kind: DeadLetterKind::Decode,
                reason: "bad".into(),
                consumer: consumer.into(),
                group: String::new(),
                tenant_id: None,
                source_topic: topic.into(),
                source_partition: 0,
                source_offset: offset,
                source_key: None,
                source_timestamp: 0,
                value: AvroBytes(vec![1, 2, 3]),
                replayed_partition: None,
                replayed_offset: None,
                occurred_at: dl,
            },
        }
    }

    /// Dead letters 0 and 1 (two consumers) of metrics offset 7, 2 of metrics offset 8
    /// (replayed already), 3 of rules offset 1.
    fn topic() -> DeadLetters {
        let metrics = topics::METRICS;
        let mut replayed = letter(9, "deadletter-replay", metrics, 8);
        replayed.letter.kind = DeadLetterKind::Replayed;
        replayed.letter.replayed_partition = Some(1);
        replayed.letter.replayed_offset = Some(40);
        DeadLetters {
            letters: vec![
                letter(0, "readmodel", metrics, 7),
                letter(1, "timeseries", metrics, 7),
                letter(2, "timeseries", metrics, 8),
                letter(3, "alert-evaluator", topics::RULES, 1),
            ],
            replays: HashMap::from([((metrics.to_owned(), 0, 8), vec![replayed])]),
            unreadable: 0,
        }
    }

    fn sources(plans: &[Plan<'_>]) -> Vec<(i64, String)> {
        plans.iter().map(|p| (p.source.2, p.positions())).collect()
    }

    #[test]
    fn all_writes_each_source_record_once_and_skips_replayed_ones() {
        let all = topic();
        let plan = plan(&all, &Which::All, &Filter::default(), false).expect("plan");
        // By source topic, partition, offset: fleet.metrics.v1 before fleet.rules.v1.
        assert_eq!(
            sources(&plan.todo),
            vec![(7, "0, 1".into()), (1, "3".into())]
        );
        assert_eq!(sources(&plan.skipped), vec![(8, "2".into())]);
        assert!(plan.skipped[0]
            .describe_replayed()
            .contains("replayed to 1/40"));
        let forced = super::plan(&all, &Which::All, &Filter::default(), true).expect("plan");
        assert_eq!(forced.todo.len(), 3);
        assert!(forced.skipped.is_empty());
    }

    #[test]
    fn the_filter_narrows_all_and_refuses_named_letters_it_does_not_take() {
        let all = topic();
        let filter = Filter {
            topic: Some(topics::METRICS.into()),
            consumer: Some("readmodel".into()),
        };
        let p = plan(&all, &Which::All, &filter, false).expect("plan");
        assert_eq!(sources(&p.todo), vec![(7, "0".into())]);
        let e = plan(&all, &Which::Positions(vec![(0, 3)]), &filter, false).expect_err("other");
        assert!(
            e.to_string().contains("not of the --topic / --consumer"),
            "{e}"
        );
    }

    #[test]
    fn naming_missing_or_replayed_letters_writes_nothing() {
        let all = topic();
        let none = Filter::default();
        let e = plan(
            &all,
            &Which::Positions(vec![(0, 1), (0, 99), (2, 5)]),
            &none,
            false,
        )
        .expect_err("missing");
        assert!(e.to_string().contains("no dead letter at 99, 2:5"), "{e}");
        // A REPLAYED record is not a dead letter to replay.
        assert!(plan(&all, &Which::Positions(vec![(0, 9)]), &none, false).is_err());
        let e = plan(&all, &Which::Positions(vec![(0, 2)]), &none, false).expect_err("replayed");
        assert!(matches!(e, Error::Invalid(_)));
        assert!(e.to_string().contains("already replayed"), "{e}");
        let forced = plan(&all, &Which::Positions(vec![(0, 2)]), &none, true).expect("forced");
        assert_eq!(sources(&forced.todo), vec![(8, "2".into())]);
        assert!(forced.todo[0].earlier.is_some());
    }

    #[test]
    fn listings_take_the_newest_matching_since_a_time() {
        let all = topic();
        let (shown, matching) = all.select(&Filter::default(), Some(1), 2);
        assert_eq!(matching, 3);
        let shown: Vec<i64> = shown.iter().map(|e| e.offset).collect();
        assert_eq!(shown, vec![2, 3]);
        assert_eq!(all.replayed_to(&all.letters[2]).map(|e| e.offset), Some(9));
        assert!(all.replayed_to(&all.letters[0]).is_none());
        assert!(Filter {
            topic: Some("fleet.nope.v1".into()),
            consumer: None
        }
        .check()
        .is_err());
    }

    #[test]
    fn the_event_log_comes_from_flags_or_any_role_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("processors.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[event-log]\nurl = \"kafka://k1:9092\"\n[event-log.options]\n\"linger.ms\" = \"5\"\n",
        )
        .expect("write");
        let (url, opts) = log_settings(Some(&file), None, None).expect("settings");
        assert_eq!(url, "kafka://k1:9092");
        assert_eq!(opts.get("linger.ms").map(String::as_str), Some("5"));
        let (url, _) = log_settings(Some(&file), Some("file:///x"), None).expect("settings");
        assert_eq!(url, "file:///x");
        let (url, _) = log_settings(None, None, Some(Path::new("/data"))).expect("settings");
        assert_eq!(url, "file:///data/log");
        let (url, _) = log_settings(None, None, None).expect("settings");
        assert_eq!(url, DEFAULT_EVENT_LOG);
        let up = dir.path().join("fleetstream.toml");
        std::fs::write(&up, "[processors]\ngroup = \"g\"\n").expect("write");
        assert!(log_settings(Some(&up), None, None).is_err());
    }
}
