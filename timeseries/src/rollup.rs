//! Rollups: per series, buckets aligned to multiples of a width since the epoch, holding
//! min, max, sum, count and the last value with its time. They are computed from a block
//! when it is made ([`compute`]), never by read-modify-write per sample.
//!
//! The figures equal `crate::query::aggregate_buckets` over the same samples,
//! bit for bit: the first sample starts the bucket, then `f64::min`, `f64::max` and the
//! sum are applied sample by sample in time order (a test checks it).
//!
//! ## Format, version 1
//!
//! A [`RollupSet`] (one agent, one width, any span of buckets) is columnar like a block:
//!
//! ```text
//! u8      format version (1), u8 flags (bit 0: zstd)
//! varint  width (µs), buckets, series, rows
//! varint  first bucket start (zigzag), last - first     (only when there are rows)
//! [varint decompressed length]
//! payload:
//!   series names, front-coded
//!   bucket numbers ((start - first) / width, unsigned, as the bits of an i64) as an
//!   integer column
//!   shared count and shared last-time columns: per bucket, the largest count and the
//!   largest (time of last - start) of any series, as integer columns
//!   per series: presence over the buckets; count as (shared - count) and time of last
//!   as (shared - own), integer columns (all zero for an agent whose series report
//!   together); min, max, last and sum as float columns (the sum tries the exponent of
//!   the min, since a float sum of 2-decimal values is a decimal plus a few ulps)
//! ```

use crate::chunk::Block;
use crate::error::ChunkError;
use crate::limits::{MAX_CELLS, MAX_NAME_BYTES, MAX_SERIES, MAX_TIMESTAMPS};
use crate::wire::{self, put_ivarint, put_uvarint, Reader};
use crate::{floats, ints, names, presence};

/// Format byte written first by [`encode`].
pub const FORMAT_VERSION: u8 = 1;

/// Bucket widths the engine rolls up to: 5 minutes and 1 hour. One-minute rollups of
/// 10 s data cost more than they save (they are computed from raw samples at query
/// time).
pub const DEFAULT_WIDTHS_MICROS: [i64; 2] = [300_000_000, 3_600_000_000];

/// One bucket of one series.
#[derive(Debug, Clone, Copy)]
pub struct RollupRow {
    /// Bucket start (µs), a multiple of the width.
    pub start_micros: i64,
    /// Minimum (`f64::min` over the samples in time order).
    pub min: f64,
    /// Maximum (`f64::max`).
    pub max: f64,
    /// Sum, added in time order.
    pub sum: f64,
    /// Number of samples, at least 1.
    pub count: u64,
    /// Value of the latest sample.
    pub last: f64,
    /// Time of the latest sample (µs), inside the bucket.
    pub last_micros: i64,
}

impl RollupRow {
    /// Mean (`sum / count` inside `[min, max]`), as the stores compute it.
    pub fn avg(&self) -> f64 {
        crate::query::mean(self.sum, self.count, self.min, self.max)
    }
}

/// Floats compare by their bits.
impl PartialEq for RollupRow {
    fn eq(&self, o: &Self) -> bool {
        self.start_micros == o.start_micros
            && self.min.to_bits() == o.min.to_bits()
            && self.max.to_bits() == o.max.to_bits()
            && self.sum.to_bits() == o.sum.to_bits()
            && self.count == o.count
            && self.last.to_bits() == o.last.to_bits()
            && self.last_micros == o.last_micros
    }
}

impl Eq for RollupRow {}

/// The buckets of one series, by start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRollup {
    name: String,
    rows: Vec<RollupRow>,
}

impl SeriesRollup {
    /// The rows of series `name`, sorted by start (checked by [`RollupSet::new`]).
    pub fn new(name: impl Into<String>, rows: Vec<RollupRow>) -> SeriesRollup {
        SeriesRollup {
            name: name.into(),
            rows,
        }
    }

    /// Series name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows, sorted by start.
    pub fn rows(&self) -> &[RollupRow] {
        &self.rows
    }
}

