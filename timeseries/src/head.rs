//! The head: the samples of every agent's open windows, in memory.
//!
//! One [`AgentHead`] per agent holds the windows that are not sealed yet (normally the
//! current hour, and the previous one during the out-of-order allowance), each as one
//! shared timestamp column and one value column per series (`NaN` marks a series absent
//! at a timestamp: stored values are always finite). Appending a report is a push per
//! column; a report whose time is inside the window but before its newest timestamp is
//! inserted in place.
//!
//! Everything here is plain data: the engine decides when a window seals and what a
//! checkpoint saves ([`OpenWindow::unsaved`]), the store keeps the bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::chunk::{Block, Series};
use crate::error::ChunkError;

/// Width of a block's window (µs): one hour, aligned to the epoch.
pub const BLOCK_MICROS: i64 = 3_600_000_000;

/// Start of the block window holding `ts_micros`.
pub fn window_of(ts_micros: i64) -> i64 {
    ts_micros.div_euclid(BLOCK_MICROS) * BLOCK_MICROS
}

/// Whether series `name` is `metric` (no subject) or `metric:subject`, without building
/// the name.
pub fn name_matches(name: &str, metric: &str, subject: Option<&str>) -> bool {
    match subject {
        None => name == metric,
        Some(s) => {
            name.len() == metric.len() + 1 + s.len()
                && name.starts_with(metric)
                && name.as_bytes()[metric.len()] == b':'
                && name.ends_with(s)
        }
    }
}

/// One open window of one agent.
#[derive(Debug, Clone, Default)]
pub struct OpenWindow {
    /// Timestamps (µs), strictly increasing.
    ts: Vec<i64>,
    /// Per series slot of the agent, one value per timestamp (`NaN`: absent). A column
    /// may be missing (a slot added after the window was last written) or shorter than
    /// `ts` only transiently inside [`OpenWindow::set`].
    cols: Vec<Vec<f64>>,
    /// Rows `..saved_rows` are in the store's checkpoint segments.
    saved_rows: usize,
    /// A saved row changed (a duplicate sample or an insert before saved rows): the next
    /// checkpoint saves the whole window.
    rewritten: bool,
    /// Segments of this window in the store (the next one gets this number).
    pub(crate) next_seq: u64,
    /// Queued for sealing (no sample can reach it any more, or its agent went idle).
    pub(crate) sealing: bool,
}

impl OpenWindow {
    /// Number of timestamps.
    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    /// Bytes this window holds in memory (capacity, roughly).
    pub fn heap_bytes(&self) -> usize {
        self.ts.capacity() * 8
            + self
                .cols
                .iter()
                .map(|c| c.capacity() * 8 + 24)
                .sum::<usize>()
            + self.cols.capacity() * 24
    }

    /// The row of `ts`, inserting an empty one if needed. Appending (the common case) is
    /// a push; an earlier time is inserted in place.
    fn row(&mut self, ts: i64) -> usize {
        match self.ts.last() {
            None => {}
            Some(&last) if ts > last => {}
            Some(&last) if ts == last => return self.ts.len() - 1,
            Some(_) => {
                return match self.ts.binary_search(&ts) {
                    Ok(i) => i,
                    Err(i) => {
                        self.ts.insert(i, ts);
                        for c in &mut self.cols {
                            if c.len() >= i {
                                c.insert(i, f64::NAN);
                            }
                        }
                        if i < self.saved_rows {
                            self.rewritten = true;
                        }
                        i
                    }
                }
            }
        }
        self.ts.push(ts);
        self.ts.len() - 1
    }

    /// Sets series `slot` at row `row`.
    fn set(&mut self, row: usize, slot: usize, value: f64) {
        if self.cols.len() <= slot {
            self.cols.resize_with(slot + 1, Vec::new);
        }
        let col = &mut self.cols[slot];
        if col.len() <= row {
            col.resize(self.ts.len(), f64::NAN);
        }
        if row < self.saved_rows {
            // A saved row changed (a duplicate, or a value the saved segment lacks).
            self.rewritten = true;
        }
        col[row] = value;
    }

    /// The window's samples as a block (series named by `names`, slot order).
    pub fn to_block(&self, names: &[Arc<str>]) -> Result<Block, ChunkError> {
        self.block_of_rows(names, 0)
    }

    fn block_of_rows(&self, names: &[Arc<str>], from: usize) -> Result<Block, ChunkError> {
        let ts = self.ts[from..].to_vec();
        let series = self
            .cols
            .iter()
            .enumerate()
            .filter_map(|(slot, col)| {
                let name = names.get(slot)?;
                let values: Vec<Option<f64>> = (from..self.ts.len())
                    .map(|r| col.get(r).copied().filter(|v| !v.is_nan()))
                    .collect();
                Some(Series::new(name.as_ref(), values))
            })
            .collect();
        Block::new(ts, series)
    }

