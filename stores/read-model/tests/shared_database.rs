//! The read model and the registry in one database (the default: `up` uses one SQLite file,
//! a deployment one PostgreSQL database): one pool serves both seams, each seam migrates
//! its own tables, and a database created before the seams were split (one migration set,
//! versions 1 to 8) opens unchanged. Each case runs on SQLite and on PostgreSQL.

use std::future::Future;

use anyhow::{ensure, Context, Result};
use fleet_read_model::{Change, Database, ReadModel, SqlReadModel, StoredOffset};
use fleet_registry::{Registry, SqlRegistry};
use fleet_schemas::fixtures;

/// Runs `case` on a fresh SQLite file and on a fresh PostgreSQL database.
async fn on_both<F, Fut>(case: F) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
    case(url).await.context("on SQLite")?;
    fleet_test_support::services::with_fresh_database(&case)
        .await
        .context("on PostgreSQL")
}

/// Opens both seams on one pool of the database at `url`.
async fn open_both(url: &str) -> Result<(SqlRegistry, SqlReadModel)> {
    let db = Database::connect(url).await?;
    let registry = SqlRegistry::open(db.clone()).await?;
    let read_model = SqlReadModel::open(db).await?;
    Ok((registry, read_model))
}

/// Writes a tenant to the registry and an agent with offsets to the read model; returns
/// the tenant id.
async fn write_both(registry: &SqlRegistry, read_model: &SqlReadModel) -> Result<String> {
    let tenant = registry.create_tenant("Acme", 1).await?;
    let offsets = [StoredOffset {
        topic: "fleet.metrics.v1".into(),
        partition: 0,
        next_offset: 1,
    }];
    read_model
        .apply(
            "readmodel",
            &[Change::Report(Box::new(fixtures::metric_report(
                &tenant.tenant_id,
                "a1",
                1_000,
            )))],
            &offsets,
        )
        .await?;
    Ok(tenant.tenant_id)
}

/// Checks that what [`write_both`] wrote is there.
async fn check_both(url: &str, tenant_id: &str) -> Result<()> {
    let (registry, read_model) = open_both(url).await?;
    ensure!(
        registry.get_tenant(tenant_id).await?.is_some(),
        "the tenant is kept"
    );
    ensure!(
        read_model.get_agent(Some(tenant_id), "a1").await?.is_some(),
        "the agent is kept"
    );
    ensure!(read_model.offsets("readmodel").await?.len() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pool_serves_both_seams_and_data_survives_reopening() -> Result<()> {
    on_both(|url| async move {
        let (registry, read_model) = open_both(&url).await?;
        ensure!(registry.database().engine() == read_model.database().engine());
        let tenant_id = write_both(&registry, &read_model).await?;
        read_model.close().await;
        // Migrations run again on an up-to-date database and change nothing.
        check_both(&url, &tenant_id).await?;
        // Each seam alone opens the shared database too.
        ensure!(fleet_registry::open_registry(&url)
            .await?
            .get_tenant(&tenant_id)
            .await?
            .is_some());
        ensure!(fleet_read_model::open_read_model(&url)
            .await?
            .get_agent(None, "a1")
            .await?
            .is_some());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_before_the_split_opens_unchanged() -> Result<()> {
    on_both(|url| async move {
        // Before the split the stores ran every migration as one strict set: this makes
        // the same `_sqlx_migrations` rows (versions, SHA-384 of each text).
        let db = Database::connect(&url).await?;
        db.migrate_as_one(&[&fleet_registry::MIGRATIONS, &fleet_read_model::MIGRATIONS])
            .await?;
        let registry = SqlRegistry::open(db.clone()).await?;
        let read_model = SqlReadModel::open(db.clone()).await?;
        let tenant_id = write_both(&registry, &read_model).await?;
        check_both(&url, &tenant_id).await?;
        // And the seams applied nothing the old single set does not know.
        db.migrate_as_one(&[&fleet_registry::MIGRATIONS, &fleet_read_model::MIGRATIONS])
            .await
            .context("the database holds exactly the old migrations")?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seam_alone_leaves_the_other_seams_tables_to_it() -> Result<()> {
    on_both(|url| async move {
        // The gateway opens only the registry; the projections open both later.
        let registry = fleet_registry::open_registry(&url).await?;
        let tenant = registry.create_tenant("Acme", 1).await?;
        let (registry, read_model) = open_both(&url).await?;
        ensure!(registry.get_tenant(&tenant.tenant_id).await?.is_some());
        ensure!(read_model.offsets("readmodel").await?.is_empty());
        Ok(())
    })
    .await
}

/// Versions are one sequence across the seams (one `_sqlx_migrations` table per database):
/// no version twice, none skipped.
#[test]
fn migration_versions_are_one_sequence() {
    let mut versions: Vec<i64> = fleet_registry::MIGRATIONS
        .list
        .iter()
        .chain(fleet_read_model::MIGRATIONS.list)
        .map(|m| m.version)
        .collect();
    versions.sort_unstable();
    let expected: Vec<i64> = (1..=i64::try_from(versions.len()).expect("few")).collect();
    assert_eq!(
        versions, expected,
        "a new migration takes the next version, whichever seam owns it"
    );
}
