//! "The agent never loses data", end to end with real processes:
//!
//! * a Kafka broker outage in the middle of a run (the test's own broker, stopped and
//!   started again): the gateway answers 503, the agent keeps its reports in the spool,
//!   and once the broker is back every report arrives in the time series exactly once and
//!   the read model shows the latest one;
//! * the agent SIGKILLed again and again in the middle of a send: every report it
//!   collected arrives exactly once.
//!
//! The agent talks to the gateway through a [`GatewayProxy`] that records every batch it
//! sends (what was collected, independently of the agent's own counters) and, in the
//! second test, holds the gateway's answer back to land each kill after the gateway took
//! a batch but before the agent heard so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_e2e::{
    api_client, free_port, get_json, micros_rfc3339, wait_for, write_file, GatewayProxy,
    PrivateKafka, Proc, ProxiedBatch, ProxyMode,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
/// How long the pipeline may take to deliver everything once the broker is back. Long,
/// because the consumers resume slowly after an outage (they drain the errors queued
/// during it one per poll, with a pause after each): tens of seconds today.
const CATCH_UP: Duration = Duration::from_secs(180);

/// The test's directory (process logs, configs, agent state); kept, and named on stderr,
/// when `E2E_KEEP_DIR` is set.
fn test_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new().prefix("fleet-e2e-").tempdir()?;
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test directory (kept): {}", dir.path().display());
    }
    Ok(dir)
}

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

/// An agent that collects every `interval` seconds and retries fast.
fn agent_toml(state_dir: &Path, server_url: &str, interval: f64, batch: usize) -> String {
    format!(
        r#"
server-url = "{server_url}"
state-dir = "{}"
collect-interval = "{}ms"
batch-max-reports = {batch}
heartbeat-interval = "1s"
retry-initial-backoff = "200ms"
retry-max-backoff = "1s"
shutdown-flush-timeout = "20s"
"#,
        state_dir.display(),
        Duration::from_secs_f64(interval).as_millis()
    )
}

/// Every collection time (µs) the proxy saw, with the report's cpu percent.
fn proxied_reports(batches: &[ProxiedBatch]) -> BTreeMap<i64, f64> {
    batches
        .iter()
        .flat_map(|b| b.reports.iter().copied())
        .collect()
}

/// What a one-second bucket of cpu samples holds: (count, min, max, last).
type SecondBucket = (u64, f64, f64, f64);

/// The cpu samples the time series holds for the agent in the one-second buckets that
/// overlap `[start, end)` (µs), by bucket start (µs). Buckets are whole and aligned to the
/// second (a query never cuts one), so one second is the finest a query can single out.
async fn cpu_seconds(
    client: &reqwest::Client,
    api: &str,
    agent_id: &str,
    start: i64,
    end: i64,
) -> anyhow::Result<BTreeMap<i64, SecondBucket>> {
    let url = format!(
        "{api}/api/v1/agents/{agent_id}/metrics?metric=cpu.percent&start={}&end={}&interval=1s",
        micros_rfc3339(start),
        micros_rfc3339(end)
    );
    let h = get_json(client, &url).await?.context("agent not found")?;
    anyhow::ensure!(
        h["resolution"] == "raw",
        "1s buckets come from raw samples: {h}"
    );
    let mut out = BTreeMap::new();
    for b in h["series"][0]["buckets"].as_array().context("buckets")? {
        let at = fleet_e2e::rfc3339_micros(b["start"].as_str().context("bucket start")?)?;
        let f = |k: &str| b[k].as_f64().with_context(|| format!("{k} of {b}"));
        let count = b["count"]
            .as_u64()
            .with_context(|| format!("count of {b}"))?;
        out.insert(at, (count, f("min")?, f("max")?, f("last")?));
    }
    Ok(out)
}