/// Rollup rows of one agent at one bucket width: series sorted by name, each with rows
/// sorted by start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSet {
    width_micros: i64,
    series: Vec<SeriesRollup>,
}

fn invalid(msg: String) -> ChunkError {
    ChunkError::Invalid(msg)
}

impl RollupSet {
    /// A set of rows at bucket width `width_micros`.
    ///
    /// Fails unless the width is positive, names are unique, and every series' rows are
    /// strictly increasing multiples of the width with a count of at least 1 and the time
    /// of last inside the bucket; or when over the [limits](crate::limits). Series
    /// without rows are dropped; series are sorted by name.
    pub fn new(width_micros: i64, mut series: Vec<SeriesRollup>) -> Result<RollupSet, ChunkError> {
        if width_micros <= 0 {
            return Err(invalid(format!(
                "bucket width {width_micros} µs must be positive"
            )));
        }
        series.retain(|s| !s.rows.is_empty());
        series.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = series.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(format!("series {:?} given twice", w[0].name)));
        }
        if series.len() > MAX_SERIES {
            return Err(ChunkError::TooLarge {
                what: "series in a rollup set",
                value: series.len() as u64,
                limit: MAX_SERIES as u64,
            });
        }
        let mut rows = 0usize;
        for s in &series {
            if s.name.len() > MAX_NAME_BYTES {
                return Err(invalid(format!("series name of {} bytes", s.name.len())));
            }
            rows += s.rows.len();
            for (i, r) in s.rows.iter().enumerate() {
                let end = r.start_micros.checked_add(width_micros);
                if r.start_micros.rem_euclid(width_micros) != 0
                    || r.count == 0
                    || r.count > i64::MAX as u64
                    || r.last_micros < r.start_micros
                    || end.is_none_or(|end| r.last_micros >= end)
                    || (i > 0 && s.rows[i - 1].start_micros >= r.start_micros)
                {
                    return Err(invalid(format!(
                        "series {:?}: row at {} is not an aligned, ordered bucket of width {width_micros} with a count and its last time inside",
                        s.name, r.start_micros
                    )));
                }
            }
        }
        if rows > MAX_CELLS {
            return Err(ChunkError::TooLarge {
                what: "rows in a rollup set",
                value: rows as u64,
                limit: MAX_CELLS as u64,
            });
        }
        Ok(RollupSet {
            width_micros,
            series,
        })
    }

    /// Bucket width (µs).
    pub fn width_micros(&self) -> i64 {
        self.width_micros
    }

    /// Series, sorted by name.
    pub fn series(&self) -> &[SeriesRollup] {
        &self.series
    }

    /// The rows of series `name`.
    pub fn get(&self, name: &str) -> Option<&SeriesRollup> {
        self.series
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.series[i])
    }

    /// Number of rows, all series.
    pub fn row_count(&self) -> usize {
        self.series.iter().map(|s| s.rows.len()).sum()
    }

    /// Whether the set has no row.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Distinct bucket starts of any series, sorted.
    fn starts(&self) -> Vec<i64> {
        let mut starts: Vec<i64> = self
            .series
            .iter()
            .flat_map(|s| s.rows.iter().map(|r| r.start_micros))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }
}

/// The rollup rows of every series of `block` at bucket width `width_micros` (buckets
/// aligned to multiples of the width since the epoch).
pub fn compute(block: &Block, width_micros: i64) -> Result<RollupSet, ChunkError> {
    let mut series = Vec::with_capacity(block.series().len());
    for s in block.series() {
        let points = block
            .timestamps()
            .iter()
            .zip(s.values())
            .filter_map(|(&ts, v)| v.map(|v| (ts, v)));
        series.push(compute_series(s.name(), points, width_micros)?);
    }
    RollupSet::new(width_micros, series)
}

