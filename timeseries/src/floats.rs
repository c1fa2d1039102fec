//! Float columns: every `f64` bit pattern round-trips (`-0.0`, subnormals, NaN payloads,
//! infinities, 17-digit values).
//!
//! | tag | data | fits |
//! | --- | --- | --- |
//! | 0 decimal | exponent `e`, integer column of mantissas `m` | values that are exact decimals: `v == m * 10^e` |
//! | 1 decimal + residual | `e`, mantissas, integer column of residuals | nearly decimal: rollup sums carry float rounding |
//! | 2 XOR | Gorilla bit stream | anything else |
//! | 3 raw | 8 bytes per value (little-endian bits) | incompressible |
//! | 4 divided decimal | divisor `d`, `e`, mantissas: `v == (m * 10^e) / d` | a decimal divided by a small integer: `load.per_core` is `load.1` / cores, which is not a decimal for 3, 6, 12, 24, 48 cores |
//!
//! The decimal conversion follows VictoriaMetrics: a value is `m * 10^e` when decoding
//! gives back its exact bits. Decoding computes `m as f64 * 10^e` (or `/ 10^-e`) with
//! `|m| <= 2^53` and `|e| <= 22`, where both operands are exact, so IEEE 754 rounds it
//! to the same double on every machine. One exponent per column, the smallest any value
//! needs; common factors of ten move into the exponent. The residual is the distance in
//! representable doubles (the order-preserving bit view) between the value and `m * 10^e`:
//! a float sum of 2-decimal values is usually 0 or 1 ulp away from its decimal.
//!
//! The encoder computes each candidate's size and keeps the smallest (decimal first on
//! a tie), so the bytes depend only on the values.

use crate::error::ChunkError;
use crate::ints;
use crate::wire::{
    from_ordered, ivarint_len, ordered_bits, put_ivarint, put_uvarint, uvarint_len, Reader,
};

const DECIMAL: u8 = 0;
const DECIMAL_RESIDUAL: u8 = 1;
const XOR: u8 = 2;
const RAW: u8 = 3;
const DIVIDED: u8 = 4;

/// Divisors tried for [`DIVIDED`] columns.
const MAX_DIVISOR: u32 = 128;
/// Decimals tried for the dividend of a [`DIVIDED`] column (x / 64 of a 2-decimal x has 8).
const DIVIDED_MAX_DECIMALS: i32 = 8;

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
const MAX_EXP: i32 = 22;
/// Mantissas up to 2^53 are exact doubles.
const EXACT_MANTISSA: f64 = 9_007_199_254_740_992.0;
/// Larger mantissas are not used: the value goes to the residual.
const MAX_MANTISSA: f64 = 4_611_686_018_427_387_904.0; // 2^62

fn pow10(e: i32) -> f64 {
    POW10[e.unsigned_abs().min(MAX_EXP as u32) as usize]
}

/// `m * 10^e`, rounded once.
fn unscale(m: i64, e: i32) -> f64 {
    if e >= 0 {
        m as f64 * pow10(e)
    } else {
        m as f64 / pow10(e)
    }
}

/// `v / 10^e` rounded to an integer, if it is a usable mantissa.
fn mantissa(v: f64, e: i32) -> Option<i64> {
    let x = if e >= 0 { v / pow10(e) } else { v * pow10(e) };
    let m = x.round();
    (m.abs() < MAX_MANTISSA).then_some(m as i64)
}

fn exact_at(v: f64, e: i32) -> bool {
    mantissa(v, e).is_some_and(|m| {
        (m.unsigned_abs() as f64) <= EXACT_MANTISSA && unscale(m, e).to_bits() == v.to_bits()
    })
}

/// An exponent at which `v` is an exact decimal (the largest one up to 0 for values below
/// 2^53, the smallest one above 0 for larger values): `Some(None)` for `+0.0` (exact at any
/// exponent), `None` when there is none.
fn exact_exponent(v: f64) -> Option<Option<i32>> {
    if v.to_bits() == 0 {
        return Some(None);
    }
    if !v.is_finite() || v == 0.0 {
        return None;
    }
    if v.abs() < EXACT_MANTISSA {
        let mut scaled = v.abs();
        for k in 0..=MAX_EXP {
            if exact_at(v, -k) {
                return Some(Some(-k));
            }
            scaled *= 10.0;
            if scaled > EXACT_MANTISSA * 10.0 {
                break;
            }
        }
        None
    } else {
        (1..=MAX_EXP).find(|&e| exact_at(v, e)).map(Some)
    }
}

