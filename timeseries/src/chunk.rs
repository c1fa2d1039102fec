//! Blocks: the samples of one agent in one time window, and their encoding.
//!
//! A [`Block`] holds one sorted timestamp column shared by all the agent's series (one
//! report carries ~21 series at one timestamp) and one value column per series, aligned
//! with it; a series may be absent at some timestamps. Blocks are canonical: series are
//! sorted by name, every series has at least one value and every timestamp at least one
//! series, so two blocks holding the same samples are equal and [`encode`] to the same
//! bytes.
//!
//! ## Format, version 1
//!
//! ```text
//! u8      format version (1)
//! u8      flags: bit 0 = the payload is zstd-compressed
//! varint  timestamps, series, samples
//! varint  first timestamp (zigzag), last - first       (only when there are timestamps)
//! [varint decompressed length]                          (only when compressed)
//! payload:
//!   series names, front-coded (see `names.rs`)
//!   the timestamp column minus the first timestamp, as an integer column (`ints.rs`)
//!   per series, in name order: its presence (`presence.rs`), then its present values
//!   as a float column (`floats.rs`)
//! ```
//!
//! The payload goes through zstd when it is longer than 128 bytes and that makes it
//! smaller. The prefix is never compressed, so [`header`] reads the time range and counts
//! without touching the values.

use std::collections::BTreeMap;

use crate::error::ChunkError;
use crate::limits::{MAX_CELLS, MAX_NAME_BYTES, MAX_SERIES, MAX_TIMESTAMPS};
use crate::wire::{self, put_ivarint, put_uvarint, Reader};
use crate::{floats, ints, names, presence};

/// Format byte written first by [`encode`].
pub const FORMAT_VERSION: u8 = 1;

/// One named series of a [`Block`]: a value (or none) at each of the block's timestamps.
#[derive(Debug, Clone)]
pub struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

impl Series {
    /// A series with one entry per timestamp of the block it goes into.
    pub fn new(name: impl Into<String>, values: Vec<Option<f64>>) -> Series {
        Series {
            name: name.into(),
            values,
        }
    }

    /// Series name (`metric` or `metric:subject`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Values, aligned with [`Block::timestamps`].
    pub fn values(&self) -> &[Option<f64>] {
        &self.values
    }

    /// Number of values present.
    pub fn len(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }

    /// Whether the series has no value at all (never true inside a block).
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }
}

/// Values compare by their bits: `NaN == NaN`, `-0.0 != 0.0`.
impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| a.map(f64::to_bits) == b.map(f64::to_bits))
    }
}

impl Eq for Series {}

/// The samples of one agent (tenant, agent) in one time window. The identity of the agent
/// and the window is the storage key's business, not the block's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Block {
    timestamps: Vec<i64>,
    series: Vec<Series>,
}

/// What [`header`] reads without decoding values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// Format version of the bytes.
    pub version: u8,
    /// Number of distinct timestamps.
    pub timestamps: usize,
    /// Number of samples (values present, all series).
    pub samples: usize,
    /// First and last timestamp (µs), `None` for an empty block.
    pub time_range: Option<(i64, i64)>,
    /// Series names, sorted.
    pub series: Vec<String>,
}

fn check_limits(timestamps: usize, series: usize) -> Result<(), ChunkError> {
    let too_large = |what, value: usize, limit: usize| ChunkError::TooLarge {
        what,
        value: value as u64,
        limit: limit as u64,
    };
    if timestamps > MAX_TIMESTAMPS {
        return Err(too_large(
            "timestamps in a block",
            timestamps,
            MAX_TIMESTAMPS,
        ));
    }
    if series > MAX_SERIES {
        return Err(too_large("series in a block", series, MAX_SERIES));
    }
    let cells = timestamps.saturating_mul(series);
    if cells > MAX_CELLS {
        return Err(too_large(
            "timestamps x series in a block",
            cells,
            MAX_CELLS,
        ));
    }
    Ok(())
}

