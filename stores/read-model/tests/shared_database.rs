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

/// The migrations released before the seams were split, as sqlx recorded them in every
/// database made then (version, SHA-384 of the text): a seam's migration of one of these
/// versions must be that very text, or those databases refuse to open.
const RELEASED: &[(i64, &str)] = &[
    (1, "d45adb0ae8658423cbb751311bcc537f44fd6d0439313b19b3afb1329fcbbf180b6de0b2e21fa0900f2c6cb69b07635b"),
    (2, "dc57b95fed27a2f0699e2571145171344bf7ae359e1951affdaed6bf35aa380dd6588002469eea9e5996d8f7676d9bd1"),
    (3, "8eedb1ddbd17b2b58bbebaeb9477a02df5f963cffb545f78d83ff621e0cd7e8fcb87fd117492f6e542c7f3d2a2cf6fd6"),
    (4, "a6a2cbea80609afb129c849a3dfa485acd3e8f5ee225aa1c9aeec555ae122c0a991c33ef3e6d7d4872f8aa3067098efc"),
    (5, "06b53f466e72a8d2cf36e7b70073408c2a8180acf7c819dc63bef0f9ba0b8a8d9fd3d97661324d70fc132b83799dfe49"),
    (6, "d9e0e2ec3a14a8deb1983bfdba23c7a37a60360241c977e894253c51e956aa312c88c0dcd169ef9954a28e234b9df6b9"),
    (7, "f374884be59eabbe512a9fe565eddd68d38805b6704b81ef0a0984ef33f44fcace6e7434e00ab1c85758a2e709ba8707"),
    (8, "0c3b1883061b75abf498453fdf913e01c1a9e3c47b7c704f91ad3b006cf829b4e4ae31348b088fa4c9b536b582ca11e2"),
];

#[test]
fn released_migrations_keep_their_versions_and_text() {
    use sha2::Digest as _;
    let all: Vec<_> = fleet_registry::MIGRATIONS
        .list
        .iter()
        .chain(fleet_read_model::MIGRATIONS.list)
        .collect();
    for (version, checksum) in RELEASED {
        let found: Vec<_> = all.iter().filter(|m| m.version == *version).collect();
        assert_eq!(found.len(), 1, "one migration has version {version}");
        let hex: String = sha2::Sha384::digest(found[0].sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            &hex, checksum,
            "migration {version} ({}) changed: add a new migration instead",
            found[0].description
        );
    }
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