/// Mantissas of `values` at exponent `e` (factors of ten moved into it), and the residuals.
struct Decimal {
    exp: i32,
    mantissas: ints::Column,
    /// `None` when every residual is 0.
    residuals: Option<ints::Column>,
    size: usize,
}

fn decimal_at(values: &[f64], mut exp: i32) -> Decimal {
    let mut mantissas: Vec<i64> = values
        .iter()
        .map(|&v| mantissa(v, exp).unwrap_or(0))
        .collect();
    if mantissas.iter().all(|&m| m == 0) {
        exp = 0;
    } else {
        while exp < MAX_EXP && mantissas.iter().all(|m| m % 10 == 0) {
            mantissas.iter_mut().for_each(|m| *m /= 10);
            exp += 1;
        }
    }
    let residuals: Vec<i64> = values
        .iter()
        .zip(&mantissas)
        .map(|(&v, &m)| ordered_bits(v).wrapping_sub(ordered_bits(unscale(m, exp))))
        .collect();
    let residuals = (!residuals.iter().all(|&r| r == 0)).then(|| ints::Column::new(residuals));
    let mantissas = ints::Column::new(mantissas);
    let size = 1
        + ivarint_len(i64::from(exp))
        + mantissas.size()
        + residuals.as_ref().map_or(0, ints::Column::size);
    Decimal {
        exp,
        mantissas,
        residuals,
        size,
    }
}

/// The smallest exponent at which every exact value of the column is exact; `None` when
/// there is none or more than a quarter of the values are not decimals (the column is
/// not worth converting, and the search stops early).
pub(crate) fn column_exponent(values: &[f64]) -> Option<i32> {
    let mut min: Option<i32> = None;
    let mut inexact = 0usize;
    for &v in values {
        match exact_exponent(v) {
            Some(Some(e)) => min = Some(min.map_or(e, |m| m.min(e))),
            Some(None) => {}
            None => {
                inexact += 1;
                if inexact * 4 > values.len() {
                    return None;
                }
            }
        }
    }
    min
}

/// The exponent at which `v * d` is a decimal `m * 10^e` with `(m * 10^e) / d == v`.
fn divided_exponent(v: f64, d: f64) -> Option<i32> {
    let w = v * d;
    (0..=DIVIDED_MAX_DECIMALS).map(|k| -k).find(|&e| {
        mantissa(w, e).is_some_and(|m| {
            (m.unsigned_abs() as f64) <= EXACT_MANTISSA
                && (unscale(m, e) / d).to_bits() == v.to_bits()
        })
    })
}

/// A column whose values are decimals divided by one small integer: `(d, e, mantissas)`.
fn divided(values: &[f64]) -> Option<(u32, i32, Vec<i64>)> {
    let probe = values
        .iter()
        .copied()
        .find(|&v| v.is_finite() && v != 0.0 && exact_exponent(v).is_none())?;
    let d = (2..=MAX_DIVISOR).find(|&d| divided_exponent(probe, f64::from(d)).is_some())?;
    let df = f64::from(d);
    let mut exp: Option<i32> = None;
    for &v in values {
        if v.to_bits() != 0 {
            let e = divided_exponent(v, df)?;
            exp = Some(exp.map_or(e, |x| x.min(e)));
        }
    }
    let mut exp = exp.unwrap_or(0);
    let mut m: Vec<i64> = values
        .iter()
        .map(|&v| mantissa(v * df, exp))
        .collect::<Option<_>>()?;
    while exp < 0 && m.iter().all(|m| m % 10 == 0) {
        m.iter_mut().for_each(|m| *m /= 10);
        exp += 1;
    }
    let exact = values
        .iter()
        .zip(&m)
        .all(|(&v, &m)| (unscale(m, exp) / df).to_bits() == v.to_bits());
    exact.then_some((d, exp, m))
}

/// Exponent and mantissas of `values` when every one is an exact decimal at one exponent.
#[cfg(feature = "codec-eval")]
pub(crate) fn exact_decimal(values: &[f64]) -> Option<(i32, Vec<i64>)> {
    let exp = column_exponent(values).unwrap_or(0);
    let d = decimal_at(values, exp);
    d.residuals
        .is_none()
        .then(|| (d.exp, d.mantissas.values().to_vec()))
}