impl Block {
    /// A block from a timestamp column and series aligned with it.
    ///
    /// Fails when the timestamps are not strictly increasing, a series has a different
    /// length, two series share a name, a name is longer than [`MAX_NAME_BYTES`], or the
    /// block is over the [limits](crate::limits). Series without any value, and timestamps
    /// where no series has a value, are dropped; series are sorted by name.
    pub fn new(timestamps: Vec<i64>, mut series: Vec<Series>) -> Result<Block, ChunkError> {
        if let Some(i) = timestamps.windows(2).position(|w| w[0] >= w[1]) {
            return Err(ChunkError::Invalid(format!(
                "timestamps must be strictly increasing: {} then {}",
                timestamps[i],
                timestamps[i + 1]
            )));
        }
        for s in &series {
            if s.values.len() != timestamps.len() {
                return Err(ChunkError::Invalid(format!(
                    "series {:?} has {} values for {} timestamps",
                    s.name,
                    s.values.len(),
                    timestamps.len()
                )));
            }
            if s.name.len() > MAX_NAME_BYTES {
                return Err(ChunkError::Invalid(format!(
                    "series name of {} bytes, over the limit of {MAX_NAME_BYTES}",
                    s.name.len()
                )));
            }
        }
        series.retain(|s| !s.is_empty());
        series.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = series.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(ChunkError::Invalid(format!(
                "series {:?} given twice",
                w[0].name
            )));
        }
        check_limits(timestamps.len(), series.len())?;
        let mut block = Block { timestamps, series };
        block.drop_empty_timestamps();
        Ok(block)
    }

    /// A block from samples `(timestamp µs, series name, value)` in any order. When the
    /// same (series, timestamp) comes twice, the later sample wins (as a later record
    /// does in the log).
    pub fn from_samples<S: AsRef<str>>(
        samples: impl IntoIterator<Item = (i64, S, f64)>,
    ) -> Result<Block, ChunkError> {
        let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for (ts, name, v) in samples {
            let name = name.as_ref();
            match by_series.get_mut(name) {
                Some(points) => points.push((ts, v)),
                None => {
                    if by_series.len() >= MAX_SERIES {
                        return Err(ChunkError::TooLarge {
                            what: "series in a block",
                            value: by_series.len() as u64 + 1,
                            limit: MAX_SERIES as u64,
                        });
                    }
                    by_series.insert(name.to_owned(), vec![(ts, v)]);
                }
            }
        }
        let mut timestamps: Vec<i64> = Vec::new();
        for points in by_series.values_mut() {
            // Stable: among equal timestamps the arrival order stays, and the last wins.
            points.sort_by_key(|p| p.0);
            let mut deduped: Vec<(i64, f64)> = Vec::with_capacity(points.len());
            for &p in points.iter() {
                match deduped.last_mut() {
                    Some(last) if last.0 == p.0 => *last = p,
                    _ => deduped.push(p),
                }
            }
            *points = deduped;
            timestamps.extend(points.iter().map(|p| p.0));
        }
        timestamps.sort_unstable();
        timestamps.dedup();
        check_limits(timestamps.len(), by_series.len())?;
        let series = by_series
            .into_iter()
            .map(|(name, points)| {
                let mut values = vec![None; timestamps.len()];
                let mut i = 0;
                for (ts, v) in points {
                    // Both are sorted: walk forward to this sample's row.
                    while timestamps[i] != ts {
                        i += 1;
                    }
                    values[i] = Some(v);
                }
                Series { name, values }
            })
            .collect();
        Block::new(timestamps, series)
    }

    /// The shared timestamp column (µs), strictly increasing.
    pub fn timestamps(&self) -> &[i64] {
        &self.timestamps
    }

    /// The series, sorted by name.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// The series named `name`.
    pub fn get(&self, name: &str) -> Option<&Series> {
        self.series
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.series[i])
    }

    /// The samples of series `name` as (timestamp µs, value), in time order; none when the
    /// block does not have it.
    pub fn points<'a>(&'a self, name: &str) -> impl Iterator<Item = (i64, f64)> + 'a {
        let values = self.get(name).map_or(&[][..], |s| &s.values[..]);
        self.timestamps
            .iter()
            .zip(values)
            .filter_map(|(&ts, v)| v.map(|v| (ts, v)))
    }

    /// Every sample as (series, timestamp µs, value), series by series, each in time order.
    pub fn samples(&self) -> impl Iterator<Item = (&str, i64, f64)> + '_ {
        self.series.iter().flat_map(move |s| {
            self.timestamps
                .iter()
                .zip(&s.values)
                .filter_map(move |(&ts, v)| v.map(|v| (s.name.as_str(), ts, v)))
        })
    }

    /// Number of samples (values present, all series).
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(Series::len).sum()
    }

    /// Whether the block holds no sample.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// First and last timestamp (µs).
    pub fn time_range(&self) -> Option<(i64, i64)> {
        Some((*self.timestamps.first()?, *self.timestamps.last()?))
    }

    fn drop_empty_timestamps(&mut self) {
        let keep: Vec<bool> = (0..self.timestamps.len())
            .map(|i| self.series.iter().any(|s| s.values[i].is_some()))
            .collect();
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut i = 0;
        self.timestamps.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        for s in &mut self.series {
            let mut i = 0;
            s.values.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
    }
}

