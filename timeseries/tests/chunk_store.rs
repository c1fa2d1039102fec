//! Conformance suite of the [`ChunkStore`] seam: one body per behaviour, run on the
//! embedded store (a temporary directory) and on the CQL store (module `cql`).
//!
//! The CQL cases need Apache Cassandra (or ScyllaDB) at `FLEET_SCYLLA_URI` (default
//! `scylla://127.0.0.1:9042`): `bash scripts/services.sh up` starts a one-node Cassandra
//! and `eval "$(bash scripts/services.sh env)"` exports its URI. Each case gets a fresh
//! keyspace, dropped afterwards. Without a server they fail, saying so.

#[cfg(feature = "cql")]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleet_timeseries::store::{
    AgentKey, CheckpointWrite, Chunk, ChunkKind, ChunkStore, OpenAgent, PartitionState, SealWrite,
    Segment, StoredSeries,
};
use fleet_timeseries::Retention;

const SECOND: i64 = 1_000_000;
const HOUR: i64 = 3_600 * SECOND;
const DAY: i64 = 24 * HOUR;
/// 2023-11-14 22:00 UTC, an hour boundary.
const T0: i64 = 1_699_999_200 * SECOND;

/// Which store a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Embedded,
    #[cfg_attr(not(feature = "cql"), allow(dead_code))]
    Cql,
}

/// Retention long enough that nothing a case writes is past it (the CQL store does not
/// write what is).
fn long_retention() -> Retention {
    let long = Duration::from_secs(200 * 366 * 86_400);
    Retention {
        raw: long,
        five_minutes: long,
        one_hour: long,
    }
}

impl Engine {
    /// Runs `case` on a fresh, empty store of this engine keeping chunks for `retention`.
    async fn run<F, Fut>(self, retention: Retention, case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn ChunkStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        match self {
            Engine::Embedded => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().to_str().context("temporary directory path")?;
                let store = fleet_timeseries::open_chunks(path, retention).await?;
                ensure!(store.engine() == "embedded");
                case(store).await
            }
            #[cfg(feature = "cql")]
            Engine::Cql => cql_server::run(retention, case).await,
            #[cfg(not(feature = "cql"))]
            Engine::Cql => anyhow::bail!("built without the `cql` feature"),
        }
    }
}

/// One test per engine for each case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(super::Engine::Embedded).await
                }
            )*
        }
        #[cfg(feature = "cql")]
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(super::Engine::Cql).await
                }
            )*
        }
    };
}

conformance!(
    chunks_come_by_kind_agent_and_window_range,
    a_chunk_replaces_the_one_under_its_key,
    seal_drops_exactly_the_sealed_windows_segments,
    partition_states_round_trip_through_checkpoints,
    segments_come_by_window_then_seq,
    a_full_segment_replaces_its_window,
    series_are_listed_in_order_up_to_the_limit,
    chunks_go_after_their_retention,
    stored_bytes_has_one_entry_per_kind,
    unusual_keys_work,
);

fn key(tenant: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant, agent)
}

fn chunk(kind: ChunkKind, agent: &AgentKey, window: i64, bytes: &[u8]) -> Chunk {
    Chunk {
        kind,
        agent: agent.clone(),
        window,
        bytes: bytes.to_vec(),
    }
}

fn seg(agent: &AgentKey, window: i64, seq: u64, full: bool, bytes: &[u8]) -> Segment {
    Segment {
        agent: agent.clone(),
        window,
        seq,
        full,
        bytes: bytes.to_vec(),
    }
}

fn seal_chunks(chunks: Vec<Chunk>) -> SealWrite {
    SealWrite {
        chunks,
        sealed: Vec::new(),
    }
}

fn segments_only(segments: Vec<Segment>) -> CheckpointWrite {
    CheckpointWrite {
        segments,
        ..Default::default()
    }
}

