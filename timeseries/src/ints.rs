//! Integer columns (timestamps, decimal mantissas, residuals, counts): the cheapest of a
//! few VictoriaMetrics/Gorilla-style transforms, written as zigzag varints.
//!
//! A column of `n` values (n known from the context, so it is not written) is one tag byte
//! and its data. The tag's low 3 bits are the mode; bit 3 says the column is scaled: every
//! value is `base + g * w` with `g >= 2` the greatest common divisor of the distances to
//! the first value (memory in KiB, disk blocks of 4 KiB, sectors of 512 bytes), written as
//! `g`, `base`, then the column `w`.
//!
//! | mode | data | fits |
//! | --- | --- | --- |
//! | 0 constant | `x0` | every value equal |
//! | 1 raw | every `x` | noise around zero |
//! | 2 delta | `x0`, then `x[i] - x[i-1]` | gauges, random walks |
//! | 3 delta of delta | `x0`, `x1 - x0`, then the change of the delta | counters, timestamps |
//! | 4 linear | `x0`, `step`, then `x[i] - (x0 + i * step)` | values on a grid with jitter |
//! | 5 step | `x0`, `step` | exactly linear (uptime, regular timestamps) |
//!
//! The encoder computes the exact size of every mode and keeps the smallest (the lowest
//! mode on a tie), so the choice, like the bytes, depends only on the values. All
//! arithmetic wraps, so any `i64` column round-trips and hostile input cannot overflow.

use crate::error::ChunkError;
use crate::wire::{ivarint_len, put_ivarint, put_uvarint, uvarint_len, Reader};

const CONST: u8 = 0;
const RAW: u8 = 1;
const DELTA: u8 = 2;
const DOD: u8 = 3;
const LINEAR: u8 = 4;
const STEP: u8 = 5;
const SCALED: u8 = 0x08;

/// The chosen encoding of one column, and its size in bytes (tag included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    mode: u8,
    /// The step of the linear modes.
    step: i64,
    /// `(base, g)` when the column is scaled.
    scale: Option<(i64, u64)>,
    pub(crate) size: usize,
}

