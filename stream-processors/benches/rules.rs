//! Rule evaluation throughput: reports per second through the evaluator with 50 rules.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_schemas::fixtures;
use fleet_stream_processors::rules::{Evaluator, Operator, Rule, Severity};

fn rules(n: usize) -> Vec<Rule> {
    let metrics = [
        "cpu.percent",
        "memory.percent",
        "disk.percent",
        "load.1",
        "custom.queue_depth",
    ];
    (0..n)
        .map(|i| Rule {
            id: format!("rule-{i}"),
            name: format!("Rule {i}"),
            metric: metrics[i % metrics.len()].into(),
            subject: None,
            operator: Operator::Gt,
            threshold: 50.0 + i as f64,
            severity: Severity::Warning,
            tenant: None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(1));
    let mut ev = Evaluator::new(rules(50));
    let mut t = 1_763_900_000_000_000i64;
    let base = fixtures::metric_report("tenant", "agent-1", t);
    g.bench_function("report_50_rules", |b| {
        b.iter(|| {
            t += 10_000_000;
            let mut r = base.clone();
            r.occurred_at = t;
            r.cpu_percent = (t / 10_000_000 % 100) as f64;
            ev.evaluate(&r, t)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
