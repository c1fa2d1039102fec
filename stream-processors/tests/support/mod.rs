//! Shared helpers of the processor tests: a real embedded log in a tempdir, producing and
//! reading records, running a processor until stopped.

#![allow(dead_code)] // each test file uses some of these

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::log::read_to_end;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::{codec, Record};
use fleet_stream_processors::Readiness;
use tokio::sync::watch;

/// A generous deadline for anything the processors should do.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// An embedded log in a fresh tempdir, with every topic created.
pub(crate) async fn open_log() -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("open");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    (dir, log)
}

/// Writes one record as the gateway would (keyed, stamped with its occurred_at).
pub(crate) async fn produce<T: Record>(log: &dyn EventLog, ev: &T) {
    let rec = ProduceRecord {
        key: Some(ev.key().as_bytes().to_vec()),
        value: codec::Wire::plain().encode(ev).expect("encode"),
        timestamp_ms: Some(ev.occurred_at().div_euclid(1000)),
    };
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

/// Every record of `T`'s topic now.
pub(crate) async fn read_all<T: Record>(log: &dyn EventLog) -> Vec<T> {
    let mut out = Vec::new();
    read_to_end(log, &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        out.push(
            codec::Wire::plain()
                .decode_known::<T>(&r.value)
                .expect("decode"),
        )
    })
    .await
    .expect("read");
    out
}

/// Reads `T`'s topic until `done` holds (panics after [`DEADLINE`]).
pub(crate) async fn wait_for<T: Record + std::fmt::Debug>(
    log: &dyn EventLog,
    what: &str,
    done: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let all = read_all::<T>(log).await;
        if done(&all) {
            return all;
        }
        if tokio::time::Instant::now() > until {
            panic!("waited in vain for {what}; have {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `group` committed every record of `topic` there is now.
pub(crate) async fn wait_committed(log: &dyn EventLog, group: &str, topic: &str) {
    let until = tokio::time::Instant::now() + DEADLINE;
    let ends = log.end_offsets(topic).await.expect("ends");
    loop {
        let committed = log
            .committed_offsets(group, topic)
            .await
            .expect("committed");
        let behind = ends
            .iter()
            .zip(&committed)
            .any(|(e, c)| *e > 0 && c.unwrap_or(0) < *e);
        if !behind {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "group {group} did not commit {topic} up to {ends:?}: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A processor running in a task.
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    ready: Readiness,
}

impl Running {
    /// Starts `run(ready, shutdown)` in a task.
    pub(crate) fn start<F, Fut>(run: F) -> Running
    where
        F: FnOnce(Readiness, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, mut rx) = watch::channel(false);
        let ready = Readiness::default();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        let fut = run(ready.clone(), shutdown);
        let handle = tokio::spawn(async move { fut.await.expect("processor failed") });
        Running {
            stop,
            handle,
            ready,
        }
    }

    /// Waits until the processor says it is ready.
    pub(crate) async fn ready(&self) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while !self.ready.is_ready() {
            assert!(
                tokio::time::Instant::now() < until,
                "processor never got ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the processor and waits for it to end cleanly.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        self.handle.await.expect("processor task");
    }
}

/// The alert evaluator on `log` in `group`, with these static rules.
pub(crate) fn evaluator(
    log: &Arc<dyn EventLog>,
    group: &str,
    rules: Vec<fleet_stream_processors::rules::StaticRule>,
) -> Running {
    let log = log.clone();
    let cfg = fleet_stream_processors::ProcessorsConfig {
        alert_evaluator: fleet_stream_processors::config::AlertEvaluatorSettings {
            group: group.into(),
            ..Default::default()
        },
        rules,
        ..Default::default()
    };
    Running::start(move |ready, shutdown| {
        fleet_stream_processors::run_alert_evaluator(
            log,
            fleet_schemas::Wire::plain(),
            cfg,
            ready,
            shutdown,
        )
    })
}