/// (window, seq, full, bytes) of every segment of `agent`.
async fn segment_keys(
    s: &dyn ChunkStore,
    agent: &AgentKey,
) -> Result<Vec<(i64, u64, bool, Vec<u8>)>> {
    Ok(s.segments(agent, i64::MIN, i64::MAX)
        .await?
        .into_iter()
        .map(|g| {
            assert_eq!(&g.agent, agent);
            (g.window, g.seq, g.full, g.bytes)
        })
        .collect())
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn chunks_come_by_kind_agent_and_window_range(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let a = key("t", "a");
            let b = key("t", "b");
            let other_tenant = key("t2", "a");
            let mut chunks: Vec<Chunk> = (0..4)
                .map(|i| chunk(ChunkKind::Raw, &a, T0 + i * HOUR, &[b'r', i as u8]))
                .collect();
            chunks.push(chunk(ChunkKind::Raw, &b, T0, b"b"));
            chunks.push(chunk(ChunkKind::Raw, &other_tenant, T0, b"other"));
            let day = ChunkKind::Rollup5m.window_of(T0);
            let week = ChunkKind::Rollup1h.window_of(T0);
            chunks.push(chunk(ChunkKind::Rollup5m, &a, day, b"5m"));
            chunks.push(chunk(ChunkKind::Rollup1h, &a, week, b"1h"));
            s.seal(seal_chunks(chunks)).await?;

            let got = s
                .chunks(ChunkKind::Raw, &a, T0 + HOUR, T0 + 3 * HOUR)
                .await?;
            ensure!(
                got == vec![(T0 + HOUR, vec![b'r', 1]), (T0 + 2 * HOUR, vec![b'r', 2])],
                "[from, to) by window start: {got:?}"
            );
            ensure!(s.chunks(ChunkKind::Raw, &a, T0, T0 + 4 * HOUR).await?.len() == 4);
            ensure!(s
                .chunks(ChunkKind::Raw, &a, T0 + 3 * HOUR + 1, T0 + 4 * HOUR)
                .await?
                .is_empty());
            ensure!(s
                .chunks(ChunkKind::Raw, &a, T0 + HOUR, T0 + HOUR)
                .await?
                .is_empty());
            ensure!(s
                .chunks(ChunkKind::Raw, &a, T0 + HOUR, T0)
                .await?
                .is_empty());
            ensure!(
                s.chunks(ChunkKind::Raw, &b, i64::MIN, i64::MAX).await?
                    == vec![(T0, b"b".to_vec())]
            );
            ensure!(
                s.chunks(ChunkKind::Raw, &other_tenant, i64::MIN, i64::MAX)
                    .await?
                    == vec![(T0, b"other".to_vec())]
            );
            ensure!(s
                .chunks(ChunkKind::Raw, &key("t", "nobody"), i64::MIN, i64::MAX)
                .await?
                .is_empty());
            ensure!(
                s.chunks(ChunkKind::Rollup5m, &a, i64::MIN, i64::MAX)
                    .await?
                    == vec![(day, b"5m".to_vec())]
            );
            ensure!(
                s.chunks(ChunkKind::Rollup1h, &a, i64::MIN, i64::MAX)
                    .await?
                    == vec![(week, b"1h".to_vec())]
            );
            ensure!(s
                .chunks(ChunkKind::Rollup5m, &b, i64::MIN, i64::MAX)
                .await?
                .is_empty());

            // Windows years apart: a wide range finds them all, in order.
            let c = key("t", "c");
            let far = [
                T0 - 800 * DAY,
                T0 - 40 * DAY,
                T0,
                T0 + 3 * DAY,
                T0 + 900 * DAY,
            ];
            s.seal(seal_chunks(
                far.iter()
                    .rev()
                    .map(|&w| chunk(ChunkKind::Raw, &c, w, &w.to_be_bytes()))
                    .collect(),
            ))
            .await?;
            let all = s.chunks(ChunkKind::Raw, &c, i64::MIN, i64::MAX).await?;
            ensure!(
                all == far
                    .iter()
                    .map(|&w| (w, w.to_be_bytes().to_vec()))
                    .collect::<Vec<_>>(),
                "{all:?}"
            );
            let some = s
                .chunks(ChunkKind::Raw, &c, T0 - 799 * DAY, T0 + 900 * DAY)
                .await?;
            ensure!(some.iter().map(|c| c.0).collect::<Vec<_>>() == far[1..4].to_vec());
            Ok(())
        })
        .await
}

async fn a_chunk_replaces_the_one_under_its_key(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let a = key("t", "a");
            s.seal(seal_chunks(vec![chunk(ChunkKind::Raw, &a, T0, b"first")]))
                .await?;
            s.seal(seal_chunks(vec![chunk(
                ChunkKind::Raw,
                &a,
                T0,
                b"second, longer",
            )]))
            .await?;
            ensure!(
                s.chunks(ChunkKind::Raw, &a, T0, T0 + HOUR).await?
                    == vec![(T0, b"second, longer".to_vec())]
            );
            // Within one write, the later chunk under a key wins.
            s.seal(seal_chunks(vec![
                chunk(ChunkKind::Rollup5m, &a, 0, b"x"),
                chunk(ChunkKind::Raw, &a, T0, b"third"),
                chunk(ChunkKind::Raw, &a, T0, b"fourth"),
            ]))
            .await?;
            ensure!(
                s.chunks(ChunkKind::Raw, &a, T0, T0 + HOUR).await?
                    == vec![(T0, b"fourth".to_vec())]
            );
            ensure!(s.chunks(ChunkKind::Rollup5m, &a, 0, 1).await? == vec![(0, b"x".to_vec())]);
            Ok(())
        })
        .await
}

async fn seal_drops_exactly_the_sealed_windows_segments(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let a = key("t", "a");
            let b = key("t", "b");
            let a_elsewhere = key("u", "a");
            let (w0, w1) = (T0, T0 + HOUR);
            s.checkpoint(segments_only(vec![
                seg(&a, w0, 0, false, b"a0"),
                seg(&a, w0, 1, false, b"a1"),
                seg(&a, w1, 0, false, b"a-next"),
                seg(&b, w0, 0, false, b"b0"),
                seg(&a_elsewhere, w0, 0, false, b"u0"),
            ]))
            .await?;
            s.seal(SealWrite {
                chunks: vec![chunk(ChunkKind::Raw, &a, w0, b"block")],
                sealed: vec![(a.clone(), w0)],
            })
            .await?;
            ensure!(s.chunks(ChunkKind::Raw, &a, w0, w1).await? == vec![(w0, b"block".to_vec())]);
            let left = segment_keys(s.as_ref(), &a).await?;
            ensure!(left == vec![(w1, 0, false, b"a-next".to_vec())], "{left:?}");
            ensure!(segment_keys(s.as_ref(), &b).await?.len() == 1);
            ensure!(segment_keys(s.as_ref(), &a_elsewhere).await?.len() == 1);
            // Sealing a window with no segments, or with no chunk to write, is fine.
            s.seal(SealWrite {
                chunks: Vec::new(),
                sealed: vec![(b.clone(), w0), (a.clone(), w0 - HOUR)],
            })
            .await?;
            ensure!(segment_keys(s.as_ref(), &b).await?.is_empty());
            ensure!(segment_keys(s.as_ref(), &a).await?.len() == 1);
            Ok(())
        })
        .await
}

