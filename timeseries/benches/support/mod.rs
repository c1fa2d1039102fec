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

/// Samples of one agent not yet in a block.
type Pending = Vec<(i64, String, f64)>;

/// Cuts samples, arriving in time order per agent, into blocks of one agent-hour.
#[derive(Default)]
pub struct Cutter {
    open: HashMap<String, (i64, Pending)>,
}

impl Cutter {
    /// Adds a sample; returns the agent's previous block when this sample starts a new hour.
    pub fn add(&mut self, agent: &str, ts: i64, series: String, value: f64) -> Option<Block> {
        let hour = ts.div_euclid(HOUR_MICROS);
        let entry = self
            .open
            .entry(agent.to_owned())
            .or_insert_with(|| (hour, Vec::new()));
        let closed = (entry.0 != hour).then(|| {
            entry.0 = hour;
            std::mem::take(&mut entry.1)
        });
        entry.1.push((ts, series, value));
        closed.map(block)
    }

    /// The blocks still open, by agent.
    pub fn finish(self) -> Vec<(String, Block)> {
        let mut open: Vec<_> = self.open.into_iter().collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        open.into_iter()
            .map(|(agent, (_, p))| (agent, block(p)))
            .collect()
    }
}

fn block(pending: Pending) -> Block {
    Block::from_samples(pending).expect("a block within the limits")
}

/// Blocks of one agent-hour, in the order they close, and the number of samples.
pub fn blocks(kind: Kind, shape: Shape) -> (Vec<Block>, usize) {
    let mut cutter = Cutter::default();
    let mut out = Vec::new();
    let mut samples = 0usize;
    for r in reports(kind, shape) {
        for_each_sample(&r, |metric, subject, value| {
            let name = fleet_schemas::samples::series_name(metric, subject);
            out.extend(cutter.add(&r.agent_id, r.occurred_at, name, value));
            samples += 1;
        });
    }
    out.extend(cutter.finish().into_iter().map(|(_, b)| b));
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