/// The rollup rows of one series at bucket width `width_micros` from its samples, given
/// in time order: the rows [`compute`] gives for that series of a block.
pub fn compute_series(
    name: &str,
    points: impl IntoIterator<Item = (i64, f64)>,
    width_micros: i64,
) -> Result<SeriesRollup, ChunkError> {
    if width_micros <= 0 {
        return Err(invalid(format!(
            "bucket width {width_micros} µs must be positive"
        )));
    }
    let mut rows: Vec<RollupRow> = Vec::new();
    for (ts, v) in points {
        let start = ts
            .div_euclid(width_micros)
            .checked_mul(width_micros)
            .ok_or_else(|| {
                invalid(format!(
                    "timestamp {ts} has no bucket of width {width_micros}"
                ))
            })?;
        match rows.last_mut() {
            Some(acc) if acc.start_micros == start => {
                acc.min = acc.min.min(v);
                acc.max = acc.max.max(v);
                acc.sum += v;
                acc.count += 1;
                acc.last = v;
                acc.last_micros = ts;
            }
            _ => rows.push(RollupRow {
                start_micros: start,
                min: v,
                max: v,
                sum: v,
                count: 1,
                last: v,
                last_micros: ts,
            }),
        }
    }
    Ok(SeriesRollup {
        name: name.to_owned(),
        rows,
    })
}

/// The union of two sets of the same agent and width; for a bucket in both, the row of
/// `newer` wins (it was computed from a block that includes the late samples).
pub fn merge(older: &RollupSet, newer: &RollupSet) -> Result<RollupSet, ChunkError> {
    if older.width_micros != newer.width_micros {
        return Err(invalid(format!(
            "cannot merge rollups of widths {} and {} µs",
            older.width_micros, newer.width_micros
        )));
    }
    let mut series: Vec<SeriesRollup> = older.series.clone();
    for s in &newer.series {
        match series.binary_search_by(|o| o.name.cmp(&s.name)) {
            Ok(i) => {
                let old = std::mem::take(&mut series[i].rows);
                let mut rows = Vec::with_capacity(old.len() + s.rows.len());
                let (mut a, mut b) = (
                    old.into_iter().peekable(),
                    s.rows.iter().copied().peekable(),
                );
                loop {
                    let next = match (a.peek(), b.peek()) {
                        (Some(x), Some(y)) if x.start_micros < y.start_micros => a.next(),
                        (Some(x), Some(y)) if x.start_micros == y.start_micros => {
                            a.next();
                            b.next()
                        }
                        (_, Some(_)) => b.next(),
                        (Some(_), None) => a.next(),
                        (None, None) => break,
                    };
                    rows.extend(next);
                }
                series[i].rows = rows;
            }
            Err(i) => series.insert(i, s.clone()),
        }
    }
    RollupSet::new(older.width_micros, series)
}

