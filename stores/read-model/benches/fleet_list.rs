//! Fleet list: paging through the agents of one tenant with 10,000 agents, through the
//! `ReadModel` trait (`list_agents`, paging by agent id with `after`), on the embedded
//! SQLite read model and on PostgreSQL (`FLEET_POSTGRES_URL`, a fresh database that is
//! dropped afterwards). Every agent is enrolled (`Change::Lifecycle`) and has a latest
//! report (`Change::Report`), applied in batches of 1,000 as the projection does.
//!
//! Figures: the first page (100 agents, the API's default page size), and the whole fleet
//! page by page at 100 and at 1,000 (the largest page) agents per page.
//!
//! usage: cargo bench -p fleet-read-model --bench fleet_list -- [sqlite|postgres|all]
//! Environment: BENCH_AGENTS (default 10000), BENCH_FIRST_PAGES (first-page samples,
//! default 300), BENCH_FULL_LISTS (full pagings per page size, default 20),
//! FLEET_POSTGRES_URL.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleet_read_model::{AgentQuery, Change, ReadModel, StoredOffset};
use fleet_schemas::fixtures;
use fleet_test_support::services::PgDatabase;
use fleet_test_support::stats::{env_num, machine, summary};

const TENANT: &str = "bench-tenant";
const PROJECTION: &str = "readmodel";

/// Enrolls `agents` agents with a latest report each, in batches of 1,000 changes.
async fn fill(store: &dyn ReadModel, agents: usize) -> Result<()> {
    let now = fleet_schemas::time::now_micros();
    let started = Instant::now();
    let mut changes = Vec::with_capacity(1_000);
    let mut offset = 0i64;
    for a in 0..agents {
        let id = format!("agent-{a:06}");
        changes.push(Change::Lifecycle(fixtures::agent_registered(
            TENANT,
            &id,
            now - 86_400_000_000,
        )));
        let mut report = fixtures::metric_report(TENANT, &id, now - (a as i64 % 10) * 1_000_000);
        report.cpu_percent = (a % 100) as f64;
        changes.push(Change::Report(Box::new(report)));
        if changes.len() >= 1_000 || a + 1 == agents {
            offset += changes.len() as i64;
            let offsets = [StoredOffset {
                topic: fleet_schemas::topics::METRICS.into(),
                partition: 0,
                next_offset: offset,
            }];
            store.apply(PROJECTION, &changes, &offsets).await?;
            changes.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:9} filled {agents} agents ({offset} changes) in {secs:.1} s = {:.0} changes/s",
        store.engine(),
        offset as f64 / secs
    );
    Ok(())
}

/// Pages through the tenant's agents; returns how many were listed and the pages.
async fn list_all(store: &dyn ReadModel, page: u32) -> Result<(usize, usize)> {
    let mut after = None;
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let rows = store
            .list_agents(&AgentQuery {
                tenant_id: Some(TENANT.into()),
                limit: Some(page),
                after: after.clone(),
                ..AgentQuery::default()
            })
            .await?;
        pages += 1;
        seen += rows.len();
        match rows.last() {
            Some(last) if rows.len() == page as usize => after = Some(last.agent_id.clone()),
            _ => return Ok((seen, pages)),
        }
    }
}

async fn run(store: Arc<dyn ReadModel>) -> Result<()> {
    let agents = env_num("BENCH_AGENTS", 10_000);
    let first_pages = env_num("BENCH_FIRST_PAGES", 300).max(1);
    let full_lists = env_num("BENCH_FULL_LISTS", 20).max(1);
    let engine = store.engine();
    fill(store.as_ref(), agents).await?;
    // Warm up (and check the paging sees every agent once).
    for page in [100, 1_000] {
        let (seen, _) = list_all(store.as_ref(), page).await?;
        ensure!(seen == agents, "{engine}: listed {seen} of {agents} agents");
    }
    let mut first = Vec::with_capacity(first_pages);
    for _ in 0..first_pages {
        let t = Instant::now();
        let rows = store
            .list_agents(&AgentQuery {
                tenant_id: Some(TENANT.into()),
                limit: Some(100),
                ..AgentQuery::default()
            })
            .await?;
        first.push(t.elapsed());
        ensure!(
            rows.len() == 100.min(agents),
            "first page: {} rows",
            rows.len()
        );
    }
    println!(
        "{engine:9} first page (100 agents):          {}",
        summary(&mut first)
    );
    for page in [100u32, 1_000] {
        let mut times: Vec<Duration> = Vec::with_capacity(full_lists);
        let mut pages = 0;
        for _ in 0..full_lists {
            let t = Instant::now();
            let (_, p) = list_all(store.as_ref(), page).await?;
            times.push(t.elapsed());
            pages = p;
        }
        println!(
            "{engine:9} all {agents} agents, {page:>4} per page ({pages} pages): {}",
            summary(&mut times)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    println!("machine: {}", machine());
    if which == "sqlite" || which == "all" {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("readmodel.db").display());
        run(fleet_read_model::open_read_model(&url).await?).await?;
    }
    if which == "postgres" || which == "all" {
        let db = PgDatabase::create("fleet_bench").await?;
        let outcome = async { run(fleet_read_model::open_read_model(&db.url).await?).await }.await;
        db.drop_now().await?;
        outcome?;
    }
    Ok(())
}