/// Equal but for float parsing (JSON on the way in and out).
fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `expected` (collection time µs → cpu) as one-second buckets, as the store would hold it.
fn expected_seconds(expected: &BTreeMap<i64, f64>) -> BTreeMap<i64, SecondBucket> {
    let mut out: BTreeMap<i64, SecondBucket> = BTreeMap::new();
    for (&t, &cpu) in expected {
        let second = t.div_euclid(1_000_000) * 1_000_000;
        let b = out
            .entry(second)
            .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, cpu));
        b.0 += 1;
        b.1 = b.1.min(cpu);
        b.2 = b.2.max(cpu);
        b.3 = cpu; // in time order: the latest wins
    }
    out
}

/// Checks that the time series holds exactly one cpu sample at each time of `expected`
/// and no other since `since`, second by second (the finest a query answers): every
/// second holds as many samples as were collected in it, with their minimum, maximum and
/// latest value. Waits (bounded) for the projections to catch up first.
async fn assert_time_series_is_exactly(
    client: &reqwest::Client,
    api: &str,
    agent_id: &str,
    since: i64,
    expected: &BTreeMap<i64, f64>,
    timeout: Duration,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    let want = u64::try_from(expected.len())?;
    let end = fleet_e2e::now_micros() + 1;
    let total = |s: &BTreeMap<i64, SecondBucket>| s.values().map(|b| b.0).sum::<u64>();
    // Wait (bounded) for as many samples as reports; if they never come, the checks
    // below name the missing ones.
    let caught_up = wait_for(
        "every collected report in the time series",
        timeout,
        procs,
        || async {
            let n = total(&cpu_seconds(client, api, agent_id, since, end).await?);
            Ok((n >= want).then_some(()))
        },
    )
    .await;
    if let Err(e) = &caught_up {
        eprintln!("{e:#}");
    }
    let stored = cpu_seconds(client, api, agent_id, since, end).await?;
    let wanted = expected_seconds(expected);
    let mut missing = Vec::new();
    let mut doubled = Vec::new();
    let mut other = Vec::new();
    for (&second, &(n, min, max, last)) in &wanted {
        let at = micros_rfc3339(second);
        match stored.get(&second) {
            None => missing.push(format!("{at}: {n} collected, none stored")),
            Some(&(m, ..)) if m < n => missing.push(format!("{at}: {n} collected, {m} stored")),
            Some(&(m, ..)) if m > n => doubled.push(format!("{at}: {n} collected, {m} stored")),
            Some(&(_, smin, smax, slast))
                if !(near(smin, min) && near(smax, max) && near(slast, last)) =>
            {
                other.push(format!(
                    "{at}: collected min/max/last {min}/{max}/{last}, stored {smin}/{smax}/{slast}"
                ))
            }
            Some(_) => {}
        }
    }
    for (&second, &(m, ..)) in &stored {
        if !wanted.contains_key(&second) {
            doubled.push(format!(
                "{}: none collected, {m} stored",
                micros_rfc3339(second)
            ));
        }
    }
    assert!(
        missing.is_empty() && doubled.is_empty() && other.is_empty(),
        "collected reports missing from the time series: {missing:?}; stored more than once \
         (or never collected): {doubled:?}; other values than collected: {other:?}"
    );
    assert_eq!(
        total(&stored),
        want,
        "the time series holds exactly the {want} collected reports, none else, none twice"
    );
    Ok(())
}

/// The read model shows the report collected last as the agent's latest metrics.
async fn assert_latest_metrics(
    client: &reqwest::Client,
    api: &str,
    agent_id: &str,
    expected: &BTreeMap<i64, f64>,
    timeout: Duration,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    let (&last_at, &last_cpu) = expected.last_key_value().context("nothing collected")?;
    let url = format!("{api}/api/v1/agents/{agent_id}");
    let agent: Value = wait_for(
        "the read model to show the last collection",
        timeout,
        procs,
        || async {
            Ok(get_json(client, &url)
                .await?
                .filter(|a| a["last_metrics_at"].as_i64() == Some(last_at)))
        },
    )
    .await?;
    assert_eq!(
        agent["cpu_percent"].as_f64(),
        Some(last_cpu),
        "latest metrics are the last report's: {agent}"
    );
    assert_eq!(
        agent["latest_report"]["cpu_percent"].as_f64(),
        Some(last_cpu),
        "{agent}"
    );
    Ok(())
}

