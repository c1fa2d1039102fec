//! Conformance suite of the read model: one body per behaviour (`cases`), run once per
//! engine by a module that knows how to give each test a fresh, empty store (`sqlite`,
//! `postgres`).
//!
//! PostgreSQL: `FLEET_POSTGRES_URL` (default
//! `postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable`) names a server and a role
//! that may create databases. Each test creates its own `fleet_test_<random>` database and
//! drops it afterwards, so the tests run in parallel. If the server is not reachable the
//! tests fail and say how to start it (`support::with_fresh_database`).

mod support;

use std::future::Future;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use fleet_schemas::{fixtures, AlertEventKind};
use fleet_stores::{
    open_read_model, AgentQuery, AgentRow, AlertEvent, AlertQuery, AlertRow, AlertStatus, Change,
    ReadModel, StoreError, StoredOffset,
};

/// The same list of cases for every engine: each module defines `run` and calls this.
macro_rules! conformance {
    () => {
        conformance!(
            report_creates_agent_with_latest_metrics,
            older_report_does_not_overwrite_newer,
            replaying_a_batch_twice_gives_identical_state,
            offsets_are_stored_atomically_with_rows,
            heartbeat_updates_last_seen,
            lifecycle_enrolls_and_deactivates,
            alert_lifecycle_raised_acknowledged_resolved,
            raised_replay_after_resolve_does_not_reopen,
            alert_events_out_of_order_converge,
            tenant_filters_isolate_tenants,
            paging_with_after_and_limit,
            concurrent_applies_all_land,
        );
    };
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                run(crate::cases::$case).await
            }
        )+
    };
}

/// Tests of the SQLite engine, each on a new file in a temporary directory.
mod sqlite {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn ReadModel>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("read-model.db");
        let store = open_read_model(path.to_str().context("utf-8 temp path")?).await?;
        ensure!(store.engine() == "sqlite");
        case(store).await
    }

    conformance!();

    #[tokio::test]
    async fn sqlite_url_reopens_with_data_and_uses_wal() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("read-model.db");
        let url = format!("sqlite://{}", path.display());
        let store = open_read_model(&url).await?;
        let report = fixtures::metric_report("t1", "a1", 1_000);
        store
            .apply("p", &[Change::Report(Box::new(report))], &[])
            .await?;
        ensure!(
            dir.path().join("read-model.db-wal").exists(),
            "a write in WAL mode leaves a -wal file beside the database"
        );
        drop(store);
        // Migrations run again on an up-to-date database and change nothing.
        let store = open_read_model(&url).await?;
        ensure!(store.get_agent(Some("t1"), "a1").await?.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn unusable_path_is_unavailable_and_named() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("no-such-dir").join("read-model.db");
        match open_read_model(path.to_str().context("utf-8 temp path")?).await {
            Err(StoreError::Unavailable(message)) => {
                ensure!(
                    message.contains("no-such-dir"),
                    "message names the file: {message}"
                );
                Ok(())
            }
            other => anyhow::bail!("expected Unavailable, got {other:?}"),
        }
    }
}

/// Tests of the PostgreSQL engine, each on its own new database.
mod postgres {
    use std::str::FromStr;

    use sqlx::any::AnyConnectOptions;

