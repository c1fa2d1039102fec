//! Evaluation of parsed PromQL over a [`SeriesSource`].
//!
//! A query is evaluated in two phases: every selector's series are loaded once from the
//! source (for the whole time span the query needs), then the expression is evaluated
//! step by step without I/O, as Prometheus' engine does: every node yields, per
//! evaluation time, an instant vector (or a scalar).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use promql_parser::label::{MatchOp as ParserMatchOp, METRIC_NAME};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    self, AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use crate::functions::{self, Extrapolated, Mean, Variance};
use crate::source::{Labels, MatchOp, Matcher, SelectLimits, SeriesSource};
use crate::value::{EvalError, InstantSample, QueryValue, RangeSeries};

/// Most points per series of a range query, as Prometheus refuses beyond.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The functions this evaluator implements.
pub const SUPPORTED_FUNCTIONS: &[&str] = &[
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "resets",
    "changes",
    "abs",
    "ceil",
    "floor",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "sgn",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "time",
    "vector",
    "scalar",
    "sort",
    "sort_desc",
    "label_replace",
    "histogram_quantile",
];

/// Bounds and settings of one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5 min).
    pub lookback: Duration,
    /// Bounds on each selector's load from the source.
    pub select: SelectLimits,
    /// Most samples any one node's result may hold over all steps (Prometheus'
    /// `--query.max-samples`, 50 million).
    pub max_samples: usize,
    /// When to give up.
    pub deadline: Option<Instant>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            lookback: Duration::from_secs(300),
            select: SelectLimits::default(),
            max_samples: 50_000_000,
            deadline: None,
        }
    }
}

/// Evaluates `query` for `tenant` at `t_ms` (an instant query).
///
/// The series are loaded from `source` on the caller's task; the evaluation itself, which
/// may take long on many series, runs on Tokio's blocking pool when called inside a
/// runtime, bounded by `options.deadline`.
pub async fn instant_query(
    source: &dyn SeriesSource,
    tenant: &str,
    query: &str,
    t_ms: i64,
    options: &EvalOptions,
) -> Result<QueryValue, EvalError> {
    // Boxed: the loaded series are keyed by the selectors' addresses, which must not move.
    let expr = Box::new(parser::parse(query).map_err(EvalError::Parse)?);
    let mut ctx = Context::new(vec![t_ms], t_ms, *options);
    ctx.load(source, tenant, &expr).await?;
    off_the_runtime(move || ctx.instant_answer(&expr, t_ms)).await
}

/// Evaluates `query` for `tenant` at `start_ms`, `start_ms + step_ms`, … up to `end_ms`
/// (a range query); the answer is a matrix ordered by labels. Runs as [`instant_query`].
pub async fn range_query(
    source: &dyn SeriesSource,
    tenant: &str,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    options: &EvalOptions,
) -> Result<QueryValue, EvalError> {
    let steps = range_steps(start_ms, end_ms, step_ms)?;
    let expr = Box::new(parser::parse(query).map_err(EvalError::Parse)?);
    match expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        other => {
            return Err(EvalError::BadQuery(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                match other {
                    ValueType::Matrix => "range vector",
                    _ => "string",
                }
            )))
        }
    }
    let mut ctx = Context::new(steps, end_ms, *options);
    ctx.load(source, tenant, &expr).await?;
    off_the_runtime(move || ctx.range_answer(&expr)).await
}

/// Runs `f` on Tokio's blocking pool (inside a runtime), so a long evaluation does not
/// hold a worker thread.
async fn off_the_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EvalError> + Send + 'static,
) -> Result<T, EvalError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EvalError::Execution(format!("the evaluation stopped: {e}")))?
}

/// The matchers of a series selector (a `match[]` parameter of the metadata routes): a
/// vector selector without modifiers.
pub fn selector_matchers(selector: &str) -> Result<Vec<Matcher>, EvalError> {
    match parser::parse(selector).map_err(EvalError::Parse)? {
        Expr::VectorSelector(vs) if vs.offset.is_none() => matchers_of(&vs),
        _ => Err(EvalError::BadQuery(format!(
            "{selector:?} is not a series selector"
        ))),
    }
}

