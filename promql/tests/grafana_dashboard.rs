//! Every query of the Grafana dashboard shipped in `docs/grafana/fleet-overview.json`
//! evaluates (as Grafana sends it: `$hostname` as its "All" value) over series named and
//! labelled as the query API shows the agents' own metrics (`cpu_percent{agent_id,
//! hostname}`, `disk_percent{..., subject}`; docs/PROTOCOLS.md, "Reading samples back"),
//! and answers something: a panel that would stay empty, or a construct the evaluator
//! refuses, fails here.

use fleet_promql::memory::MemorySource;
use fleet_promql::{instant_query, range_query, EvalOptions, QueryValue};

const TENANT: &str = "acme";
const T0: i64 = 1_765_000_000_000;

/// Two agents reporting every 10 s for 20 minutes.
fn fleet() -> MemorySource {
    let mut src = MemorySource::new();
    for (i, (agent, host)) in [("a1", "web-1"), ("a2", "db-1")].iter().enumerate() {
        let samples = |base: f64| -> Vec<(i64, f64)> {
            (0..120)
                .map(|k| (T0 + k * 10_000, base + (k % 7) as f64 + i as f64))
                .collect()
        };
        let series: [(&str, Option<&str>, f64); 8] = [
            ("cpu_percent", None, 20.0),
            ("memory_percent", None, 50.0),
            ("disk_percent", Some("/"), 40.0),
            ("disk_percent", Some("/var"), 70.0),
            ("load_per_core", None, 0.5),
            ("net_rx_bytes", None, 1e6),
            ("net_tx_bytes", None, 2e5),
            ("service_up", Some("nginx"), 0.0),
        ];
        for (metric, subject, base) in series {
            let mut labels = vec![
                ("__name__", metric),
                ("agent_id", *agent),
                ("hostname", *host),
            ];
            if let Some(s) = subject {
                labels.push(("subject", s));
            }
            let values = if metric == "service_up" {
                vec![(T0 + 600_000, 0.0), (T0 + 1_190_000, 0.0)]
            } else {
                samples(base)
            };
            src.add(TENANT, &labels, &values);
        }
    }
    src
}

#[tokio::test]
async fn every_dashboard_query_answers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/fleet-overview.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let src = fleet();
    let end = T0 + 1_190_000;
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$hostname", ".*");
            let title = panel["title"].as_str().unwrap_or_default();
            let answer = if target["instant"] == true {
                instant_query(&src, TENANT, &expr, end, &EvalOptions::default()).await
            } else {
                range_query(
                    &src,
                    TENANT,
                    &expr,
                    end - 600_000,
                    end,
                    30_000,
                    &EvalOptions::default(),
                )
                .await
            };
            let answer = answer.unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
            let empty = match &answer {
                QueryValue::Vector(v) => v.is_empty(),
                QueryValue::Matrix(m) => m.is_empty(),
                _ => false,
            };
            assert!(!empty, "{title}: {expr} answered nothing");
            asked += 1;
        }
    }
    assert!(asked >= 10, "{asked} queries");
}