/// Late data: the union of two blocks of the same agent and window. For the same (series,
/// timestamp) the value of `newer` wins; every other sample of either is kept. Fails only
/// when the union is over the [limits](crate::limits).
pub fn merge(older: &Block, newer: &Block) -> Result<Block, ChunkError> {
    let mut timestamps = Vec::with_capacity(older.timestamps.len() + newer.timestamps.len());
    let (mut i, mut j) = (0, 0);
    let (mut old_rows, mut new_rows) = (Vec::new(), Vec::new());
    while i < older.timestamps.len() || j < newer.timestamps.len() {
        let a = older.timestamps.get(i).copied();
        let b = newer.timestamps.get(j).copied();
        let ts = match (a, b) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => unreachable!("the loop condition"),
        };
        if a == Some(ts) {
            old_rows.push(timestamps.len());
            i += 1;
        }
        if b == Some(ts) {
            new_rows.push(timestamps.len());
            j += 1;
        }
        timestamps.push(ts);
    }
    let mut names: Vec<&str> = older
        .series
        .iter()
        .chain(&newer.series)
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    check_limits(timestamps.len(), names.len())?;
    let series = names
        .into_iter()
        .map(|name| {
            let mut values = vec![None; timestamps.len()];
            for (block, rows) in [(older, &old_rows), (newer, &new_rows)] {
                if let Some(s) = block.get(name) {
                    for (&row, v) in rows.iter().zip(&s.values) {
                        if v.is_some() {
                            values[row] = *v;
                        }
                    }
                }
            }
            Series {
                name: name.to_owned(),
                values,
            }
        })
        .collect();
    Ok(Block { timestamps, series })
}

/// Encodes a block (see the module docs for the format). Deterministic: the same block
/// gives the same bytes, on every run and machine, for a given build (the zstd version
/// is pinned by `Cargo.lock`).
pub fn encode(block: &Block) -> Vec<u8> {
    let (prefix, payload) = encode_parts(block);
    wire::seal(FORMAT_VERSION, &prefix, &payload)
}

/// The uncompressed prefix and payload of [`encode`].
pub(crate) fn encode_parts(block: &Block) -> (Vec<u8>, Vec<u8>) {
    let n_ts = block.timestamps.len();
    let mut prefix = Vec::with_capacity(24);
    put_uvarint(&mut prefix, n_ts as u64);
    put_uvarint(&mut prefix, block.series.len() as u64);
    put_uvarint(&mut prefix, block.sample_count() as u64);
    let mut payload = Vec::with_capacity(64 + 2 * block.sample_count());
    names::encode(block.series.iter().map(|s| s.name.as_str()), &mut payload);
    if let Some((first, last)) = block.time_range() {
        put_ivarint(&mut prefix, first);
        put_uvarint(&mut prefix, last.wrapping_sub(first) as u64);
        let offsets: Vec<i64> = block
            .timestamps
            .iter()
            .map(|t| t.wrapping_sub(first))
            .collect();
        ints::encode(&offsets, &mut payload);
    }
    let mut mask = Vec::with_capacity(n_ts);
    let mut present = Vec::with_capacity(n_ts);
    for s in &block.series {
        mask.clear();
        present.clear();
        for v in &s.values {
            mask.push(v.is_some());
            present.extend(v);
        }
        presence::encode(&mask, &mut payload);
        floats::encode(&present, None, &mut payload);
    }
    (prefix, payload)
}