/// The evaluation times of a range query, checked as Prometheus' API checks them.
pub fn range_steps(start_ms: i64, end_ms: i64, step_ms: i64) -> Result<Vec<i64>, EvalError> {
    if end_ms < start_ms {
        return Err(EvalError::BadQuery(
            "end timestamp must not be before start time".into(),
        ));
    }
    if step_ms <= 0 {
        return Err(EvalError::BadQuery(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    let span = end_ms
        .checked_sub(start_ms)
        .ok_or_else(|| EvalError::BadQuery("start and end are too far apart".into()))?;
    if span / step_ms > MAX_POINTS_PER_SERIES {
        return Err(EvalError::BadQuery(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let mut steps = Vec::with_capacity((span / step_ms + 1) as usize);
    let mut t = start_ms;
    while t <= end_ms {
        steps.push(t);
        match t.checked_add(step_ms) {
            Some(next) => t = next,
            None => break,
        }
    }
    Ok(steps)
}

/// Classic histogram buckets: `(upper bound, cumulative count)`.
type Buckets = Vec<(f64, f64)>;

/// One sample of an instant vector at one step.
#[derive(Debug, Clone)]
struct Sample {
    labels: Arc<Labels>,
    v: f64,
}

/// A node's result over all steps.
#[derive(Debug)]
enum Value {
    /// One value per step.
    Scalar(Vec<f64>),
    /// One instant vector per step.
    Vector(Vec<Vec<Sample>>),
    /// A string literal.
    String(String),
}

/// A loaded series.
#[derive(Debug)]
struct Loaded {
    labels: Arc<Labels>,
    samples: Vec<(i64, f64)>,
}

struct Context {
    steps: Vec<i64>,
    /// The `end` of a range query (the time of an instant one).
    query_end: i64,
    options: EvalOptions,
    /// Loaded series per selector, keyed by the selector node's address (the AST
    /// outlives the evaluation and is not moved).
    data: HashMap<usize, Vec<Loaded>>,
}

fn strip_parens(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => strip_parens(&p.expr),
        other => other,
    }
}

fn key_of(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

fn offset_ms(offset: &Option<Offset>) -> Result<i64, EvalError> {
    let ms = |d: &Duration| {
        i64::try_from(d.as_millis()).map_err(|_| EvalError::BadQuery("offset is too large".into()))
    };
    Ok(match offset {
        None => 0,
        Some(Offset::Pos(d)) => ms(d)?,
        Some(Offset::Neg(d)) => -ms(d)?,
    })
}

fn out_of_bounds(t: Option<i64>) -> Result<i64, EvalError> {
    t.ok_or_else(|| EvalError::BadQuery("time range out of bounds".into()))
}

fn duration_ms(d: &Duration, what: &str) -> Result<i64, EvalError> {
    i64::try_from(d.as_millis()).map_err(|_| EvalError::BadQuery(format!("{what} is too large")))
}

fn unsupported(construct: &str) -> EvalError {
    EvalError::Unsupported(format!("{construct} not supported"))
}

/// The selector's matchers in the source's terms, the metric name first.
fn matchers_of(vs: &VectorSelector) -> Result<Vec<Matcher>, EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("`or` inside a selector's braces is"));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher {
            name: METRIC_NAME.to_string(),
            op: MatchOp::Equal,
            value: name.clone(),
        });
    }
    for m in &vs.matchers.matchers {
        let op = match m.op {
            ParserMatchOp::Equal => MatchOp::Equal,
            ParserMatchOp::NotEqual => MatchOp::NotEqual,
            ParserMatchOp::Re(_) => MatchOp::Regex,
            ParserMatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        out.push(Matcher {
            name: m.name.clone(),
            op,
            value: m.value.clone(),
        });
    }
    Ok(out)
}

fn drop_name(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(n, _)| n != METRIC_NAME)
        .cloned()
        .collect()
}

/// Maps each distinct label set (by identity) through `f` once.
struct LabelCache<T> {
    map: HashMap<usize, T>,
}

impl<T: Clone> LabelCache<T> {
    fn new() -> Self {
        LabelCache {
            map: HashMap::new(),
        }
    }

    fn get(&mut self, labels: &Arc<Labels>, f: impl FnOnce(&Labels) -> T) -> T {
        self.map
            .entry(Arc::as_ptr(labels) as usize)
            .or_insert_with(|| f(labels))
            .clone()
    }
}

fn check_same_labelset(samples: &[Sample]) -> Result<(), EvalError> {
    if samples.len() < 2 {
        return Ok(());
    }
    let mut seen: std::collections::HashSet<&Labels> =
        std::collections::HashSet::with_capacity(samples.len());
    for s in samples {
        if !seen.insert(s.labels.as_ref()) {
            return Err(EvalError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

impl Context {
    fn new(steps: Vec<i64>, query_end: i64, options: EvalOptions) -> Self {
        Context {
            steps,
            query_end,
            options,
            data: HashMap::new(),
        }
    }

    /// The answer of an instant query at `t_ms`.
    fn instant_answer(&self, expr: &Expr, t_ms: i64) -> Result<QueryValue, EvalError> {
        if let Expr::MatrixSelector(ms) = strip_parens(expr) {
            return self.matrix_value(ms);
        }
        Ok(match self.eval(expr)? {
            Value::Scalar(values) => QueryValue::Scalar { t_ms, v: values[0] },
            Value::String(s) => QueryValue::String { t_ms, s },
            Value::Vector(mut steps) => QueryValue::Vector(
                steps
                    .swap_remove(0)
                    .into_iter()
                    .map(|sample| InstantSample {
                        labels: sample.labels.as_ref().clone(),
                        t_ms,
                        v: sample.v,
                    })
                    .collect(),
            ),
        })
    }

    /// The answer of a range query: a matrix ordered by labels.
    fn range_answer(&self, expr: &Expr) -> Result<QueryValue, EvalError> {
        let steps = &self.steps;
        let mut series = match self.eval(expr)? {
            Value::Scalar(values) => vec![RangeSeries {
                labels: Vec::new(),
                points: steps.iter().copied().zip(values).collect(),
            }],
            Value::Vector(per_step) => {
                let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
                let mut series: Vec<RangeSeries> = Vec::new();
                for (&t, samples) in steps.iter().zip(per_step) {
                    for sample in samples {
                        let i = *index.entry(sample.labels.clone()).or_insert_with(|| {
                            series.push(RangeSeries {
                                labels: sample.labels.as_ref().clone(),
                                points: Vec::new(),
                            });
                            series.len() - 1
                        });
                        series[i].points.push((t, sample.v));
                    }
                }
                series
            }
            Value::String(_) => {
                return Err(EvalError::BadQuery(
                    "invalid expression type \"string\" for range query".into(),
                ))
            }
        };
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(QueryValue::Matrix(series))
    }

    fn check_deadline(&self, phase: &'static str) -> Result<(), EvalError> {
        match self.options.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(EvalError::Timeout(phase)),
            _ => Ok(()),
        }
    }

    fn first_step(&self) -> i64 {
        self.steps[0]
    }

    fn last_step(&self) -> i64 {
        self.steps[self.steps.len() - 1]
    }

    /// Loads every selector of `expr` from the source, refusing unsupported constructs.
    async fn load(
        &mut self,
        source: &dyn SeriesSource,
        tenant: &str,
        expr: &Expr,
    ) -> Result<(), EvalError> {
        let mut selectors: Vec<(&VectorSelector, i64)> = Vec::new();
        collect_selectors(expr, &mut selectors)?;
        let lookback = duration_ms(&self.options.lookback, "lookback")?;
        for (vs, range_ms) in selectors {
            let matchers = matchers_of(vs)?;
            let window = if range_ms > 0 { range_ms } else { lookback };
            let start = out_of_bounds(
                self.selection_time(vs, self.first_step())?
                    .checked_sub(window),
            )?;
            let end = self.selection_time(vs, self.last_step())?;
            self.check_deadline("loading series")?;
            let series = source
                .select(tenant, &matchers, start, end, &self.options.select)
                .await?;
            let loaded = series
                .into_iter()
                .map(|s| Loaded {
                    labels: Arc::new(s.labels),
                    samples: if range_ms > 0 {
                        // Range selectors skip staleness markers altogether.
                        s.samples
                            .into_iter()
                            .filter(|(_, v)| !functions::is_stale(*v))
                            .collect()
                    } else {
                        s.samples
                    },
                })
                .collect();
            self.data.insert(key_of(vs), loaded);
        }
        Ok(())
    }

    /// The time a selector selects at when the query evaluates at `t`: `t`, or its `@`
    /// time, minus its offset (Prometheus turns `@` into an offset the same way).
    fn selection_time(&self, vs: &VectorSelector, t: i64) -> Result<i64, EvalError> {
        let at = match &vs.at {
            None => t,
            Some(AtModifier::Start) => self.first_step(),
            // The query's end, which the last step may fall short of.
            Some(AtModifier::End) => self.query_end,
            Some(AtModifier::At(time)) => match time.duration_since(UNIX_EPOCH) {
                Ok(d) => out_of_bounds(i64::try_from(d.as_millis()).ok())?,
                Err(before) => out_of_bounds(
                    i64::try_from(before.duration().as_millis())
                        .ok()
                        .map(|ms| -ms),
                )?,
            },
        };
        out_of_bounds(at.checked_sub(offset_ms(&vs.offset)?))
    }

    fn loaded(&self, vs: &VectorSelector) -> &[Loaded] {
        self.data.get(&key_of(vs)).map(Vec::as_slice).unwrap_or(&[])
    }

    fn check_samples(&self, count: usize) -> Result<(), EvalError> {
        if count > self.options.max_samples {
            return Err(EvalError::Execution(format!(
                "query processing would load too many samples into memory in query execution (limit {})",
                self.options.max_samples
            )));
        }
        Ok(())
    }

    fn eval(&self, expr: &Expr) -> Result<Value, EvalError> {
        self.check_deadline("evaluation")?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(vec![n.val; self.steps.len()])),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Value::Scalar(values) => Ok(Value::Scalar(values.into_iter().map(|v| -v).collect())),
                Value::Vector(steps) => {
                    let mut cache = LabelCache::new();
                    let out = self.map_steps(steps, |sample| {
                        Some(Sample {
                            labels: cache.get(&sample.labels, |l| Arc::new(drop_name(l))),
                            v: -sample.v,
                        })
                    })?;
                    Ok(Value::Vector(out))
                }
                Value::String(_) => Err(EvalError::BadQuery(
                    "unary minus is not defined on strings".into(),
                )),
            },
            Expr::VectorSelector(vs) => self.eval_selector(vs),
            Expr::MatrixSelector(_) => Err(EvalError::BadQuery(
                "a range vector is only accepted as a function argument or as a whole instant query".into(),
            )),
            Expr::Call(call) => self.eval_call(call),
            Expr::Binary(b) => self.eval_binary(b),
            Expr::Aggregate(a) => self.eval_aggregate(a),
            Expr::Subquery(_) => Err(unsupported("subqueries are")),
            Expr::Extension(_) => Err(unsupported("extension expressions are")),
        }
    }

    /// Applies `f` to every sample of every step, checking duplicate label sets.
    fn map_steps(
        &self,
        steps: Vec<Vec<Sample>>,
        mut f: impl FnMut(Sample) -> Option<Sample>,
    ) -> Result<Vec<Vec<Sample>>, EvalError> {
        let mut out = Vec::with_capacity(steps.len());
        for samples in steps {
            let mapped: Vec<Sample> = samples.into_iter().filter_map(&mut f).collect();
            check_same_labelset(&mapped)?;
            out.push(mapped);
        }
        Ok(out)
    }

    fn eval_selector(&self, vs: &VectorSelector) -> Result<Value, EvalError> {
        let lookback = duration_ms(&self.options.lookback, "lookback")?;
        let references = self
            .steps
            .iter()
            .map(|&t| self.selection_time(vs, t))
            .collect::<Result<Vec<i64>, EvalError>>()?;
        let mut out: Vec<Vec<Sample>> = vec![Vec::new(); self.steps.len()];
        let mut total = 0usize;
        for series in self.loaded(vs) {
            for (i, &reference) in references.iter().enumerate() {
                let idx = series.samples.partition_point(|(ts, _)| *ts <= reference);
                if idx == 0 {
                    continue;
                }
                let (ts, v) = series.samples[idx - 1];
                // Prometheus 2.x: a sample exactly `lookback` old still counts.
                if ts < reference.saturating_sub(lookback) || functions::is_stale(v) {
                    continue;
                }
                out[i].push(Sample {
                    labels: series.labels.clone(),
                    v,
                });
                total += 1;
            }
            self.check_samples(total)?;
            self.check_deadline("selecting samples")?;
        }
        Ok(Value::Vector(out))
    }

    /// The samples of a range selector in the closed window `[t - range, t]` (shifted by
    /// the offset), as Prometheus 2.x selects them.
    fn window(series: &Loaded, range_start: i64, range_end: i64) -> &[(i64, f64)] {
        let lo = series.samples.partition_point(|(ts, _)| *ts < range_start);
        let hi = series.samples.partition_point(|(ts, _)| *ts <= range_end);
        &series.samples[lo..hi.max(lo)]
    }

    /// A top-level range selector of an instant query: its raw samples.
    fn matrix_value(&self, ms: &MatrixSelector) -> Result<QueryValue, EvalError> {
        let range = duration_ms(&ms.range, "range")?;
        let end = self.selection_time(&ms.vs, self.first_step())?;
        let mut out = Vec::new();
        for series in self.loaded(&ms.vs) {
            let window = Self::window(series, end.saturating_sub(range), end);
            if !window.is_empty() {
                out.push(RangeSeries {
                    labels: series.labels.as_ref().clone(),
                    points: window.to_vec(),
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(QueryValue::Matrix(out))
    }

    fn scalar_arg(&self, expr: &Expr) -> Result<Vec<f64>, EvalError> {
        match self.eval(expr)? {
            Value::Scalar(values) => Ok(values),
            _ => Err(EvalError::BadQuery("expected a scalar argument".into())),
        }
    }

    fn vector_arg(&self, expr: &Expr) -> Result<Vec<Vec<Sample>>, EvalError> {
        match self.eval(expr)? {
            Value::Vector(steps) => Ok(steps),
            _ => Err(EvalError::BadQuery(
                "expected an instant vector argument".into(),
            )),
        }
    }

    fn string_arg(expr: &Expr) -> Result<String, EvalError> {
        match strip_parens(expr) {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => Err(EvalError::BadQuery("expected a string argument".into())),
        }
    }

    fn eval_call(&self, call: &Call) -> Result<Value, EvalError> {
        let name = call.func.name;
        let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
        match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" | "avg_over_time"
            | "min_over_time" | "max_over_time" | "sum_over_time" | "count_over_time"
            | "last_over_time" | "stddev_over_time" | "stdvar_over_time" | "resets" | "changes" => {
                let ms = match args.first().map(|a| strip_parens(a)) {
                    Some(Expr::MatrixSelector(ms)) => ms,
                    Some(Expr::Subquery(_)) => return Err(unsupported("subqueries are")),
                    _ => {
                        return Err(EvalError::BadQuery(format!(
                            "{name} expects a range vector selector"
                        )))
                    }
                };
                self.eval_range_function(name, ms)
            }
            "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" => {
                let f: fn(f64) -> f64 = match name {
                    "abs" => f64::abs,
                    "ceil" => f64::ceil,
                    "floor" => f64::floor,
                    "exp" => f64::exp,
                    "ln" => f64::ln,
                    "log2" => f64::log2,
                    "log10" => f64::log10,
                    "sqrt" => f64::sqrt,
                    _ => |v: f64| {
                        if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            v
                        }
                    },
                };
                let steps = self.vector_arg(args[0])?;
                self.map_dropping_name(steps, |v, _| f(v))
            }
            "round" | "clamp_min" | "clamp_max" => {
                let steps = self.vector_arg(args[0])?;
                let param = match args.get(1) {
                    Some(arg) => self.scalar_arg(arg)?,
                    None => vec![1.0; self.steps.len()],
                };
                let f: fn(f64, f64) -> f64 = match name {
                    "round" => functions::round_to,
                    // Go's math.Max/Min: NaN wins.
                    "clamp_min" => |v: f64, p: f64| {
                        if v.is_nan() || p.is_nan() {
                            f64::NAN
                        } else {
                            v.max(p)
                        }
                    },
                    _ => |v: f64, p: f64| {
                        if v.is_nan() || p.is_nan() {
                            f64::NAN
                        } else {
                            v.min(p)
                        }
                    },
                };
                self.map_dropping_name(steps, |v, i| f(v, param[i]))
            }
            "clamp" => {
                let steps = self.vector_arg(args[0])?;
                let min = self.scalar_arg(args[1])?;
                let max = self.scalar_arg(args[2])?;
                let mut cache = LabelCache::new();
                let mut out = Vec::with_capacity(steps.len());
                for (i, samples) in steps.into_iter().enumerate() {
                    if max[i] < min[i] {
                        out.push(Vec::new());
                        continue;
                    }
                    let mapped: Vec<Sample> = samples
                        .into_iter()
                        .map(|s| Sample {
                            labels: cache.get(&s.labels, |l| Arc::new(drop_name(l))),
                            v: if s.v.is_nan() || min[i].is_nan() || max[i].is_nan() {
                                f64::NAN
                            } else {
                                s.v.min(max[i]).max(min[i])
                            },
                        })
                        .collect();
                    check_same_labelset(&mapped)?;
                    out.push(mapped);
                }
                Ok(Value::Vector(out))
            }
            "time" => Ok(Value::Scalar(
                self.steps.iter().map(|&t| t as f64 / 1000.0).collect(),
            )),
            "vector" => {
                let values = self.scalar_arg(args[0])?;
                let labels = Arc::new(Vec::new());
                Ok(Value::Vector(
                    values
                        .into_iter()
                        .map(|v| {
                            vec![Sample {
                                labels: labels.clone(),
                                v,
                            }]
                        })
                        .collect(),
                ))
            }
            "scalar" => {
                let steps = self.vector_arg(args[0])?;
                Ok(Value::Scalar(
                    steps
                        .into_iter()
                        .map(|s| if s.len() == 1 { s[0].v } else { f64::NAN })
                        .collect(),
                ))
            }
            "sort" | "sort_desc" => {
                let mut steps = self.vector_arg(args[0])?;
                let desc = name == "sort_desc";
                for samples in &mut steps {
                    // Prometheus' order: NaN first, then by value; stable.
                    samples.sort_by(|a, b| {
                        use std::cmp::Ordering;
                        match (a.v.is_nan(), b.v.is_nan()) {
                            (true, true) => Ordering::Equal,
                            (true, false) => Ordering::Less,
                            (false, true) => Ordering::Greater,
                            _ if desc => b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal),
                            _ => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
                        }
                    });
                }
                Ok(Value::Vector(steps))
            }
            "label_replace" => self.eval_label_replace(&args),
            "histogram_quantile" => self.eval_histogram_quantile(&args),
            other => Err(EvalError::Unsupported(format!(
                "function {other}() is not supported"
            ))),
        }
    }

    fn map_dropping_name(
        &self,
        steps: Vec<Vec<Sample>>,
        f: impl Fn(f64, usize) -> f64,
    ) -> Result<Value, EvalError> {
        let mut cache = LabelCache::new();
        let mut out = Vec::with_capacity(steps.len());
        for (i, samples) in steps.into_iter().enumerate() {
            let mapped: Vec<Sample> = samples
                .into_iter()
                .map(|s| Sample {
                    labels: cache.get(&s.labels, |l| Arc::new(drop_name(l))),
                    v: f(s.v, i),
                })
                .collect();
            check_same_labelset(&mapped)?;
            out.push(mapped);
        }
        Ok(Value::Vector(out))
    }

    fn eval_range_function(&self, name: &str, ms: &MatrixSelector) -> Result<Value, EvalError> {
        let range = duration_ms(&ms.range, "range")?;
        let windows = self
            .steps
            .iter()
            .map(|&t| {
                let end = self.selection_time(&ms.vs, t)?;
                Ok((out_of_bounds(end.checked_sub(range))?, end))
            })
            .collect::<Result<Vec<(i64, i64)>, EvalError>>()?;
        let mut out: Vec<Vec<Sample>> = vec![Vec::new(); self.steps.len()];
        // Prometheus refuses a result where two series end up with the same labels,
        // even at different steps.
        let mut produced: std::collections::HashSet<Arc<Labels>> = Default::default();
        let mut total = 0usize;
        for series in self.loaded(&ms.vs) {
            let labels = if name == "last_over_time" {
                series.labels.clone()
            } else {
                Arc::new(drop_name(&series.labels))
            };
            let mut any = false;
            for (i, &(range_start, range_end)) in windows.iter().enumerate() {
                let window = Self::window(series, range_start, range_end);
                if window.is_empty() {
                    continue;
                }
                let value = match name {
                    "rate" => {
                        functions::extrapolated(window, range_start, range_end, Extrapolated::Rate)
                    }
                    "increase" => functions::extrapolated(
                        window,
                        range_start,
                        range_end,
                        Extrapolated::Increase,
                    ),
                    "delta" => {
                        functions::extrapolated(window, range_start, range_end, Extrapolated::Delta)
                    }
                    "irate" => functions::instant_delta(window, true),
                    "idelta" => functions::instant_delta(window, false),
                    "avg_over_time" => {
                        let mut mean = Mean::default();
                        window.iter().for_each(|(_, v)| mean.add(*v));
                        Some(mean.value())
                    }
                    "min_over_time" => Some(
                        window
                            .iter()
                            .fold(window[0].1, |acc, (_, v)| functions::fold_min(acc, *v)),
                    ),
                    "max_over_time" => Some(
                        window
                            .iter()
                            .fold(window[0].1, |acc, (_, v)| functions::fold_max(acc, *v)),
                    ),
                    "sum_over_time" => Some(window.iter().map(|(_, v)| v).sum()),
                    "count_over_time" => Some(window.len() as f64),
                    "last_over_time" => Some(window[window.len() - 1].1),
                    "resets" => Some(window.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
                    "changes" => Some(
                        window
                            .windows(2)
                            .filter(|w| !(w[1].1 == w[0].1 || (w[1].1.is_nan() && w[0].1.is_nan())))
                            .count() as f64,
                    ),
                    "stddev_over_time" | "stdvar_over_time" => {
                        let mut var = Variance::default();
                        window.iter().for_each(|(_, v)| var.add(*v));
                        Some(if name == "stddev_over_time" {
                            var.variance().sqrt()
                        } else {
                            var.variance()
                        })
                    }
                    other => {
                        return Err(EvalError::Unsupported(format!(
                            "function {other}() is not supported"
                        )))
                    }
                };
                if let Some(v) = value {
                    out[i].push(Sample {
                        labels: labels.clone(),
                        v,
                    });
                    any = true;
                    total += 1;
                }
            }
            if any && !produced.insert(labels) {
                return Err(EvalError::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
            self.check_samples(total)?;
            self.check_deadline("range functions")?;
        }
        Ok(Value::Vector(out))
    }

    fn eval_label_replace(&self, args: &[&Expr]) -> Result<Value, EvalError> {
        let steps = self.vector_arg(args[0])?;
        let dst = Self::string_arg(args[1])?;
        let replacement = Self::string_arg(args[2])?;
        let src = Self::string_arg(args[3])?;
        let pattern = Self::string_arg(args[4])?;
        let regex = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
            EvalError::BadQuery(format!(
                "invalid regular expression in label_replace(): {pattern}: {e}"
            ))
        })?;
        let valid_name = !dst.is_empty()
            && dst
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid_name {
            return Err(EvalError::BadQuery(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        let mut cache = LabelCache::new();
        let relabel = |labels: &Labels| -> Arc<Labels> {
            let value = labels
                .iter()
                .find(|(n, _)| *n == src)
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let Some(caps) = regex.captures(value) else {
                return Arc::new(labels.clone());
            };
            let mut expanded = String::new();
            caps.expand(&replacement, &mut expanded);
            let mut out: Labels = labels.iter().filter(|(n, _)| *n != dst).cloned().collect();
            if !expanded.is_empty() {
                out.push((dst.clone(), expanded));
                out.sort();
            }
            Arc::new(out)
        };
        let out = self.map_steps(steps, |s| {
            Some(Sample {
                labels: cache.get(&s.labels, &relabel),
                v: s.v,
            })
        })?;
        Ok(Value::Vector(out))
    }

    fn eval_histogram_quantile(&self, args: &[&Expr]) -> Result<Value, EvalError> {
        let q = self.scalar_arg(args[0])?;
        let steps = self.vector_arg(args[1])?;
        let mut cache: LabelCache<Option<(Arc<Labels>, f64)>> = LabelCache::new();
        let mut out = Vec::with_capacity(steps.len());
        for (i, samples) in steps.into_iter().enumerate() {
            let mut groups: Vec<(Arc<Labels>, Buckets)> = Vec::new();
            let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
            for s in samples {
                let Some((group, upper)) = cache.get(&s.labels, |l| {
                    let le = l.iter().find(|(n, _)| n == "le")?;
                    let upper = parse_go_float(&le.1)?;
                    let group: Labels = l
                        .iter()
                        .filter(|(n, _)| n != "le" && n != METRIC_NAME)
                        .cloned()
                        .collect();
                    Some((Arc::new(group), upper))
                }) else {
                    continue;
                };
                let at = *index.entry(group.clone()).or_insert_with(|| {
                    groups.push((group.clone(), Vec::new()));
                    groups.len() - 1
                });
                groups[at].1.push((upper, s.v));
            }
            out.push(
                groups
                    .into_iter()
                    .map(|(labels, mut buckets)| Sample {
                        labels,
                        v: functions::bucket_quantile(q[i], &mut buckets),
                    })
                    .collect(),
            );
        }
        Ok(Value::Vector(out))
    }

    fn eval_binary(&self, b: &BinaryExpr) -> Result<Value, EvalError> {
        let op = b.op.to_string();
        let modifier = b.modifier.as_ref();
        if let Some(m) = modifier {
            if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                return Err(unsupported("fill modifiers are"));
            }
        }
        let return_bool = modifier.is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let mut out = Vec::with_capacity(l.len());
                for (a, b) in l.into_iter().zip(r) {
                    let (v, keep) = elem_binop(&op, a, b)?;
                    out.push(if is_comparison(&op) {
                        if keep {
                            1.0
                        } else {
                            0.0
                        }
                    } else {
                        v
                    });
                }
                Ok(Value::Scalar(out))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                self.vector_scalar(&op, v, s, false, return_bool)
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                self.vector_scalar(&op, v, s, true, return_bool)
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let (on, names, card) = match modifier {
                    None => (false, Vec::new(), VectorMatchCardinality::OneToOne),
                    Some(m) => {
                        let (on, names) = match &m.matching {
                            Some(LabelModifier::Include(ls)) => (true, ls.labels.clone()),
                            Some(LabelModifier::Exclude(ls)) => (false, ls.labels.clone()),
                            None => (false, Vec::new()),
                        };
                        (on, names, m.card.clone())
                    }
                };
                let matching = Matching { on, names };
                match op.as_str() {
                    "and" | "or" | "unless" => {
                        Ok(Value::Vector(self.set_op(&op, l, r, &matching)?))
                    }
                    _ => Ok(Value::Vector(self.vector_vector(
                        &op,
                        l,
                        r,
                        &matching,
                        &card,
                        return_bool,
                    )?)),
                }
            }
            _ => Err(EvalError::BadQuery(format!(
                "binary operator {op} is not defined on strings"
            ))),
        }
    }

    fn vector_scalar(
        &self,
        op: &str,
        steps: Vec<Vec<Sample>>,
        scalar: Vec<f64>,
        swap: bool,
        return_bool: bool,
    ) -> Result<Value, EvalError> {
        if matches!(op, "and" | "or" | "unless") {
            return Err(EvalError::BadQuery(format!(
                "set operator {op} not allowed in binary scalar expression"
            )));
        }
        let drop = drops_name(op) || return_bool;
        let comparison = is_comparison(op);
        let mut cache = LabelCache::new();
        let mut out = Vec::with_capacity(steps.len());
        for (i, samples) in steps.into_iter().enumerate() {
            let mut mapped = Vec::with_capacity(samples.len());
            for s in samples {
                let (lv, rv) = if swap {
                    (scalar[i], s.v)
                } else {
                    (s.v, scalar[i])
                };
                let (mut value, mut keep) = elem_binop(op, lv, rv)?;
                if comparison && swap {
                    value = rv;
                }
                if return_bool {
                    value = if keep { 1.0 } else { 0.0 };
                    keep = true;
                }
                if keep {
                    mapped.push(Sample {
                        labels: if drop {
                            cache.get(&s.labels, |l| Arc::new(drop_name(l)))
                        } else {
                            s.labels
                        },
                        v: value,
                    });
                }
            }
            check_same_labelset(&mapped)?;
            out.push(mapped);
        }
        Ok(Value::Vector(out))
    }

    fn set_op(
        &self,
        op: &str,
        lhs: Vec<Vec<Sample>>,
        rhs: Vec<Vec<Sample>>,
        matching: &Matching,
    ) -> Result<Vec<Vec<Sample>>, EvalError> {
        let mut sigs = LabelCache::new();
        let mut out = Vec::with_capacity(lhs.len());
        for (l, r) in lhs.into_iter().zip(rhs) {
            self.check_deadline("set operation")?;
            let mut sig =
                |s: &Sample| sigs.get(&s.labels, |labels| Arc::new(matching.signature(labels)));
            let step = match op {
                "and" => {
                    let right: std::collections::HashSet<Arc<Labels>> =
                        r.iter().map(&mut sig).collect();
                    l.into_iter().filter(|s| right.contains(&sig(s))).collect()
                }
                "unless" => {
                    let right: std::collections::HashSet<Arc<Labels>> =
                        r.iter().map(&mut sig).collect();
                    l.into_iter().filter(|s| !right.contains(&sig(s))).collect()
                }
                _ => {
                    let left: std::collections::HashSet<Arc<Labels>> =
                        l.iter().map(&mut sig).collect();
                    let mut step = l;
                    step.extend(r.into_iter().filter(|s| !left.contains(&sig(s))));
                    step
                }
            };
            out.push(step);
        }
        Ok(out)
    }

    fn vector_vector(
        &self,
        op: &str,
        lhs: Vec<Vec<Sample>>,
        rhs: Vec<Vec<Sample>>,
        matching: &Matching,
        card: &VectorMatchCardinality,
        return_bool: bool,
    ) -> Result<Vec<Vec<Sample>>, EvalError> {
        let (one_to_many, include) = match card {
            VectorMatchCardinality::OneToOne => (false, None),
            VectorMatchCardinality::ManyToOne(ls) => (false, Some(ls.labels.clone())),
            VectorMatchCardinality::OneToMany(ls) => (true, Some(ls.labels.clone())),
            VectorMatchCardinality::ManyToMany => {
                return Err(EvalError::BadQuery(format!(
                    "many-to-many matching is only allowed for set operators, not {op}"
                )))
            }
        };
        let comparison = is_comparison(op);
        let mut sigs = LabelCache::new();
        let mut results: HashMap<(usize, usize), Arc<Labels>> = HashMap::new();
        let mut out = Vec::with_capacity(lhs.len());
        for (l, r) in lhs.into_iter().zip(rhs) {
            self.check_deadline("binary operation")?;
            // The "one" side is hashed; for group_right the sides swap.
            let (many, one) = if one_to_many { (r, l) } else { (l, r) };
            let mut sig =
                |s: &Sample| sigs.get(&s.labels, |labels| Arc::new(matching.signature(labels)));
            let mut one_by_sig: HashMap<Arc<Labels>, &Sample> = HashMap::with_capacity(one.len());
            for s in &one {
                let key = sig(s);
                if let Some(dup) = one_by_sig.insert(key.clone(), s) {
                    let side = if one_to_many { "left" } else { "right" };
                    return Err(EvalError::Execution(format!(
                        "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                        format_labels(&key),
                        format_labels(&dup.labels),
                        format_labels(&s.labels)
                    )));
                }
            }
            let mut matched: HashMap<Arc<Labels>, std::collections::HashSet<Arc<Labels>>> =
                HashMap::new();
            let mut step = Vec::new();
            for s in &many {
                let key = sig(s);
                let Some(&other) = one_by_sig.get(&key) else {
                    continue;
                };
                let (vl, vr) = if one_to_many {
                    (other.v, s.v)
                } else {
                    (s.v, other.v)
                };
                let (mut value, mut keep) = elem_binop(op, vl, vr)?;
                if comparison && one_to_many {
                    // Comparisons keep the left-hand value.
                    value = vl;
                }
                if return_bool {
                    value = if keep { 1.0 } else { 0.0 };
                    keep = true;
                }
                let labels = results
                    .entry((
                        Arc::as_ptr(&s.labels) as usize,
                        Arc::as_ptr(&other.labels) as usize,
                    ))
                    .or_insert_with(|| {
                        Arc::new(result_labels(
                            &s.labels,
                            &other.labels,
                            op,
                            matching,
                            include.as_deref(),
                            return_bool,
                        ))
                    })
                    .clone();
                let seen = matched.entry(key).or_default();
                if include.is_none() {
                    if !seen.is_empty() {
                        return Err(EvalError::Execution(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                        ));
                    }
                    seen.insert(labels.clone());
                } else if !seen.insert(labels.clone()) {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
                if keep {
                    step.push(Sample { labels, v: value });
                }
            }
            check_same_labelset(&step)?;
            out.push(step);
        }
        Ok(out)
    }

    fn eval_aggregate(&self, a: &AggregateExpr) -> Result<Value, EvalError> {
        let op = a.op.to_string();
        let param = match (&a.param, op.as_str()) {
            (Some(p), "topk" | "bottomk" | "quantile") => Some(self.scalar_arg(p)?),
            (Some(_), other) => {
                return Err(EvalError::Unsupported(format!(
                    "aggregation {other} is not supported"
                )))
            }
            (None, _) => None,
        };
        let steps = self.vector_arg(&a.expr)?;
        let (without, names): (bool, Vec<String>) = match &a.modifier {
            Some(LabelModifier::Include(ls)) => (false, ls.labels.clone()),
            Some(LabelModifier::Exclude(ls)) => (true, ls.labels.clone()),
            None => (false, Vec::new()),
        };
        let group_of = |labels: &Labels| -> Arc<Labels> {
            Arc::new(
                labels
                    .iter()
                    .filter(|(n, _)| {
                        if without {
                            n != METRIC_NAME && !names.contains(n)
                        } else {
                            names.contains(n)
                        }
                    })
                    .cloned()
                    .collect(),
            )
        };
        let mut cache = LabelCache::new();
        let mut out = Vec::with_capacity(steps.len());
        for (i, samples) in steps.into_iter().enumerate() {
            self.check_deadline("aggregation")?;
            let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
            let mut groups: Vec<(Arc<Labels>, Vec<Sample>)> = Vec::new();
            for s in samples {
                let group = cache.get(&s.labels, group_of);
                let at = *index.entry(group.clone()).or_insert_with(|| {
                    groups.push((group, Vec::new()));
                    groups.len() - 1
                });
                groups[at].1.push(s);
            }
            let mut step = Vec::with_capacity(groups.len());
            for (labels, members) in groups {
                let values = members.iter().map(|s| s.v);
                let v = match op.as_str() {
                    "sum" => values.sum(),
                    "avg" => {
                        let mut mean = Mean::default();
                        values.for_each(|v| mean.add(v));
                        mean.value()
                    }
                    "min" => values.fold(f64::NAN, functions::fold_min),
                    "max" => values.fold(f64::NAN, functions::fold_max),
                    "count" => members.len() as f64,
                    "group" => 1.0,
                    "stddev" | "stdvar" => {
                        let mut var = Variance::default();
                        values.for_each(|v| var.add(v));
                        if op == "stddev" {
                            var.variance().sqrt()
                        } else {
                            var.variance()
                        }
                    }
                    "quantile" => {
                        let q = param.as_ref().map_or(f64::NAN, |p| p[i]);
                        let mut values: Vec<f64> = values.collect();
                        functions::quantile(q, &mut values)
                    }
                    "topk" | "bottomk" => {
                        let k = param.as_ref().map_or(0.0, |p| p[i]);
                        step.extend(select_k(members, k, op == "topk"));
                        continue;
                    }
                    other => {
                        return Err(EvalError::Unsupported(format!(
                            "aggregation {other} is not supported"
                        )))
                    }
                };
                step.push(Sample { labels, v });
            }
            out.push(step);
        }
        Ok(Value::Vector(out))
    }
}

/// `topk`/`bottomk` of one group: the k largest (smallest) values, NaN last, in
/// descending (ascending) order, with their own labels.
fn select_k(mut members: Vec<Sample>, k: f64, top: bool) -> Vec<Sample> {
    if k.is_nan() || k < 1.0 {
        return Vec::new();
    }
    let k = if k >= members.len() as f64 {
        members.len()
    } else {
        k as usize
    };
    members.sort_by(|a, b| {
        use std::cmp::Ordering;
        match (a.v.is_nan(), b.v.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ if top => b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal),
            _ => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
        }
    });
    members.truncate(k);
    members
}

/// How two vectors' samples are matched (`on`/`ignoring`).
struct Matching {
    on: bool,
    names: Vec<String>,
}

impl Matching {
    /// The labels that must be equal for two samples to match.
    fn signature(&self, labels: &Labels) -> Labels {
        if self.on {
            self.names
                .iter()
                .map(|n| {
                    let v = labels
                        .iter()
                        .find(|(ln, _)| ln == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    (n.clone(), v)
                })
                .collect()
        } else {
            labels
                .iter()
                .filter(|(n, _)| n != METRIC_NAME && !self.names.contains(n))
                .cloned()
                .collect()
        }
    }
}

/// The labels of a vector/vector operation's result (Prometheus' `resultMetric`).
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: &str,
    matching: &Matching,
    include: Option<&[String]>,
    return_bool: bool,
) -> Labels {
    let mut out: Labels = many.clone();
    if drops_name(op) || return_bool {
        out.retain(|(n, _)| n != METRIC_NAME);
    }
    match include {
        None => {
            if matching.on {
                out.retain(|(n, _)| matching.names.contains(n));
            } else {
                out.retain(|(n, _)| !matching.names.contains(n));
            }
        }
        Some(names) => {
            for name in names {
                out.retain(|(n, _)| n != name);
                if let Some((_, v)) = one.iter().find(|(n, _)| n == name) {
                    if !v.is_empty() {
                        out.push((name.clone(), v.clone()));
                    }
                }
            }
            out.sort();
        }
    }
    out
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^" | "atan2")
}

/// One binary operation on two values: the result and whether a comparison keeps it.
fn elem_binop(op: &str, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        // Go's math.Mod: the sign of the dividend, like Rust's %.
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => {
            return Err(EvalError::Unsupported(format!(
                "binary operator {other} is not supported"
            )))
        }
    })
}

/// Label sets as Prometheus prints them: `{a="1", b="2"}`.
pub(crate) fn format_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Parses a float as Go's `strconv.ParseFloat` accepts the usual forms (`+Inf`, `NaN`).
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The selectors of `expr` with their range (0 for instant selectors), refusing
/// constructs outside the supported subset before anything is loaded.
fn collect_selectors<'e>(
    expr: &'e Expr,
    out: &mut Vec<(&'e VectorSelector, i64)>,
) -> Result<(), EvalError> {
    match expr {
        Expr::VectorSelector(vs) => {
            matchers_of(vs)?;
            out.push((vs, 0));
        }
        Expr::MatrixSelector(ms) => {
            matchers_of(&ms.vs)?;
            let range = duration_ms(&ms.range, "range")?;
            out.push((&ms.vs, range.max(1)));
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out)?,
        Expr::Unary(u) => collect_selectors(&u.expr, out)?,
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out)?;
            collect_selectors(&b.rhs, out)?;
        }
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !matches!(
                op.as_str(),
                "sum"
                    | "avg"
                    | "min"
                    | "max"
                    | "count"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "quantile"
                    | "topk"
                    | "bottomk"
            ) {
                return Err(EvalError::Unsupported(format!(
                    "aggregation {op} is not supported"
                )));
            }
            if let Some(p) = &a.param {
                collect_selectors(p, out)?;
            }
            collect_selectors(&a.expr, out)?;
        }
        Expr::Call(call) => {
            if !SUPPORTED_FUNCTIONS.contains(&call.func.name) {
                return Err(EvalError::Unsupported(format!(
                    "function {}() is not supported",
                    call.func.name
                )));
            }
            for arg in &call.args.args {
                collect_selectors(arg, out)?;
            }
        }
        Expr::Subquery(_) => return Err(unsupported("subqueries are")),
        Expr::Extension(_) => return Err(unsupported("extension expressions are")),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
