//! Stream processors. For now: the alert evaluator.
//!
//! The evaluator consumes `fleet.metrics.v1` in consumer group `group`, evaluates every
//! report against the threshold rules ([`rules`]), writes AlertRaised / AlertResolved to
//! `fleet.alerts.v1` (keyed by agent id), and commits its offsets only after the log
//! acknowledged the alerts. Its only state, the set of open alerts, is rebuilt on start by
//! reading `fleet.alerts.v1`, so a restart emits no duplicate AlertRaised.

pub mod config;
pub mod metrics;
pub mod rules;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_event_log::{ConsumedRecord, ConsumerOptions, EventLog, ProduceRecord, StartFrom};
use fleet_ops::log::{ensure_topics, next_offsets, produce_until_written, read_to_end, LagGauge};
use fleet_schemas::{codec, topics, AlertEvent, MetricReport, Record};

pub use config::ProcessorsConfig;
use rules::Evaluator;

/// A running evaluator's readiness flag, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Whether the evaluator rebuilt its state and consumes.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, v: bool) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Runs the alert evaluator until `shutdown` resolves.
pub async fn run_alert_evaluator(
    log: Arc<dyn EventLog>,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    rules::validate_rules(&config.rules)?;
    ensure_topics(log.as_ref()).await?;
    let mut evaluator = Evaluator::new(config.rules.clone());
    let rebuilt = read_to_end(log.as_ref(), topics::ALERTS, |r| match codec::decode::<AlertEvent>(&r.value) {
        Ok(ev) => evaluator.observe(&ev),
        Err(e) => tracing::warn!(offset = r.offset, partition = r.partition, error = %e, "Undecodable alert skipped."),
    })
    .await?;
    tracing::info!(
        records = rebuilt,
        open = evaluator.open_alerts(),
        "Alert state rebuilt."
    );
    ::metrics::gauge!(metrics::OPEN_ALERTS).set(evaluator.open_alerts() as f64);
    let options = ConsumerOptions {
        start: StartFrom::Earliest,
        session_timeout: Duration::from_millis(config.session_timeout_ms),
    };
    let mut consumer = log
        .subscribe(&config.group, &[topics::METRICS], options)
        .await?;
    let mut lag = LagGauge::new(&config.group, Duration::from_secs(5));
    ready.set(true);
    tracing::info!(group = %config.group, rules = config.rules.len(), "Alert evaluator running.");
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            b = consumer.poll(config.batch_size, Duration::from_millis(500)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "Poll failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            lag.refresh(log.as_ref()).await;
            continue;
        }
        let started = Instant::now();
        let span = tracing::info_span!("evaluate_batch", records = batch.len());
        let events = {
            let _g = span.enter();
            evaluate_batch(&mut evaluator, &batch)
        };
        if !events.is_empty() {
            let records: Vec<ProduceRecord> = events
                .iter()
                .filter_map(|ev| match codec::encode(ev) {
                    Ok(v) => Some(ProduceRecord {
                        key: Some(ev.key().as_bytes().to_vec()),
                        value: v,
                        timestamp_ms: Some(ev.occurred_at.div_euclid(1000)),
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "Alert event could not be encoded.");
                        None
                    }
                })
                .collect();
            // The offsets are committed only after the alerts are written.
            produce_until_written(log.as_ref(), topics::ALERTS, records).await;
            for ev in &events {
                ::metrics::counter!(metrics::ALERTS_EMITTED, "kind" => ev.kind.as_str())
                    .increment(1);
                tracing::info!(alert_id = %ev.alert_id, agent_id = %ev.agent_id, kind = ev.kind.as_str(), value = ev.value, "Alert event.");
            }
        }
        if let Err(e) = consumer.commit(&next_offsets(&batch)).await {
            tracing::warn!(error = %e, "Commit failed; records will be evaluated again (no duplicate alerts).");
        }
        ::metrics::gauge!(metrics::OPEN_ALERTS).set(evaluator.open_alerts() as f64);
        lag.observe(&batch);
        lag.refresh(log.as_ref()).await;
        ::metrics::histogram!(metrics::BATCH_SECONDS, "processor" => "alerts")
            .record(started.elapsed().as_secs_f64());
    }
    ready.set(false);
    tracing::info!("Alert evaluator stopped.");
    Ok(())
}

fn evaluate_batch(evaluator: &mut Evaluator, batch: &[ConsumedRecord]) -> Vec<AlertEvent> {
    let now = fleet_schemas::time::now_micros();
    let mut out = Vec::new();
    for r in batch {
        ::metrics::counter!(metrics::RECORDS, "processor" => "alerts", "topic" => MetricReport::TOPIC).increment(1);
        match codec::decode::<MetricReport>(&r.value) {
            Ok(report) => out.extend(evaluator.evaluate(&report, now)),
            Err(e) => {
                ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => MetricReport::TOPIC)
                    .increment(1);
                tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "Undecodable metric report skipped.");
            }
        }
    }
    out
}
