//! Rule evaluation throughput on one core: reports per second through the evaluator.
//!
//! * `report_50_static_rules`: 50 static (configuration) rules, one agent.
//! * `report_50_rules_per_tenant`: 100 tenants with 50 rules each from `fleet.rules.v1`
//!   (warning / critical levels, for-durations, recovery thresholds, per-disk and
//!   per-service rules), 1000 agents reporting in turn, values moving through the levels.
//!
//! `cargo bench -p fleet-stream-processors --bench rules` (criterion prints `thrpt` in
//! reports/s; a summary line goes to stderr).

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_schemas::rules::RuleSpec;
use fleet_schemas::{fixtures, MetricReport};
use fleet_stream_processors::rules::{static_rule_events, Evaluator, StaticRule};

const TENANTS: usize = 100;
const RULES_PER_TENANT: usize = 50;
const AGENTS: usize = 1000;

fn static_rules(n: usize) -> Vec<StaticRule> {
    let metrics = [
        "cpu.percent",
        "memory.percent",
        "disk.percent",
        "load.1",
        "custom.queue_depth",
    ];
    (0..n)
        .map(|i| {
            StaticRule::new(
                format!("rule-{i}"),
                RuleSpec {
                    name: format!("Rule {i}"),
                    metric: metrics[i % metrics.len()].into(),
                    operator: Some(">".into()),
                    warning: Some(50.0 + i as f64),
                    ..RuleSpec::default()
                },
            )
        })
        .collect()
}

/// 50 rules of `fleet.rules.v1` for one tenant.
fn tenant_rules(ev: &mut Evaluator, tenant: &str) {
    let metrics = [
        ("cpu.percent", None),
        ("memory.percent", None),
        ("disk.percent", None),
        ("disk.percent", Some("/var")),
        ("load.per_core", None),
        ("service.up", Some("sshd")),
        ("custom.queue_depth", None),
    ];
    for i in 0..RULES_PER_TENANT {
        let (metric, subject) = metrics[i % metrics.len()];
        let mut e = fixtures::rule_defined(tenant, &format!("{tenant}-rule-{i}"), 0);
        if let Some(d) = e.rule.as_mut() {
            d.metric = metric.into();
            d.subject = subject.map(Into::into);
            d.for_secs = [0, 60, 300][i % 3];
            d.renotify_secs = 3_600;
            if metric == "service.up" {
                d.operator = "==".into();
                (d.warning, d.critical, d.recovery) = (None, Some(0.0), None);
            } else {
                let w = 20.0 + (i % 50) as f64;
                (d.warning, d.critical, d.recovery) = (Some(w), Some(w + 20.0), Some(w - 5.0));
            }
        }
        if let Err(err) = ev.apply_rule_event(&e) {
            panic!("bench rule {i} invalid: {err}");
        }
    }
}

fn tenant_evaluator() -> Evaluator {
    let mut ev = Evaluator::default();
    for t in 0..TENANTS {
        tenant_rules(&mut ev, &format!("tenant-{t}"));
    }
    ev
}

fn reports() -> Vec<MetricReport> {
    (0..AGENTS)
        .map(|a| {
            fixtures::metric_report(&format!("tenant-{}", a % TENANTS), &format!("agent-{a}"), 0)
        })
        .collect()
}

/// Report `n`: agent `n % AGENTS`, 10 s after its previous one, cpu moving 0..100.
fn next(base: &[MetricReport], n: u64, t0: i64) -> MetricReport {
    let a = (n % AGENTS as u64) as usize;
    let round = (n / AGENTS as u64) as i64;
    let mut r = base[a].clone();
    r.occurred_at = t0 + round * 10_000_000;
    r.cpu_percent = ((round * 7 + a as i64) % 100) as f64;
    r.memory_percent = ((round * 3 + a as i64) % 100) as f64;
    r
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(1));
    let mut ev =
        Evaluator::new(&static_rule_events(&static_rules(50)).expect("valid")).expect("valid");
    let mut t = 1_763_900_000_000_000i64;
    let base = fixtures::metric_report("tenant", "agent-1", t);
    g.bench_function("report_50_static_rules", |b| {
        b.iter(|| {
            t += 10_000_000;
            let mut r = base.clone();
            r.occurred_at = t;
            r.cpu_percent = (t / 10_000_000 % 100) as f64;
            ev.evaluate(&r, t)
        })
    });

    let mut ev = tenant_evaluator();
    let base = reports();
    let t0 = 1_763_900_000_000_000i64;
    let mut n = 0u64;
    g.bench_function("report_50_rules_per_tenant", |b| {
        b.iter(|| {
            n += 1;
            let r = next(&base, n, t0);
            ev.evaluate(&r, t0)
        })
    });
    g.finish();

    // A plain timed run for a one-line figure.
    let mut ev = tenant_evaluator();
    let count = 200_000u64;
    let started = Instant::now();
    let mut emitted = 0usize;
    for n in 0..count {
        emitted += ev.evaluate(&next(&base, n, t0), t0).len();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rules bench: {TENANTS} tenants x {RULES_PER_TENANT} rules, {AGENTS} agents: {:.0} reports/s on one core ({count} reports, {emitted} alert events, {} open)",
        count as f64 / secs,
        ev.open_alerts()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