/// The agent's final counters from its "Agent stopped" log line.
fn final_stats(agent: &Proc) -> anyhow::Result<Value> {
    Ok(fleet_e2e::last_json_line(agent, "Agent stopped")?["fields"].clone())
}

fn stat(stats: &Value, key: &str) -> anyhow::Result<u64> {
    stats[key]
        .as_u64()
        .with_context(|| format!("no {key} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_no_report() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut kafka = PrivateKafka::start().await?;
    eprintln!(
        "private Kafka on {} ready after {:?}",
        kafka.brokers(),
        started.elapsed()
    );
    let db = fleet_e2e::fresh_database().await?;
    let dir = test_dir()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port, pr_port) = (free_port()?, free_port()?, free_port()?);
    let (gateway_url, api) = (
        format!("http://127.0.0.1:{gw_port}"),
        format!("http://127.0.0.1:{api_port}"),
    );
    let admin_key = fleet_e2e::new_admin_key();
    let log = kafka.url();
    // A short produce timeout and Retry-After keep the outage visible and the test short.
    let gw_cfg = write_file(
        dir.path(),
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"required\"\nregistry = \"{db}\"\nproduce-timeout = \"2000ms\"\nretry-after = \"1s\"\n[event-log]\nurl = \"{log}\"\n"
        ),
    )?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-outage-rm-{id}\"\ntimeseries-group = \"e2e-outage-ts-{id}\"\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"{gateway_url}\"\n",
            dir.path().join("ts").display()
        ),
    )?;
    let pr_cfg = write_file(
        dir.path(),
        "processors.toml",
        &format!(
            "listen = \"127.0.0.1:{pr_port}\"\n\n[[rules]]\nid = \"e2e-outage-{id}\"\nname = \"E2E CPU at or above 0\"\nmetric = \"cpu.percent\"\noperator = \">=\"\ncritical = 0.0\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[alert-evaluator]\ngroup = \"e2e-outage-alerts-{id}\"\n"
        ),
    )?;
    let gateway = Proc::start(
        "gateway",
        dir.path(),
        &["gateway", "--config", &path(&gw_cfg)?],
        &[],
    )?;
    let projections = Proc::start(
        "projections",
        dir.path(),
        &["projections", "--config", &path(&pj_cfg)?],
        &[],
    )?;
    let processors = Proc::start(
        "processors",
        dir.path(),
        &["processors", "--config", &path(&pr_cfg)?],
        &[],
    )?;
    let proxy = GatewayProxy::start(&gateway_url).await?;
    let token = fleet_e2e::create_tenant_and_token(
        &api,
        &admin_key,
        &format!("e2e-outage-{id}"),
        &[&gateway, &projections],
    )
    .await?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(
        dir.path(),
        "agent.toml",
        &agent_toml(&state_dir, proxy.url(), 0.5, 2),
    )?;
    let agent_id = fleet_e2e::enroll_agent(
        dir.path(),
        &ag_cfg,
        &state_dir,
        &gateway_url,
        &token,
        &[&gateway],
    )
    .await?;
    let run_start = fleet_e2e::now_micros();
    let mut agent = Proc::start(
        "agent",
        dir.path(),
        &["agent", "--config", &path(&ag_cfg)?],
        &[("FLEET_LOG_FORMAT", "json")],
    )?;
    let client = api_client(&admin_key)?;
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    let all = [&gateway, &projections, &processors, &agent];
    wait_for(
        "the agent's reports in the read model",
        WAIT,
        &all,
        || async {
            Ok(get_json(&client, &agent_url)
                .await?
                .filter(|a| a["last_metrics_at"].is_i64())
                .map(|_| ()))
        },
    )
    .await?;

    eprintln!("agent reporting after {:?}", started.elapsed());
    // The outage: the broker goes away for about 10 s.
    let before_outage = proxy.batches().len();
    let outage = Instant::now();
    kafka.stop()?;
    eprintln!("private Kafka stopped in {:?}", outage.elapsed());
    wait_for(
        "the gateway to answer 503 while the broker is down",
        WAIT,
        &all,
        || async {
            Ok(proxy.batches()[before_outage..]
                .iter()
                .any(|b| b.forwarded && b.status == Some(503))
                .then_some(()))
        },
    )
    .await?;
    let down_for = Duration::from_secs(10);
    tokio::time::sleep(down_for.saturating_sub(outage.elapsed())).await;
    let restart = Instant::now();
    kafka.start_again().await?;
    eprintln!(
        "private Kafka down for {:?}, back after {:?}",
        outage.elapsed() - restart.elapsed(),
        restart.elapsed()
    );
    let back_at = fleet_e2e::now_micros();
    let gateway_metrics = reqwest::get(format!("{gateway_url}/metrics"))
        .await?
        .text()
        .await?;

    // Catch-up: a report collected after the broker came back reaches the read model.
    wait_for(
        "a report collected after the broker came back in the read model",
        CATCH_UP,
        &all,
        || async {
            Ok(get_json(&client, &agent_url)
                .await?
                .and_then(|a| a["last_metrics_at"].as_i64())
                .filter(|&t| t > back_at)
                .map(|_| ()))
        },
    )
    .await?;
    eprintln!("caught up after {:?}", started.elapsed());
    agent.stop()?;
    let stats = final_stats(&agent)?;
    let collected = stat(&stats, "collected")?;
    assert_eq!(
        stat(&stats, "spooled")?,
        0,
        "the agent delivered its spool: {stats}"
    );
    assert_eq!(stat(&stats, "lost")?, 0, "{stats}");
    assert_eq!(stat(&stats, "rejected")?, 0, "{stats}");
    assert_eq!(stat(&stats, "dropped_oldest")?, 0, "{stats}");

    // The outage really happened: the gateway failed to produce and said 503, and the
    // agent retried.
    let failures = fleet_e2e::prometheus_sum(
        &gateway_metrics,
        fleet_ingest_gateway::metrics::PRODUCE_FAILURES,
    );
    assert!(
        failures > 0.0,
        "the gateway counted produce failures during the outage:\n{gateway_metrics}"
    );
    let batches = proxy.batches();
    let refused = batches
        .iter()
        .filter(|b| b.forwarded && b.status == Some(503))
        .count();
    let retries = fleet_e2e::json_lines(&agent, "Gateway unavailable; will retry")?.len();
    assert!(
        retries > 0,
        "the agent retried during the outage ({refused} batches got 503)"
    );

    // Exactly once: the time series holds one sample per report collected, at the
    // times the agent collected them (as it sent them), and the read model the last one.
    let expected = proxied_reports(&batches);
    assert_eq!(
        u64::try_from(expected.len())?,
        collected,
        "the agent sent every report it collected (distinct collection times seen at the proxy)"
    );
    let all = [&gateway, &projections, &processors];
    assert_time_series_is_exactly(
        &client, &api, &agent_id, run_start, &expected, CATCH_UP, &all,
    )
    .await?;
    assert_latest_metrics(&client, &api, &agent_id, &expected, CATCH_UP, &all).await?;
    eprintln!(
        "time series and read model complete after {:?}",
        started.elapsed()
    );
    let mut procs = [gateway, projections, processors];
    for p in &mut procs {
        assert!(
            p.is_running(),
            "{} survived the broker outage:\n{}",
            p.name(),
            p.log_tail(40)
        );
    }
    eprintln!(
        "broker outage: {collected} reports, {refused} batches answered 503, {retries} agent \
         retries, {failures} produce failures; {:?} in all",
        started.elapsed()
    );
    for p in &mut procs {
        p.stop()?;
    }
    kafka.stop()?;
    Ok(())
}

