//! Temporary: measures collection cost and runs the agent for RSS measurement.
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("fleet_agent=info").init();
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "bench" {
        let mut c = fleet_agent::Collector::new(vec![]);
        let n = 200;
        let cpu0 = std::fs::read_to_string("/proc/self/stat")?;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(c.collect());
        }
        let cpu1 = std::fs::read_to_string("/proc/self/stat")?;
        let ticks = |s: &str| -> u64 {
            let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        tracing::info!(
            wall_per_collect_us = t.elapsed().as_micros() as u64 / n,
            cpu_ticks = ticks(&cpu1) - ticks(&cpu0),
            "bench"
        );
        let mut s = fleet_agent::Collector::new(vec!["cron".into(), "ssh".into()]);
        let t = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(s.collect());
        }
        tracing::info!(wall_per_collect_with_services_us = t.elapsed().as_micros() as u64 / 20, "bench");
        return Ok(());
    }
    let config = fleet_agent::AgentConfig::load(None)?;
    fleet_agent::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