async fn partition_states_round_trip_through_checkpoints(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let topic = "fleet.metrics.v1";
            ensure!(s.partition_state(topic, 0).await?.is_none());
            let state = |partition, next_offset| PartitionState {
                topic: topic.to_owned(),
                partition,
                next_offset,
                watermark: T0 + 5 * SECOND,
                agents: vec![
                    OpenAgent {
                        agent: key("t", "a"),
                        max_ts: T0 + HOUR,
                        last_ingested: T0 + 2 * SECOND,
                    },
                    OpenAgent {
                        agent: key("t", "b"),
                        max_ts: -HOUR,
                        last_ingested: i64::MIN,
                    },
                ],
            };
            let first = state(0, 42);
            let last_partition = PartitionState {
                agents: Vec::new(),
                ..state(u32::MAX, 7)
            };
            s.checkpoint(CheckpointWrite {
                segments: vec![seg(&key("t", "a"), T0, 0, false, b"s")],
                series: vec![(key("t", "a"), "cpu".into())],
                partitions: vec![first.clone(), last_partition.clone()],
            })
            .await?;
            ensure!(s.partition_state(topic, 0).await? == Some(first));
            ensure!(s.partition_state(topic, u32::MAX).await? == Some(last_partition));
            ensure!(s.partition_state(topic, 1).await?.is_none());
            ensure!(s.partition_state("fleet.other.v1", 0).await?.is_none());
            // A later checkpoint replaces the state.
            let second = PartitionState {
                agents: Vec::new(),
                ..state(0, 99)
            };
            s.checkpoint(CheckpointWrite {
                partitions: vec![second.clone()],
                ..Default::default()
            })
            .await?;
            ensure!(s.partition_state(topic, 0).await? == Some(second));
            Ok(())
        })
        .await
}

async fn segments_come_by_window_then_seq(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let a = key("t", "a");
            let (w0, w1, w2) = (T0, T0 + HOUR, T0 + 2 * HOUR);
            s.checkpoint(segments_only(vec![
                seg(&a, w1, 2, false, b"w1s2"),
                seg(&a, w0, 1, false, b"w0s1"),
            ]))
            .await?;
            s.checkpoint(segments_only(vec![
                seg(&a, w2, 10, false, b"w2s10"),
                seg(&a, w0, 0, false, b"w0s0"),
                seg(&a, w1, 0, false, b"w1s0"),
                seg(&a, w2, 9, false, b"w2s9"),
                seg(&a, w1, 1, false, b"w1s1"),
            ]))
            .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            let order: Vec<(i64, u64)> = got.iter().map(|g| (g.0, g.1)).collect();
            ensure!(
                order
                    == vec![
                        (w0, 0),
                        (w0, 1),
                        (w1, 0),
                        (w1, 1),
                        (w1, 2),
                        (w2, 9),
                        (w2, 10)
                    ],
                "{order:?}"
            );
            ensure!(got[4].3 == b"w1s2", "bytes kept: {got:?}");
            let mid = s.segments(&a, w1, w2).await?;
            ensure!(
                mid.iter().all(|g| g.window == w1) && mid.len() == 3,
                "{mid:?}"
            );
            ensure!(s.segments(&a, w1 + 1, w2).await?.is_empty());
            ensure!(s.segments(&a, w2, w1).await?.is_empty());
            // A rewrite of a seq replaces it.
            s.checkpoint(segments_only(vec![seg(&a, w0, 1, false, b"again")]))
                .await?;
            let got = s.segments(&a, w0, w1).await?;
            ensure!(got.len() == 2 && got[1].bytes == b"again", "{got:?}");
            Ok(())
        })
        .await
}

/// As the embedded store does it: writing a `full` segment drops every other segment of
/// its window (earlier and later seqs, stored or earlier in the same write); segments
/// after it in the same write are kept.
async fn a_full_segment_replaces_its_window(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let a = key("t", "a");
            let b = key("t", "b");
            let (w0, w1) = (T0, T0 + HOUR);
            s.checkpoint(segments_only(vec![
                seg(&a, w0, 0, false, b"0"),
                seg(&a, w0, 1, false, b"1"),
                seg(&a, w1, 0, false, b"w1"),
                seg(&b, w0, 0, false, b"b"),
            ]))
            .await?;
            let windows = |v: &[(i64, u64, bool, Vec<u8>)], w: i64| -> Vec<(u64, bool)> {
                v.iter().filter(|g| g.0 == w).map(|g| (g.1, g.2)).collect()
            };

            s.checkpoint(segments_only(vec![seg(&a, w0, 2, true, b"whole")]))
                .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            ensure!(windows(&got, w0) == vec![(2, true)], "{got:?}");
            ensure!(
                windows(&got, w1) == vec![(0, false)],
                "other windows stay: {got:?}"
            );
            ensure!(
                segment_keys(s.as_ref(), &b).await?.len() == 1,
                "other agents stay"
            );

            s.checkpoint(segments_only(vec![seg(&a, w0, 3, false, b"3")]))
                .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            ensure!(windows(&got, w0) == vec![(2, true), (3, false)], "{got:?}");

            s.checkpoint(segments_only(vec![
                seg(&a, w0, 4, false, b"4"),
                seg(&a, w0, 5, true, b"whole again"),
                seg(&a, w0, 6, false, b"6"),
            ]))
            .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            ensure!(windows(&got, w0) == vec![(5, true), (6, false)], "{got:?}");

            // A full segment below the stored seqs still replaces them all.
            s.checkpoint(segments_only(vec![seg(&a, w0, 1, true, b"low")]))
                .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            ensure!(windows(&got, w0) == vec![(1, true)], "{got:?}");

            // The later of two segments with one seq wins, full or not.
            s.checkpoint(segments_only(vec![
                seg(&a, w0, 9, true, b"x"),
                seg(&a, w0, 9, false, b"y"),
            ]))
            .await?;
            let got = segment_keys(s.as_ref(), &a).await?;
            ensure!(
                got.iter()
                    .filter(|g| g.0 == w0)
                    .cloned()
                    .collect::<Vec<_>>()
                    == vec![(w0, 9, false, b"y".to_vec())],
                "{got:?}"
            );
            ensure!(windows(&got, w1) == vec![(0, false)]);
            Ok(())
        })
        .await
}