/// Encodes a rollup set (see the module docs). Deterministic like [`crate::chunk::encode`].
pub fn encode(set: &RollupSet) -> Vec<u8> {
    let starts = set.starts();
    let mut prefix = Vec::with_capacity(24);
    put_uvarint(&mut prefix, set.width_micros as u64);
    put_uvarint(&mut prefix, starts.len() as u64);
    put_uvarint(&mut prefix, set.series.len() as u64);
    put_uvarint(&mut prefix, set.row_count() as u64);
    let mut payload = Vec::with_capacity(64 + 8 * set.row_count());
    names::encode(set.series.iter().map(|s| s.name.as_str()), &mut payload);
    if let (Some(&first), Some(&last)) = (starts.first(), starts.last()) {
        put_ivarint(&mut prefix, first);
        put_uvarint(&mut prefix, last.wrapping_sub(first) as u64);
        // Distances from the first bucket, in widths, unsigned: buckets may lie further
        // apart than i64::MAX µs (written as the i64 of the same bits).
        let width = set.width_micros as u64;
        let numbers: Vec<i64> = starts
            .iter()
            .map(|s| (s.wrapping_sub(first) as u64 / width) as i64)
            .collect();
        ints::encode(&numbers, &mut payload);
        // Shared columns: per bucket the largest count and time-of-last offset.
        let mut count = vec![0i64; starts.len()];
        let mut last = vec![0i64; starts.len()];
        for s in &set.series {
            let mut b = 0;
            for r in &s.rows {
                while starts[b] != r.start_micros {
                    b += 1;
                }
                count[b] = count[b].max(r.count as i64);
                last[b] = last[b].max(r.last_micros - r.start_micros);
            }
        }
        ints::encode(&count, &mut payload);
        ints::encode(&last, &mut payload);
        let mut mask = Vec::with_capacity(starts.len());
        let mut col_i = Vec::new();
        let mut col_f = Vec::new();
        for s in &set.series {
            mask.clear();
            let mut b_of_row = Vec::with_capacity(s.rows.len());
            let mut rows = s.rows.iter().peekable();
            for (b, &start) in starts.iter().enumerate() {
                let here = rows.next_if(|r| r.start_micros == start).is_some();
                if here {
                    b_of_row.push(b);
                }
                mask.push(here);
            }
            presence::encode(&mask, &mut payload);
            col_i.clear();
            col_i.extend(
                s.rows
                    .iter()
                    .zip(&b_of_row)
                    .map(|(r, &b)| count[b] - r.count as i64),
            );
            ints::encode(&col_i, &mut payload);
            col_i.clear();
            col_i.extend(
                s.rows
                    .iter()
                    .zip(&b_of_row)
                    .map(|(r, &b)| last[b] - (r.last_micros - r.start_micros)),
            );
            ints::encode(&col_i, &mut payload);
            let mut column = |f: fn(&RollupRow) -> f64, hint: Option<i32>, out: &mut Vec<u8>| {
                col_f.clear();
                col_f.extend(s.rows.iter().map(f));
                floats::encode(&col_f, hint, out)
            };
            let exp = column(|r| r.min, None, &mut payload);
            column(|r| r.max, exp, &mut payload);
            column(|r| r.last, exp, &mut payload);
            column(|r| r.sum, exp, &mut payload);
        }
    }
    wire::seal(FORMAT_VERSION, &prefix, &payload)
}

/// Decodes a rollup set made by [`encode`]; hostile or corrupt bytes give an error, never
/// a panic, and memory stays within the [limits](crate::limits).
pub fn decode(bytes: &[u8]) -> Result<RollupSet, ChunkError> {
    let (width, series, n_buckets) = decode_parts(bytes, |_| true)?;
    let set = RollupSet::new(width, series).map_err(corrupt)?;
    if set.starts().len() != n_buckets {
        return Err(ChunkError::Corrupt(
            "a bucket has no row in any series".into(),
        ));
    }
    Ok(set)
}

/// The series `names` of a rollup set made by [`encode`], in the order asked (`None`
/// for a series the set lacks), without building the rows of the others (their columns
/// are still read, to check them and find the next). For queries: a chart wants a few
/// of an agent's ~20 series. Hostile or corrupt bytes give an error, never a panic.
pub fn decode_series(
    bytes: &[u8],
    names: &[&str],
) -> Result<Vec<Option<SeriesRollup>>, ChunkError> {
    let (width, series, _) = decode_parts(bytes, |name| names.contains(&name))?;
    let set = RollupSet::new(width, series).map_err(corrupt)?;
    Ok(names.iter().map(|n| set.get(n).cloned()).collect())
}

fn corrupt(e: ChunkError) -> ChunkError {
    match e {
        ChunkError::Invalid(m) => ChunkError::Corrupt(m),
        e => e,
    }
}