/// Encodes a column (any length; nothing for an empty one). `hint` is a further exponent
/// to try (a rollup passes the exponent of its samples for the sums). Returns the
/// exponent used, when the column went decimal.
pub(crate) fn encode(values: &[f64], hint: Option<i32>, out: &mut Vec<u8>) -> Option<i32> {
    if values.is_empty() {
        return None;
    }
    let mut best: Option<Decimal> = None;
    let own = column_exponent(values).or(if values.iter().all(|v| v.to_bits() == 0) {
        Some(0)
    } else {
        None
    });
    for exp in [own, hint.filter(|&h| Some(h) != own)]
        .into_iter()
        .flatten()
    {
        let d = decimal_at(values, exp.clamp(-MAX_EXP, MAX_EXP));
        if best.as_ref().is_none_or(|b| d.size < b.size) {
            best = Some(d);
        }
    }
    let dec = best.as_ref().map_or(usize::MAX, |d| d.size);
    // Below two bytes a value nothing else wins on real data: skip the other searches.
    let mut div = None;
    let mut div_size = usize::MAX;
    let mut xor = Vec::new();
    let mut xor_size = usize::MAX;
    if dec > 2 * values.len() {
        if best.as_ref().is_none_or(|d| d.residuals.is_some()) {
            if let Some((d, exp, m)) = divided(values) {
                let m = ints::Column::new(m);
                div_size = 1 + uvarint_len(u64::from(d)) + ivarint_len(i64::from(exp)) + m.size();
                div = Some((d, exp, m));
            }
        }
        xor_encode(values, &mut xor);
        xor_size = 1 + xor.len();
    }
    let raw = 1 + 8 * values.len();
    let smallest = dec.min(div_size).min(xor_size).min(raw);
    if let Some(d) = best.filter(|_| dec == smallest) {
        out.push(if d.residuals.is_none() {
            DECIMAL
        } else {
            DECIMAL_RESIDUAL
        });
        put_ivarint(out, i64::from(d.exp));
        d.mantissas.write(out);
        if let Some(r) = &d.residuals {
            r.write(out);
        }
        Some(d.exp)
    } else if let Some((d, exp, m)) = div.filter(|_| div_size == smallest) {
        out.push(DIVIDED);
        put_uvarint(out, u64::from(d));
        put_ivarint(out, i64::from(exp));
        m.write(out);
        None
    } else if xor_size == smallest {
        out.push(XOR);
        out.extend_from_slice(&xor);
        None
    } else {
        out.push(RAW);
        for v in values {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        None
    }
}

/// Reads a column of `n` values, appending them to `out`. The caller bounds `n`.
pub(crate) fn decode(r: &mut Reader<'_>, n: usize, out: &mut Vec<f64>) -> Result<(), ChunkError> {
    if n == 0 {
        return Ok(());
    }
    match r.u8("float column tag")? {
        tag @ (DECIMAL | DECIMAL_RESIDUAL) => {
            let exp = r.ivarint("decimal exponent")?;
            if !(-i64::from(MAX_EXP)..=i64::from(MAX_EXP)).contains(&exp) {
                return Err(ChunkError::Corrupt(format!("decimal exponent {exp}")));
            }
            let exp = exp as i32;
            let mut m = Vec::new();
            ints::decode(r, n, &mut m)?;
            out.reserve(n);
            if tag == DECIMAL {
                out.extend(m.iter().map(|&m| unscale(m, exp)));
            } else {
                let mut res = Vec::new();
                ints::decode(r, n, &mut res)?;
                out.extend(m.iter().zip(&res).map(|(&m, &res)| {
                    f64::from_bits(from_ordered(
                        ordered_bits(unscale(m, exp)).wrapping_add(res),
                    ))
                }));
            }
        }
        DIVIDED => {
            let d = r.uvarint("divisor")?;
            if !(2..=u64::from(MAX_DIVISOR)).contains(&d) {
                return Err(ChunkError::Corrupt(format!("divisor {d}")));
            }
            let d = d as f64;
            let exp = r.ivarint("decimal exponent")?;
            if !(-i64::from(MAX_EXP)..=i64::from(MAX_EXP)).contains(&exp) {
                return Err(ChunkError::Corrupt(format!("decimal exponent {exp}")));
            }
            let mut m = Vec::new();
            ints::decode(r, n, &mut m)?;
            out.extend(m.iter().map(|&m| unscale(m, exp as i32) / d));
        }
        XOR => {
            let stream = r.peek_rest();
            let used = xor_decode(stream, n, out)?;
            r.bytes(used, "XOR column")?;
        }
        RAW => {
            let bytes = r.bytes(
                n.checked_mul(8)
                    .ok_or(ChunkError::Truncated { what: "raw column" })?,
                "raw column",
            )?;
            out.extend(bytes.chunks_exact(8).map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_bits(u64::from_le_bytes(b))
            }));
        }
        t => return Err(ChunkError::Corrupt(format!("unknown float column tag {t}"))),
    }
    Ok(())
}