async fn series_are_listed_in_order_up_to_the_limit(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            ensure!(s.list_series(usize::MAX).await?.is_empty());
            let series = |t: &str, a: &str, n: &str| (key(t, a), n.to_owned());
            s.checkpoint(CheckpointWrite {
                series: vec![
                    series("t1", "a1", "cpu.b"),
                    series("t1", "a1", "cpu.a"),
                    series("t1", "a2", "mem"),
                    series("t0", "z", "x"),
                    series("t1", "a1", "cpu.a"),
                ],
                ..Default::default()
            })
            .await?;
            s.checkpoint(CheckpointWrite {
                series: vec![series("t1", "a10", "y"), series("t1", "a1", "cpu.a")],
                ..Default::default()
            })
            .await?;
            ensure!(
                s.series(&key("t1", "a1")).await? == vec!["cpu.a".to_owned(), "cpu.b".to_owned()]
            );
            ensure!(s.series(&key("t1", "a10")).await? == vec!["y".to_owned()]);
            ensure!(s.series(&key("t1", "a")).await?.is_empty());
            ensure!(s.series(&key("t0", "a1")).await?.is_empty());
            let stored = |t: &str, a: &str, n: &str| StoredSeries {
                agent: key(t, a),
                series: n.to_owned(),
            };
            let all = vec![
                stored("t0", "z", "x"),
                stored("t1", "a1", "cpu.a"),
                stored("t1", "a1", "cpu.b"),
                stored("t1", "a10", "y"),
                stored("t1", "a2", "mem"),
            ];
            ensure!(s.list_series(usize::MAX).await? == all);
            ensure!(s.list_series(5).await? == all);
            ensure!(s.list_series(2).await? == all[..2].to_vec());
            ensure!(s.list_series(0).await?.is_empty());
            Ok(())
        })
        .await
}

