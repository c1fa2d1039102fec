//! Data sets shared by the benches: the realistic generated fleet and the constant
//! fixture, as metric reports and as blocks of one agent-hour.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use fleet_schemas::fixtures;
use fleet_schemas::samples::for_each_sample;
use fleet_schemas::MetricReport;
use fleet_timeseries::Block;

pub const HOUR_MICROS: i64 = 3_600_000_000;

/// Which data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `fixtures::fleet_reports`: varying values, jittered times.
    Realistic,
    /// `fixtures::metric_report`: the same values every time, exact 10 s grid.
    Constant,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Realistic => "realistic (fixtures::fleet_reports)",
            Kind::Constant => "constant (fixtures::metric_report)",
        }
    }
}

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub agents: usize,
    pub hours: usize,
    pub interval_micros: i64,
    /// First report time (µs), on an hour boundary.
    pub start_micros: i64,
}

impl Shape {
    pub fn reports_per_agent(&self) -> usize {
        (self.hours as i64 * HOUR_MICROS / self.interval_micros) as usize
    }
}

/// The reports of `kind`, in time order across agents.
pub fn reports(kind: Kind, shape: Shape) -> Box<dyn Iterator<Item = MetricReport>> {
    let per_agent = shape.reports_per_agent();
    match kind {
        Kind::Realistic => Box::new(fixtures::fleet_reports(
            42,
            shape.agents,
            shape.start_micros,
            shape.interval_micros,
            per_agent,
        )),
        Kind::Constant => {
            let agents: Vec<String> = (0..shape.agents)
                .map(|i| fleet_schemas::ids::v5(&["bench-agent", &i.to_string()]).to_string())
                .collect();
            let tenant = fleet_schemas::ids::v5(&["bench-tenant"]).to_string();
            Box::new((0..per_agent).flat_map(move |k| {
                let ts = shape.start_micros + k as i64 * shape.interval_micros;
                let tenant = tenant.clone();
                agents
                    .clone()
                    .into_iter()
                    .map(move |a| fixtures::metric_report(&tenant, &a, ts))
            }))
        }
    }
}

/// Blocks of one agent-hour, in the order they close.
pub fn blocks(kind: Kind, shape: Shape) -> (Vec<Block>, usize) {
    let mut open: HashMap<String, (i64, Vec<(i64, String, f64)>)> = HashMap::new();
    let mut out = Vec::new();
    let mut samples = 0usize;
    let mut close = |pending: Vec<(i64, String, f64)>, out: &mut Vec<Block>| {
        out.push(Block::from_samples(pending).expect("a block within the limits"));
    };
    for r in reports(kind, shape) {
        let hour = r.occurred_at.div_euclid(HOUR_MICROS);
        let entry = open
            .entry(r.agent_id.clone())
            .or_insert_with(|| (hour, Vec::new()));
        if entry.0 != hour {
            let pending = std::mem::take(&mut entry.1);
            close(pending, &mut out);
            entry.0 = hour;
        }
        for_each_sample(&r, |metric, subject, value| {
            let name = fleet_schemas::samples::series_name(metric, subject);
            entry.1.push((r.occurred_at, name, value));
            samples += 1;
        });
    }
    let mut rest: Vec<_> = open.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, (_, pending)) in rest {
        close(pending, &mut out);
    }
    (out, samples)
}

pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}