    /// What a checkpoint must save: the rows added since the last one, or the whole
    /// window when a saved row changed (`true` in the answer: it replaces the earlier
    /// segments). `None` when nothing changed.
    pub fn unsaved(&self, names: &[Arc<str>]) -> Result<Option<(Block, bool)>, ChunkError> {
        if self.rewritten {
            return Ok(Some((self.block_of_rows(names, 0)?, true)));
        }
        if self.saved_rows >= self.ts.len() {
            return Ok(None);
        }
        Ok(Some((self.block_of_rows(names, self.saved_rows)?, false)))
    }

    /// Marks everything as saved by a checkpoint.
    pub fn mark_saved(&mut self) {
        self.saved_rows = self.ts.len();
        self.rewritten = false;
        self.next_seq += 1;
    }

    /// Loads a block (a restored segment, in sequence order) into the window; its values
    /// win over those already there. Counts as saved.
    pub fn absorb(&mut self, block: &Block, slot_of: &mut impl FnMut(&str) -> usize) {
        let slots: Vec<usize> = block.series().iter().map(|s| slot_of(s.name())).collect();
        for (i, &ts) in block.timestamps().iter().enumerate() {
            let row = self.row(ts);
            for (s, &slot) in block.series().iter().zip(&slots) {
                if let Some(v) = s.values()[i] {
                    self.set(row, slot, v);
                }
            }
        }
        self.saved_rows = self.ts.len();
        self.rewritten = false;
    }

    /// Samples of slot `slot` in `[start, end)`, in time order.
    pub fn points(
        &self,
        slot: usize,
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = (i64, f64)> + '_ {
        let col = self.cols.get(slot).map_or(&[][..], Vec::as_slice);
        let from = self.ts.partition_point(|&t| t < start);
        let to = self.ts.partition_point(|&t| t < end);
        (from..to).filter_map(move |r| {
            let v = col.get(r).copied()?;
            (!v.is_nan()).then(|| (self.ts[r], v))
        })
    }
}

/// The open windows of one agent.
#[derive(Debug, Clone)]
pub struct AgentHead {
    /// Newest sample time accepted (µs).
    pub max_ts: i64,
    /// Newest `ingested_at` of its reports (µs, the gateway's clock).
    pub last_ingested: i64,
    /// Topic partition its records come from.
    pub partition: u32,
    /// Series names by slot.
    names: Vec<Arc<str>>,
    /// Open windows by start.
    pub(crate) windows: BTreeMap<i64, OpenWindow>,
    /// Changed since the last checkpoint.
    pub(crate) dirty: bool,
    /// Series `..indexed` are in the store's series index.
    indexed: usize,
    /// Silent for `idle-seal-after`: leaves the head once its windows are sealed.
    pub(crate) idle: bool,
}

impl AgentHead {
    /// An empty head for an agent on `partition`.
    pub fn new(partition: u32) -> AgentHead {
        AgentHead {
            max_ts: i64::MIN,
            last_ingested: i64::MIN,
            partition,
            names: Vec::new(),
            windows: BTreeMap::new(),
            dirty: false,
            indexed: 0,
            idle: false,
        }
    }

    /// Series names by slot.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The slot of series `metric[:subject]`, added if new; `hint` is where it was last
    /// time (reports list their samples in the same order).
    pub fn slot(&mut self, metric: &str, subject: Option<&str>, hint: usize) -> usize {
        if let Some(n) = self.names.get(hint) {
            if name_matches(n, metric, subject) {
                return hint;
            }
        }
        if let Some(i) = self
            .names
            .iter()
            .position(|n| name_matches(n, metric, subject))
        {
            return i;
        }
        let name: Arc<str> = match subject {
            Some(s) => format!("{metric}:{s}").into(),
            None => metric.into(),
        };
        self.names.push(name);
        self.names.len() - 1
    }