/// MSB-first bit writer.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    bits: u32,
}

impl BitWriter<'_> {
    fn put(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.acc = (self.acc << n) | u128::from(value & mask);
        self.bits += n;
        while self.bits >= 8 {
            self.bits -= 8;
            self.out.push((self.acc >> self.bits) as u8);
        }
        self.acc &= (1u128 << self.bits) - 1;
    }

    fn finish(self) {
        if self.bits > 0 {
            self.out.push((self.acc << (8 - self.bits)) as u8);
        }
    }
}

/// MSB-first bit reader over untrusted bytes.
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn left(&self) -> usize {
        self.buf.len() * 8 - self.pos
    }

    fn get(&mut self, n: u32) -> Result<u64, ChunkError> {
        if n as usize > self.left() {
            return Err(ChunkError::Truncated { what: "XOR column" });
        }
        let mut v = 0u64;
        let mut need = n;
        while need > 0 {
            let byte = self.buf[self.pos / 8];
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(need);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = if take == 64 { bits } else { (v << take) | bits };
            self.pos += take as usize;
            need -= take;
        }
        Ok(v)
    }
}

/// Gorilla: the first value's bits, then per value `0` (same bits) or `1` and the XOR with
/// the previous value: `0` + the meaningful bits in the previous window, or `1`, 5 bits of
/// leading zeros, 6 bits of length - 1, and the meaningful bits.
fn xor_encode(values: &[f64], out: &mut Vec<u8>) {
    let mut w = BitWriter {
        out,
        acc: 0,
        bits: 0,
    };
    let mut prev = values[0].to_bits();
    w.put(prev, 64);
    let mut window: Option<(u32, u32)> = None;
    for v in &values[1..] {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.put(0, 1);
            continue;
        }
        let lz = x.leading_zeros().min(31);
        let tz = x.trailing_zeros();
        match window {
            Some((plz, ptz)) if lz >= plz && tz >= ptz => {
                w.put(0b10, 2);
                w.put(x >> ptz, 64 - plz - ptz);
            }
            _ => {
                let sig = 64 - lz - tz;
                w.put(0b11, 2);
                w.put(u64::from(lz), 5);
                w.put(u64::from(sig - 1), 6);
                w.put(x >> tz, sig);
                window = Some((lz, tz));
            }
        }
    }
    w.finish();
}