/// The embedded store deletes chunks past their retention in `expire`; the CQL store
/// returns 0 there and its rows go by TTL, counted from the window's end.
async fn chunks_go_after_their_retention(engine: Engine) -> Result<()> {
    let retention = Retention {
        raw: Duration::from_secs(2 * 3600),
        five_minutes: Duration::from_secs(400 * 86_400),
        one_hour: Duration::from_secs(400 * 86_400),
    };
    engine
        .run(retention, move |s| async move {
            let a = key("t", "a");
            let raw_keep = 2 * HOUR;
            // A raw window (not aligned: the store does not care) whose retention ends
            // 20 s from now. Were the TTL counted from the write, it would live 2 h; from
            // the window's start, it would not be written.
            let dies_at = now_micros() + 20 * SECOND;
            let w = dies_at - raw_keep - HOUR;
            let long_gone = w - 3 * HOUR;
            let day = ChunkKind::Rollup5m.window_of(now_micros());
            s.seal(seal_chunks(vec![
                chunk(ChunkKind::Raw, &a, w, b"young"),
                chunk(ChunkKind::Raw, &a, long_gone, b"old"),
                chunk(ChunkKind::Rollup5m, &a, day, b"5m"),
            ]))
            .await?;
            let raw = || s.chunks(ChunkKind::Raw, &a, i64::MIN, i64::MAX);
            match engine {
                Engine::Embedded => {
                    ensure!(raw().await?.len() == 2, "stored until expire");
                    ensure!(s.expire(dies_at - SECOND, &retention).await? == 1);
                    ensure!(raw().await? == vec![(w, b"young".to_vec())]);
                    ensure!(s.expire(dies_at, &retention).await? == 1);
                }
                Engine::Cql => {
                    ensure!(
                        raw().await? == vec![(w, b"young".to_vec())],
                        "a chunk past its retention is not written"
                    );
                    ensure!(s.expire(dies_at, &retention).await? == 0, "TTLs do it");
                    let wait = dies_at + 2 * SECOND - now_micros();
                    tokio::time::sleep(Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
                        .await;
                }
            }
            ensure!(raw().await?.is_empty(), "the raw chunk is gone");
            ensure!(
                s.chunks(ChunkKind::Rollup5m, &a, i64::MIN, i64::MAX)
                    .await?
                    == vec![(day, b"5m".to_vec())],
                "the 5-minute rollup is kept longer"
            );
            Ok(())
        })
        .await
}

async fn stored_bytes_has_one_entry_per_kind(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let names = |v: &[(&'static str, u64)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
            let get = |v: &[(&'static str, u64)], n: &str| v.iter().find(|e| e.0 == n).map(|e| e.1);
            let empty = s.stored_bytes().await?;
            ensure!(
                names(&empty) == vec!["raw", "5m", "1h", "segments"],
                "{empty:?}"
            );
            ensure!(empty.iter().all(|e| e.1 == 0), "{empty:?}");
            let a = key("t", "a");
            s.seal(seal_chunks(vec![chunk(ChunkKind::Raw, &a, T0, &[7; 1000])]))
                .await?;
            s.checkpoint(segments_only(vec![seg(&a, T0 + HOUR, 0, false, &[9; 300])]))
                .await?;
            let full = s.stored_bytes().await?;
            ensure!(names(&full) == names(&empty));
            ensure!(get(&full, "raw").is_some_and(|n| n >= 1000), "{full:?}");
            ensure!(get(&full, "segments").is_some_and(|n| n >= 300), "{full:?}");
            ensure!(
                get(&full, "5m") == Some(0) && get(&full, "1h") == Some(0),
                "{full:?}"
            );
            s.seal(SealWrite {
                chunks: Vec::new(),
                sealed: vec![(a.clone(), T0 + HOUR)],
            })
            .await?;
            let after = s.stored_bytes().await?;
            ensure!(get(&after, "segments") == Some(0), "{after:?}");
            Ok(())
        })
        .await
}

async fn unusual_keys_work(engine: Engine) -> Result<()> {
    engine
        .run(long_retention(), move |s| async move {
            let odd = key("テナント", "agent ✓ 'quoted' \"twice\"; --");
            let slash = key("t", "a/b");
            let plain = key("t", "a");
            // Windows before the epoch, across it, and at the ends of the range.
            let windows = [-2 * HOUR, -HOUR, 0];
            s.seal(seal_chunks(
                windows
                    .iter()
                    .flat_map(|&w| {
                        [
                            chunk(ChunkKind::Raw, &odd, w, &w.to_le_bytes()),
                            chunk(ChunkKind::Raw, &slash, w, b"slash"),
                        ]
                    })
                    .collect(),
            ))
            .await?;
            let got = s.chunks(ChunkKind::Raw, &odd, -2 * HOUR, HOUR).await?;
            ensure!(
                got.iter().map(|c| c.0).collect::<Vec<_>>() == windows.to_vec(),
                "{got:?}"
            );
            ensure!(got[0].1 == (-2 * HOUR).to_le_bytes());
            ensure!(s.chunks(ChunkKind::Raw, &odd, -HOUR, 0).await?.len() == 1);
            ensure!(
                s.chunks(ChunkKind::Raw, &slash, i64::MIN, i64::MAX)
                    .await?
                    .len()
                    == 3
            );
            ensure!(s
                .chunks(ChunkKind::Raw, &plain, i64::MIN, i64::MAX)
                .await?
                .is_empty());

            let max_seq = i64::MAX as u64;
            s.checkpoint(CheckpointWrite {
                segments: vec![
                    seg(&odd, 0, 0, false, b"zero"),
                    seg(&odd, i64::MIN, max_seq, false, b"min"),
                    seg(&odd, -HOUR, 3, true, b"neg"),
                ],
                series: vec![(odd.clone(), "温度.℃ {disk=\"/\"}".into())],
                partitions: vec![PartitionState {
                    topic: "тема".into(),
                    partition: 3,
                    next_offset: -1,
                    watermark: i64::MIN,
                    agents: vec![OpenAgent {
                        agent: odd.clone(),
                        max_ts: -HOUR,
                        last_ingested: -HOUR,
                    }],
                }],
            })
            .await?;
            let segs = segment_keys(s.as_ref(), &odd).await?;
            ensure!(
                segs.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>()
                    == vec![(i64::MIN, max_seq), (-HOUR, 3), (0, 0)],
                "{segs:?}"
            );
            ensure!(s.segments(&odd, i64::MIN, -HOUR).await?.len() == 1);
            ensure!(s.series(&odd).await? == vec!["温度.℃ {disk=\"/\"}".to_owned()]);
            ensure!(s.list_series(usize::MAX).await?.len() == 1);
            let state = s.partition_state("тема", 3).await?.context("state")?;
            ensure!(state.agents[0].agent == odd && state.next_offset == -1);
            Ok(())
        })
        .await
}

/// The CQL store: a fresh keyspace per case, and what only it has (URLs, connecting).
#[cfg(feature = "cql")]
mod cql_server {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{bail, ensure, Context, Result};
    use fleet_timeseries::cql::CqlChunks;
    use fleet_timeseries::store::{CheckpointWrite, ChunkKind, ChunkStore, SealWrite};
    use fleet_timeseries::{Error, Retention};

    use super::{chunk, key, long_retention, seg, segments_only, HOUR, T0};

    use crate::support::connect_fresh;

    /// Runs `case` on a fresh keyspace, then drops it.
    pub(super) async fn run<F, Fut>(retention: Retention, case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn ChunkStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let (_, store) = connect_fresh(retention).await?;
        ensure!(store.engine() == "cql");
        let result = case(store.clone()).await;
        let dropped = store.drop_keyspace().await;
        result?;
        Ok(dropped?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_reconnecting_under_another_retention() -> Result<()> {
        let (url, store) = connect_fresh(long_retention()).await?;
        let a = key("t", "a");
        let result = async {
            store
                .seal(SealWrite {
                    chunks: vec![chunk(ChunkKind::Raw, &a, T0, b"block")],
                    sealed: Vec::new(),
                })
                .await?;
            store
                .checkpoint(CheckpointWrite {
                    series: vec![(a.clone(), "cpu".into())],
                    ..segments_only(vec![seg(&a, T0 + HOUR, 0, false, b"seg")])
                })
                .await?;
            // A second connect finds the tables (and alters their default TTLs).
            let mut shorter = long_retention();
            shorter.raw = Duration::from_secs(400 * 86_400);
            let again = fleet_timeseries::open_chunks(&url, shorter).await?;
            ensure!(again.engine() == "cql");
            ensure!(
                again.chunks(ChunkKind::Raw, &a, T0, T0 + HOUR).await?
                    == vec![(T0, b"block".to_vec())]
            );
            ensure!(again.segments(&a, i64::MIN, i64::MAX).await?.len() == 1);
            ensure!(again.series(&a).await? == vec!["cpu".to_owned()]);
            ensure!(again.expire(i64::MAX, &shorter).await? == 0);
            Ok(())
        }
        .await;
        let dropped = store.drop_keyspace().await;
        result?;
        Ok(dropped?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seqs_past_bigint_are_refused() -> Result<()> {
        run(long_retention(), |s| async move {
            let got = s
                .checkpoint(segments_only(vec![seg(
                    &key("t", "a"),
                    T0,
                    i64::MAX as u64 + 1,
                    false,
                    b"x",
                )]))
                .await;
            ensure!(matches!(got, Err(Error::InvalidQuery(_))), "{got:?}");
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn bad_urls_are_config_errors() -> Result<()> {
        for url in [
            "scylla://",
            "scylla:///fleet",
            "scylla://127.0.0.1:notaport/fleet",
            "scylla://127.0.0.1:0/fleet",
            "scylla://127.0.0.1:9042/not-a-keyspace",
            "scylla://127.0.0.1:9042/fleet/extra",
            "scylla://127.0.0.1:9042/fleet?replication_factor=0",
            "scylla://127.0.0.1:9042/fleet?connect_timeout=soon",
            "scylla://127.0.0.1:9042/fleet?unknown_option=1",
            "scylla://user:secret@127.0.0.1:9042/fleet?unknown_option=1",
        ] {
            match fleet_timeseries::open_chunks(url, Retention::default()).await {
                Err(Error::Config(msg)) => {
                    ensure!(!msg.is_empty() && !msg.contains("secret"), "{url}: {msg}")
                }
                other => bail!("{url}: expected a configuration error, got {other:?}"),
            }
        }
        let bad_retention = Retention {
            raw: Duration::ZERO,
            ..Retention::default()
        };
        ensure!(matches!(
            CqlChunks::connect("scylla://127.0.0.1:9042/fleet", bad_retention).await,
            Err(Error::Config(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn unreachable_servers_are_unavailable() -> Result<()> {
        // Nothing listens (connection refused).
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = closed.local_addr()?.port();
        drop(closed);
        // Something accepts but never answers (a hung server).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let silent_port = silent.local_addr()?.port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        for url in [
            format!("scylla://127.0.0.1:{port}/fleet_unreachable?connect_timeout=2s"),
            format!("scylla://127.0.0.1:{silent_port}/fleet_unreachable?connect_timeout=1s"),
        ] {
            // A guard against hanging, not a timing assertion: connect gives up by itself.
            let got = tokio::time::timeout(
                Duration::from_secs(120),
                fleet_timeseries::open_chunks(&url, Retention::default()),
            )
            .await
            .with_context(|| format!("{url}: connect did not give up"))?;
            match got {
                Err(Error::Unavailable(msg)) => ensure!(msg.contains("127.0.0.1"), "{msg}"),
                other => bail!("{url}: expected Unavailable, got {other:?}"),
            }
        }
        hold.abort();
        Ok(())
    }
}

/// The embedded store's files: what a clean stop gives back, what a crash leaves, what
/// garbage costs, and stores from before the blob files.
mod embedded_file {
    use std::path::Path;

    use anyhow::{ensure, Context as _, Result};
    use fleet_timeseries::embedded::{disk_bytes, EmbeddedChunks, BLOB_DIR, FILE_NAME};
    use fleet_timeseries::store::{ChunkKind, ChunkStore};

    use super::{chunk, key, long_retention, seal_chunks, seg, segments_only, HOUR, T0};

    fn dir_bytes(dir: &Path) -> Result<u64> {
        Ok(disk_bytes(dir)?)
    }

    /// Seals one chunk.
    async fn seal_one(
        store: &EmbeddedChunks,
        kind: ChunkKind,
        agent: &fleet_timeseries::store::AgentKey,
        window: i64,
        bytes: &[u8],
    ) -> Result<()> {
        store
            .seal(seal_chunks(vec![chunk(kind, agent, window, bytes)]))
            .await?;
        Ok(())
    }

    fn blob_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
        let mut out: Vec<_> = std::fs::read_dir(dir.join(BLOB_DIR))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        out.sort();
        Ok(out)
    }

    /// 200 one-hour raw chunks of 64 KiB for agent `a`, one for agent `b`.
    async fn fill(store: &EmbeddedChunks) -> Result<()> {
        let (a, b) = (key("t", "a"), key("t", "b"));
        for i in 0..200 {
            let bytes = vec![i as u8; 64 * 1024];
            seal_one(store, ChunkKind::Raw, &a, T0 + i * HOUR, &bytes).await?;
        }
        seal_one(store, ChunkKind::Raw, &b, T0, b"kept").await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_chunks_give_their_space_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedChunks::open(dir.path())?;
        fill(&store).await?;
        let far = T0 + 400 * HOUR;
        seal_one(&store, ChunkKind::Raw, &key("t", "b"), far, b"kept").await?;
        let full = dir_bytes(dir.path())?;
        ensure!(
            full >= 12 << 20,
            "the store held 12.5 MiB of chunks: {full}"
        );
        let mut short = long_retention();
        short.raw = std::time::Duration::from_secs(1);
        ensure!(store.expire(far, &short).await? == 201);
        // Files with nothing live go with the expiry, not at the stop.
        let running = dir_bytes(dir.path())?;
        ensure!(
            running < 2 << 20,
            "the expired chunks' files are deleted: {full} -> {running} bytes"
        );
        ensure!(
            blob_files(dir.path())?.len() == 1,
            "{:?}",
            blob_files(dir.path())?
        );
        drop(store);
        let store = EmbeddedChunks::open(dir.path())?;
        let got = store
            .chunks(ChunkKind::Raw, &key("t", "b"), far, far + HOUR)
            .await?;
        ensure!(got == vec![(far, b"kept".to_vec())], "{got:?}");
        Ok(())
    }

    /// What the storage bench found: chunks in redb's B-tree took 1.1-2.3x their bytes
    /// (overflow pages, copy-on-write, a file growing by doubling). A fleet's hours as
    /// many small chunks, sealed an hour at a time, must take little more than their
    /// bytes, and a clean stop must never grow the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_takes_about_what_its_chunks_take() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedChunks::open(dir.path())?;
        let (agents, hours, size) = (100, 60, 2_000);
        for hour in 0..hours {
            let chunks = (0..agents)
                .map(|a| {
                    let bytes = vec![(a + hour) as u8; size];
                    chunk(
                        ChunkKind::Raw,
                        &key("t", &format!("a{a:03}")),
                        T0 + hour * HOUR,
                        &bytes,
                    )
                })
                .collect();
            store.seal(seal_chunks(chunks)).await?;
        }
        let payload = (agents * hours * size as i64) as u64;
        let usage = store.usage()?;
        ensure!(usage.blob_live == payload, "{usage:?}");
        drop(store);
        let after = dir_bytes(dir.path())?;
        ensure!(
            after <= usage.total(),
            "the stop grew the store: {} -> {after} bytes",
            usage.total()
        );
        ensure!(
            after * 10 <= payload * 11,
            "{payload} bytes of chunks take {after} bytes on disk ({usage:?})"
        );
        Ok(())
    }

    /// Replacing chunks (late data, rollups of an open day) leaves garbage in the blob
    /// files; a file at least half garbage is compacted as the store runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replaced_chunks_do_not_pile_up() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedChunks::open(dir.path())?;
        let a = key("t", "a");
        for i in 0..100u8 {
            let bytes = vec![i; 64 * 1024];
            seal_one(&store, ChunkKind::Rollup5m, &a, T0, &bytes).await?;
            store
                .checkpoint(segments_only(vec![seg(&a, T0, 0, true, &bytes)]))
                .await?;
        }
        // 12.5 MiB written, 128 KiB live.
        let usage = store.usage()?;
        ensure!(usage.blob_live == 2 * 64 * 1024, "{usage:?}");
        ensure!(usage.blob_files <= 4 << 20, "garbage piles up: {usage:?}");
        let got = store.chunks(ChunkKind::Rollup5m, &a, T0, T0 + 1).await?;
        ensure!(
            got == vec![(T0, vec![99; 64 * 1024])],
            "the last chunk is kept"
        );
        let segs = store.segments(&a, T0, T0 + HOUR).await?;
        ensure!(segs.len() == 1 && segs[0].bytes == vec![99; 64 * 1024]);
        drop(store);
        let after = dir_bytes(dir.path())?;
        ensure!(
            after < usage.blob_live + (1 << 20),
            "a clean stop compacts what is left: {after} bytes"
        );
        Ok(())
    }

    /// A crash after the blobs were written and before the transaction that references
    /// them committed leaves bytes past a file's committed length, or a whole new file;
    /// the next open removes both and keeps what was committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_leaves_nothing_half_written() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let a = key("t", "a");
        {
            let store = EmbeddedChunks::open(dir.path())?;
            seal_one(&store, ChunkKind::Raw, &a, T0, b"committed").await?;
        }
        let files = blob_files(dir.path())?;
        ensure!(files.len() == 1, "{files:?}");
        let committed = std::fs::metadata(&files[0])?.len();
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().append(true).open(&files[0])?;
            f.write_all(b"uncommitted tail")?;
        }
        let orphan = dir.path().join(BLOB_DIR).join("99999999.blob");
        std::fs::write(&orphan, b"a file no transaction knows")?;
        let store = EmbeddedChunks::open(dir.path())?;
        ensure!(!orphan.exists(), "the orphan file is deleted");
        ensure!(
            std::fs::metadata(&files[0])?.len() == committed,
            "the tail is cut"
        );
        seal_one(&store, ChunkKind::Raw, &a, T0 + HOUR, b"next").await?;
        let got = store.chunks(ChunkKind::Raw, &a, T0, T0 + 2 * HOUR).await?;
        ensure!(
            got == vec![(T0, b"committed".to_vec()), (T0 + HOUR, b"next".to_vec())],
            "{got:?}"
        );
        Ok(())
    }

    /// A flipped bit in a blob file is an error, never other data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_blob_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let a = key("t", "a");
        {
            let store = EmbeddedChunks::open(dir.path())?;
            seal_one(&store, ChunkKind::Raw, &a, T0, b"some chunk bytes").await?;
        }
        let file = blob_files(dir.path())?.pop().context("a blob file")?;
        let mut bytes = std::fs::read(&file)?;
        bytes[3] ^= 0x10;
        std::fs::write(&file, bytes)?;
        let store = EmbeddedChunks::open(dir.path())?;
        match store.chunks(ChunkKind::Raw, &a, T0, T0 + HOUR).await {
            Err(e) => ensure!(e.to_string().contains("checksum"), "{e}"),
            Ok(got) => anyhow::bail!("read damaged bytes: {got:?}"),
        }
        Ok(())
    }

    /// A store written before the blob files kept the bytes in redb's tables `raw`,
    /// `rollup_5m`, `rollup_1h` and `segments`: opening it moves them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_from_before_the_blob_files_is_moved_into_them() -> Result<()> {
        use redb::{ReadableDatabase as _, TableDefinition};
        type Old = TableDefinition<'static, (&'static str, &'static str, i64), &'static [u8]>;
        const RAW: Old = TableDefinition::new("raw");
        const ROLLUP_5M: Old = TableDefinition::new("rollup_5m");
        const ROLLUP_1H: Old = TableDefinition::new("rollup_1h");
        type SegmentKey = (&'static str, &'static str, i64, u64);
        const SEGMENTS: TableDefinition<SegmentKey, (bool, &[u8])> =
            TableDefinition::new("segments");
        const SERIES: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("series");
        let dir = tempfile::tempdir()?;
        {
            let db = redb::Database::create(dir.path().join(FILE_NAME))?;
            let tx = db.begin_write()?;
            {
                let mut raw = tx.open_table(RAW)?;
                // More than one move's batch of 4,096.
                for i in 0..5_000i64 {
                    raw.insert(("t", "a", T0 + i * HOUR), format!("raw {i}").as_bytes())?;
                }
                tx.open_table(ROLLUP_5M)?
                    .insert(("t", "a", T0), b"5m".as_slice())?;
                tx.open_table(ROLLUP_1H)?;
                tx.open_table(SEGMENTS)?
                    .insert(("t", "a", T0, 3), (true, b"seg".as_slice()))?;
                let mut series = tx.open_table(SERIES)?;
                for name in ["mem.used", "cpu.percent", "disk.used{mount=\"/\"}"] {
                    series.insert(("t", "a", name), ())?;
                }
                series.insert(("t", "b", "cpu.percent"), ())?;
            }
            tx.commit()?;
        }
        let a = key("t", "a");
        {
            let store = EmbeddedChunks::open(dir.path())?;
            let raw = store
                .chunks(ChunkKind::Raw, &a, T0, T0 + 5_000 * HOUR)
                .await?;
            ensure!(raw.len() == 5_000, "{}", raw.len());
            ensure!(raw[4_999] == (T0 + 4_999 * HOUR, b"raw 4999".to_vec()));
            let five = store.chunks(ChunkKind::Rollup5m, &a, T0, T0 + 1).await?;
            ensure!(five == vec![(T0, b"5m".to_vec())], "{five:?}");
            let segs = store.segments(&a, T0, T0 + HOUR).await?;
            ensure!(
                segs.len() == 1 && segs[0].seq == 3 && segs[0].full && segs[0].bytes == b"seg",
                "{segs:?}"
            );
            let names = store.series(&a).await?;
            ensure!(
                names == ["cpu.percent", "disk.used{mount=\"/\"}", "mem.used"],
                "{names:?}"
            );
            ensure!(store.list_series(10).await?.len() == 4);
        }
        let db = redb::Database::open(dir.path().join(FILE_NAME))?;
        let names: Vec<String> = db
            .begin_read()?
            .list_tables()?
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        for old in ["raw", "rollup_5m", "rollup_1h", "segments", "series"] {
            ensure!(!names.iter().any(|n| n == old), "{old} is left: {names:?}");
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compact_keeps_only_what_is_live() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = EmbeddedChunks::open(dir.path())?;
        let a = key("t", "a");
        // Garbage below the running compaction's 1 MiB: only `compact` takes it.
        for i in 0..10u8 {
            seal_one(&store, ChunkKind::Rollup1h, &a, T0, &[i; 50_000]).await?;
        }
        let c = store.compact()?;
        let usage = store.usage()?;
        ensure!(usage.blob_files == 50_000, "{usage:?}");
        ensure!(
            c.after == usage.total() && c.after < c.before,
            "{c:?} {usage:?}"
        );
        let got = store.chunks(ChunkKind::Rollup1h, &a, T0, T0 + 1).await?;
        ensure!(got == vec![(T0, vec![9; 50_000])]);
        Ok(())
    }
}