/// Sizes of every mode over `x` (non-empty): the best one, and its step.
fn best_mode(x: &[i64]) -> (u8, i64, usize) {
    let x0 = x[0];
    let n = x.len();
    let first = ivarint_len(x0);
    if n == 1 {
        return (CONST, 0, first);
    }
    let step = ((i128::from(x[n - 1]) - i128::from(x0)) / (n as i128 - 1))
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let mut all_equal = true;
    let mut raw = first;
    let mut delta = first;
    let mut dod = first;
    let mut linear = first + ivarint_len(step);
    let mut residuals_zero = true;
    let mut prev = x0;
    let mut prev_d = 0i64;
    let mut pred = x0;
    for (i, &v) in x.iter().enumerate().skip(1) {
        all_equal &= v == x0;
        raw += ivarint_len(v);
        let d = v.wrapping_sub(prev);
        delta += ivarint_len(d);
        dod += ivarint_len(if i == 1 { d } else { d.wrapping_sub(prev_d) });
        pred = pred.wrapping_add(step);
        let r = v.wrapping_sub(pred);
        residuals_zero &= r == 0;
        linear += ivarint_len(r);
        prev = v;
        prev_d = d;
    }
    if all_equal {
        return (CONST, 0, first);
    }
    if residuals_zero {
        return (STEP, step, first + ivarint_len(step));
    }
    let mut best = (RAW, 0, raw);
    for (mode, size) in [(DELTA, delta), (DOD, dod), (LINEAR, linear)] {
        if size < best.2 {
            best = (mode, step, size);
        }
    }
    best
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The best encoding of `x` (non-empty).
pub(crate) fn plan(x: &[i64]) -> Plan {
    let (mode, step, size) = best_mode(x);
    let plain = Plan {
        mode,
        step,
        scale: None,
        size: 1 + size,
    };
    if mode == CONST || mode == STEP {
        return plain;
    }
    let base = x[0];
    let mut g = 0u64;
    for &v in x {
        g = gcd(g, v.wrapping_sub(base).unsigned_abs());
        if g == 1 {
            return plain;
        }
    }
    if g < 2 || g > i64::MAX as u64 {
        return plain;
    }
    let w: Vec<i64> = x.iter().map(|&v| v.wrapping_sub(base) / g as i64).collect();
    let (mode, step, size) = best_mode(&w);
    let size = 1 + uvarint_len(g) + ivarint_len(base) + size;
    if size < plain.size {
        Plan {
            mode,
            step,
            scale: Some((base, g)),
            size,
        }
    } else {
        plain
    }
}

/// Writes `x` (non-empty) as planned.
pub(crate) fn write(x: &[i64], p: &Plan, out: &mut Vec<u8>) {
    match p.scale {
        None => {
            out.push(p.mode);
            write_mode(x.iter().copied(), p, out);
        }
        Some((base, g)) => {
            out.push(p.mode | SCALED);
            put_uvarint(out, g);
            put_ivarint(out, base);
            write_mode(x.iter().map(|&v| v.wrapping_sub(base) / g as i64), p, out);
        }
    }
}

fn write_mode(mut x: impl Iterator<Item = i64>, p: &Plan, out: &mut Vec<u8>) {
    let Some(x0) = x.next() else { return };
    put_ivarint(out, x0);
    match p.mode {
        CONST => {}
        RAW => x.for_each(|v| put_ivarint(out, v)),
        DELTA => {
            let mut prev = x0;
            for v in x {
                put_ivarint(out, v.wrapping_sub(prev));
                prev = v;
            }
        }
        DOD => {
            let (mut prev, mut prev_d) = (x0, 0i64);
            for (i, v) in x.enumerate() {
                let d = v.wrapping_sub(prev);
                put_ivarint(out, if i == 0 { d } else { d.wrapping_sub(prev_d) });
                prev = v;
                prev_d = d;
            }
        }
        LINEAR | STEP => {
            put_ivarint(out, p.step);
            if p.mode == LINEAR {
                let mut pred = x0;
                for v in x {
                    pred = pred.wrapping_add(p.step);
                    put_ivarint(out, v.wrapping_sub(pred));
                }
            }
        }
        _ => unreachable!("plans only hold known modes"),
    }
}

/// Encodes `x`; nothing when it is empty.
pub(crate) fn encode(x: &[i64], out: &mut Vec<u8>) {
    if !x.is_empty() {
        write(x, &plan(x), out);
    }
}

/// A column with its encoding chosen, so that its size is known before it is written
/// (and the choice is made once).
#[derive(Debug)]
pub(crate) struct Column {
    values: Vec<i64>,
    plan: Option<Plan>,
}

impl Column {
    pub(crate) fn new(values: Vec<i64>) -> Column {
        let plan = (!values.is_empty()).then(|| plan(&values));
        Column { values, plan }
    }

    /// The values.
    #[cfg(feature = "codec-eval")]
    pub(crate) fn values(&self) -> &[i64] {
        &self.values
    }

    /// Bytes [`Column::write`] writes.
    pub(crate) fn size(&self) -> usize {
        self.plan.map_or(0, |p| p.size)
    }

    /// Writes the column as [`encode`] would.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        if let Some(p) = &self.plan {
            write(&self.values, p, out);
        }
    }
}