    use super::*;
    use crate::support::base_url;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn ReadModel>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        support::with_fresh_database(|url| async move {
            let store = open_read_model(&url).await?;
            ensure!(store.engine() == "postgres");
            case(store).await
        })
        .await
    }

    conformance!();

    #[tokio::test]
    async fn wrong_password_is_a_config_error_without_password() -> Result<()> {
        let mut options = AnyConnectOptions::from_str(&base_url())?;
        options
            .database_url
            .set_password(Some("wr0ng-pw"))
            .map_err(|()| anyhow::anyhow!("cannot set a password"))?;
        match open_read_model(options.database_url.as_str()).await {
            Err(StoreError::Config(message)) => {
                ensure!(!message.contains("wr0ng-pw"), "no password: {message}");
                ensure!(message.contains("credentials"), "says why: {message}");
                Ok(())
            }
            other => anyhow::bail!(
                "expected a Config error (is PostgreSQL running? `bash scripts/services.sh up`), \
                 got {other:?}"
            ),
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable_without_password() -> Result<()> {
        let url =
            "postgres://fleet:s3cret-pw@fleet-no-such-host.invalid:5432/fleet?sslmode=disable";
        match open_read_model(url).await {
            Err(StoreError::Unavailable(message)) => {
                ensure!(
                    message.contains("fleet-no-such-host.invalid"),
                    "names the host: {message}"
                );
                ensure!(!message.contains("s3cret-pw"), "no password: {message}");
                Ok(())
            }
            other => anyhow::bail!("expected Unavailable, got {other:?}"),
        }
    }
}

/// The behaviours, written once against the trait.
mod cases {
    use super::*;

    const T1: &str = "tenant-1";
    const T2: &str = "tenant-2";
    const PROJECTION: &str = "read-model";
    const SECOND: i64 = 1_000_000;
    /// 2025-01-01T00:00:00Z in µs.
    const T0: i64 = 1_735_689_600 * SECOND;

    fn agent_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn report(tenant: &str, agent: &str, at: i64, cpu: f64) -> Change {
        let mut r = fixtures::metric_report(tenant, agent, at);
        r.cpu_percent = cpu;
        Change::Report(Box::new(r))
    }

    fn heartbeat(tenant: &str, agent: &str, at: i64) -> Change {
        Change::Heartbeat(fixtures::heartbeat(tenant, agent, at, at / SECOND))
    }

    /// The next step of an alert's lifecycle, derived from its RAISED event.
    fn step(raised: &AlertEvent, kind: AlertEventKind, at: i64, value: f64) -> AlertEvent {
        AlertEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            kind,
            value,
            actor: (kind == AlertEventKind::Acknowledged).then(|| "ops@example.com".to_owned()),
            occurred_at: at,
            ingested_at: at + 1_000,
            ..raised.clone()
        }
    }

    fn offset(topic: &str, partition: u32, next_offset: i64) -> StoredOffset {
        StoredOffset {
            topic: topic.into(),
            partition,
            next_offset,
        }
    }

    async fn agent(store: &Arc<dyn ReadModel>, agent: &str) -> Result<AgentRow> {
        store
            .get_agent(None, agent)
            .await?
            .with_context(|| format!("agent {agent} is in the read model"))
    }

    async fn alert(store: &Arc<dyn ReadModel>, alert_id: &str) -> Result<AlertRow> {
        store
            .list_alerts(&AlertQuery {
                limit: Some(1000),
                ..AlertQuery::default()
            })
            .await?
            .into_iter()
            .find(|a| a.alert_id == alert_id)
            .with_context(|| format!("alert {alert_id} is in the read model"))
    }

    type Snapshot = (Vec<AgentRow>, Vec<AlertRow>, Vec<StoredOffset>);

    async fn snapshot(store: &Arc<dyn ReadModel>) -> Result<Snapshot> {
        let agents = store
            .list_agents(&AgentQuery {
                limit: Some(1000),
                ..AgentQuery::default()
            })
            .await?;
        let alerts = store
            .list_alerts(&AlertQuery {
                limit: Some(1000),
                ..AlertQuery::default()
            })
            .await?;
        Ok((agents, alerts, store.offsets(PROJECTION).await?))
    }

    pub(crate) async fn report_creates_agent_with_latest_metrics(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let r = fixtures::metric_report(T1, &a, T0);
        store
            .apply(PROJECTION, &[Change::Report(Box::new(r.clone()))], &[])
            .await?;

        let row = store
            .get_agent(Some(T1), &a)
            .await?
            .context("the report created the agent")?;
        let expected = AgentRow {
            tenant_id: T1.into(),
            agent_id: a.clone(),
            first_seen_at: T0,
            last_seen_at: T0,
            last_metrics_at: Some(T0),
            cpu_percent: Some(r.cpu_percent),
            memory_percent: Some(r.memory_percent),
            disk_percent_max: Some(20.0),
            load_1: Some(r.load_1),
            uptime_seconds: Some(r.uptime_seconds),
            latest_report: Some(serde_json::to_value(&r)?),
            location_id: None,
            device_name: None,
            hostname: None,
            facts: None,
            enrollment: None,
            registered_at: None,
            deactivated_at: None,
        };
        ensure!(row == expected, "got {row:#?}\nexpected {expected:#?}");
        let back: fleet_stores::MetricReport =
            serde_json::from_value(row.latest_report.context("report kept")?)?;
        ensure!(back == r, "the stored report decodes to the applied one");
        Ok(())
    }

    pub(crate) async fn older_report_does_not_overwrite_newer(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a, b) = (agent_id(), agent_id());
        // Newer first for `a`, older first for `b`: both end on the newer metrics.
        store
            .apply(PROJECTION, &[report(T1, &a, T0 + 60 * SECOND, 80.0)], &[])
            .await?;
        store
            .apply(PROJECTION, &[report(T1, &a, T0, 10.0)], &[])
            .await?;
        store
            .apply(PROJECTION, &[report(T1, &b, T0, 10.0)], &[])
            .await?;
        store
            .apply(PROJECTION, &[report(T1, &b, T0 + 60 * SECOND, 80.0)], &[])
            .await?;

        for id in [&a, &b] {
            let row = agent(&store, id).await?;
            ensure!(
                row.cpu_percent == Some(80.0),
                "newest metrics kept: {row:?}"
            );
            ensure!(row.last_metrics_at == Some(T0 + 60 * SECOND));
            ensure!(row.first_seen_at == T0, "first seen is the older report");
            ensure!(row.last_seen_at == T0 + 60 * SECOND);
            let kept = row.latest_report.context("report kept")?;
            ensure!(kept["occurred_at"] == serde_json::json!(T0 + 60 * SECOND));
        }
        let (ra, rb) = (agent(&store, &a).await?, agent(&store, &b).await?);
        ensure!(
            AgentRow {
                agent_id: String::new(),
                latest_report: None,
                ..ra
            } == AgentRow {
                agent_id: String::new(),
                latest_report: None,
                ..rb
            },
            "either order gives the same row"
        );
        Ok(())
    }

    pub(crate) async fn replaying_a_batch_twice_gives_identical_state(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a, b) = (agent_id(), agent_id());
        let raised = fixtures::alert_raised(T1, &a, T0 + 5 * SECOND);
        let other = fixtures::alert_raised(T2, &b, T0 + 7 * SECOND);
        let batch = vec![
            heartbeat(T1, &a, T0),
            report(T1, &a, T0 + SECOND, 55.0),
            report(T2, &b, T0 + 2 * SECOND, 65.0),
            heartbeat(T2, &b, T0 + 3 * SECOND),
            report(T1, &a, T0 + 4 * SECOND, 75.0),
            Change::Alert(raised.clone()),
            Change::Alert(step(
                &raised,
                AlertEventKind::Acknowledged,
                T0 + 6 * SECOND,
                97.0,
            )),
            Change::Alert(step(
                &raised,
                AlertEventKind::Resolved,
                T0 + 8 * SECOND,
                40.0,
            )),
            Change::Alert(other.clone()),
            Change::Alert(step(
                &other,
                AlertEventKind::Acknowledged,
                T0 + 9 * SECOND,
                97.0,
            )),
        ];
        let offsets = [
            offset("fleet.metrics.v1", 0, 10),
            offset("fleet.alerts.v1", 3, 4),
        ];

        store.apply(PROJECTION, &batch, &offsets).await?;
        let once = snapshot(&store).await?;
        store.apply(PROJECTION, &batch, &offsets).await?;
        let twice = snapshot(&store).await?;
        ensure!(
            once == twice,
            "replay changed the state:\n{once:#?}\n{twice:#?}"
        );
        ensure!(once.0.len() == 2 && once.1.len() == 2 && once.2.len() == 2);

        // And record by record, in reverse: the same rows.
        for change in batch.iter().rev() {
            store
                .apply(PROJECTION, std::slice::from_ref(change), &offsets)
                .await?;
        }
        let reversed = snapshot(&store).await?;
        ensure!(
            once == reversed,
            "reverse replay changed the state:\n{once:#?}\n{reversed:#?}"
        );
        Ok(())
    }

    pub(crate) async fn offsets_are_stored_atomically_with_rows(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        ensure!(
            store.offsets(PROJECTION).await?.is_empty(),
            "no offsets before the first run"
        );
        let a = agent_id();
        store
            .apply(
                PROJECTION,
                &[report(T1, &a, T0, 1.0)],
                &[
                    offset("fleet.metrics.v1", 1, 5),
                    offset("fleet.metrics.v1", 0, 10),
                ],
            )
            .await?;
        store
            .apply(
                "other-projection",
                &[],
                &[offset("fleet.metrics.v1", 0, 99)],
            )
            .await?;
        ensure!(
            store.offsets(PROJECTION).await?
                == vec![
                    offset("fleet.metrics.v1", 0, 10),
                    offset("fleet.metrics.v1", 1, 5)
                ],
            "offsets read back in topic and partition order"
        );
        ensure!(
            store.offsets("other-projection").await? == vec![offset("fleet.metrics.v1", 0, 99)]
        );

        // Advancing one partition leaves the other.
        store
            .apply(
                PROJECTION,
                &[heartbeat(T1, &a, T0 + SECOND)],
                &[
                    offset("fleet.metrics.v1", 0, 11),
                    offset("fleet.heartbeats.v1", 0, 1),
                ],
            )
            .await?;
        ensure!(
            store.offsets(PROJECTION).await?
                == vec![
                    offset("fleet.heartbeats.v1", 0, 1),
                    offset("fleet.metrics.v1", 0, 11),
                    offset("fleet.metrics.v1", 1, 5),
                ]
        );

        // A batch whose offsets cannot be stored (negative) leaves no row behind.
        let b = agent_id();
        let failed = store
            .apply(
                PROJECTION,
                &[report(T1, &b, T0, 1.0), heartbeat(T1, &a, T0 + 9 * SECOND)],
                &[
                    offset("fleet.metrics.v1", 0, 12),
                    offset("fleet.metrics.v1", 1, -1),
                ],
            )
            .await;
        ensure!(failed.is_err(), "a negative offset is refused");
        ensure!(
            store.get_agent(None, &b).await?.is_none(),
            "rows rolled back"
        );
        ensure!(
            agent(&store, &a).await?.last_seen_at == T0 + SECOND,
            "update rolled back"
        );
        ensure!(
            store.offsets(PROJECTION).await?
                == vec![
                    offset("fleet.heartbeats.v1", 0, 1),
                    offset("fleet.metrics.v1", 0, 11),
                    offset("fleet.metrics.v1", 1, 5),
                ],
            "offsets rolled back"
        );
        Ok(())
    }

    pub(crate) async fn lifecycle_enrolls_and_deactivates(store: Arc<dyn ReadModel>) -> Result<()> {
        let a = agent_id();
        let mut registered = fixtures::agent_registered(T1, &a, T0);
        registered.device_name = Some("web-1".into());
        let applied = [Change::Lifecycle(registered.clone())];
        store.apply(PROJECTION, &applied, &[]).await?;
        store.apply(PROJECTION, &applied, &[]).await?; // replay: same state
        let row = agent(&store, &a).await?;
        ensure!(row.enrollment.as_deref() == Some("enrolled"), "{row:#?}");
        ensure!(
            row.hostname.as_deref() == Some("web-1") && row.device_name.as_deref() == Some("web-1")
        );
        ensure!(row.location_id.as_deref() == Some("loc-1"));
        ensure!(row.registered_at == Some(T0));
        ensure!(
            row.facts.as_ref().and_then(|f| f["cpu_cores"].as_i64()) == Some(2),
            "{row:#?}"
        );
        let mut gone = registered.clone();
        gone.kind = fleet_schemas::AgentLifecycleKind::Deactivated;
        gone.facts = None;
        gone.occurred_at = T0 + SECOND;
        store
            .apply(PROJECTION, &[Change::Lifecycle(gone)], &[])
            .await?;
        // A replayed registration does not re-enroll a deactivated agent.
        store.apply(PROJECTION, &applied, &[]).await?;
        let row = agent(&store, &a).await?;
        ensure!(row.enrollment.as_deref() == Some("deactivated"), "{row:#?}");
        ensure!(row.deactivated_at == Some(T0 + SECOND));
        Ok(())
    }

    pub(crate) async fn heartbeat_updates_last_seen(store: Arc<dyn ReadModel>) -> Result<()> {
        let a = agent_id();
        store
            .apply(PROJECTION, &[heartbeat(T1, &a, T0)], &[])
            .await?;
        let row = agent(&store, &a).await?;
        let expected = AgentRow {
            tenant_id: T1.into(),
            agent_id: a.clone(),
            first_seen_at: T0,
            last_seen_at: T0,
            last_metrics_at: None,
            cpu_percent: None,
            memory_percent: None,
            disk_percent_max: None,
            load_1: None,
            uptime_seconds: None,
            latest_report: None,
            location_id: None,
            device_name: None,
            hostname: None,
            facts: None,
            enrollment: None,
            registered_at: None,
            deactivated_at: None,
        };
        ensure!(
            row == expected,
            "a heartbeat creates a bare agent: {row:#?}"
        );

        store
            .apply(PROJECTION, &[heartbeat(T1, &a, T0 + 30 * SECOND)], &[])
            .await?;
        ensure!(agent(&store, &a).await?.last_seen_at == T0 + 30 * SECOND);

        // Older ones only widen the window backwards.
        store
            .apply(PROJECTION, &[heartbeat(T1, &a, T0 - 30 * SECOND)], &[])
            .await?;
        let row = agent(&store, &a).await?;
        ensure!(row.first_seen_at == T0 - 30 * SECOND && row.last_seen_at == T0 + 30 * SECOND);

        // A report older than the last heartbeat still brings metrics, not last_seen.
        store
            .apply(PROJECTION, &[report(T1, &a, T0 + 10 * SECOND, 12.5)], &[])
            .await?;
        let row = agent(&store, &a).await?;
        ensure!(row.cpu_percent == Some(12.5) && row.last_metrics_at == Some(T0 + 10 * SECOND));
        ensure!(row.last_seen_at == T0 + 30 * SECOND);
        Ok(())
    }

    pub(crate) async fn alert_lifecycle_raised_acknowledged_resolved(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let raised = fixtures::alert_raised(T1, &a, T0);
        store
            .apply(PROJECTION, &[Change::Alert(raised.clone())], &[])
            .await?;
        let open = alert(&store, &raised.alert_id).await?;
        let expected = AlertRow {
            alert_id: raised.alert_id.clone(),
            tenant_id: T1.into(),
            agent_id: a.clone(),
            rule_id: "rule-cpu".into(),
            rule_name: "CPU high".into(),
            metric: "cpu.percent".into(),
            subject: None,
            severity: "critical".into(),
            status: AlertStatus::Open,
            operator: ">".into(),
            threshold: 90.0,
            value: 97.0,
            message: "cpu.percent 97 > 90".into(),
            raised_at: T0,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_value: None,
        };
        ensure!(open == expected, "got {open:#?}\nexpected {expected:#?}");

        let ack = step(
            &raised,
            AlertEventKind::Acknowledged,
            T0 + 60 * SECOND,
            97.0,
        );
        store.apply(PROJECTION, &[Change::Alert(ack)], &[]).await?;
        let acked = alert(&store, &raised.alert_id).await?;
        let expected = AlertRow {
            status: AlertStatus::Acknowledged,
            acknowledged_at: Some(T0 + 60 * SECOND),
            acknowledged_by: Some("ops@example.com".into()),
            ..expected
        };
        ensure!(acked == expected, "got {acked:#?}\nexpected {expected:#?}");

        let resolved = step(&raised, AlertEventKind::Resolved, T0 + 120 * SECOND, 42.0);
        store
            .apply(PROJECTION, &[Change::Alert(resolved)], &[])
            .await?;
        let done = alert(&store, &raised.alert_id).await?;
        let expected = AlertRow {
            status: AlertStatus::Resolved,
            resolved_at: Some(T0 + 120 * SECOND),
            resolved_value: Some(42.0),
            ..expected
        };
        ensure!(done == expected, "got {done:#?}\nexpected {expected:#?}");
        Ok(())
    }

    pub(crate) async fn raised_replay_after_resolve_does_not_reopen(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let raised = fixtures::alert_raised(T1, &a, T0);
        let resolved = step(&raised, AlertEventKind::Resolved, T0 + 60 * SECOND, 42.0);
        store
            .apply(
                PROJECTION,
                &[Change::Alert(raised.clone()), Change::Alert(resolved)],
                &[],
            )
            .await?;
        let before = alert(&store, &raised.alert_id).await?;
        ensure!(before.status == AlertStatus::Resolved);

        store
            .apply(PROJECTION, &[Change::Alert(raised.clone())], &[])
            .await?;
        let after = alert(&store, &raised.alert_id).await?;
        ensure!(
            after == before,
            "the replayed raise changed the alert: {after:#?}"
        );

        // An acknowledgement arriving after the resolve is recorded, the status stays.
        let late_ack = step(
            &raised,
            AlertEventKind::Acknowledged,
            T0 + 90 * SECOND,
            97.0,
        );
        store
            .apply(PROJECTION, &[Change::Alert(late_ack)], &[])
            .await?;
        let after = alert(&store, &raised.alert_id).await?;
        ensure!(after.status == AlertStatus::Resolved);
        ensure!(after.acknowledged_at == Some(T0 + 90 * SECOND));
        Ok(())
    }

    pub(crate) async fn alert_events_out_of_order_converge(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a, b) = (agent_id(), agent_id());
        let in_order = fixtures::alert_raised(T1, &a, T0);
        let reordered = fixtures::alert_raised(T1, &b, T0);
        let lifecycle = |raised: &AlertEvent| {
            [
                Change::Alert(raised.clone()),
                Change::Alert(step(
                    raised,
                    AlertEventKind::Acknowledged,
                    T0 + SECOND,
                    97.0,
                )),
                Change::Alert(step(
                    raised,
                    AlertEventKind::Resolved,
                    T0 + 2 * SECOND,
                    42.0,
                )),
            ]
        };
        store.apply(PROJECTION, &lifecycle(&in_order), &[]).await?;
        let [raise, ack, resolve] = lifecycle(&reordered);

        // A resolve for an alert never seen creates it, resolved, from its own fields.
        store
            .apply(PROJECTION, std::slice::from_ref(&resolve), &[])
            .await?;
        let first = alert(&store, &reordered.alert_id).await?;
        ensure!(first.status == AlertStatus::Resolved);
        ensure!(first.resolved_at == Some(T0 + 2 * SECOND) && first.resolved_value == Some(42.0));

        store.apply(PROJECTION, &[ack, raise], &[]).await?;
        let expected = alert(&store, &in_order.alert_id).await?;
        let got = alert(&store, &reordered.alert_id).await?;
        ensure!(
            AlertRow {
                alert_id: String::new(),
                agent_id: String::new(),
                ..got.clone()
            } == AlertRow {
                alert_id: String::new(),
                agent_id: String::new(),
                ..expected.clone()
            },
            "order changed the alert:\n{got:#?}\n{expected:#?}"
        );
        Ok(())
    }

    pub(crate) async fn tenant_filters_isolate_tenants(store: Arc<dyn ReadModel>) -> Result<()> {
        let (a1, a2, b1) = (agent_id(), agent_id(), agent_id());
        let alert_a1 = fixtures::alert_raised(T1, &a1, T0);
        let alert_a2 = fixtures::alert_raised(T1, &a2, T0 + SECOND);
        let alert_b1 = fixtures::alert_raised(T2, &b1, T0 + 2 * SECOND);
        store
            .apply(
                PROJECTION,
                &[
                    report(T1, &a1, T0, 1.0),
                    heartbeat(T1, &a2, T0),
                    report(T2, &b1, T0, 2.0),
                    Change::Alert(alert_a1.clone()),
                    Change::Alert(alert_a2.clone()),
                    Change::Alert(alert_b1.clone()),
                    Change::Alert(step(
                        &alert_a2,
                        AlertEventKind::Resolved,
                        T0 + 5 * SECOND,
                        1.0,
                    )),
                ],
                &[],
            )
            .await?;

        let ids = |rows: Vec<AgentRow>| {
            let mut ids: Vec<String> = rows.into_iter().map(|r| r.agent_id).collect();
            ids.sort();
            ids
        };
        let mut tenant1 = vec![a1.clone(), a2.clone()];
        tenant1.sort();
        let only_t1 = store
            .list_agents(&AgentQuery {
                tenant_id: Some(T1.into()),
                ..AgentQuery::default()
            })
            .await?;
        ensure!(only_t1.iter().all(|r| r.tenant_id == T1));
        ensure!(ids(only_t1) == tenant1);
        let all = store.list_agents(&AgentQuery::default()).await?;
        ensure!(all.len() == 3, "no tenant filter: every tenant");

        ensure!(
            store.get_agent(Some(T2), &a1).await?.is_none(),
            "another tenant's agent is hidden"
        );
        ensure!(store.get_agent(Some(T1), &a1).await?.is_some());
        ensure!(store.get_agent(None, &a1).await?.is_some());
        ensure!(store.get_agent(None, "no-such-agent").await?.is_none());

        let alert_ids =
            |rows: Vec<AlertRow>| rows.into_iter().map(|r| r.alert_id).collect::<Vec<_>>();
        let t1_alerts = store
            .list_alerts(&AlertQuery {
                tenant_id: Some(T1.into()),
                ..AlertQuery::default()
            })
            .await?;
        ensure!(
            alert_ids(t1_alerts) == vec![alert_a2.alert_id.clone(), alert_a1.alert_id.clone()],
            "tenant 1's alerts, newest raise first"
        );
        let t2_alerts = store
            .list_alerts(&AlertQuery {
                tenant_id: Some(T2.into()),
                ..AlertQuery::default()
            })
            .await?;
        ensure!(alert_ids(t2_alerts) == vec![alert_b1.alert_id.clone()]);
        let by_agent = store
            .list_alerts(&AlertQuery {
                agent_id: Some(a1.clone()),
                ..AlertQuery::default()
            })
            .await?;
        ensure!(alert_ids(by_agent) == vec![alert_a1.alert_id.clone()]);
        let open_t1 = store
            .list_alerts(&AlertQuery {
                tenant_id: Some(T1.into()),
                status: Some(AlertStatus::Open),
                ..AlertQuery::default()
            })
            .await?;
        ensure!(alert_ids(open_t1) == vec![alert_a1.alert_id.clone()]);
        let cross = store
            .list_alerts(&AlertQuery {
                tenant_id: Some(T2.into()),
                agent_id: Some(a1.clone()),
                ..AlertQuery::default()
            })
            .await?;
        ensure!(cross.is_empty(), "tenant and agent filters combine");
        Ok(())
    }

    pub(crate) async fn paging_with_after_and_limit(store: Arc<dyn ReadModel>) -> Result<()> {
        let mut ids: Vec<String> = (0..7).map(|_| agent_id()).collect();
        let changes: Vec<Change> = ids.iter().map(|a| heartbeat(T1, a, T0)).collect();
        let other = agent_id();
        store
            .apply(
                PROJECTION,
                &[changes, vec![heartbeat(T2, &other, T0)]].concat(),
                &[],
            )
            .await?;
        ids.sort();

        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_agents(&AgentQuery {
                    tenant_id: Some(T1.into()),
                    limit: Some(3),
                    after: after.clone(),
                })
                .await?;
            ensure!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.agent_id.clone());
            pages.push(page.into_iter().map(|r| r.agent_id).collect::<Vec<_>>());
        }
        ensure!(
            pages == vec![ids[0..3].to_vec(), ids[3..6].to_vec(), ids[6..7].to_vec()],
            "pages of 3 in agent id order: {pages:?}"
        );

        let first_two = store
            .list_agents(&AgentQuery {
                limit: Some(2),
                ..AgentQuery::default()
            })
            .await?;
        ensure!(first_two.len() == 2);
        let none = store
            .list_agents(&AgentQuery {
                limit: Some(0),
                ..AgentQuery::default()
            })
            .await?;
        ensure!(none.is_empty(), "limit 0 gives an empty page");

        // Alerts: newest raise first, cut at the limit.
        let raises: Vec<AlertEvent> = (0..5)
            .map(|i| fixtures::alert_raised(T1, &ids[0], T0 + i * SECOND))
            .collect();
        let alerts: Vec<Change> = raises.iter().cloned().map(Change::Alert).collect();
        store.apply(PROJECTION, &alerts, &[]).await?;
        let newest = store
            .list_alerts(&AlertQuery {
                limit: Some(2),
                ..AlertQuery::default()
            })
            .await?;
        let got: Vec<i64> = newest.iter().map(|a| a.raised_at).collect();
        ensure!(got == vec![T0 + 4 * SECOND, T0 + 3 * SECOND], "got {got:?}");
        Ok(())
    }

    pub(crate) async fn concurrent_applies_all_land(store: Arc<dyn ReadModel>) -> Result<()> {
        // Writers contend for the database (SQLite has one writer at a time): none may fail.
        let tasks: Vec<_> = (0..16u32)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let a = agent_id();
                    let changes: Vec<Change> = (0..20)
                        .map(|j| report(T1, &a, T0 + j * SECOND, f64::from(i)))
                        .collect();
                    store
                        .apply(PROJECTION, &changes, &[offset("fleet.metrics.v1", i, 20)])
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let agents = store
            .list_agents(&AgentQuery {
                tenant_id: Some(T1.into()),
                ..AgentQuery::default()
            })
            .await?;
        ensure!(agents.len() == 16, "every apply landed: {}", agents.len());
        ensure!(store.offsets(PROJECTION).await?.len() == 16);
        Ok(())
    }
}