/// The prefix of an encoding: counts and time range.
struct Prefix {
    flags: u8,
    timestamps: usize,
    series: usize,
    samples: usize,
    time_range: Option<(i64, i64)>,
}

fn read_prefix<'a>(bytes: &'a [u8]) -> Result<(Prefix, Reader<'a>), ChunkError> {
    let (flags, mut r) = wire::open_envelope(bytes, FORMAT_VERSION)?;
    let timestamps = r.count("timestamp count", MAX_TIMESTAMPS)?;
    let series = r.count("series count", MAX_SERIES)?;
    check_limits(timestamps, series)?;
    let samples = r.count("sample count", timestamps * series)?;
    let time_range = if timestamps > 0 {
        let first = r.ivarint("first timestamp")?;
        let span = r.uvarint("time span")?;
        let last = first
            .checked_add_unsigned(span)
            .ok_or_else(|| ChunkError::Corrupt(format!("time span {span} overflows")))?;
        Some((first, last))
    } else {
        None
    };
    if (timestamps == 0) != (series == 0) || samples < timestamps.max(series) {
        return Err(ChunkError::Corrupt(format!(
            "{timestamps} timestamps, {series} series and {samples} samples do not fit together"
        )));
    }
    Ok((
        Prefix {
            flags,
            timestamps,
            series,
            samples,
            time_range,
        },
        r,
    ))
}

/// Reads the counts, time range and series names of an encoded block without decoding
/// its values (it decompresses the payload, which takes microseconds, but reads only the
/// names from it).
pub fn header(bytes: &[u8]) -> Result<BlockHeader, ChunkError> {
    let (p, mut r) = read_prefix(bytes)?;
    let payload = wire::open_payload(p.flags, &mut r)?;
    let series = names::decode(&mut Reader::new(&payload), p.series)?;
    Ok(BlockHeader {
        version: FORMAT_VERSION,
        timestamps: p.timestamps,
        samples: p.samples,
        time_range: p.time_range,
        series,
    })
}

/// Decodes a block made by [`encode`]. Hostile or corrupt bytes give an error, never a
/// panic; memory stays within the [limits](crate::limits) whatever the bytes claim.
pub fn decode(bytes: &[u8]) -> Result<Block, ChunkError> {
    let (p, mut r) = read_prefix(bytes)?;
    let payload = wire::open_payload(p.flags, &mut r)?;
    let mut r = Reader::new(&payload);
    let names = names::decode(&mut r, p.series)?;
    let mut timestamps = Vec::new();
    if let Some((first, last)) = p.time_range {
        ints::decode(&mut r, p.timestamps, &mut timestamps)?;
        for t in &mut timestamps {
            *t = t.wrapping_add(first);
        }
        if timestamps.first() != Some(&first) || timestamps.last() != Some(&last) {
            return Err(ChunkError::Corrupt(
                "timestamp column does not match the time range".into(),
            ));
        }
        if timestamps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ChunkError::Corrupt(
                "timestamps are not strictly increasing".into(),
            ));
        }
    }
    let mut series = Vec::with_capacity(names.len());
    let mut covered = vec![false; p.timestamps];
    let mut samples = 0usize;
    let mut present = Vec::new();
    for name in names {
        let mask = presence::decode(&mut r, p.timestamps)?;
        let n = mask.iter().filter(|&&m| m).count();
        if n == 0 {
            return Err(ChunkError::Corrupt(format!("series {name:?} has no value")));
        }
        present.clear();
        floats::decode(&mut r, n, &mut present)?;
        let mut it = present.iter();
        let values = mask
            .iter()
            .zip(covered.iter_mut())
            .map(|(&m, c)| {
                *c |= m;
                if m {
                    it.next().copied()
                } else {
                    None
                }
            })
            .collect();
        samples += n;
        series.push(Series { name, values });
    }
    r.finish("block payload")?;
    if samples != p.samples {
        return Err(ChunkError::Corrupt(format!(
            "{samples} samples, {} announced",
            p.samples
        )));
    }
    if covered.iter().any(|c| !c) {
        return Err(ChunkError::Corrupt(
            "a timestamp has no value in any series".into(),
        ));
    }
    Ok(Block { timestamps, series })
}