/// Reads a column of `n` values written by [`encode`], appending them to `out`. The caller
/// bounds `n` (the constant and step modes take no bytes per value).
pub(crate) fn decode(r: &mut Reader<'_>, n: usize, out: &mut Vec<i64>) -> Result<(), ChunkError> {
    if n == 0 {
        return Ok(());
    }
    let tag = r.u8("integer column tag")?;
    let (base, g) = if tag & SCALED != 0 {
        let g = r.uvarint("integer column divisor")?;
        if !(2..=i64::MAX as u64).contains(&g) {
            return Err(ChunkError::Corrupt(format!("integer column divisor {g}")));
        }
        (r.ivarint("integer column base")?, g as i64)
    } else {
        (0, 1)
    };
    let mode = tag & !SCALED;
    let x0 = r.ivarint("integer column")?;
    let per_value = matches!(mode, RAW | DELTA | DOD | LINEAR);
    if per_value && n - 1 > r.remaining() {
        // Every further value takes at least one byte.
        return Err(ChunkError::Truncated {
            what: "integer column",
        });
    }
    let start = out.len();
    out.reserve(n);
    out.push(x0);
    match mode {
        CONST => out.extend(std::iter::repeat_n(x0, n - 1)),
        RAW => {
            for _ in 1..n {
                out.push(r.ivarint("integer column")?);
            }
        }
        DELTA => {
            let mut prev = x0;
            for _ in 1..n {
                prev = prev.wrapping_add(r.ivarint("integer column")?);
                out.push(prev);
            }
        }
        DOD => {
            let (mut prev, mut d) = (x0, 0i64);
            for _ in 1..n {
                d = d.wrapping_add(r.ivarint("integer column")?);
                prev = prev.wrapping_add(d);
                out.push(prev);
            }
        }
        LINEAR | STEP => {
            let step = r.ivarint("integer column step")?;
            let mut pred = x0;
            for _ in 1..n {
                pred = pred.wrapping_add(step);
                let res = if mode == LINEAR {
                    r.ivarint("integer column")?
                } else {
                    0
                };
                out.push(pred.wrapping_add(res));
            }
        }
        m => {
            return Err(ChunkError::Corrupt(format!(
                "unknown integer column mode {m}"
            )))
        }
    }
    if tag & SCALED != 0 {
        for v in &mut out[start..] {
            *v = base.wrapping_add(g.wrapping_mul(*v));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(x: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(x, &mut out);
        assert_eq!(out.len(), Column::new(x.to_vec()).size(), "{x:?}");
        let mut r = Reader::new(&out);
        let mut back = Vec::new();
        decode(&mut r, x.len(), &mut back).expect("decodes");
        assert_eq!(back, x);
        assert_eq!(r.remaining(), 0);
        out
    }

    #[test]
    fn every_mode_round_trips_and_the_cheapest_is_chosen() {
        assert_eq!(round_trip(&[5; 100]), vec![CONST, 10]);
        let uptime: Vec<i64> = (0..100).map(|i| 86_400 + 10 * i).collect();
        assert_eq!(round_trip(&uptime)[0], STEP);
        let walk = [100, 103, 101, 104, 110, 108, 107, 111, 115, 112];
        assert_eq!(round_trip(&walk)[0], DELTA);
        let noise = [3, -2, 1, 0, -3, 2, 1, -1, 0, 2];
        assert_eq!(round_trip(&noise)[0], RAW);
        let grid: Vec<i64> = (0..100)
            .map(|i| {
                1_700_000_000_000_000 + 10_000_000 * i + [1_201, -802, 2_507, -108][i as usize % 4]
            })
            .collect();
        assert_eq!(round_trip(&grid)[0], LINEAR);
        let accel: Vec<i64> = (0..50).map(|i| i * i * 1000 + 7 * i).collect();
        assert_eq!(round_trip(&accel)[0], DOD);
        let kib: Vec<i64> = [3_000_000i64, 3_000_100, 2_999_950, 3_000_400]
            .iter()
            .map(|v| v * 1024)
            .collect();
        assert_eq!(round_trip(&kib)[0] & SCALED, SCALED);
        round_trip(&[i64::MIN, i64::MAX, 0, i64::MIN, -1, i64::MAX]);
        round_trip(&[i64::MAX, i64::MIN]);
        round_trip(&[0, i64::MIN]);
        round_trip(&[7]);
        assert!(round_trip(&[]).is_empty());
    }

    #[test]
    fn hostile_columns_fail_cleanly() {
        let mut r = Reader::new(&[RAW, 2]);
        assert!(decode(&mut r, 1_000_000, &mut Vec::new()).is_err());
        let mut r = Reader::new(&[7, 2]);
        assert!(decode(&mut r, 2, &mut Vec::new()).is_err());
        let mut r = Reader::new(&[DELTA | SCALED, 1, 0, 0, 0]);
        assert!(decode(&mut r, 2, &mut Vec::new()).is_err());
    }
}