/// What happened to the agent at one kill.
#[derive(Debug)]
struct Kill {
    /// The batch whose 2xx the proxy held back (the gateway had it), if any.
    held: Option<ProxiedBatch>,
    /// Reports refused with 503 since the instance started.
    refused: BTreeSet<i64>,
    /// What the spool held after the kill.
    spooled: BTreeMap<i64, f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_send_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = test_dir()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port) = (free_port()?, free_port()?);
    let (gateway_url, api) = (
        format!("http://127.0.0.1:{gw_port}"),
        format!("http://127.0.0.1:{api_port}"),
    );
    let admin_key = fleet_e2e::new_admin_key();
    let cfg = write_file(
        dir.path(),
        "fleetstream.toml",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\nretry-after = \"1s\"\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n[api]\nadmin-api-key = \"{admin_key}\"\n"
        ),
    )?;
    let data = dir.path().join("data");
    let up = Proc::start(
        "up",
        dir.path(),
        &["up", "--data-dir", &path(&data)?, "--config", &path(&cfg)?],
        &[],
    )?;
    let proxy = GatewayProxy::start(&gateway_url).await?;
    let token =
        fleet_e2e::create_tenant_and_token(&api, &admin_key, &format!("e2e-kill-{id}"), &[&up])
            .await?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(
        dir.path(),
        "agent.toml",
        &agent_toml(&state_dir, proxy.url(), 0.25, 3),
    )?;
    let agent_id = fleet_e2e::enroll_agent(
        dir.path(),
        &ag_cfg,
        &state_dir,
        &gateway_url,
        &token,
        &[&up],
    )
    .await?;
    let run_start = fleet_e2e::now_micros();
    let start_agent = || {
        Proc::start(
            "agent",
            dir.path(),
            &["agent", "--config", &path(&ag_cfg)?],
            &[("FLEET_LOG_FORMAT", "json")],
        )
    };

    // Three crashes. Each instance first delivers (what the previous one left and some of
    // its own), then is killed: twice right after the gateway took a batch whose 2xx the
    // proxy holds back (so the agent sends it again after the restart), once while the
    // gateway answers 503 (a backlog in the spool).
    let mut kills = Vec::new();
    for round in 0..3 {
        let mut agent = start_agent()?;
        let first = proxy.batches().len();
        wait_for(
            "the restarted agent to deliver two batches",
            WAIT,
            &[&up, &agent],
            || async {
                Ok((proxy.batches()[first..]
                    .iter()
                    .filter(|b| b.accepted() && b.answered)
                    .count()
                    >= 2)
                    .then_some(()))
            },
        )
        .await?;
        let held = if round == 1 {
            proxy.set_mode(ProxyMode::Unavailable);
            let from = proxy.batches().len();
            wait_for("two batches answered 503", WAIT, &[&up, &agent], || async {
                Ok((proxy.batches()[from..]
                    .iter()
                    .filter(|b| b.status == Some(503))
                    .count()
                    >= 2)
                    .then_some(()))
            })
            .await?;
            None
        } else {
            proxy.set_mode(ProxyMode::HoldAccepted);
            let held = wait_for(
                "a batch the gateway accepted, its answer held back",
                WAIT,
                &[&up, &agent],
                || async { Ok(proxy.batches().into_iter().find(|b| b.held)) },
            )
            .await?;
            Some(held)
        };
        agent.kill()?;
        proxy.set_mode(ProxyMode::Pass);
        let refused = proxy.batches()[first..]
            .iter()
            .filter(|b| b.status == Some(503))
            .flat_map(|b| b.reports.iter().map(|r| r.0))
            .collect();
        let spooled = fleet_e2e::spool_reports(&state_dir)?.into_iter().collect();
        kills.push(Kill {
            held,
            refused,
            spooled,
        });
    }

    // The last instance delivers everything and stops gracefully.
    let last_start = fleet_e2e::now_micros();
    let mut agent = start_agent()?;
    let client = api_client(&admin_key)?;
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    wait_for(
        "a report of the last instance in the read model",
        WAIT,
        &[&up, &agent],
        || async {
            Ok(get_json(&client, &agent_url)
                .await?
                .and_then(|a| a["last_metrics_at"].as_i64())
                .filter(|&t| t > last_start)
                .map(|_| ()))
        },
    )
    .await?;
    agent.stop()?;
    let stats = final_stats(&agent)?;
    assert_eq!(
        stat(&stats, "spooled")?,
        0,
        "the agent delivered its spool: {stats}"
    );
    for key in ["lost", "rejected", "dropped_oldest"] {
        assert_eq!(stat(&stats, key)?, 0, "{key}: {stats}");
    }
    assert!(
        fleet_e2e::spool_reports(&state_dir)?.is_empty(),
        "the spool is empty after the graceful stop"
    );

    // What the agent collected: every report it sent (at the proxy, whatever the answer)
    // and every report its spool held after a kill. A report collected but killed before
    // its spool write committed never existed durably and is in neither.
    let batches = proxy.batches();
    let mut expected = proxied_reports(&batches);
    for kill in &kills {
        expected.extend(kill.spooled.iter().map(|(&t, &c)| (t, c)));
    }
    // The last instance's own reports: as many as it says it collected.
    let of_last = expected.range(last_start..).count();
    assert_eq!(
        u64::try_from(of_last)?,
        stat(&stats, "collected")?,
        "every report the last instance collected went through the proxy: {stats}"
    );

    // Each kill left what was not acknowledged in the spool.
    let sends: BTreeMap<i64, usize> = batches
        .iter()
        .filter(|b| b.accepted())
        .flat_map(|b| b.reports.iter().map(|r| r.0))
        .fold(BTreeMap::new(), |mut m, t| {
            *m.entry(t).or_default() += 1;
            m
        });
    let mut resent = 0;
    for (i, kill) in kills.iter().enumerate() {
        if let Some(held) = &kill.held {
            for (t, _) in &held.reports {
                assert!(
                    kill.spooled.contains_key(t),
                    "kill {i}: the batch in flight ({}) stays spooled after the crash",
                    micros_rfc3339(*t)
                );
                // ... and was sent again, and accepted again, after the restart.
                assert!(
                    sends.get(t).copied().unwrap_or(0) >= 2,
                    "kill {i}: the batch in flight ({}) was sent again",
                    micros_rfc3339(*t)
                );
                resent += 1;
            }
        }
        for t in &kill.refused {
            assert!(
                kill.spooled.contains_key(t),
                "kill {i}: a report refused with 503 ({}) stays spooled after the crash",
                micros_rfc3339(*t)
            );
        }
    }
    assert!(
        resent > 0,
        "a kill landed after the gateway took a batch and before the agent heard"
    );

    // Exactly once downstream, despite the batches the gateway got twice.
    assert_time_series_is_exactly(&client, &api, &agent_id, run_start, &expected, WAIT, &[&up])
        .await?;
    assert_latest_metrics(&client, &api, &agent_id, &expected, WAIT, &[&up]).await?;
    let doubled_at_gateway = sends.values().filter(|&&n| n > 1).count();
    eprintln!(
        "agent kills: {} reports, {} kills, {doubled_at_gateway} reports accepted by the \
         gateway more than once, {:?} in all",
        expected.len(),
        kills.len(),
        started.elapsed()
    );
    let mut up = up;
    up.stop()?;
    Ok(())
}
