//! The delivery half: claims due deliveries from the outbox, sends them (grouped by route
//! and channel), records every attempt and what follows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rand::Rng as _;
use tracing::Instrument as _;

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_event_log::ConsumedRecord;
use fleet_read_model::{AttemptNext, Delivery, DeliveryAttempt, ReadModel};

use crate::message::{group_key, Message};
use crate::send::{Outcome, Sender};
use crate::{metrics, retrying, NotifierConfig};

/// The wait before attempt `attempt + 1` after `attempt` failures: `initial × 2^(attempt-1)`,
/// at most `max`, with jitter (a random point in its upper half).
pub(crate) fn retry_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// Claims, sends and records until `stop` turns true.
pub async fn run_deliveries(
    store: Arc<dyn ReadModel>,
    sender: Sender,
    dead: DeadLetters,
    config: Arc<NotifierConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let now = fleet_schemas::time::now_micros();
        let lease = fleet_schemas::time::duration_micros(config.lease);
        let limit = u32::try_from(config.concurrency.saturating_mul(config.max_group_alerts))
            .unwrap_or(u32::MAX);
        let lease_until = now.saturating_add(lease);
        let claimed = match store.claim_deliveries(now, lease_until, limit).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot claim deliveries; retrying.");
                Vec::new()
            }
        };
        let idle = claimed.is_empty();
        // One message per group (the deliveries of one route and channel that arrived
        // within its window; alone without one), at most max-group-alerts alerts each.
        let mut groups: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for d in claimed {
            groups.entry(d.group_id.clone()).or_default().push(d);
        }
        let messages: Vec<Vec<Delivery>> = groups
            .into_values()
            .flat_map(|mut v| {
                let mut out = Vec::new();
                while !v.is_empty() {
                    let rest = v.split_off(v.len().min(config.max_group_alerts));
                    out.push(std::mem::replace(&mut v, rest));
                }
                out
            })
            .collect();
        futures::stream::iter(messages)
            .for_each_concurrent(config.concurrency, |group| async {
                // A message that could not finish within the lease is left for the next
                // claim (by this or another instance): never sent by two at once.
                let timeout = fleet_schemas::time::duration_micros(config.request_timeout);
                if fleet_schemas::time::now_micros().saturating_add(timeout) >= lease_until {
                    return;
                }
                deliver(&store, &sender, &dead, &config, group).await;
            })
            .await;
        if idle {
            tokio::select! {
                () = tokio::time::sleep(config.poll_interval) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn deliver(
    store: &Arc<dyn ReadModel>,
    sender: &Sender,
    dead: &DeadLetters,
    config: &NotifierConfig,
    group: Vec<Delivery>,
) {
    let Some(first) = group.first() else {
        return;
    };
    let ids: Vec<&str> = group.iter().map(|d| d.event_id.as_str()).collect();
    let message = Message {
        id: group_key(&ids),
        tenant_id: first.tenant_id.clone(),
        channel_id: first.channel_id.clone(),
        route_id: first.route_id.clone(),
        test: first.kind == "test",
        alerts: group.iter().map(|d| d.alert.clone()).collect(),
    };
    let channel = match retrying("channel", || {
        store.get_channel(Some(&first.tenant_id), &first.channel_id)
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, channel_id = %first.channel_id, "Cannot read the channel; the lease will run out and it is tried again.");
            return;
        }
    };
    let (kind, outcome) = match &channel {
        Some(c) => {
            let span = tracing::info_span!(
                "delivery",
                channel_id = %c.channel_id,
                channel_kind = c.kind.as_str(),
                tenant_id = %c.tenant_id,
                message_id = %message.id,
                alerts = group.len(),
            );
            (
                c.kind.as_str(),
                sender.send(c, &message).instrument(span).await,
            )
        }
        None => (
            "deleted",
            Outcome {
                ok: false,
                status_code: None,
                error: Some("the channel was deleted".into()),
                permanent: true,
                latency: Duration::ZERO,
            },
        ),
    };
    ::metrics::histogram!(metrics::ATTEMPT_SECONDS, "channel_kind" => kind)
        .record(outcome.latency.as_secs_f64());
    let at = fleet_schemas::time::now_micros();
    // One wait for the whole message, so its deliveries are due (and sent) together again.
    let attempt_of_group = group
        .iter()
        .map(|d| d.attempts)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let wait = retry_delay(config.retry_initial, config.retry_max, attempt_of_group);
    for d in &group {
        let attempt = d.attempts.saturating_add(1);
        let error = outcome.error.clone();
        let next = if outcome.ok {
            AttemptNext::Delivered
        } else if outcome.permanent || attempt >= config.max_attempts {
            let why = error.clone().unwrap_or_default();
            AttemptNext::Dead(if outcome.permanent {
                format!("refused for good on attempt {attempt}: {why}")
            } else {
                format!("gave up after {attempt} attempts: {why}")
            })
        } else {
            AttemptNext::Retry(at.saturating_add(fleet_schemas::time::duration_micros(wait)))
        };
        let record = DeliveryAttempt {
            attempt,
            message_id: message.id.clone(),
            at,
            outcome: if outcome.ok { "ok" } else { "failed" }.into(),
            status_code: outcome.status_code,
            latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
            error,
        };
        if let Err(e) = retrying("record attempt", || {
            store.record_attempt(&d.delivery_id, &record, &next)
        })
        .await
        {
            tracing::error!(error = %e, delivery_id = %d.delivery_id, "Cannot record the attempt.");
            continue;
        }
        let label = match &next {
            AttemptNext::Delivered => "delivered",
            AttemptNext::Retry(_) => "retry",
            AttemptNext::Dead(_) => "dead",
        };
        ::metrics::counter!(metrics::ATTEMPTS, "channel_kind" => kind, "outcome" => label)
            .increment(1);
        match &next {
            AttemptNext::Delivered => {
                tracing::info!(delivery_id = %d.delivery_id, event_id = %d.event_id, channel_id = %d.channel_id, attempt, "Notification delivered.")
            }
            AttemptNext::Retry(due) => {
                tracing::warn!(delivery_id = %d.delivery_id, channel_id = %d.channel_id, attempt, retry_at = due, error = ?record.error, "Notification failed; will retry.")
            }
            AttemptNext::Dead(reason) => {
                tracing::warn!(delivery_id = %d.delivery_id, channel_id = %d.channel_id, attempt, %reason, "Notification given up.");
                if let Some(src) = &d.source {
                    let rec = ConsumedRecord {
                        topic: Arc::from(src.topic.as_str()),
                        partition: src.partition,
                        offset: src.offset,
                        timestamp_ms: src.timestamp_ms,
                        key: src.key.clone(),
                        value: src.value.clone(),
                    };
                    let text = format!(
                        "notification to channel {} ({kind}) not delivered: {reason}",
                        d.channel_id
                    );
                    dead.send(&rec, Reason::process(text).tenant(&d.tenant_id))
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_bound() {
        let (initial, max) = (Duration::from_secs(2), Duration::from_secs(60));
        for _ in 0..100 {
            let d1 = retry_delay(initial, max, 1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = retry_delay(initial, max, 3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d99 = retry_delay(initial, max, 99);
            assert!(d99 >= Duration::from_secs(30) && d99 <= max, "{d99:?}");
        }
        let spread: std::collections::HashSet<Duration> =
            (0..50).map(|_| retry_delay(initial, max, 5)).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