/// Reads a rollup set: its width, the series `keep` accepts (in the set's order) and the
/// number of buckets.
fn decode_parts(
    bytes: &[u8],
    keep: impl Fn(&str) -> bool,
) -> Result<(i64, Vec<SeriesRollup>, usize), ChunkError> {
    let (flags, mut r) = wire::open_envelope(bytes, FORMAT_VERSION)?;
    let width = r.uvarint("bucket width")?;
    let width = i64::try_from(width)
        .ok()
        .filter(|&w| w > 0)
        .ok_or_else(|| ChunkError::Corrupt(format!("bucket width {width}")))?;
    let n_buckets = r.count("bucket count", MAX_TIMESTAMPS)?;
    let n_series = r.count("series count", MAX_SERIES)?;
    let n_rows = r.count("row count", MAX_CELLS)?;
    if n_buckets.saturating_mul(n_series) > MAX_CELLS {
        return Err(ChunkError::TooLarge {
            what: "buckets x series in a rollup set",
            value: n_buckets.saturating_mul(n_series) as u64,
            limit: MAX_CELLS as u64,
        });
    }
    if (n_buckets == 0) != (n_series == 0)
        || n_rows < n_buckets.max(n_series)
        || n_rows > n_buckets * n_series
    {
        return Err(ChunkError::Corrupt(format!(
            "{n_buckets} buckets, {n_series} series and {n_rows} rows do not fit together"
        )));
    }
    let range = if n_buckets > 0 {
        let first = r.ivarint("first bucket")?;
        let span = r.uvarint("bucket span")?;
        let last = first
            .checked_add_unsigned(span)
            .ok_or_else(|| ChunkError::Corrupt(format!("bucket span {span} overflows")))?;
        Some((first, last))
    } else {
        None
    };
    let payload = wire::open_payload(flags, &mut r)?;
    let mut r = Reader::new(&payload);
    let names = names::decode(&mut r, n_series)?;
    let mut series = Vec::with_capacity(n_series);
    if let Some((first, last)) = range {
        let mut numbers = Vec::new();
        ints::decode(&mut r, n_buckets, &mut numbers)?;
        // `last` = `first` + span was checked: an offset up to the span lands in range.
        let span = last.wrapping_sub(first) as u64;
        let starts: Vec<i64> = numbers
            .iter()
            .map(|&k| {
                (k as u64)
                    .checked_mul(width as u64)
                    .filter(|offset| *offset <= span)
                    .map(|offset| first.wrapping_add(offset as i64))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| ChunkError::Corrupt("bucket start out of its range".into()))?;
        if starts.first() != Some(&first) || starts.last() != Some(&last) {
            return Err(ChunkError::Corrupt(
                "bucket column does not match its range".into(),
            ));
        }
        let (mut count, mut lastc) = (Vec::new(), Vec::new());
        ints::decode(&mut r, n_buckets, &mut count)?;
        ints::decode(&mut r, n_buckets, &mut lastc)?;
        let mut rows_seen = 0usize;
        let (mut ci, mut li, mut fcols) = (Vec::new(), Vec::new(), [const { Vec::new() }; 4]);
        for name in names {
            let mask = presence::decode(&mut r, n_buckets)?;
            let buckets: Vec<usize> = mask
                .iter()
                .enumerate()
                .filter_map(|(b, &m)| m.then_some(b))
                .collect();
            let n = buckets.len();
            if n == 0 {
                return Err(ChunkError::Corrupt(format!("series {name:?} has no row")));
            }
            ci.clear();
            li.clear();
            ints::decode(&mut r, n, &mut ci)?;
            ints::decode(&mut r, n, &mut li)?;
            for col in &mut fcols {
                col.clear();
                floats::decode(&mut r, n, col)?;
            }
            rows_seen += n;
            if !keep(&name) {
                continue;
            }
            let rows = buckets
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let count = count[b]
                        .checked_sub(ci[i])
                        .and_then(|c| u64::try_from(c).ok());
                    let last_micros = lastc[b]
                        .checked_sub(li[i])
                        .and_then(|o| starts[b].checked_add(o));
                    Some(RollupRow {
                        start_micros: starts[b],
                        min: fcols[0][i],
                        max: fcols[1][i],
                        last: fcols[2][i],
                        sum: fcols[3][i],
                        count: count?,
                        last_micros: last_micros?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ChunkError::Corrupt(format!("series {name:?}: count or time out of range"))
                })?;
            series.push(SeriesRollup { name, rows });
        }
        if rows_seen != n_rows {
            return Err(ChunkError::Corrupt(format!(
                "{rows_seen} rows, {n_rows} announced"
            )));
        }
    }
    r.finish("rollup payload")?;
    Ok((width, series, n_buckets))
}
