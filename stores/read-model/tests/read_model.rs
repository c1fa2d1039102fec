//! Conformance suite of the read model: one body per behaviour (`cases`), run once per
//! engine by a module that knows how to give each test a fresh, empty store (`sqlite`,
//! `postgres`).
//!
//! PostgreSQL: `FLEET_POSTGRES_URL` (default
//! `postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable`) names a server and a role
//! that may create databases. Each test creates its own `fleet_test_<random>` database and
//! drops it afterwards, so the tests run in parallel. If the server is not reachable the
//! tests fail and say how to start it (`support::with_fresh_database`).

use std::future::Future;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use fleet_read_model::{
    open_read_model, AgentQuery, AgentRow, AgentStatus, AlertEvent, AlertQuery, AlertRow,
    AlertStatus, AuditEntry, AuditQuery, Change, CommandDetail, CommandGroup,
    CommandGroupMembersQuery, CommandOutputQuery, CommandQuery, CommandStatus, CommandTarget,
    EventQuery, ReadModel, SampleSeries, SampleSeriesQuery, SoftwareQuery, StoreError,
    StoredOffset, TicketQuery, TicketStatus, SERIES_LAST_STEP_MICROS,
};
use fleet_schemas::{
    fixtures, AgentLifecycleKind, AlertEventKind, CommandEvent, CommandEventKind,
    SoftwareInventory, SoftwarePackage, TicketEvent, TicketEventKind,
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
            one_alert_by_id_within_its_tenant,
            raised_replay_after_resolve_does_not_reopen,
            alert_events_out_of_order_converge,
            tenant_filters_isolate_tenants,
            paging_with_after_and_limit,
            concurrent_applies_all_land,
            command_lifecycle_with_audit_trail,
            command_replay_is_idempotent,
            command_events_out_of_order_converge,
            only_the_first_requested_of_a_command_counts,
            commands_page_newest_first_and_filter_by_tenant,
            command_output_is_kept_in_order_paged_and_bounded,
            command_groups_resolve_their_targets_and_count_their_members,
            rejected_and_cancelled_rank_below_a_dispatch,
            software_inventory_replaced_only_by_newer,
            software_inventory_out_of_order_and_tenant_filter,
            ticket_lifecycle_replay_and_out_of_order_converge,
            tickets_filter_by_tenant_and_status,
            agent_filters_status_and_tags,
            services_follow_the_newest_report,
            overview_counts_per_tenant,
            audit_log_newest_first_per_tenant,
            rules_follow_their_newest_event,
            remote_configs_and_applied_versions_keep_the_newest,
            a_batch_gives_the_state_of_its_changes_one_by_one,
            large_batches_give_the_state_of_their_changes_one_by_one,
            reports_with_and_without_disks_mix,
            sample_series_index_widens_and_filters,
            events_timeline_filters_pages_and_expires,
            notification_settings_are_per_tenant,
            deliveries_are_claimed_once_grouped_and_keep_every_attempt,
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
    use fleet_test_support::services::postgres_url as base_url;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn ReadModel>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        fleet_test_support::services::with_fresh_database(|url| async move {
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
            status: AgentStatus::Online,
            tags: vec![],
            open_alert_count: 0,
        };
        ensure!(row == expected, "got {row:#?}\nexpected {expected:#?}");
        let back: fleet_read_model::MetricReport =
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
            status: AgentStatus::Online,
            tags: vec![],
            open_alert_count: 0,
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

    pub(crate) async fn one_alert_by_id_within_its_tenant(store: Arc<dyn ReadModel>) -> Result<()> {
        let a = agent_id();
        let raised = fixtures::alert_raised(T1, &a, T0);
        let other = fixtures::alert_raised(T2, &agent_id(), T0);
        store
            .apply(
                PROJECTION,
                &[Change::Alert(raised.clone()), Change::Alert(other.clone())],
                &[],
            )
            .await?;
        let listed = alert(&store, &raised.alert_id).await?;
        let got = store.get_alert(None, &raised.alert_id).await?;
        ensure!(got.as_ref() == Some(&listed), "{got:#?}");
        let own = store.get_alert(Some(T1), &raised.alert_id).await?;
        ensure!(own == Some(listed), "{own:#?}");
        // Another tenant's alert is not found when a tenant is named; an unknown id never.
        ensure!(store.get_alert(Some(T1), &other.alert_id).await?.is_none());
        ensure!(store.get_alert(None, &other.alert_id).await?.is_some());
        ensure!(store.get_alert(None, "no-such-alert").await?.is_none());
        let ack = step(&raised, AlertEventKind::Acknowledged, T0 + SECOND, 97.0);
        store.apply(PROJECTION, &[Change::Alert(ack)], &[]).await?;
        let acked = store.get_alert(None, &raised.alert_id).await?;
        ensure!(
            acked.as_ref().map(|r| r.status) == Some(AlertStatus::Acknowledged),
            "{acked:#?}"
        );
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
                    ..AgentQuery::default()
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

    // ------------------------------------------------------------------------------------
    // Commands, software, tickets
    // ------------------------------------------------------------------------------------

    /// One step of a command's lifecycle.
    fn cmd(
        tenant: &str,
        agent: &str,
        command_id: &str,
        kind: CommandEventKind,
        at: i64,
    ) -> CommandEvent {
        let base = fixtures::command_completed(tenant, agent, at);
        let mut ev = CommandEvent {
            event_id: format!("{command_id}/{}", kind.as_str()),
            command_id: command_id.to_owned(),
            kind,
            requires_approval: true,
            actor: None,
            status: None,
            exit_code: None,
            stdout: None,
            stderr: None,
            started_at: None,
            finished_at: None,
            ..base.clone()
        };
        match kind {
            CommandEventKind::Requested => ev.actor = Some("alice@example.com".into()),
            CommandEventKind::Approved => ev.actor = Some("bob@example.com".into()),
            CommandEventKind::Dispatched => ev.actor = Some("gateway-1".into()),
            CommandEventKind::Progress => {
                ev.event_id = format!("{command_id}/progress/{at}");
                ev.stream = Some("stdout".into());
                ev.chunk = Some("working\n".into());
            }
            CommandEventKind::Completed => {
                ev.status = base.status;
                ev.exit_code = base.exit_code;
                ev.stdout = base.stdout;
                ev.stderr = base.stderr;
                ev.started_at = base.started_at;
                ev.finished_at = base.finished_at;
            }
            CommandEventKind::TimedOut => ev.message = Some("no result within 60 s".into()),
            CommandEventKind::Rejected | CommandEventKind::Cancelled => {
                ev.actor = Some("carol@example.com".into());
                ev.message = Some("not today".into());
            }
        }
        ev
    }

    /// A later step as a gateway that did not know the command writes it: no details.
    fn bare(mut ev: CommandEvent) -> CommandEvent {
        ev.command_type = String::new();
        ev.args.clear();
        ev.requires_approval = false;
        ev.timeout_secs = 0;
        ev
    }

    /// The whole lifecycle of a command that needed approval, in order.
    fn command_story(tenant: &str, agent: &str, command_id: &str) -> Vec<CommandEvent> {
        use CommandEventKind::*;
        vec![
            cmd(tenant, agent, command_id, Requested, T0),
            cmd(tenant, agent, command_id, Approved, T0 + SECOND),
            bare(cmd(tenant, agent, command_id, Dispatched, T0 + 2 * SECOND)),
            bare(cmd(tenant, agent, command_id, Progress, T0 + 3 * SECOND)),
            bare(cmd(tenant, agent, command_id, Progress, T0 + 4 * SECOND)),
            bare(cmd(tenant, agent, command_id, Completed, T0 + 5 * SECOND)),
        ]
    }

    fn changes_of(events: &[CommandEvent]) -> Vec<Change> {
        events
            .iter()
            .cloned()
            .map(|e| Change::Command(Box::new(e)))
            .collect()
    }

    async fn command(store: &Arc<dyn ReadModel>, command_id: &str) -> Result<CommandDetail> {
        store
            .get_command(None, command_id)
            .await?
            .with_context(|| format!("command {command_id} is in the read model"))
    }

    /// A deterministic shuffle (no RNG needed: a different order per seed).
    fn shuffled<T: Clone>(items: &[T], seed: usize) -> Vec<T> {
        let mut out: Vec<T> = items.to_vec();
        let n = out.len();
        for i in 0..n {
            let j = (i * 7 + seed * 13 + 3) % n;
            out.swap(i, j);
        }
        out
    }

    fn group(id: &str, tenant: &str, target: CommandTarget, at: i64, n: i64) -> CommandGroup {
        CommandGroup {
            group_id: id.to_owned(),
            tenant_id: tenant.to_owned(),
            target,
            command_type: "collect_diagnostics".into(),
            args: Default::default(),
            timeout_secs: 60,
            requires_approval: true,
            requested_by: "alice@example.com".into(),
            requested_at: at,
            agent_count: n,
        }
    }

    pub(crate) async fn command_groups_resolve_their_targets_and_count_their_members(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        // a1 and a2 tagged web, a3 tagged web but deactivated, b1 tagged web in T2,
        // a4 untagged at another location; a5 only reported (never enrolled).
        let mut ids: Vec<String> = (0..6).map(|_| agent_id()).collect();
        ids.sort();
        let (a1, a2, a3, a4, a5, b1) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5]);
        let mut changes = Vec::new();
        for (tenant, a) in [(T1, a1), (T1, a2), (T1, a3), (T1, a4), (T2, b1)] {
            let mut reg = fixtures::agent_registered(tenant, a, T0);
            if a == a4 {
                reg.location_id = Some("loc-2".into());
            }
            changes.push(Change::Lifecycle(reg.clone()));
            if a != a4 {
                let mut tag = reg.clone();
                tag.kind = AgentLifecycleKind::Updated;
                tag.facts = None;
                tag.tags = Some(vec!["web".into()]);
                tag.occurred_at = T0 + SECOND;
                changes.push(Change::Lifecycle(tag));
            }
            if a == a3 {
                let mut off = reg.clone();
                off.kind = AgentLifecycleKind::Deactivated;
                off.facts = None;
                off.occurred_at = T0 + 2 * SECOND;
                changes.push(Change::Lifecycle(off));
            }
        }
        changes.push(report(T1, a5, T0, 1.0));
        store.apply(PROJECTION, &changes, &[]).await?;

        let web = CommandTarget::Tag("web".into());
        let got = store.command_targets(T1, &web, 100).await?;
        ensure!(got == vec![a1.clone(), a2.clone()], "{got:?}");
        let got = store.command_targets(T2, &web, 100).await?;
        ensure!(got == vec![b1.clone()], "{got:?}");
        let got = store.command_targets(T1, &web, 1).await?;
        ensure!(got.len() == 1, "bounded by the limit: {got:?}");
        let got = store
            .command_targets(T1, &CommandTarget::Location("loc-1".into()), 100)
            .await?;
        ensure!(got == vec![a1.clone(), a2.clone()], "{got:?}");
        let listed = CommandTarget::Agents(vec![
            a4.clone(),
            a3.clone(),
            b1.clone(),
            a5.clone(),
            "nope".into(),
        ]);
        let got = store.command_targets(T1, &listed, 100).await?;
        ensure!(
            got == vec![a4.clone()],
            "deactivated, another tenant's, never enrolled and unknown agents are left out: {got:?}"
        );

        // Two groups; each tenant sees its own, newest first.
        let g1 = group("g1", T1, web.clone(), T0 + 10 * SECOND, 2);
        let g2 = group("g2", T1, listed, T0 + 20 * SECOND, 1);
        store.create_command_group(&g1).await?;
        store.create_command_group(&g2).await?;
        // A retry keeps the row but a larger count.
        store
            .create_command_group(&CommandGroup {
                requested_at: T0 + 99 * SECOND,
                agent_count: 3,
                ..g1.clone()
            })
            .await?;
        let stored = store.get_command_group(Some(T1), "g1").await?;
        ensure!(
            stored
                .as_ref()
                .map(|g| (g.requested_at, g.agent_count, &g.target))
                == Some((g1.requested_at, 3, &web)),
            "{stored:?}"
        );
        ensure!(store.get_command_group(Some(T2), "g1").await?.is_none());
        let list = store.list_command_groups(Some(T1), None, None).await?;
        let names: Vec<&str> = list.iter().map(|g| g.group_id.as_str()).collect();
        ensure!(names == ["g2", "g1"], "{names:?}");
        let page = store
            .list_command_groups(Some(T1), Some(1), Some("g2"))
            .await?;
        ensure!(page.len() == 1 && page[0].group_id == "g1", "{page:?}");
        ensure!(store
            .list_command_groups(Some(T2), None, None)
            .await?
            .is_empty());
        ensure!(matches!(
            store
                .list_command_groups(Some(T1), None, Some("nope"))
                .await,
            Err(StoreError::InvalidQuery(_))
        ));

        // Members: REQUESTED with the group id, awaiting approval; one approved and run.
        let member = |a: &str, kind| {
            let mut ev = cmd(T1, a, &format!("g1-{a}"), kind, T0 + 11 * SECOND);
            ev.group_id = Some("g1".into());
            Change::Command(Box::new(ev))
        };
        store
            .apply(
                PROJECTION,
                &[
                    member(a1.as_str(), CommandEventKind::Requested),
                    member(a2.as_str(), CommandEventKind::Requested),
                ],
                &[],
            )
            .await?;
        let counts = store.command_group_counts("g1").await?;
        ensure!(counts.projected() == 2, "{counts:?}");
        let summary = counts.summary(3);
        ensure!(
            summary.awaiting_approval == 2 && summary.pending == 1 && summary.total == 3,
            "one member not projected yet is pending: {summary:?}"
        );
        let awaiting = store
            .command_group_members(&CommandGroupMembersQuery {
                group_id: "g1".into(),
                statuses: vec![CommandStatus::AwaitingApproval],
                limit: None,
                after: None,
            })
            .await?;
        ensure!(awaiting.len() == 2, "{awaiting:?}");
        ensure!(awaiting.iter().all(|c| c.group_id.as_deref() == Some("g1")));
        store
            .apply(
                PROJECTION,
                &[
                    member(a1.as_str(), CommandEventKind::Approved),
                    member(a1.as_str(), CommandEventKind::Dispatched),
                    member(a1.as_str(), CommandEventKind::Completed),
                    member(a2.as_str(), CommandEventKind::Cancelled),
                ],
                &[],
            )
            .await?;
        let counts = store.command_group_counts("g1").await?;
        let summary = counts.summary(2);
        ensure!(
            summary.succeeded == 1
                && summary.cancelled == 1
                && summary.awaiting_approval == 0
                && summary.pending == 0,
            "{summary:?}"
        );
        ensure!(
            counts.approved_by.as_deref() == Some("bob@example.com"),
            "{counts:?}"
        );
        let page = store
            .command_group_members(&CommandGroupMembersQuery {
                group_id: "g1".into(),
                statuses: Vec::new(),
                limit: Some(1),
                after: None,
            })
            .await?;
        ensure!(page.len() == 1, "{page:?}");
        let rest = store
            .command_group_members(&CommandGroupMembersQuery {
                group_id: "g1".into(),
                statuses: Vec::new(),
                limit: Some(10),
                after: Some(page[0].command_id.clone()),
            })
            .await?;
        ensure!(
            rest.len() == 1 && rest[0].command_id > page[0].command_id,
            "{rest:?}"
        );
        let cancelled = store.get_command(Some(T1), &format!("g1-{a2}")).await?;
        let cancelled = cancelled.context("the cancelled member")?;
        ensure!(cancelled.command.status == CommandStatus::Cancelled);
        ensure!(
            cancelled
                .audit
                .iter()
                .any(|e| e.kind == "cancelled" && e.actor.as_deref() == Some("carol@example.com")),
            "{cancelled:#?}"
        );
        Ok(())
    }

    pub(crate) async fn rejected_and_cancelled_rank_below_a_dispatch(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let status = |id: &'static str| {
            let store = store.clone();
            async move {
                let d = store.get_command(None, id).await?.context("stored")?;
                anyhow::Ok(d.command.status)
            }
        };
        let apply = |evs: Vec<CommandEvent>| {
            let store = store.clone();
            async move {
                let changes: Vec<Change> = evs
                    .into_iter()
                    .map(|e| Change::Command(Box::new(e)))
                    .collect();
                store.apply(PROJECTION, &changes, &[]).await
            }
        };
        // Rejected while awaiting approval; an approval that raced it does not revive it.
        apply(vec![
            cmd(T1, &a, "r1", CommandEventKind::Requested, T0),
            cmd(T1, &a, "r1", CommandEventKind::Rejected, T0 + SECOND),
            cmd(T1, &a, "r1", CommandEventKind::Approved, T0 + 2 * SECOND),
        ])
        .await?;
        ensure!(status("r1").await? == CommandStatus::Rejected);
        // Cancelled, but a gateway had dispatched it already (read in either order): the
        // dispatch is what happened, and its result counts.
        apply(vec![
            cmd(T1, &a, "c1", CommandEventKind::Requested, T0),
            cmd(T1, &a, "c1", CommandEventKind::Dispatched, T0 + 2 * SECOND),
            cmd(T1, &a, "c1", CommandEventKind::Cancelled, T0 + SECOND),
        ])
        .await?;
        ensure!(status("c1").await? == CommandStatus::Dispatched);
        apply(vec![
            cmd(T1, &a, "c2", CommandEventKind::Requested, T0),
            cmd(T1, &a, "c2", CommandEventKind::Cancelled, T0 + SECOND),
        ])
        .await?;
        ensure!(status("c2").await? == CommandStatus::Cancelled);
        apply(vec![cmd(
            T1,
            &a,
            "c2",
            CommandEventKind::Completed,
            T0 + 3 * SECOND,
        )])
        .await?;
        ensure!(status("c2").await? == CommandStatus::Succeeded);
        Ok(())
    }

    pub(crate) async fn command_lifecycle_with_audit_trail(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let id = uuid::Uuid::new_v4().to_string();
        let story = command_story(T1, &a, &id);
        // Step by step, the status follows.
        let expected = [
            CommandStatus::AwaitingApproval,
            CommandStatus::Approved,
            CommandStatus::Dispatched,
            CommandStatus::Running,
            CommandStatus::Running,
            CommandStatus::Succeeded,
        ];
        for (ev, status) in story.iter().zip(expected) {
            store
                .apply(PROJECTION, &[Change::Command(Box::new(ev.clone()))], &[])
                .await?;
            let got = command(&store, &id).await?.command.status;
            ensure!(
                got == status,
                "after {:?}: {got:?}, expected {status:?}",
                ev.kind
            );
        }
        let d = command(&store, &id).await?;
        let c = &d.command;
        ensure!(c.tenant_id == T1 && c.agent_id == a);
        ensure!(
            c.command_type == "restart_service",
            "the request's type: {c:?}"
        );
        ensure!(c.args.get("service").map(String::as_str) == Some("nginx"));
        ensure!(c.requires_approval && c.timeout_secs == 60);
        ensure!(
            c.requested_by.as_deref() == Some("alice@example.com") && c.requested_at == Some(T0)
        );
        ensure!(
            c.approved_by.as_deref() == Some("bob@example.com")
                && c.approved_at == Some(T0 + SECOND)
        );
        ensure!(c.dispatched_at == Some(T0 + 2 * SECOND));
        ensure!(
            c.started_at == Some(T0 + 3 * SECOND),
            "the result started 2 s before it finished, after the first progress: {:?}",
            c.started_at
        );
        ensure!(c.finished_at == Some(T0 + 5 * SECOND));
        ensure!(c.exit_code == Some(0) && c.stdout.as_deref() == Some("restarted\n"));
        ensure!(!c.output_truncated && c.message.is_none());
        ensure!(c.updated_at == T0 + 5 * SECOND);
        let kinds: Vec<(&str, Option<&str>)> = d
            .audit
            .iter()
            .map(|e| (e.kind.as_str(), e.actor.as_deref()))
            .collect();
        ensure!(
            kinds
                == vec![
                    ("requested", Some("alice@example.com")),
                    ("approved", Some("bob@example.com")),
                    ("dispatched", Some("gateway-1")),
                    ("completed", None),
                ],
            "one audit row per step but PROGRESS: {kinds:?}"
        );
        ensure!(d.audit[3].detail.as_deref() == Some("succeeded"));

        // A refused command: the agent's message is kept.
        let r = uuid::Uuid::new_v4().to_string();
        let mut req = cmd(T1, &a, &r, CommandEventKind::Requested, T0);
        req.requires_approval = false;
        let mut refused = cmd(T1, &a, &r, CommandEventKind::Completed, T0 + SECOND);
        refused.status = Some("refused".into());
        refused.exit_code = None;
        refused.message = Some("restart_service is not allowed here".into());
        store.apply(PROJECTION, &changes_of(&[req]), &[]).await?;
        ensure!(command(&store, &r).await?.command.status == CommandStatus::Requested);
        store
            .apply(PROJECTION, &changes_of(&[refused]), &[])
            .await?;
        let c = command(&store, &r).await?.command;
        ensure!(c.status == CommandStatus::Refused && c.exit_code.is_none());
        ensure!(c.message.as_deref() == Some("restart_service is not allowed here"));

        // A status no producer writes is refused, and nothing of its batch lands.
        let mut bad = cmd(T1, &a, "bad-command", CommandEventKind::Completed, T0);
        bad.status = Some("exploded".into());
        ensure!(store
            .apply(PROJECTION, &changes_of(&[bad]), &[])
            .await
            .is_err());
        ensure!(store.get_command(None, "bad-command").await?.is_none());
        Ok(())
    }

    /// A PROGRESS chunk with the agent's sequence number.
    fn chunk(
        tenant: &str,
        agent: &str,
        command_id: &str,
        sequence: i64,
        stream: &str,
        text: &str,
    ) -> CommandEvent {
        let mut ev = bare(cmd(
            tenant,
            agent,
            command_id,
            CommandEventKind::Progress,
            T0 + sequence * SECOND,
        ));
        ev.event_id = format!("{command_id}/progress/{sequence}");
        ev.sequence = sequence;
        ev.stream = Some(stream.into());
        ev.chunk = Some(text.into());
        ev
    }

    pub(crate) async fn command_output_is_kept_in_order_paged_and_bounded(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let id = uuid::Uuid::new_v4().to_string();
        let request = cmd(T1, &a, &id, CommandEventKind::Requested, T0);
        // Out of order, and chunk 2 twice (a resend): kept once, served in sequence order.
        let events = vec![
            request,
            chunk(T1, &a, &id, 1, "status", "started"),
            chunk(T1, &a, &id, 3, "stderr", "oops\n"),
            chunk(T1, &a, &id, 2, "stdout", "line 1\n"),
            chunk(T1, &a, &id, 2, "stdout", "line 1 again\n"),
            chunk(T1, &a, &id, 4, "stdout", "line 2\n"),
        ];
        store.apply(PROJECTION, &changes_of(&events), &[]).await?;
        let query = |tenant: Option<&str>, after: i64, limit: Option<u32>| CommandOutputQuery {
            tenant_id: tenant.map(str::to_owned),
            command_id: id.clone(),
            after,
            limit,
        };
        let all = store.command_output(&query(None, 0, None)).await?;
        let seen: Vec<(i64, &str, &str)> = all
            .iter()
            .map(|c| (c.sequence, c.stream.as_str(), c.chunk.as_str()))
            .collect();
        ensure!(
            seen == [
                (1, "status", "started"),
                (2, "stdout", "line 1\n"),
                (3, "stderr", "oops\n"),
                (4, "stdout", "line 2\n"),
            ],
            "chunks in sequence order, the first of a sequence kept: {seen:?}"
        );
        ensure!(
            all[1].at == T0 + 2 * SECOND,
            "the agent's time: {:?}",
            all[1]
        );
        let page = store.command_output(&query(Some(T1), 1, Some(2))).await?;
        ensure!(
            page.iter().map(|c| c.sequence).collect::<Vec<_>>() == [2, 3],
            "paged after a sequence: {page:?}"
        );
        ensure!(
            store
                .command_output(&query(Some(T2), 0, None))
                .await?
                .is_empty(),
            "another tenant sees no output"
        );
        ensure!(
            store
                .command_output(&CommandOutputQuery {
                    command_id: "no-such-command".into(),
                    ..query(None, 0, None)
                })
                .await?
                .is_empty(),
            "an unknown command has no output"
        );
        // The status stays the command's: chunks do not add audit rows.
        let d = command(&store, &id).await?;
        ensure!(
            d.command.status == CommandStatus::Running,
            "{:?}",
            d.command.status
        );
        ensure!(d.audit.len() == 1, "{:?}", d.audit);

        // Bounds: a stream keeps at most a result's output; the other stream is counted
        // on its own; a chunk longer than the gateway takes is not kept.
        let big = "x".repeat(fleet_schemas::api::MAX_PROGRESS_CHUNK_BYTES);
        let per_stream = fleet_schemas::api::MAX_COMMAND_OUTPUT_BYTES / big.len();
        let b = uuid::Uuid::new_v4().to_string();
        let mut events = vec![cmd(T1, &a, &b, CommandEventKind::Requested, T0)];
        let mut seq = 0;
        for _ in 0..per_stream + 2 {
            seq += 1;
            events.push(chunk(T1, &a, &b, seq, "stdout", &big));
        }
        seq += 1;
        events.push(chunk(T1, &a, &b, seq, "stderr", "still kept"));
        seq += 1;
        let too_long = format!("{big}y");
        events.push(chunk(T1, &a, &b, seq, "stderr", &too_long));
        store.apply(PROJECTION, &changes_of(&events), &[]).await?;
        let kept = store
            .command_output(&CommandOutputQuery {
                command_id: b.clone(),
                limit: Some(1000),
                ..CommandOutputQuery::default()
            })
            .await?;
        let stdout: usize = kept
            .iter()
            .filter(|c| c.stream == "stdout")
            .map(|c| c.chunk.len())
            .sum();
        ensure!(
            stdout == per_stream * big.len(),
            "stdout kept up to its bound: {stdout} bytes"
        );
        ensure!(
            kept.iter().any(|c| c.chunk == "still kept"),
            "stderr has its own bound"
        );
        ensure!(
            kept.iter().all(|c| c.chunk.len() <= big.len()),
            "an over-long chunk is not kept"
        );
        // Applying it all again changes nothing.
        store.apply(PROJECTION, &changes_of(&events), &[]).await?;
        let again = store
            .command_output(&CommandOutputQuery {
                command_id: b.clone(),
                limit: Some(1000),
                ..CommandOutputQuery::default()
            })
            .await?;
        ensure!(again == kept, "a replay keeps the same chunks");
        Ok(())
    }

    pub(crate) async fn command_replay_is_idempotent(store: Arc<dyn ReadModel>) -> Result<()> {
        let a = agent_id();
        let id = uuid::Uuid::new_v4().to_string();
        let changes = changes_of(&command_story(T1, &a, &id));
        store
            .apply(PROJECTION, &changes, &[offset("fleet.commands.v1", 0, 6)])
            .await?;
        let once = command(&store, &id).await?;
        // The same batch again, then every event once more one by one.
        store
            .apply(PROJECTION, &changes, &[offset("fleet.commands.v1", 0, 6)])
            .await?;
        for c in &changes {
            store
                .apply(PROJECTION, std::slice::from_ref(c), &[])
                .await?;
        }
        let again = command(&store, &id).await?;
        ensure!(
            once == again,
            "replay changes nothing:\n{once:?}\n{again:?}"
        );
        ensure!(
            again.audit.len() == 4,
            "no duplicate audit rows: {:?}",
            again.audit
        );
        let listed = store
            .list_commands(&CommandQuery {
                agent_id: a.clone(),
                ..CommandQuery::default()
            })
            .await?;
        ensure!(listed.len() == 1 && listed[0] == again.command);
        Ok(())
    }

    /// A reused `Idempotency-Key` with another body wrote a second REQUESTED of the same
    /// command id: the first one stays the request (type, arguments, approval, who, when),
    /// whatever the second says and whenever it claims to have happened.
    pub(crate) async fn only_the_first_requested_of_a_command_counts(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        use CommandEventKind::*;
        let a = agent_id();
        let sneaky = |first: &CommandEvent, at: i64, n: u32| {
            let mut ev = first.clone();
            ev.event_id = format!("{}/requested-again/{n}", first.command_id);
            ev.command_type = "collect_diagnostics".into();
            ev.args.clear();
            ev.requires_approval = false;
            ev.timeout_secs = 5;
            ev.actor = Some("mallory@example.com".into());
            ev.occurred_at = at;
            ev
        };
        let expect_first = |d: &CommandDetail, status: CommandStatus| -> Result<()> {
            let c = &d.command;
            ensure!(c.command_type == "restart_service", "{c:?}");
            ensure!(
                c.args.get("service").map(String::as_str) == Some("nginx"),
                "{c:?}"
            );
            ensure!(c.requires_approval && c.timeout_secs == 60, "{c:?}");
            ensure!(c.status == status, "{c:?}");
            ensure!(
                c.requested_by.as_deref() == Some("alice@example.com")
                    && c.requested_at == Some(T0),
                "{c:?}"
            );
            let requested = d.audit.iter().filter(|e| e.kind == "requested").count();
            ensure!(requested == 1, "one REQUESTED in the trail: {:?}", d.audit);
            Ok(())
        };

        // In one batch, and later one by one; the second claims an earlier and a later time.
        let id = uuid::Uuid::new_v4().to_string();
        let first = cmd(T1, &a, &id, Requested, T0);
        store
            .apply(
                PROJECTION,
                &changes_of(&[first.clone(), sneaky(&first, T0 - SECOND, 1)]),
                &[],
            )
            .await?;
        expect_first(
            &command(&store, &id).await?,
            CommandStatus::AwaitingApproval,
        )?;
        for (n, at) in [(2, T0 - 2 * SECOND), (3, T0 + SECOND)] {
            store
                .apply(PROJECTION, &changes_of(&[sneaky(&first, at, n)]), &[])
                .await?;
            expect_first(
                &command(&store, &id).await?,
                CommandStatus::AwaitingApproval,
            )?;
        }
        // After the approval, another REQUESTED neither moves the status back nor changes
        // what was approved.
        store
            .apply(
                PROJECTION,
                &changes_of(&[
                    cmd(T1, &a, &id, Approved, T0 + 2 * SECOND),
                    sneaky(&first, T0 + 3 * SECOND, 4),
                ]),
                &[],
            )
            .await?;
        expect_first(&command(&store, &id).await?, CommandStatus::Approved)?;

        // A step read before any REQUESTED: the first REQUESTED fills the row, the next is
        // ignored.
        let id = uuid::Uuid::new_v4().to_string();
        let first = cmd(T1, &a, &id, Requested, T0);
        store
            .apply(
                PROJECTION,
                &changes_of(&[
                    bare(cmd(T1, &a, &id, Dispatched, T0 + SECOND)),
                    first.clone(),
                    sneaky(&first, T0 - SECOND, 1),
                ]),
                &[],
            )
            .await?;
        expect_first(&command(&store, &id).await?, CommandStatus::Dispatched)?;
        Ok(())
    }

    pub(crate) async fn command_events_out_of_order_converge(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        use CommandEventKind::*;
        let a = agent_id();
        let reference_id = uuid::Uuid::new_v4().to_string();
        let mut story = command_story(T1, &a, &reference_id);
        // The timeout processor gave up before the (late) result came: the result wins.
        story.push(bare(cmd(
            T1,
            &a,
            &reference_id,
            TimedOut,
            T0 + 4 * SECOND + SECOND / 2,
        )));
        store.apply(PROJECTION, &changes_of(&story), &[]).await?;
        let reference = command(&store, &reference_id).await?;
        ensure!(reference.command.status == CommandStatus::Succeeded);
        ensure!(
            reference.command.message.is_none(),
            "the result's fields, not the timeout's"
        );
        ensure!(reference.audit.len() == 5);

        // Each order of the same events (as another command id) gives the same row.
        let mut orders: Vec<Vec<CommandEvent>> = vec![story.iter().rev().cloned().collect()];
        orders.extend((0..6).map(|seed| shuffled(&story, seed)));
        // COMPLETED first, REQUESTED last.
        orders.push(
            [5, 6, 3, 2, 1, 4, 0]
                .iter()
                .map(|&i| story[i].clone())
                .collect(),
        );
        for (n, order) in orders.iter().enumerate() {
            let id = format!("{reference_id}-{n}");
            let order: Vec<CommandEvent> = order
                .iter()
                .map(|e| CommandEvent {
                    command_id: id.clone(),
                    event_id: e.event_id.replace(&reference_id, &id),
                    ..e.clone()
                })
                .collect();
            // Some one at a time, some in one batch.
            if n % 2 == 0 {
                for c in changes_of(&order) {
                    store.apply(PROJECTION, &[c], &[]).await?;
                }
            } else {
                store.apply(PROJECTION, &changes_of(&order), &[]).await?;
            }
            let mut got = command(&store, &id).await?;
            got.command.command_id = reference_id.clone();
            for e in &mut got.audit {
                e.event_id = e.event_id.replace(&id, &reference_id);
            }
            ensure!(
                got == reference,
                "order {n} ({:?}) converges:\n{got:?}\n{reference:?}",
                order.iter().map(|e| e.kind).collect::<Vec<_>>()
            );
        }

        // A timed-out command: a PROGRESS read later does not revive it.
        let t = uuid::Uuid::new_v4().to_string();
        let mut req = cmd(T1, &a, &t, Requested, T0);
        req.requires_approval = false;
        store
            .apply(
                PROJECTION,
                &changes_of(&[
                    bare(cmd(T1, &a, &t, TimedOut, T0 + 90 * SECOND)),
                    req,
                    bare(cmd(T1, &a, &t, Progress, T0 + 10 * SECOND)),
                ]),
                &[],
            )
            .await?;
        let c = command(&store, &t).await?.command;
        ensure!(c.status == CommandStatus::TimedOut, "{c:?}");
        ensure!(c.message.as_deref() == Some("no result within 60 s"));
        ensure!(c.finished_at == Some(T0 + 90 * SECOND) && c.started_at == Some(T0 + 10 * SECOND));
        ensure!(c.command_type == "restart_service" && !c.requires_approval);
        Ok(())
    }

    pub(crate) async fn commands_page_newest_first_and_filter_by_tenant(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let other = agent_id();
        let mut ids = Vec::new();
        let mut changes = Vec::new();
        for i in 0..5 {
            let id = format!("cmd-{i}-{}", uuid::Uuid::new_v4());
            changes.push(cmd(
                T1,
                &a,
                &id,
                CommandEventKind::Requested,
                T0 + i * SECOND,
            ));
            ids.push(id);
        }
        changes.push(cmd(
            T2,
            &other,
            "other-tenant",
            CommandEventKind::Requested,
            T0,
        ));
        store.apply(PROJECTION, &changes_of(&changes), &[]).await?;
        ids.reverse(); // newest first

        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_commands(&CommandQuery {
                    tenant_id: Some(T1.into()),
                    agent_id: a.clone(),
                    limit: Some(2),
                    after: after.clone(),
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.command_id.clone());
            pages.push(page.into_iter().map(|c| c.command_id).collect::<Vec<_>>());
        }
        ensure!(
            pages == vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..5].to_vec()],
            "pages of 2, newest first: {pages:?}"
        );
        let wrong_tenant = store
            .list_commands(&CommandQuery {
                tenant_id: Some(T2.into()),
                agent_id: a.clone(),
                ..CommandQuery::default()
            })
            .await?;
        ensure!(wrong_tenant.is_empty(), "another tenant sees none");
        ensure!(store.get_command(Some(T2), &ids[0]).await?.is_none());
        ensure!(store.get_command(Some(T1), &ids[0]).await?.is_some());
        ensure!(store.get_command(Some(T1), "other-tenant").await?.is_none());
        ensure!(store.get_command(None, "other-tenant").await?.is_some());
        match store
            .list_commands(&CommandQuery {
                agent_id: a.clone(),
                after: Some("no-such-command".into()),
                ..CommandQuery::default()
            })
            .await
        {
            Err(StoreError::InvalidQuery(m)) => ensure!(m.contains("after"), "{m}"),
            other => anyhow::bail!("expected InvalidQuery for an unknown cursor, got {other:?}"),
        }
        Ok(())
    }

    fn inventory(
        tenant: &str,
        agent: &str,
        at: i64,
        digest: &str,
        packages: &[(&str, &str, Option<&str>)],
    ) -> SoftwareInventory {
        SoftwareInventory {
            event_id: format!("{agent}/{digest}"),
            digest: digest.into(),
            packages: packages
                .iter()
                .map(|(name, version, arch)| SoftwarePackage {
                    name: (*name).into(),
                    version: (*version).into(),
                    arch: arch.map(str::to_owned),
                })
                .collect(),
            ..fixtures::software_inventory(tenant, agent, at)
        }
    }

    fn inv(i: &SoftwareInventory) -> Change {
        Change::Inventory(Box::new(i.clone()))
    }

    async fn software(
        store: &Arc<dyn ReadModel>,
        tenant: Option<&str>,
        agent: &str,
        name: Option<&str>,
    ) -> Result<Option<fleet_read_model::AgentSoftware>> {
        Ok(store
            .agent_software(&SoftwareQuery {
                tenant_id: tenant.map(str::to_owned),
                agent_id: agent.to_owned(),
                name: name.map(str::to_owned),
            })
            .await?)
    }

    pub(crate) async fn software_inventory_replaced_only_by_newer(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let first = fixtures::software_inventory(T1, &a, T0);
        store.apply(PROJECTION, &[inv(&first)], &[]).await?;
        let s = software(&store, None, &a, None)
            .await?
            .context("inventory stored")?;
        ensure!(s.source == "dpkg" && s.digest == "d1" && s.collected_at == T0);
        ensure!(s.package_count == 3 && s.packages.len() == 3);
        let names: Vec<&str> = s.packages.iter().map(|p| p.name.as_str()).collect();
        ensure!(names == ["bash", "nginx", "tzdata"], "{names:?}");
        ensure!(s.packages[2].arch.is_none(), "no arch stays absent");
        ensure!(s.packages[1].arch.as_deref() == Some("amd64"));

        // A newer inventory replaces the list wholesale (nginx removed, curl added, and a
        // package named twice keeps the greatest version).
        let newer = inventory(
            T1,
            &a,
            T0 + 3600 * SECOND,
            "d2",
            &[
                ("bash", "5.2.15-2+b8", Some("amd64")),
                ("linux-image", "6.1.0-17", Some("amd64")),
                ("curl", "7.88.1-10", Some("amd64")),
                ("linux-image", "6.1.0-18", Some("amd64")),
            ],
        );
        store.apply(PROJECTION, &[inv(&newer)], &[]).await?;
        let s = software(&store, None, &a, None)
            .await?
            .context("inventory stored")?;
        let got: Vec<(&str, &str)> = s
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        ensure!(
            got == [
                ("bash", "5.2.15-2+b8"),
                ("curl", "7.88.1-10"),
                ("linux-image", "6.1.0-18")
            ],
            "{got:?}"
        );
        ensure!(s.digest == "d2" && s.package_count == 3);

        // The older one again (a replay of the topic) and the newer one again: no change.
        store
            .apply(PROJECTION, &[inv(&first), inv(&newer), inv(&first)], &[])
            .await?;
        let again = software(&store, None, &a, None)
            .await?
            .context("inventory stored")?;
        ensure!(again == s, "an older inventory never replaces a newer one");

        // Name filter: case-insensitive substring; LIKE wildcards are literal.
        let filtered = software(&store, None, &a, Some("LINUX"))
            .await?
            .context("stored")?;
        ensure!(filtered.packages.len() == 1 && filtered.packages[0].name == "linux-image");
        ensure!(
            filtered.package_count == 3,
            "the count is of the whole inventory"
        );
        let none = software(&store, None, &a, Some("%"))
            .await?
            .context("stored")?;
        ensure!(none.packages.is_empty(), "% matches only a literal %");
        // An empty inventory clears the list.
        let empty = inventory(T1, &a, T0 + 7200 * SECOND, "d3", &[]);
        store.apply(PROJECTION, &[inv(&empty)], &[]).await?;
        let s = software(&store, None, &a, None).await?.context("stored")?;
        ensure!(s.packages.is_empty() && s.package_count == 0 && s.digest == "d3");
        ensure!(software(&store, None, &agent_id(), None).await?.is_none());
        Ok(())
    }

    pub(crate) async fn software_inventory_out_of_order_and_tenant_filter(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a, b) = (agent_id(), agent_id());
        let many: Vec<(String, String)> = (0..450)
            .map(|i| (format!("pkg{i:04}"), format!("1.{i}")))
            .collect();
        let many_refs: Vec<(&str, &str, Option<&str>)> = many
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str(), Some("arm64")))
            .collect();
        let versions = |agent: &str| {
            vec![
                fixtures::software_inventory(T1, agent, T0),
                inventory(T1, agent, T0 + SECOND, "d2", &many_refs),
                inventory(
                    T1,
                    agent,
                    T0 + SECOND,
                    "d0",
                    &[("same-time-lower-digest", "1", None)],
                ),
                inventory(T1, agent, T0 - SECOND, "d9", &[("older", "1", None)]),
            ]
        };
        let forward: Vec<Change> = versions(&a).iter().map(inv).collect();
        let backward: Vec<Change> = versions(&b).iter().rev().map(inv).collect();
        store.apply(PROJECTION, &forward, &[]).await?;
        for c in backward {
            store.apply(PROJECTION, &[c], &[]).await?;
        }
        let sa = software(&store, None, &a, None).await?.context("a")?;
        let mut sb = software(&store, None, &b, None).await?.context("b")?;
        ensure!(
            sa.digest == "d2" && sa.packages.len() == 450,
            "{} {}",
            sa.digest,
            sa.packages.len()
        );
        sb.agent_id.clone_from(&sa.agent_id);
        ensure!(sa == sb, "both orders converge on the newest inventory");

        let c = agent_id();
        store
            .apply(
                PROJECTION,
                &[inv(&fixtures::software_inventory(T2, &c, T0))],
                &[],
            )
            .await?;
        ensure!(software(&store, Some(T2), &c, None).await?.is_some());
        ensure!(
            software(&store, Some(T1), &c, None).await?.is_none(),
            "another tenant's agent"
        );
        ensure!(software(&store, Some(T2), &a, None).await?.is_none());
        Ok(())
    }

    fn ticket(tenant: &str, agent: &str, status: &str, at: i64) -> TicketEvent {
        let base = fixtures::ticket_requested(tenant, agent, T0);
        TicketEvent {
            event_id: format!("{}/{status}", base.ticket_id),
            kind: if status == "open" {
                TicketEventKind::Requested
            } else {
                TicketEventKind::Updated
            },
            status: status.into(),
            title: format!("CPU high on web-1 ({status})"),
            actor: (status != "open").then(|| "ops@example.com".to_owned()),
            occurred_at: at,
            ingested_at: at + 1_000,
            ..base
        }
    }

    fn tk(t: &TicketEvent) -> Change {
        Change::Ticket(Box::new(t.clone()))
    }

    pub(crate) async fn ticket_lifecycle_replay_and_out_of_order_converge(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let a = agent_id();
        let story = [
            ticket(T1, &a, "open", T0),
            ticket(T1, &a, "acknowledged", T0 + 60 * SECOND),
            ticket(T1, &a, "resolved", T0 + 120 * SECOND),
        ];
        let ticket_id = story[0].ticket_id.clone();
        let all = |store: Arc<dyn ReadModel>| async move {
            store
                .list_tickets(&TicketQuery {
                    limit: Some(1000),
                    ..TicketQuery::default()
                })
                .await
        };
        store.apply(PROJECTION, &[tk(&story[0])], &[]).await?;
        let open = all(store.clone()).await?;
        ensure!(open.len() == 1 && open[0].status == TicketStatus::Open);
        let t = &open[0];
        ensure!(t.ticket_id == ticket_id && t.alert_id == story[0].alert_id);
        ensure!(t.priority == "P1" && t.severity == "critical");
        ensure!(t.location_id.as_deref() == Some("loc-1"));
        ensure!(t.created_at == T0 && t.updated_at == T0);

        store
            .apply(
                PROJECTION,
                &story[1..].iter().map(tk).collect::<Vec<_>>(),
                &[],
            )
            .await?;
        let reference = all(store.clone()).await?;
        ensure!(reference.len() == 1);
        let r = &reference[0];
        ensure!(r.status == TicketStatus::Resolved && r.title == "CPU high on web-1 (resolved)");
        ensure!(r.created_at == T0 && r.updated_at == T0 + 120 * SECOND);

        // Replays and every other order converge on the same row.
        let orders: Vec<Vec<usize>> = vec![
            vec![0, 1, 2, 0, 1, 2],
            vec![2, 1, 0],
            vec![1, 2, 0],
            vec![2, 0, 1],
            vec![1, 0, 2, 1],
        ];
        for order in orders {
            // Each order on a ticket of its own agent (the ticket id follows the agent).
            let b = agent_id();
            let events: Vec<TicketEvent> = [
                ticket(T1, &b, "open", T0),
                ticket(T1, &b, "acknowledged", T0 + 60 * SECOND),
                ticket(T1, &b, "resolved", T0 + 120 * SECOND),
            ]
            .to_vec();
            for i in &order {
                store.apply(PROJECTION, &[tk(&events[*i])], &[]).await?;
            }
            let got = store
                .list_tickets(&TicketQuery {
                    limit: Some(1000),
                    ..TicketQuery::default()
                })
                .await?
                .into_iter()
                .find(|t| t.agent_id == b)
                .context("ticket stored")?;
            let expected = fleet_read_model::TicketRow {
                ticket_id: events[0].ticket_id.clone(),
                alert_id: events[0].alert_id.clone(),
                agent_id: b.clone(),
                ..r.clone()
            };
            ensure!(got == expected, "order {order:?}:\n{got:?}\n{expected:?}");
        }

        // Two updates at the same instant: the further status shows, in either order.
        let (c, d) = (agent_id(), agent_id());
        for (agent, order) in [(&c, [1usize, 2]), (&d, [2, 1])] {
            let evs = [
                ticket(T1, agent, "open", T0),
                ticket(T1, agent, "acknowledged", T0 + SECOND),
                ticket(T1, agent, "resolved", T0 + SECOND),
            ];
            store.apply(PROJECTION, &[tk(&evs[0])], &[]).await?;
            for i in order {
                store.apply(PROJECTION, &[tk(&evs[i])], &[]).await?;
            }
        }
        let tickets = all(store.clone()).await?;
        for agent in [&c, &d] {
            let t = tickets
                .iter()
                .find(|t| &t.agent_id == agent)
                .context("ticket")?;
            ensure!(
                t.status == TicketStatus::Resolved && t.title.ends_with("(resolved)"),
                "{t:?}"
            );
        }

        let mut bad = ticket(T1, &a, "closed", T0);
        bad.ticket_id = "bad-ticket".into();
        ensure!(
            store.apply(PROJECTION, &[tk(&bad)], &[]).await.is_err(),
            "unknown status refused"
        );
        Ok(())
    }

    pub(crate) async fn tickets_filter_by_tenant_and_status(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a1, a2, a3) = (agent_id(), agent_id(), agent_id());
        store
            .apply(
                PROJECTION,
                &[
                    tk(&ticket(T1, &a1, "open", T0)),
                    tk(&ticket(T1, &a2, "open", T0 + SECOND)),
                    tk(&ticket(T1, &a2, "resolved", T0 + 2 * SECOND)),
                    tk(&ticket(T2, &a3, "open", T0 + 3 * SECOND)),
                ],
                &[],
            )
            .await?;
        let q =
            |tenant: Option<&str>, status: Option<TicketStatus>, limit: Option<u32>| TicketQuery {
                tenant_id: tenant.map(str::to_owned),
                status,
                limit,
            };
        let agents = |rows: Vec<fleet_read_model::TicketRow>| -> Vec<String> {
            rows.into_iter().map(|t| t.agent_id).collect()
        };
        ensure!(
            agents(store.list_tickets(&q(Some(T1), None, None)).await?)
                == [a2.as_str(), a1.as_str()],
            "tenant 1, newest first"
        );
        ensure!(agents(store.list_tickets(&q(Some(T2), None, None)).await?) == [a3.as_str()]);
        ensure!(
            agents(
                store
                    .list_tickets(&q(Some(T1), Some(TicketStatus::Open), None))
                    .await?
            ) == [a1.as_str()]
        );
        ensure!(
            agents(
                store
                    .list_tickets(&q(None, Some(TicketStatus::Open), None))
                    .await?
            ) == [a3.as_str(), a1.as_str()]
        );
        ensure!(agents(
            store
                .list_tickets(&q(Some(T2), Some(TicketStatus::Resolved), None))
                .await?
        )
        .is_empty());
        ensure!(
            agents(store.list_tickets(&q(None, None, Some(1))).await?) == [a3.as_str()],
            "limit"
        );
        Ok(())
    }

    pub(crate) async fn agent_filters_status_and_tags(store: Arc<dyn ReadModel>) -> Result<()> {
        use fleet_schemas::AgentLifecycleKind;
        let (a, b, c) = (agent_id(), agent_id(), agent_id());
        let mut ra = fixtures::agent_registered(T1, &a, T0);
        ra.device_name = Some("Web-Frontend".into());
        let mut rb = fixtures::agent_registered(T1, &b, T0);
        rb.location_id = Some("loc-2".into());
        rb.device_name = Some("db_1".into());
        let rc = fixtures::agent_registered(T2, &c, T0);
        store
            .apply(
                PROJECTION,
                &[
                    Change::Lifecycle(ra.clone()),
                    Change::Lifecycle(rb.clone()),
                    Change::Lifecycle(rc),
                ],
                &[],
            )
            .await?;
        // Tags on a: an UPDATED event that carries only tags keeps the facts.
        let mut tag = ra.clone();
        tag.kind = AgentLifecycleKind::Updated;
        tag.facts = None;
        tag.device_name = None;
        tag.location_id = None;
        tag.tags = Some(vec!["web".into(), "eu_west".into()]);
        tag.occurred_at = T0 + 5 * SECOND;
        // b goes offline.
        let mut off = rb.clone();
        off.kind = AgentLifecycleKind::Offline;
        off.facts = None;
        off.occurred_at = T0 + 10 * SECOND;
        store
            .apply(
                PROJECTION,
                &[Change::Lifecycle(tag), Change::Lifecycle(off.clone())],
                &[],
            )
            .await?;
        let row = agent(&store, &a).await?;
        ensure!(row.tags == vec!["web", "eu_west"], "{row:#?}");
        ensure!(row.device_name.as_deref() == Some("Web-Frontend") && row.facts.is_some());
        ensure!(
            row.last_seen_at == T0,
            "an operator's change is not a sign of life"
        );
        ensure!(row.status == AgentStatus::Online);
        ensure!(agent(&store, &b).await?.status == AgentStatus::Offline);

        let list = |q: AgentQuery| {
            let store = store.clone();
            async move {
                let rows = store.list_agents(&q).await?;
                let mut ids: Vec<String> = rows.into_iter().map(|r| r.agent_id).collect();
                ids.sort();
                anyhow::Ok(ids)
            }
        };
        let t1 = |f: fn(&mut AgentQuery)| {
            let mut q = AgentQuery {
                tenant_id: Some(T1.into()),
                ..AgentQuery::default()
            };
            f(&mut q);
            q
        };
        ensure!(list(t1(|q| q.status = Some(AgentStatus::Offline))).await? == vec![b.clone()]);
        ensure!(list(t1(|q| q.status = Some(AgentStatus::Online))).await? == vec![a.clone()]);
        ensure!(list(t1(|q| q.location_id = Some("loc-2".into()))).await? == vec![b.clone()]);
        ensure!(list(t1(|q| q.tag = Some("web".into()))).await? == vec![a.clone()]);
        // `_` is not a wildcard, and a tag matches whole.
        ensure!(list(t1(|q| q.tag = Some("eu.west".into())))
            .await?
            .is_empty());
        ensure!(list(t1(|q| q.tag = Some("we".into()))).await?.is_empty());
        ensure!(list(t1(|q| q.text = Some("FRONTEND".into()))).await? == vec![a.clone()]);
        ensure!(list(t1(|q| q.text = Some("db_".into()))).await? == vec![b.clone()]);
        ensure!(list(t1(|q| q.text = Some("db%".into()))).await?.is_empty());
        // Tenant scoping holds under every filter.
        let mut q = t1(|q| q.text = Some(String::new()));
        q.tenant_id = Some(T2.into());
        ensure!(list(q).await? == vec![c.clone()]);

        // Heard from after the OFFLINE event: online again; ONLINE clears it too.
        store
            .apply(PROJECTION, &[heartbeat(T1, &b, T0 + 20 * SECOND)], &[])
            .await?;
        ensure!(agent(&store, &b).await?.status == AgentStatus::Online);
        let mut off2 = off.clone();
        off2.occurred_at = T0 + 30 * SECOND;
        let mut on = off.clone();
        on.kind = AgentLifecycleKind::Online;
        on.occurred_at = T0 + 40 * SECOND;
        // Out of order: ONLINE first, then the older OFFLINE; the newer one wins.
        store
            .apply(
                PROJECTION,
                &[Change::Lifecycle(on), Change::Lifecycle(off2)],
                &[],
            )
            .await?;
        ensure!(agent(&store, &b).await?.status == AgentStatus::Online);
        // Deactivated beats everything.
        let mut gone = rb.clone();
        gone.kind = AgentLifecycleKind::Deactivated;
        gone.occurred_at = T0 + 50 * SECOND;
        store
            .apply(PROJECTION, &[Change::Lifecycle(gone)], &[])
            .await?;
        ensure!(agent(&store, &b).await?.status == AgentStatus::Deactivated);
        Ok(())
    }

    pub(crate) async fn services_follow_the_newest_report(store: Arc<dyn ReadModel>) -> Result<()> {
        let a = agent_id();
        let mut r1 = fixtures::metric_report(T1, &a, T0 + 10 * SECOND);
        r1.services = vec![
            fleet_schemas::ServiceStatus {
                name: "nginx".into(),
                status: "running".into(),
                pid: Some(42),
            },
            fleet_schemas::ServiceStatus {
                name: "cron".into(),
                status: "failed".into(),
                pid: None,
            },
        ];
        let mut old = fixtures::metric_report(T1, &a, T0);
        old.services = vec![fleet_schemas::ServiceStatus {
            name: "old".into(),
            status: "running".into(),
            pid: None,
        }];
        store
            .apply(
                PROJECTION,
                &[Change::Report(Box::new(r1)), Change::Report(Box::new(old))],
                &[],
            )
            .await?;
        let got = store.agent_services(Some(T1), &a).await?;
        let names: Vec<_> = got
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str()))
            .collect();
        ensure!(
            names == vec![("cron", "failed"), ("nginx", "running")],
            "{got:#?}"
        );
        ensure!(got[1].pid == Some(42) && got[1].observed_at == T0 + 10 * SECOND);
        ensure!(
            store.agent_services(Some(T2), &a).await?.is_empty(),
            "other tenant"
        );
        Ok(())
    }

    pub(crate) async fn overview_counts_per_tenant(store: Arc<dyn ReadModel>) -> Result<()> {
        let (a, b, c) = (agent_id(), agent_id(), agent_id());
        let mut raised = fixtures::alert_raised(T1, &a, T0);
        raised.severity = fleet_schemas::AlertSeverity::Critical;
        let mut warn = fixtures::alert_raised(T1, &a, T0);
        warn.alert_id = format!("{}-w", warn.alert_id);
        warn.severity = fleet_schemas::AlertSeverity::Warning;
        let other = fixtures::alert_raised(T2, &c, T0);
        let mut off = fixtures::agent_registered(T1, &b, T0);
        off.kind = fleet_schemas::AgentLifecycleKind::Offline;
        off.occurred_at = T0 + SECOND;
        let mut cmd = fixtures::command_completed(T1, &a, T0);
        cmd.kind = fleet_schemas::CommandEventKind::Requested;
        store
            .apply(
                PROJECTION,
                &[
                    heartbeat(T1, &a, T0),
                    heartbeat(T1, &b, T0),
                    heartbeat(T2, &c, T0),
                    Change::Lifecycle(off),
                    Change::Alert(raised),
                    Change::Alert(warn),
                    Change::Alert(other),
                    Change::Command(Box::new(cmd)),
                ],
                &[],
            )
            .await?;
        let o = store.overview(Some(T1)).await?;
        ensure!(
            (o.agents.total, o.agents.online, o.agents.offline) == (2, 1, 1),
            "{o:#?}"
        );
        ensure!(
            (
                o.open_alerts.total,
                o.open_alerts.critical,
                o.open_alerts.warning
            ) == (2, 1, 1),
            "{o:#?}"
        );
        ensure!(o.pending_commands == 1, "{o:#?}");
        let o2 = store.overview(Some(T2)).await?;
        ensure!(o2.agents.total == 1 && o2.open_alerts.total == 1 && o2.pending_commands == 0);
        let all = store.overview(None).await?;
        ensure!(all.agents.total >= 3 && all.open_alerts.total >= 3);
        let row = agent(&store, &a).await?;
        ensure!(
            row.open_alert_count == 2,
            "open alerts of the agent: {row:#?}"
        );
        Ok(())
    }

    pub(crate) async fn audit_log_newest_first_per_tenant(store: Arc<dyn ReadModel>) -> Result<()> {
        let entry = |id: &str, tenant: Option<&str>, at: i64, actor: &str| AuditEntry {
            audit_id: id.into(),
            tenant_id: tenant.map(str::to_owned),
            at,
            actor: actor.into(),
            action: "alert.acknowledge".into(),
            target: "alert-1".into(),
            details: Some(serde_json::json!({"note": "on it"})),
        };
        let tag = agent_id();
        let e1 = entry(&format!("{tag}-1"), Some(T1), T0, "alice");
        let e2 = entry(&format!("{tag}-2"), Some(T1), T0 + SECOND, "bob");
        let e3 = entry(&format!("{tag}-3"), Some(T2), T0 + 2 * SECOND, "carol");
        for e in [&e1, &e2, &e3, &e1] {
            store.record_audit(e).await?;
        }
        let t1 = store
            .list_audit(&AuditQuery {
                tenant_id: Some(T1.into()),
                ..AuditQuery::default()
            })
            .await?;
        ensure!(t1 == vec![e2.clone(), e1.clone()], "{t1:#?}");
        let bob = store
            .list_audit(&AuditQuery {
                tenant_id: Some(T1.into()),
                actor: Some("bob".into()),
                limit: Some(10),
            })
            .await?;
        ensure!(bob == vec![e2], "{bob:#?}");
        Ok(())
    }

    fn sample_series(
        tenant: &str,
        metric: &str,
        instance: &str,
        first: i64,
        last: i64,
    ) -> SampleSeries {
        let labels = vec![
            ("instance".to_owned(), instance.to_owned()),
            ("job".to_owned(), "node".to_owned()),
        ];
        SampleSeries {
            tenant_id: tenant.into(),
            unit_id: format!(r#"~{{instance="{instance}",job="node"}}"#),
            series: format!(r#"{metric}{{instance="{instance}",job="node"}}"#),
            metric: metric.into(),
            labels,
            first_at: first,
            last_at: SampleSeries::last_step(last),
        }
    }

    /// Events are kept once per id (a replay adds nothing), listed newest first per tenant
    /// and agent, filtered by kind, severity and time, paged by `until`, and expired by
    /// time.
    pub(crate) async fn events_timeline_filters_pages_and_expires(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let (a, b) = (agent_id(), agent_id());
        let mut events = Vec::new();
        for i in 0..5 {
            let mut ev = fixtures::agent_event(T1, &a, T0 + i * SECOND);
            if i == 3 {
                ev.kind = "agent_started".into();
                ev.severity = fleet_schemas::EventSeverity::Info;
                ev.attributes.insert("version".into(), "1.2.3".into());
            }
            events.push(ev);
        }
        events.push(fixtures::agent_event(T2, &b, T0 + 10 * SECOND));
        let changes: Vec<Change> = events
            .iter()
            .map(|e| Change::Event(Box::new(e.clone())))
            .collect();
        store.apply(PROJECTION, &changes, &[]).await?;
        // A replay, in another order, adds nothing.
        let mut replay = changes.clone();
        replay.reverse();
        store.apply(PROJECTION, &replay, &[]).await?;

        let list = |q: EventQuery| {
            let store = store.clone();
            async move { store.list_events(&q).await }
        };
        let of_t1 = list(EventQuery {
            tenant_id: Some(T1.into()),
            ..Default::default()
        })
        .await?;
        let times: Vec<i64> = of_t1
            .iter()
            .map(|e| (e.occurred_at - T0) / SECOND)
            .collect();
        ensure!(
            times == vec![4, 3, 2, 1, 0],
            "newest first, once each: {times:?}"
        );
        let started = &of_t1[1];
        ensure!(
            started.kind == "agent_started"
                && started.severity == "INFO"
                && started.attributes.get("version").map(String::as_str) == Some("1.2.3")
                && started.attributes.get("service").map(String::as_str) == Some("nginx")
                && started.message == events[3].message
                && started.ingested_at == events[3].ingested_at
                && started.event_id == events[3].event_id
                && started.agent_id == a,
            "{started:#?}"
        );
        let warnings = list(EventQuery {
            agent_id: Some(a.clone()),
            severity: Some("WARNING".into()),
            kind: Some("service_crashed".into()),
            ..Default::default()
        })
        .await?;
        ensure!(warnings.len() == 4, "{warnings:#?}");
        let window = list(EventQuery {
            tenant_id: Some(T1.into()),
            since: Some(T0 + SECOND),
            until: Some(T0 + 3 * SECOND),
            ..Default::default()
        })
        .await?;
        let times: Vec<i64> = window
            .iter()
            .map(|e| (e.occurred_at - T0) / SECOND)
            .collect();
        ensure!(
            times == vec![2, 1],
            "since inclusive, until exclusive: {times:?}"
        );
        let page = list(EventQuery {
            agent_id: Some(a.clone()),
            limit: Some(2),
            ..Default::default()
        })
        .await?;
        let next = list(EventQuery {
            agent_id: Some(a.clone()),
            until: page.last().map(|e| e.occurred_at),
            limit: Some(2),
            ..Default::default()
        })
        .await?;
        let times: Vec<i64> = page
            .iter()
            .chain(&next)
            .map(|e| (e.occurred_at - T0) / SECOND)
            .collect();
        ensure!(times == vec![4, 3, 2, 1], "two pages: {times:?}");
        ensure!(
            list(EventQuery {
                tenant_id: Some(T2.into()),
                agent_id: Some(a.clone()),
                ..Default::default()
            })
            .await?
            .is_empty(),
            "another tenant's agent"
        );

        ensure!(store.expire_events(T0 + 2 * SECOND).await? == 2);
        let left = list(EventQuery::default()).await?;
        let times: Vec<i64> = left.iter().map(|e| (e.occurred_at - T0) / SECOND).collect();
        ensure!(times == vec![10, 4, 3, 2], "{times:?}");
        Ok(())
    }

    /// The series index: a row per series and tenant; the earliest first and the latest
    /// (hour-rounded) last time win in any order and on replay; lists filter by tenant, metric and time range (a series may have samples
    /// up to an hour past its `last_at`), limited, ordered by series text.
    pub(crate) async fn sample_series_index_widens_and_filters(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let tag = agent_id();
        let (t1, t2) = (format!("{tag}-t1"), format!("{tag}-t2"));
        const HOUR: i64 = SERIES_LAST_STEP_MICROS;
        let up_a = sample_series(&t1, "up", "a:9100", T0 + 10 * SECOND, T0 + 20 * SECOND);
        let changes = [
            Change::Series(vec![
                up_a.clone(),
                sample_series(&t1, "node_load1", "a:9100", T0, T0 + 2 * HOUR + 5),
            ]),
            // Later, then earlier samples of up: both ends widen.
            Change::Series(vec![sample_series(
                &t1,
                "up",
                "a:9100",
                T0 + 3 * HOUR,
                T0 + 3 * HOUR + 7,
            )]),
            Change::Series(vec![sample_series(
                &t1,
                "up",
                "a:9100",
                T0 + 5 * SECOND,
                T0 + 6 * SECOND,
            )]),
            Change::Series(vec![
                sample_series(&t1, "up", "b:9100", T0 + 5 * HOUR, T0 + 5 * HOUR),
                sample_series(&t2, "up", "a:9100", T0, T0),
            ]),
        ];
        store.apply(PROJECTION, &changes, &[]).await?;
        store.apply(PROJECTION, &changes[1..], &[]).await?; // replayed, out of order
        let q = |metric: Option<&str>, start: i64, end: i64, limit: usize| SampleSeriesQuery {
            tenant_id: t1.clone(),
            metric: metric.map(Into::into),
            start,
            end,
            limit,
        };
        let all = store
            .list_sample_series(&q(None, i64::MIN, i64::MAX, 100))
            .await?;
        let names: Vec<&str> = all.iter().map(|s| s.series.as_str()).collect();
        ensure!(
            names
                == [
                    r#"node_load1{instance="a:9100",job="node"}"#,
                    r#"up{instance="a:9100",job="node"}"#,
                    r#"up{instance="b:9100",job="node"}"#,
                ],
            "{names:?}"
        );
        let up = &all[1];
        ensure!(up.first_at == T0 + 5 * SECOND, "{up:?}");
        ensure!(
            up.last_at == SampleSeries::last_step(T0 + 3 * HOUR + 7),
            "{up:?}"
        );
        ensure!(up.unit_id == up_a.unit_id && up.labels == up_a.labels && up.metric == "up");
        // By metric; by time: b's samples start at +5h; a's end before +4h (coarsely).
        let ups = store
            .list_sample_series(&q(Some("up"), i64::MIN, i64::MAX, 100))
            .await?;
        ensure!(
            ups.len() == 2 && ups.iter().all(|s| s.metric == "up"),
            "{ups:?}"
        );
        let early = store
            .list_sample_series(&q(Some("up"), T0, T0 + HOUR, 100))
            .await?;
        ensure!(
            early.len() == 1 && early[0].series.contains("a:9100"),
            "{early:?}"
        );
        let late = store
            .list_sample_series(&q(None, T0 + 4 * HOUR, T0 + 6 * HOUR, 100))
            .await?;
        ensure!(
            late.len() == 1 && late[0].series.contains("b:9100"),
            "{late:?}"
        );
        let in_last_hour = store
            .list_sample_series(&q(
                None,
                T0 + 3 * HOUR + HOUR / 2,
                T0 + 3 * HOUR + HOUR / 2,
                100,
            ))
            .await?;
        ensure!(
            in_last_hour.len() == 1,
            "up of a may have samples up to +4h: {in_last_hour:?}"
        );
        let limited = store
            .list_sample_series(&q(None, i64::MIN, i64::MAX, 2))
            .await?;
        ensure!(limited.len() == 2);
        // Tenants are apart.
        let other = SampleSeriesQuery {
            tenant_id: t2.clone(),
            ..q(None, i64::MIN, i64::MAX, 100)
        };
        ensure!(store.list_sample_series(&other).await?.len() == 1);
        Ok(())
    }

    pub(crate) async fn remote_configs_and_applied_versions_keep_the_newest(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let agent = agent_id();
        let (t1, t2) = (format!("{agent}-t1"), format!("{agent}-t2"));
        let newer = fixtures::remote_config(&t1, &agent, T0 + 10 * SECOND);
        let mut older = fixtures::remote_config(&t1, &agent, T0);
        older.heartbeat_interval_secs = Some(99.0);
        let other = fixtures::remote_config(&t2, &agent, T0);
        let mut hb_new = fixtures::heartbeat(&t1, &agent, T0 + 20 * SECOND, 2);
        hb_new.config_version = Some(newer.version);
        hb_new.heartbeat_interval_secs = Some(15.0);
        let mut hb_old = fixtures::heartbeat(&t1, &agent, T0 + 5 * SECOND, 1);
        hb_old.config_version = Some(older.version);
        hb_old.heartbeat_interval_secs = Some(30.0);
        let changes = [
            // Newer first, then an older record and heartbeat replayed: the newer stay.
            Change::RemoteConfig(Box::new(newer.clone())),
            Change::RemoteConfig(Box::new(older)),
            Change::RemoteConfig(Box::new(other)),
            Change::Heartbeat(hb_new),
            Change::Heartbeat(hb_old),
        ];
        store.apply(PROJECTION, &changes, &[]).await?;
        store.apply(PROJECTION, &changes, &[]).await?; // replay
        let configs = store.list_remote_configs(&t1).await?;
        ensure!(configs == vec![newer.clone()], "{configs:#?}");
        ensure!(store.list_remote_configs(&t2).await?.len() == 1);
        let applied = store.applied_config(&agent).await?.context("applied")?;
        ensure!(
            applied.config_version == Some(newer.version)
                && applied.heartbeat_interval_secs == Some(15.0)
                && applied.reported_at == T0 + 20 * SECOND,
            "{applied:?}"
        );
        // A heartbeat that says nothing (an older agent) writes nothing.
        let silent = agent_id();
        let hb = fixtures::heartbeat(&t1, &silent, T0, 1);
        store
            .apply(PROJECTION, &[Change::Heartbeat(hb)], &[])
            .await?;
        ensure!(store.applied_config(&silent).await?.is_none());
        Ok(())
    }

    pub(crate) async fn rules_follow_their_newest_event(store: Arc<dyn ReadModel>) -> Result<()> {
        let tag = agent_id();
        let (r1, r2, r3) = (format!("{tag}-1"), format!("{tag}-2"), format!("{tag}-3"));
        let t1 = format!("{tag}-t1");
        let t2 = format!("{tag}-t2");
        let mut r1_v2 = fixtures::rule_defined(&t1, &r1, T0 + 10 * SECOND);
        if let Some(d) = r1_v2.rule.as_mut() {
            d.name = "renamed".into();
        }
        let mut r2_deleted = fixtures::rule_defined(&t1, &r2, T0 + 10 * SECOND);
        r2_deleted.kind = fleet_schemas::RuleEventKind::Deleted;
        r2_deleted.rule = None;
        let changes = [
            // Newer first, then an older definition replayed: the newer one stays.
            Change::Rule(Box::new(r1_v2.clone())),
            Change::Rule(Box::new(fixtures::rule_defined(&t1, &r1, T0))),
            // Deleted, then its older definition: stays deleted.
            Change::Rule(Box::new(r2_deleted)),
            Change::Rule(Box::new(fixtures::rule_defined(&t1, &r2, T0))),
            Change::Rule(Box::new(fixtures::rule_defined(&t2, &r3, T0))),
        ];
        store.apply(PROJECTION, &changes, &[]).await?;
        store.apply(PROJECTION, &changes, &[]).await?; // replay
        let rules = store.list_rules(Some(&t1)).await?;
        ensure!(rules == vec![r1_v2], "{rules:#?}");
        let other = store.list_rules(Some(&t2)).await?;
        ensure!(other.len() == 1 && other[0].rule_id == r3, "{other:#?}");
        let all = store.list_rules(None).await?;
        ensure!(all.iter().filter(|r| r.rule_id.starts_with(&tag)).count() == 2);
        // One rule by id: its newest definition; deleted and unknown ones are none.
        let one = store.get_rule(&r1).await?;
        ensure!(
            one.as_ref().map(|r| r.rule.clone()) == Some(rules[0].rule.clone()),
            "{one:#?}"
        );
        ensure!(store
            .get_rule(&r3)
            .await?
            .is_some_and(|r| r.tenant_id == t2));
        ensure!(store.get_rule(&r2).await?.is_none(), "deleted");
        ensure!(store.get_rule(&format!("{tag}-none")).await?.is_none());
        Ok(())
    }

    /// One agent's row and services with what names the agent (its id; in the stored
    /// report, its id and the event id derived from it) taken out, so that the rows of two
    /// agents fed the same changes compare equal.
    async fn agent_state(
        store: &Arc<dyn ReadModel>,
        id: &str,
    ) -> Result<(AgentRow, Vec<fleet_read_model::ServiceRow>)> {
        let mut row = agent(store, id).await?;
        row.agent_id = String::new();
        if let Some(serde_json::Value::Object(report)) = row.latest_report.as_mut() {
            report.remove("agent_id");
            report.remove("event_id");
        }
        Ok((row, store.agent_services(None, id).await?))
    }

    fn service(name: &str, status: &str, pid: Option<i32>) -> fleet_schemas::ServiceStatus {
        fleet_schemas::ServiceStatus {
            name: name.into(),
            status: status.into(),
            pid,
        }
    }

    fn report_with(
        tenant: &str,
        agent: &str,
        at: i64,
        cpu: f64,
        services: Vec<fleet_schemas::ServiceStatus>,
    ) -> Change {
        let mut r = fixtures::metric_report(tenant, agent, at);
        r.cpu_percent = cpu;
        r.services = services;
        Change::Report(Box::new(r))
    }

    fn lifecycle(
        tenant: &str,
        agent: &str,
        at: i64,
        kind: AgentLifecycleKind,
        tags: Option<Vec<&str>>,
    ) -> Change {
        let mut ev = fixtures::agent_registered(tenant, agent, at);
        ev.kind = kind;
        ev.tags = tags.map(|t| t.into_iter().map(String::from).collect());
        Change::Lifecycle(ev)
    }

    /// A batch with every case the set-based apply coalesces, for agents `ids[0..5]`:
    /// reports out of order and repeated, reports of equal times with different values
    /// (and a service named twice), heartbeats before and after the reports, lifecycle
    /// events between reports of the same agent (which writes the same row), an agent
    /// first known from a lifecycle event, an agent heard only by heartbeats, and changes
    /// of other kinds in between.
    fn coalescing_batch(ids: &[String]) -> Vec<Change> {
        let (a, b, c, d, e) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]);
        let s = SECOND;
        vec![
            report_with(
                T1,
                a,
                T0 + 20 * s,
                20.0,
                vec![service("x", "running", Some(1))],
            ),
            heartbeat(T2, b, T0 + 3 * s),
            report_with(
                T1,
                a,
                T0 + 10 * s,
                10.0,
                vec![service("old", "failed", None)],
            ),
            Change::Alert(fixtures::alert_raised(T1, a, T0 + 21 * s)),
            report_with(
                T1,
                a,
                T0 + 30 * s,
                30.0,
                vec![service("y", "running", Some(3))],
            ),
            report_with(
                T1,
                a,
                T0 + 30 * s,
                30.0,
                vec![service("y", "running", Some(3))],
            ),
            heartbeat(T1, a, T0 + 40 * s),
            heartbeat(T1, a, T0 - 5 * s),
            // b: equal times, the later record wins; "dup" listed twice, its last entry wins.
            report_with(T2, b, T0 + 50 * s, 1.0, vec![service("p", "running", None)]),
            report_with(
                T2,
                b,
                T0 + 50 * s,
                2.0,
                vec![
                    service("dup", "running", Some(7)),
                    service("q", "stopped", None),
                    service("dup", "failed", None),
                ],
            ),
            // c: lifecycle between reports of the same agent.
            report_with(T1, c, T0 + 5 * s, 5.0, vec![]),
            lifecycle(
                T1,
                c,
                T0 + 6 * s,
                AgentLifecycleKind::Registered,
                Some(vec!["a"]),
            ),
            report_with(T1, c, T0 + 4 * s, 4.0, vec![]),
            lifecycle(
                T1,
                c,
                T0 + 7 * s,
                AgentLifecycleKind::Updated,
                Some(vec!["b"]),
            ),
            heartbeat(T1, c, T0 + 8 * s),
            lifecycle(T1, c, T0 + 9 * s, AgentLifecycleKind::Offline, None),
            report_with(T1, c, T0 + 3 * s, 3.0, vec![]),
            // d: heartbeats only.
            heartbeat(T2, d, T0 + 2 * s),
            heartbeat(T2, d, T0 + s),
            Change::Inventory(Box::new(fixtures::software_inventory(T2, d, T0))),
            // e: first known from an operator's change (its time is the first seen), then
            // reports older than it: the order decides `first_seen_at`.
            lifecycle(
                T1,
                e,
                T0 + 100 * s,
                AgentLifecycleKind::Updated,
                Some(vec!["z"]),
            ),
            report_with(T1, e, T0 + 90 * s, 90.0, vec![]),
            report_with(T1, e, T0 + 80 * s, 80.0, vec![]),
        ]
    }

    /// What the read model holds before the batch, for agents `ids[0..5]`: a report of `a`
    /// newer than some of the batch's, one of `b` of the same time as the batch's newest.
    fn stored_before(ids: &[String]) -> Vec<Change> {
        vec![
            report_with(
                T1,
                &ids[0],
                T0 + 25 * SECOND,
                25.0,
                vec![service("s", "running", None)],
            ),
            report_with(
                T2,
                &ids[1],
                T0 + 50 * SECOND,
                0.5,
                vec![service("r", "running", None)],
            ),
        ]
    }

    /// Applies each change in its own call.
    async fn apply_one_by_one(store: &Arc<dyn ReadModel>, changes: &[Change]) -> Result<()> {
        for change in changes {
            store
                .apply(PROJECTION, std::slice::from_ref(change), &[])
                .await?;
        }
        Ok(())
    }

    /// Compares agents `batched[i]` and `single[i]` row by row.
    async fn same_agents(
        store: &Arc<dyn ReadModel>,
        batched: &[String],
        single: &[String],
    ) -> Result<()> {
        for (x, y) in batched.iter().zip(single) {
            let (bx, by) = (agent_state(store, x).await?, agent_state(store, y).await?);
            ensure!(
                bx == by,
                "agent {x} (one batch) differs from {y} (one by one):\n{bx:#?}\n{by:#?}"
            );
        }
        Ok(())
    }

    pub(crate) async fn a_batch_gives_the_state_of_its_changes_one_by_one(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        let batched: Vec<String> = (0..5).map(|_| agent_id()).collect();
        let single: Vec<String> = (0..5).map(|_| agent_id()).collect();
        for ids in [&batched, &single] {
            store.apply(PROJECTION, &stored_before(ids), &[]).await?;
        }
        let offsets = [offset("fleet.metrics.v1", 0, 24)];
        store
            .apply(PROJECTION, &coalescing_batch(&batched), &offsets)
            .await?;
        apply_one_by_one(&store, &coalescing_batch(&single)).await?;
        same_agents(&store, &batched, &single).await?;
        ensure!(store.offsets(PROJECTION).await? == offsets.to_vec());

        // The cases the comparison rests on are there.
        let a = agent(&store, &batched[0]).await?;
        ensure!(
            (
                a.first_seen_at,
                a.last_seen_at,
                a.last_metrics_at,
                a.cpu_percent
            ) == (
                T0 - 5 * SECOND,
                T0 + 40 * SECOND,
                Some(T0 + 30 * SECOND),
                Some(30.0)
            ),
            "{a:#?}"
        );
        let services = store.agent_services(None, &batched[0]).await?;
        ensure!(
            services.len() == 1 && services[0].name == "y",
            "{services:#?}"
        );
        let b = agent(&store, &batched[1]).await?;
        ensure!(
            b.cpu_percent == Some(2.0) && b.tenant_id == T2,
            "equal times: the later record of the batch wins: {b:#?}"
        );
        let services = store.agent_services(None, &batched[1]).await?;
        let got: Vec<_> = services
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str(), s.pid))
            .collect();
        ensure!(
            got == vec![("dup", "failed", None), ("q", "stopped", None)],
            "{got:?}"
        );
        let c = agent(&store, &batched[2]).await?;
        ensure!(
            c.tags == vec!["b".to_owned()] && c.cpu_percent == Some(5.0),
            "{c:#?}"
        );
        let d = agent(&store, &batched[3]).await?;
        ensure!(
            d.last_metrics_at.is_none()
                && (d.first_seen_at, d.last_seen_at) == (T0 + SECOND, T0 + 2 * SECOND),
            "{d:#?}"
        );
        let e = agent(&store, &batched[4]).await?;
        ensure!(
            (e.first_seen_at, e.last_seen_at) == (T0 + 80 * SECOND, T0 + 100 * SECOND),
            "the operator's change created the row (its time is the last seen): {e:#?}"
        );

        // Replaying the batch changes nothing.
        store
            .apply(PROJECTION, &coalescing_batch(&batched), &offsets)
            .await?;
        same_agents(&store, &batched, &single).await
    }

    pub(crate) async fn large_batches_give_the_state_of_their_changes_one_by_one(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        // More agents than one multi-row statement takes, in a count that is no power of
        // two, each with reports out of order and a heartbeat.
        const AGENTS: usize = 301;
        let batched: Vec<String> = (0..AGENTS).map(|_| agent_id()).collect();
        let single: Vec<String> = (0..AGENTS).map(|_| agent_id()).collect();
        let changes = |ids: &[String]| -> Vec<Change> {
            let mut out = Vec::new();
            for step in [2_i64, 0, 3, 1] {
                for (i, id) in ids.iter().enumerate() {
                    let services = (0..i % 4)
                        .map(|n| service(&format!("svc-{n}-{step}"), "running", Some(n as i32)))
                        .collect();
                    let at = T0 + (step * 10 + (i % 7) as i64) * SECOND;
                    out.push(report_with(
                        T1,
                        id,
                        at,
                        (step * 100) as f64 + i as f64,
                        services,
                    ));
                }
            }
            for (i, id) in ids.iter().enumerate().step_by(3) {
                out.push(heartbeat(T1, id, T0 + (40 + i as i64) * SECOND));
            }
            out
        };
        store.apply(PROJECTION, &changes(&batched), &[]).await?;
        apply_one_by_one(&store, &changes(&single)).await?;
        same_agents(&store, &batched, &single).await?;
        let last = agent(&store, &batched[AGENTS - 1]).await?;
        ensure!(
            last.cpu_percent == Some(300.0 + (AGENTS - 1) as f64),
            "{last:#?}"
        );
        Ok(())
    }

    pub(crate) async fn reports_with_and_without_disks_mix(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        // A report without disks stores a NULL disk maximum. On PostgreSQL through sqlx's
        // `Any` driver a NULL double is sent as a `real`, so a statement prepared with one
        // refuses a later `double precision` on that connection.
        let (a, b) = (agent_id(), agent_id());
        let without_disks = |agent: &str, at: i64| {
            let mut r = fixtures::metric_report(T1, agent, at);
            r.disks.clear();
            Change::Report(Box::new(r))
        };
        // First a batch (one transaction, one connection) whose first report has no disks.
        store
            .apply(
                PROJECTION,
                &[without_disks(&a, T0), report(T1, &b, T0, 1.0)],
                &[],
            )
            .await?;
        for change in [
            heartbeat(T1, &a, T0 + SECOND),
            report(T1, &a, T0 + 2 * SECOND, 2.0),
            without_disks(&b, T0 + 2 * SECOND),
            without_disks(&a, T0 + 3 * SECOND),
            report(T1, &b, T0 + 3 * SECOND, 3.0),
        ] {
            store
                .apply(PROJECTION, std::slice::from_ref(&change), &[])
                .await?;
        }
        let (ra, rb) = (agent(&store, &a).await?, agent(&store, &b).await?);
        ensure!(
            ra.disk_percent_max.is_none() && ra.last_metrics_at == Some(T0 + 3 * SECOND),
            "{ra:#?}"
        );
        ensure!(
            rb.disk_percent_max == Some(20.0) && rb.cpu_percent == Some(3.0),
            "{rb:#?}"
        );
        Ok(())
    }

    fn channel(tenant: &str, name: &str) -> fleet_read_model::NotificationChannel {
        fleet_read_model::NotificationChannel {
            channel_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.into(),
            name: name.into(),
            kind: fleet_read_model::ChannelKind::Webhook,
            settings: fleet_read_model::ChannelSettings {
                url: Some("https://hooks.example.com/x".into()),
                email: None,
            },
            secret: Some("s3cret".into()),
            created_at: T0,
            created_by: "admin".into(),
        }
    }

    pub(crate) async fn notification_settings_are_per_tenant(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        use fleet_read_model::{AlertMatcher, NotificationRoute, Silence};
        let (a, b) = (channel(T1, "ops"), channel("tenant-2", "ops"));
        store.create_channel(&a).await?;
        store.create_channel(&b).await?;
        let listed = store.list_channels(Some(T1)).await?;
        ensure!(listed == vec![a.clone()], "{listed:?}");
        ensure!(
            listed[0].secret.as_deref() == Some("s3cret"),
            "the notifier reads the secret"
        );
        ensure!(store.list_channels(None).await?.len() == 2);
        ensure!(store
            .get_channel(Some("tenant-2"), &a.channel_id)
            .await?
            .is_none());
        ensure!(store.get_channel(Some(T1), &a.channel_id).await? == Some(a.clone()));
        let matcher = AlertMatcher {
            severities: vec!["critical".into()],
            tags: vec!["db".into()],
            ..AlertMatcher::default()
        };
        let route = NotificationRoute {
            route_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: T1.into(),
            name: "critical db".into(),
            channel_ids: vec![a.channel_id.clone()],
            matcher: matcher.clone(),
            group_window_ms: 30_000,
            send_resolved: true,
            created_at: T0,
            created_by: "admin".into(),
        };
        store.create_route(&route).await?;
        ensure!(store.list_routes(Some(T1)).await? == vec![route.clone()]);
        ensure!(store.list_routes(Some("tenant-2")).await?.is_empty());
        let silence = |expires_at| Silence {
            silence_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: T1.into(),
            comment: "maintenance".into(),
            matcher: matcher.clone(),
            starts_at: T0,
            expires_at,
            created_at: T0,
            created_by: "admin".into(),
        };
        let (old, live) = (silence(T0 + SECOND), silence(T0 + 3600 * SECOND));
        store.create_silence(&old).await?;
        store.create_silence(&live).await?;
        let active = store.list_silences(Some(T1), Some(T0 + 2 * SECOND)).await?;
        ensure!(
            active == vec![live.clone()],
            "expired ones are left out: {active:?}"
        );
        ensure!(store.list_silences(Some(T1), None).await?.len() == 2);
        // Deletes are tenant-scoped: another tenant's id is unknown.
        ensure!(store
            .delete_route(Some("tenant-2"), &route.route_id)
            .await?
            .is_none());
        ensure!(store.delete_route(Some(T1), &route.route_id).await? == Some(route));
        ensure!(store.list_routes(None).await?.is_empty());
        ensure!(store
            .delete_silence(Some(T1), &old.silence_id)
            .await?
            .is_some());
        ensure!(store
            .delete_channel(Some("tenant-2"), &a.channel_id)
            .await?
            .is_none());
        ensure!(store.delete_channel(None, &a.channel_id).await?.is_some());
        ensure!(store.get_channel(None, &a.channel_id).await?.is_none());
        Ok(())
    }

    pub(crate) async fn deliveries_are_claimed_once_grouped_and_keep_every_attempt(
        store: Arc<dyn ReadModel>,
    ) -> Result<()> {
        use fleet_read_model::{
            AttemptNext, DeliveryAttempt, DeliveryQuery, DeliverySource, DeliveryStatus,
            NewDelivery,
        };
        let ch = channel(T1, "ops");
        let new = |event: &str, now: i64, window_ms: i64| NewDelivery {
            delivery_id: format!("d-{event}"),
            tenant_id: T1.into(),
            channel_id: ch.channel_id.clone(),
            route_id: Some("r1".into()),
            event_id: event.into(),
            alert_id: format!("alert-{event}"),
            kind: "raised".into(),
            alert: serde_json::json!({"event_id": event}),
            group_window_ms: window_ms,
            now,
            source: Some(DeliverySource {
                topic: "fleet.alerts.v1".into(),
                partition: 2,
                offset: 7,
                timestamp_ms: 1_700_000_000_000,
                key: Some(b"agent".to_vec()),
                value: vec![0xC3, 0x01, 0xFF, 0x00],
            }),
        };
        // The first opens a 10 s window; the second, 3 s later, joins it.
        let added = store
            .enqueue_deliveries(&[new("e1", T0, 10_000), new("e2", T0 + 3 * SECOND, 10_000)])
            .await?;
        ensure!(added == 2, "{added}");
        // Enqueued again (a replayed alert): nothing new.
        ensure!(store.enqueue_deliveries(&[new("e1", T0, 10_000)]).await? == 0);
        ensure!(
            store
                .claim_deliveries(T0 + 9 * SECOND, T0 + 60 * SECOND, 10)
                .await?
                .is_empty(),
            "nothing is due before the window closes"
        );
        let due = T0 + 10 * SECOND;
        let claimed = store.claim_deliveries(due, due + 60 * SECOND, 10).await?;
        let ids: Vec<&str> = claimed.iter().map(|d| d.event_id.as_str()).collect();
        ensure!(ids == ["e1", "e2"], "both due at the window's end: {ids:?}");
        ensure!(
            claimed.iter().all(|d| d.group_id == "d-e1"),
            "one group, opened by the first: {claimed:?}"
        );
        // Without a window each delivery is its own group.
        ensure!(
            store
                .enqueue_deliveries(&[new("e3", due, 0), new("e4", due, 0)])
                .await?
                == 2
        );
        let alone = store.claim_deliveries(due, due + 60 * SECOND, 10).await?;
        let groups: Vec<(&str, &str)> = alone
            .iter()
            .map(|d| (d.event_id.as_str(), d.group_id.as_str()))
            .collect();
        ensure!(groups == [("e3", "d-e3"), ("e4", "d-e4")], "{groups:?}");
        for d in ["d-e3", "d-e4"] {
            store
                .record_attempt(
                    d,
                    &DeliveryAttempt {
                        attempt: 1,
                        message_id: d.into(),
                        at: due,
                        outcome: "ok".into(),
                        status_code: Some(200),
                        latency_ms: 1,
                        error: None,
                    },
                    &AttemptNext::Delivered,
                )
                .await?;
        }
        ensure!(
            claimed[0]
                .source
                .as_ref()
                .map(|s| (s.partition, s.offset, s.value.clone()))
                == Some((2, 7, vec![0xC3, 0x01, 0xFF, 0x00]))
        );
        // Held by the lease: another instance gets nothing until it runs out.
        ensure!(store
            .claim_deliveries(due, due + 60 * SECOND, 10)
            .await?
            .is_empty());
        let attempt = |n: u32, outcome: &str, error: Option<&str>| DeliveryAttempt {
            attempt: n,
            message_id: "e1".into(),
            at: due + i64::from(n) * SECOND,
            outcome: outcome.into(),
            status_code: Some(if error.is_some() { 500 } else { 200 }),
            latency_ms: 12,
            error: error.map(str::to_owned),
        };
        store
            .record_attempt(
                "d-e1",
                &attempt(1, "failed", Some("HTTP 500")),
                &AttemptNext::Retry(due + 5 * SECOND),
            )
            .await?;
        store
            .record_attempt(
                "d-e2",
                &attempt(1, "failed", Some("HTTP 500")),
                &AttemptNext::Dead("gave up".into()),
            )
            .await?;
        ensure!(store
            .claim_deliveries(due + 4 * SECOND, due + 99 * SECOND, 10)
            .await?
            .is_empty());
        let again = store
            .claim_deliveries(due + 5 * SECOND, due + 99 * SECOND, 10)
            .await?;
        ensure!(again.len() == 1 && again[0].attempts == 1, "{again:?}");
        store
            .record_attempt("d-e1", &attempt(2, "ok", None), &AttemptNext::Delivered)
            .await?;
        let list = store
            .list_deliveries(&DeliveryQuery {
                tenant_id: Some(T1.into()),
                ..DeliveryQuery::default()
            })
            .await?;
        ensure!(list.len() == 4, "{list:?}");
        let e1 = list.iter().find(|d| d.event_id == "e1").context("e1")?;
        ensure!(
            e1.status == DeliveryStatus::Delivered && e1.attempts == 2,
            "{e1:?}"
        );
        ensure!(e1.delivered_at == Some(due + 2 * SECOND));
        ensure!(
            e1.attempt_log
                .iter()
                .map(|a| (a.attempt, a.outcome.as_str(), a.status_code))
                .collect::<Vec<_>>()
                == vec![(1, "failed", Some(500)), (2, "ok", Some(200))],
            "{:?}",
            e1.attempt_log
        );
        let e2 = list.iter().find(|d| d.event_id == "e2").context("e2")?;
        ensure!(e2.status == DeliveryStatus::Dead && e2.last_error.as_deref() == Some("gave up"));
        // Filters: channel, alert, status, tenant.
        let by_alert = store
            .list_deliveries(&DeliveryQuery {
                alert_id: Some("alert-e2".into()),
                ..DeliveryQuery::default()
            })
            .await?;
        ensure!(by_alert.len() == 1 && by_alert[0].event_id == "e2");
        let dead = store
            .list_deliveries(&DeliveryQuery {
                channel_id: Some(ch.channel_id.clone()),
                status: Some(DeliveryStatus::Dead),
                ..DeliveryQuery::default()
            })
            .await?;
        ensure!(dead.len() == 1);
        ensure!(store
            .list_deliveries(&DeliveryQuery {
                tenant_id: Some("tenant-2".into()),
                ..DeliveryQuery::default()
            })
            .await?
            .is_empty());
        // Nothing is claimed once delivered or dead.
        ensure!(store
            .claim_deliveries(due + 999 * SECOND, due + 9999 * SECOND, 10)
            .await?
            .is_empty());
        Ok(())
    }
}