/// Decodes `n` values from `buf`; returns the bytes used.
fn xor_decode(buf: &[u8], n: usize, out: &mut Vec<f64>) -> Result<usize, ChunkError> {
    let mut r = BitReader { buf, pos: 0 };
    let mut prev = r.get(64)?;
    if n - 1 > r.left() {
        // Every further value takes at least one bit.
        return Err(ChunkError::Truncated { what: "XOR column" });
    }
    out.reserve(n);
    out.push(f64::from_bits(prev));
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..n {
        if r.get(1)? == 1 {
            let x = if r.get(1)? == 0 {
                let (lz, tz) = window.ok_or_else(|| {
                    ChunkError::Corrupt("XOR column reuses a window it never set".into())
                })?;
                r.get(64 - lz - tz)? << tz
            } else {
                let lz = r.get(5)? as u32;
                let sig = r.get(6)? as u32 + 1;
                if lz + sig > 64 {
                    return Err(ChunkError::Corrupt("XOR column window past 64 bits".into()));
                }
                let tz = 64 - lz - sig;
                window = Some((lz, tz));
                let m = r.get(sig)?;
                if tz == 0 {
                    m
                } else {
                    m << tz
                }
            };
            prev ^= x;
        }
        out.push(f64::from_bits(prev));
    }
    Ok(r.pos.div_ceil(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[f64]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(values, None, &mut out);
        let mut r = Reader::new(&out);
        let mut back = Vec::new();
        decode(&mut r, values.len(), &mut back).expect("decodes");
        assert_eq!(r.remaining(), 0);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(values), "{values:?}");
        out
    }

    #[test]
    fn decimals_are_found_and_round_trip() {
        assert_eq!(exact_exponent(42.5), Some(Some(-1)));
        assert_eq!(exact_exponent(0.07), Some(Some(-2)));
        assert_eq!(exact_exponent(3221225472.0), Some(Some(0)));
        assert_eq!(exact_exponent(1e20), Some(Some(5))); // 1e15 * 10^5
        assert_eq!(exact_exponent(0.0), Some(None));
        assert_eq!(exact_exponent(-0.0), None);
        assert_eq!(exact_exponent(0.1 + 0.2), None);
        assert_eq!(exact_exponent(f64::NAN), None);
        let cpu = [12.5, 13.07, 11.93, 40.0, 0.01, 99.99];
        assert_eq!(round_trip(&cpu)[0], DECIMAL);
        let bytes = [4096.0 * 1000.0, 4096.0 * 1003.0, 4096.0 * 999.0];
        assert_eq!(round_trip(&bytes)[0], DECIMAL);
        // Trailing zeros move into the exponent: 1000, 2000, 3000 are 1, 2, 3 e3.
        let mut out = Vec::new();
        encode(&[1000.0, 2000.0, 3000.0], None, &mut out);
        assert_eq!(out[..2], [DECIMAL, 6]); // tag, zigzag(3)
    }

    #[test]
    fn sums_with_rounding_go_decimal_with_residuals() {
        let mut sums = Vec::new();
        let mut s = 0.0;
        for i in 0..40 {
            s += [0.1, 0.2, 0.07, 1.13][i % 4];
            sums.push(s);
        }
        assert!(sums.iter().any(|v| exact_exponent(*v).is_none()));
        let mut out = Vec::new();
        encode(&sums, Some(-2), &mut out);
        assert_eq!(out[0], DECIMAL_RESIDUAL);
        assert!(out.len() < 3 * sums.len(), "{} bytes", out.len());
        round_trip(&sums);
    }

    #[test]
    fn decimals_divided_by_a_core_count_are_found() {
        for cores in [3.0, 6.0, 12.0, 24.0, 48.0, 96.0] {
            let loads: Vec<f64> = [0.53, 1.07, 2.5, 0.0, 13.99, 0.01, 7.1]
                .iter()
                .map(|l| l / cores)
                .collect();
            assert_eq!(column_exponent(&loads), None, "{cores}");
            let out = round_trip(&loads);
            assert_eq!(out[0], DIVIDED, "{cores} cores: {out:?}");
            assert!(
                out.len() < 2 * loads.len() + 6,
                "{cores} cores: {} bytes",
                out.len()
            );
        }
        // A column that only looks divided at its first value falls back.
        let mixed = [0.53 / 3.0, 0.1 + 0.2, 1.0 / 7.0, std::f64::consts::PI];
        assert_ne!(round_trip(&mixed)[0], DIVIDED);
    }

    #[test]
    fn every_bit_pattern_round_trips() {
        let edge = [
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            0.1 + 0.2,
            1.0 / 3.0,
            123_456_789.012_345_67,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            9_007_199_254_740_993.0,
            1.5e-20,
        ];
        round_trip(&edge);
        for v in edge {
            round_trip(&[v]);
            round_trip(&[v, v, v]);
            round_trip(&[1.5, v, 2.25]);
        }
        round_trip(&[-0.0, -0.0, 0.0]);
        let thirds: Vec<f64> = (0..100).map(|i| f64::from(i) / 3.0).collect();
        round_trip(&thirds);
        let noise: Vec<f64> = (0..64)
            .map(|i| f64::from_bits(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i + 1)))
            .collect();
        round_trip(&noise);
    }

    #[test]
    fn hostile_columns_fail_cleanly() {
        for bytes in [
            vec![XOR, 1, 2, 3],
            vec![XOR, 0, 0, 0, 0, 0, 0, 0, 0, 0b1000_0000],
            vec![DECIMAL, 100, 0, 0],
            vec![RAW, 1, 2],
            vec![DIVIDED, 1, 0, 0, 0],
            vec![DIVIDED, 200, 1, 0, 0, 0],
            vec![9],
        ] {
            let mut r = Reader::new(&bytes);
            assert!(decode(&mut r, 3, &mut Vec::new()).is_err(), "{bytes:?}");
        }
    }
}
