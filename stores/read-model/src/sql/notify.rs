//! Notifications: channels, routes and silences (written by the API), and the notifier's
//! outbox (`notification_deliveries`) with every attempt (`notification_attempts`).
//!
//! Claiming is one conditional `UPDATE` per delivery (`claimed_until` empty or past), so of
//! two notifier instances exactly one sends a delivery while its lease lasts; an instance
//! killed mid-send leaves the lease to run out and another sends it again (at least once;
//! the receiver dedupes on the idempotency key).

use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{clamp_limit, decode_error, SqlReadModel};
use crate::{
    AlertMatcher, AttemptNext, ChannelKind, Delivery, DeliveryAttempt, DeliveryQuery,
    DeliverySource, DeliveryStatus, NewDelivery, NotificationChannel, NotificationRoute, Result,
    Silence, StoreError,
};

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(format!("encode as JSON: {e}")))
}

fn channel_from_row(row: &AnyRow) -> std::result::Result<NotificationChannel, BoxDynError> {
    let kind: String = row.try_get("kind")?;
    let settings: String = row.try_get("settings")?;
    Ok(NotificationChannel {
        channel_id: row.try_get("channel_id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        kind: ChannelKind::parse(&kind).ok_or_else(|| format!("unknown channel kind {kind:?}"))?,
        settings: serde_json::from_str(&settings)?,
        secret: row.try_get("secret")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn route_from_row(row: &AnyRow) -> std::result::Result<NotificationRoute, BoxDynError> {
    let channels: String = row.try_get("channel_ids")?;
    let matcher: String = row.try_get("matcher")?;
    let send_resolved: i64 = row.try_get("send_resolved")?;
    Ok(NotificationRoute {
        route_id: row.try_get("route_id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        channel_ids: serde_json::from_str(&channels)?,
        matcher: serde_json::from_str::<AlertMatcher>(&matcher)?,
        group_window_ms: row.try_get("group_window_ms")?,
        send_resolved: send_resolved != 0,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn silence_from_row(row: &AnyRow) -> std::result::Result<Silence, BoxDynError> {
    let matcher: String = row.try_get("matcher")?;
    Ok(Silence {
        silence_id: row.try_get("silence_id")?,
        tenant_id: row.try_get("tenant_id")?,
        comment: row.try_get("comment")?,
        matcher: serde_json::from_str(&matcher)?,
        starts_at: row.try_get("starts_at")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn delivery_from_row(row: &AnyRow) -> std::result::Result<Delivery, BoxDynError> {
    let status: String = row.try_get("status")?;
    let alert: String = row.try_get("alert")?;
    let attempts: i64 = row.try_get("attempts")?;
    let topic: Option<String> = row.try_get("source_topic")?;
    let source = match topic {
        Some(topic) => {
            let partition: Option<i64> = row.try_get("source_partition")?;
            Some(DeliverySource {
                topic,
                partition: u32::try_from(partition.unwrap_or_default())?,
                offset: row
                    .try_get::<Option<i64>, _>("source_offset")?
                    .unwrap_or_default(),
                timestamp_ms: row
                    .try_get::<Option<i64>, _>("source_timestamp")?
                    .unwrap_or_default(),
                key: row.try_get("source_key")?,
                value: row
                    .try_get::<Option<Vec<u8>>, _>("source_value")?
                    .unwrap_or_default(),
            })
        }
        None => None,
    };
    Ok(Delivery {
        delivery_id: row.try_get("delivery_id")?,
        tenant_id: row.try_get("tenant_id")?,
        channel_id: row.try_get("channel_id")?,
        route_id: row.try_get("route_id")?,
        group_id: row.try_get("group_id")?,
        event_id: row.try_get("event_id")?,
        alert_id: row.try_get("alert_id")?,
        kind: row.try_get("kind")?,
        alert: serde_json::from_str(&alert)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| format!("unknown delivery status {status:?}"))?,
        attempts: u32::try_from(attempts)?,
        due_at: row.try_get("due_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        attempt_log: Vec::new(),
        source,
    })
}

fn attempt_from_row(row: &AnyRow) -> std::result::Result<(String, DeliveryAttempt), BoxDynError> {
    let attempt: i64 = row.try_get("attempt")?;
    let code: Option<i64> = row.try_get("status_code")?;
    let latency: i64 = row.try_get("latency_ms")?;
    Ok((
        row.try_get("delivery_id")?,
        DeliveryAttempt {
            attempt: u32::try_from(attempt)?,
            message_id: row.try_get("message_id")?,
            at: row.try_get("at")?,
            outcome: row.try_get("outcome")?,
            status_code: code.map(u16::try_from).transpose()?,
            latency_ms: u64::try_from(latency)?,
            error: row.try_get("error")?,
        },
    ))
}

/// `WHERE` of a lookup by id, restricted to a tenant when one is named.
fn by_id(id_column: &str, tenant: Option<&str>) -> String {
    match tenant {
        Some(_) => format!(" WHERE {id_column} = $1 AND tenant_id = $2"),
        None => format!(" WHERE {id_column} = $1"),
    }
}

impl SqlReadModel {
    async fn fetch_by_id<T>(
        &self,
        what: &str,
        table: &str,
        id_column: &str,
        tenant: Option<&str>,
        id: &str,
        decode: fn(&AnyRow) -> std::result::Result<T, BoxDynError>,
    ) -> Result<Option<T>> {
        let sql = format!("SELECT * FROM {table}{}", by_id(id_column, tenant));
        let mut q = sqlx::query(&sql).bind(id);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let row = q
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error(what, e))?;
        row.as_ref()
            .map(decode)
            .transpose()
            .map_err(|e| decode_error(what, e))
    }

    async fn delete_by_id<T>(
        &self,
        what: &str,
        table: &str,
        id_column: &str,
        tenant: Option<&str>,
        id: &str,
        decode: fn(&AnyRow) -> std::result::Result<T, BoxDynError>,
    ) -> Result<Option<T>> {
        let Some(found) = self
            .fetch_by_id(what, table, id_column, tenant, id, decode)
            .await?
        else {
            return Ok(None);
        };
        sqlx::query(&format!("DELETE FROM {table} WHERE {id_column} = $1"))
            .bind(id)
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db_error(what, e))?;
        Ok(Some(found))
    }

    async fn list_of_tenant<T>(
        &self,
        what: &str,
        table: &str,
        order: &str,
        tenant: Option<&str>,
        decode: fn(&AnyRow) -> std::result::Result<T, BoxDynError>,
    ) -> Result<Vec<T>> {
        let sql = match tenant {
            Some(_) => format!("SELECT * FROM {table} WHERE tenant_id = $1 ORDER BY {order}"),
            None => format!("SELECT * FROM {table} ORDER BY {order}"),
        };
        let mut q = sqlx::query(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error(what, e))?;
        rows.iter()
            .map(decode)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| decode_error(what, e))
    }

    pub(super) async fn insert_channel(&self, c: &NotificationChannel) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_channels (channel_id, tenant_id, name, kind, settings, \
             secret, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.channel_id.as_str())
        .bind(c.tenant_id.as_str())
        .bind(c.name.as_str())
        .bind(c.kind.as_str())
        .bind(json(&c.settings)?)
        .bind(c.secret.as_deref())
        .bind(c.created_at)
        .bind(c.created_by.as_str())
        .execute(self.db.pool())
        .await
        .map_err(|e| self.db_error("create channel", e))?;
        Ok(())
    }

    pub(super) async fn channels(&self, tenant: Option<&str>) -> Result<Vec<NotificationChannel>> {
        self.list_of_tenant(
            "channels",
            "notification_channels",
            "name, channel_id",
            tenant,
            channel_from_row,
        )
        .await
    }

    pub(super) async fn channel(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<NotificationChannel>> {
        self.fetch_by_id(
            "channel",
            "notification_channels",
            "channel_id",
            tenant,
            id,
            channel_from_row,
        )
        .await
    }

    pub(super) async fn remove_channel(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<NotificationChannel>> {
        self.delete_by_id(
            "delete channel",
            "notification_channels",
            "channel_id",
            tenant,
            id,
            channel_from_row,
        )
        .await
    }

    pub(super) async fn insert_route(&self, r: &NotificationRoute) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_routes (route_id, tenant_id, name, channel_ids, matcher, \
             group_window_ms, send_resolved, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.route_id.as_str())
        .bind(r.tenant_id.as_str())
        .bind(r.name.as_str())
        .bind(json(&r.channel_ids)?)
        .bind(json(&r.matcher)?)
        .bind(r.group_window_ms)
        .bind(i64::from(r.send_resolved))
        .bind(r.created_at)
        .bind(r.created_by.as_str())
        .execute(self.db.pool())
        .await
        .map_err(|e| self.db_error("create route", e))?;
        Ok(())
    }

    pub(super) async fn routes(&self, tenant: Option<&str>) -> Result<Vec<NotificationRoute>> {
        self.list_of_tenant(
            "routes",
            "notification_routes",
            "name, route_id",
            tenant,
            route_from_row,
        )
        .await
    }

    pub(super) async fn remove_route(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<NotificationRoute>> {
        self.delete_by_id(
            "delete route",
            "notification_routes",
            "route_id",
            tenant,
            id,
            route_from_row,
        )
        .await
    }

    pub(super) async fn insert_silence(&self, s: &Silence) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_silences (silence_id, tenant_id, comment, matcher, \
             starts_at, expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.silence_id.as_str())
        .bind(s.tenant_id.as_str())
        .bind(s.comment.as_str())
        .bind(json(&s.matcher)?)
        .bind(s.starts_at)
        .bind(s.expires_at)
        .bind(s.created_at)
        .bind(s.created_by.as_str())
        .execute(self.db.pool())
        .await
        .map_err(|e| self.db_error("create silence", e))?;
        Ok(())
    }

    pub(super) async fn silences(
        &self,
        tenant: Option<&str>,
        at: Option<i64>,
    ) -> Result<Vec<Silence>> {
        let mut all = self
            .list_of_tenant(
                "silences",
                "notification_silences",
                "expires_at, silence_id",
                tenant,
                silence_from_row,
            )
            .await?;
        if let Some(at) = at {
            all.retain(|s| s.expires_at > at);
        }
        Ok(all)
    }

    pub(super) async fn remove_silence(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<Silence>> {
        self.delete_by_id(
            "delete silence",
            "notification_silences",
            "silence_id",
            tenant,
            id,
            silence_from_row,
        )
        .await
    }

    pub(super) async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<u64> {
        let err = |e| self.db_error("enqueue deliveries", e);
        let mut tx = self.db.pool().begin().await.map_err(err)?;
        let mut added = 0;
        for d in deliveries {
            // Grouping: a pending, untried delivery of the same route and channel that is
            // still waiting lends its group and due time, so the group goes out together.
            let open: Option<(String, i64)> = match &d.route_id {
                Some(route) if d.group_window_ms > 0 => {
                    let row = sqlx::query(
                        "SELECT group_id, due_at FROM notification_deliveries WHERE \
                         channel_id = $1 AND route_id = $2 AND status = 'pending' AND \
                         attempts = 0 AND due_at > $3 ORDER BY due_at DESC, group_id LIMIT 1",
                    )
                    .bind(d.channel_id.as_str())
                    .bind(route.as_str())
                    .bind(d.now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(err)?;
                    match row {
                        Some(r) => Some((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?)),
                        None => None,
                    }
                }
                _ => None,
            };
            let window_us = d.group_window_ms.saturating_mul(1000);
            let (group, due) =
                open.unwrap_or_else(|| (d.delivery_id.clone(), d.now.saturating_add(window_us)));
            let src = d.source.as_ref();
            let r = sqlx::query(
                "INSERT INTO notification_deliveries (delivery_id, tenant_id, channel_id, \
                 route_id, event_id, alert_id, kind, alert, status, attempts, due_at, \
                 claimed_until, last_error, created_at, updated_at, delivered_at, source_topic, \
                 source_partition, source_offset, source_timestamp, source_key, source_value, \
                 group_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, NULL, NULL, $10, $10, \
                 NULL, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(d.delivery_id.as_str())
            .bind(d.tenant_id.as_str())
            .bind(d.channel_id.as_str())
            .bind(d.route_id.as_deref())
            .bind(d.event_id.as_str())
            .bind(d.alert_id.as_str())
            .bind(d.kind.as_str())
            .bind(json(&d.alert)?)
            .bind(due)
            .bind(d.now)
            .bind(src.map(|s| s.topic.clone()))
            .bind(src.map(|s| i64::from(s.partition)))
            .bind(src.map(|s| s.offset))
            .bind(src.map(|s| s.timestamp_ms))
            .bind(src.and_then(|s| s.key.clone()))
            .bind(src.map(|s| s.value.clone()))
            .bind(group.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            added += r.rows_affected();
        }
        tx.commit().await.map_err(err)?;
        Ok(added)
    }

    pub(super) async fn claim(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let err = |e| self.db_error("claim deliveries", e);
        let ids: Vec<String> = sqlx::query(
            "SELECT delivery_id FROM notification_deliveries WHERE status = 'pending' \
             AND due_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1) \
             ORDER BY due_at, delivery_id LIMIT $2",
        )
        .bind(now)
        .bind(clamp_limit(Some(limit)))
        .fetch_all(self.db.pool())
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
        let mut claimed = Vec::new();
        for id in ids {
            let r = sqlx::query(
                "UPDATE notification_deliveries SET claimed_until = $1 WHERE delivery_id = $2 \
                 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until <= $3)",
            )
            .bind(lease_until)
            .bind(id.as_str())
            .bind(now)
            .execute(self.db.pool())
            .await
            .map_err(err)?;
            if r.rows_affected() == 1 {
                if let Some(d) = self
                    .fetch_by_id(
                        "claimed delivery",
                        "notification_deliveries",
                        "delivery_id",
                        None,
                        &id,
                        delivery_from_row,
                    )
                    .await?
                {
                    claimed.push(d);
                }
            }
        }
        Ok(claimed)
    }

    pub(super) async fn attempt(
        &self,
        delivery_id: &str,
        a: &DeliveryAttempt,
        next: &AttemptNext,
    ) -> Result<()> {
        let err = |e| self.db_error("record attempt", e);
        let mut tx = self.db.pool().begin().await.map_err(err)?;
        sqlx::query(
            "INSERT INTO notification_attempts (delivery_id, attempt, message_id, at, outcome, \
             status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(delivery_id)
        .bind(i64::from(a.attempt))
        .bind(a.message_id.as_str())
        .bind(a.at)
        .bind(a.outcome.as_str())
        .bind(a.status_code.map(i64::from))
        .bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
        .bind(a.error.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let (status, due, delivered, error) = match next {
            AttemptNext::Delivered => (DeliveryStatus::Delivered, None, Some(a.at), None),
            AttemptNext::Retry(at) => (DeliveryStatus::Pending, Some(*at), None, a.error.clone()),
            AttemptNext::Dead(reason) => (DeliveryStatus::Dead, None, None, Some(reason.clone())),
        };
        sqlx::query(
            "UPDATE notification_deliveries SET status = $1, attempts = CASE WHEN attempts < $2 \
             THEN $2 ELSE attempts END, due_at = COALESCE($3, due_at), claimed_until = NULL, \
             last_error = $4, updated_at = $5, delivered_at = COALESCE($6, delivered_at) \
             WHERE delivery_id = $7",
        )
        .bind(status.as_str())
        .bind(i64::from(a.attempt))
        .bind(due)
        .bind(error)
        .bind(a.at)
        .bind(delivered)
        .bind(delivery_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    pub(super) async fn deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let mut filter = super::Filter::default();
        filter.push("tenant_id", "=", q.tenant_id.as_deref());
        filter.push("channel_id", "=", q.channel_id.as_deref());
        filter.push("alert_id", "=", q.alert_id.as_deref());
        filter.push("status", "=", q.status.map(DeliveryStatus::as_str));
        let mut list = self
            .list_page(
                "deliveries",
                "SELECT * FROM notification_deliveries",
                "created_at DESC, delivery_id DESC",
                &filter,
                q.limit,
                delivery_from_row,
            )
            .await?;
        if list.is_empty() {
            return Ok(list);
        }
        let placeholders: Vec<String> = (1..=list.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT * FROM notification_attempts WHERE delivery_id IN ({}) \
             ORDER BY delivery_id, attempt",
            placeholders.join(", ")
        );
        let rows = list
            .iter()
            .fold(sqlx::query(&sql), |qr, d| qr.bind(d.delivery_id.clone()))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("delivery attempts", e))?;
        for row in &rows {
            let (id, a) = attempt_from_row(row).map_err(|e| decode_error("attempts", e))?;
            if let Some(d) = list.iter_mut().find(|d| d.delivery_id == id) {
                d.attempt_log.push(a);
            }
        }
        Ok(list)
    }
}