    /// The slot of series `name`, if the agent has it.
    pub fn slot_named(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    /// The slot of series `name`, added if new.
    pub fn slot_of_name(&mut self, name: &str) -> usize {
        if let Some(i) = self.slot_named(name) {
            return i;
        }
        self.names.push(name.into());
        self.names.len() - 1
    }

    /// The slot of series `name`, added if new while the agent has fewer than `max`
    /// series (`None` when it has `max` already); `hint` is where to look first (rows list
    /// their series in the same order).
    pub fn slot_of_name_bounded(&mut self, name: &str, hint: usize, max: usize) -> Option<usize> {
        if self.names.get(hint).is_some_and(|n| &**n == name) {
            return Some(hint);
        }
        if let Some(i) = self.slot_named(name) {
            return Some(i);
        }
        if self.names.len() >= max {
            return None;
        }
        self.names.push(name.into());
        Some(self.names.len() - 1)
    }

    /// Series not yet in the store's index.
    pub fn unindexed(&self) -> &[Arc<str>] {
        &self.names[self.indexed.min(self.names.len())..]
    }

    /// Records that the first `n` series are in the store's index.
    pub fn set_indexed(&mut self, n: usize) {
        self.indexed = self.indexed.max(n);
    }

    /// Records that every series is in the store's index (restored from it).
    pub fn mark_indexed(&mut self) {
        self.indexed = self.names.len();
    }

    /// Writes one report's samples at `ts`: `samples` yields (slot, value).
    pub fn write(&mut self, ts: i64, samples: impl IntoIterator<Item = (usize, f64)>) {
        let w = self.windows.entry(window_of(ts)).or_default();
        let row = w.row(ts);
        for (slot, v) in samples {
            w.set(row, slot, v);
        }
        self.max_ts = self.max_ts.max(ts);
        self.dirty = true;
        self.idle = false;
    }

    /// Window starts whose window no accepted sample can reach any more: those ending at
    /// or before `max_ts - allowance`.
    pub fn closed_windows(&self, allowance_micros: i64) -> Vec<i64> {
        let horizon = self.max_ts.saturating_sub(allowance_micros);
        self.windows
            .keys()
            .copied()
            .filter(|&w| w.saturating_add(BLOCK_MICROS) <= horizon)
            .collect()
    }

    /// Bytes held, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.windows
            .values()
            .map(OpenWindow::heap_bytes)
            .sum::<usize>()
            + self.names.iter().map(|n| n.len() + 40).sum::<usize>()
            + 128
    }

    /// The open window starting at `w`.
    pub fn window(&self, w: i64) -> Option<&OpenWindow> {
        self.windows.get(&w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_without_allocating() {
        assert!(name_matches("cpu.percent", "cpu.percent", None));
        assert!(name_matches(
            "disk.percent:/var",
            "disk.percent",
            Some("/var")
        ));
        assert!(!name_matches(
            "disk.percent:/var",
            "disk.percent",
            Some("/va")
        ));
        assert!(!name_matches("disk.percent:/var", "disk.percent", None));
        assert!(!name_matches(
            "disk.percentX/var",
            "disk.percent",
            Some("/var")
        ));
    }

    #[test]
    fn appends_inserts_and_overwrites() {
        let mut h = AgentHead::new(0);
        let cpu = h.slot("cpu.percent", None, 0);
        let disk = h.slot("disk.percent", Some("/"), 1);
        h.write(20, [(cpu, 1.0), (disk, 2.0)]);
        h.write(40, [(cpu, 3.0)]);
        h.write(30, [(cpu, 5.0)]);
        h.write(20, [(cpu, 9.0)]);
        let b = h.window(0).unwrap().to_block(h.names()).unwrap();
        assert_eq!(b.timestamps(), &[20, 30, 40]);
        assert_eq!(
            b.points("cpu.percent").collect::<Vec<_>>(),
            vec![(20, 9.0), (30, 5.0), (40, 3.0)]
        );
        assert_eq!(
            b.points("disk.percent:/").collect::<Vec<_>>(),
            vec![(20, 2.0)]
        );
        assert_eq!(h.max_ts, 40);
    }

    #[test]
    fn unsaved_is_the_new_rows_or_everything_after_a_rewrite() {
        let mut h = AgentHead::new(0);
        let cpu = h.slot("cpu.percent", None, 0);
        h.write(10, [(cpu, 1.0)]);
        h.write(20, [(cpu, 2.0)]);
        let names = h.names().to_vec();
        let w = h.windows.get_mut(&0).unwrap();
        let (b, full) = w.unsaved(&names).unwrap().unwrap();
        assert!(!full);
        assert_eq!(b.sample_count(), 2);
        w.mark_saved();
        assert!(w.unsaved(&names).unwrap().is_none());
        h.write(30, [(cpu, 3.0)]);
        let w = h.windows.get_mut(&0).unwrap();
        let (b, full) = w.unsaved(&names).unwrap().unwrap();
        assert!(!full);
        assert_eq!(b.timestamps(), &[30]);
        w.mark_saved();
        h.write(20, [(cpu, 7.0)]);
        let w = h.windows.get_mut(&0).unwrap();
        let (b, full) = w.unsaved(&names).unwrap().unwrap();
        assert!(full, "a changed saved row saves the window");
        assert_eq!(
            b.points("cpu.percent").collect::<Vec<_>>(),
            vec![(10, 1.0), (20, 7.0), (30, 3.0)]
        );
    }

    #[test]
    fn closed_windows_wait_for_the_allowance() {
        let mut h = AgentHead::new(0);
        let cpu = h.slot("cpu.percent", None, 0);
        h.write(BLOCK_MICROS - 1, [(cpu, 1.0)]);
        h.write(BLOCK_MICROS + 599_000_000, [(cpu, 1.0)]);
        assert!(h.closed_windows(600_000_000).is_empty());
        h.write(BLOCK_MICROS + 600_000_000, [(cpu, 1.0)]);
        assert_eq!(h.closed_windows(600_000_000), vec![0]);
    }
}
