//! Which rows of a shared column a series has a value at: nothing when it has every row
//! (the common case), else the smaller of a bitmap and a list of run lengths (a disk
//! unmounted mid-window is two runs).
//!
//! | tag | data |
//! | --- | --- |
//! | 0 dense | none: present everywhere |
//! | 1 bitmap | one bit per row, least significant first; unused high bits zero |
//! | 2 runs | varint run lengths, alternately absent and present, starting with absent (the first may be 0, the others not) and adding up to the row count |

use crate::error::ChunkError;
use crate::wire::{put_uvarint, uvarint_len, Reader};

const DENSE: u8 = 0;
const BITMAP: u8 = 1;
const RUNS: u8 = 2;

fn runs(mask: &[bool]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut state = false;
    let mut len = 0u64;
    for &p in mask {
        if p == state {
            len += 1;
        } else {
            out.push(len);
            state = p;
            len = 1;
        }
    }
    out.push(len);
    out
}

/// Writes the presence of a series over `mask.len()` rows.
pub(crate) fn encode(mask: &[bool], out: &mut Vec<u8>) {
    if mask.iter().all(|&p| p) {
        out.push(DENSE);
        return;
    }
    let runs = runs(mask);
    let runs_size: usize = runs.iter().map(|&r| uvarint_len(r)).sum();
    if runs_size < mask.len().div_ceil(8) {
        out.push(RUNS);
        runs.iter().for_each(|&r| put_uvarint(out, r));
    } else {
        out.push(BITMAP);
        for chunk in mask.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |b, (i, &p)| b | (u8::from(p) << i));
            out.push(byte);
        }
    }
}

/// Reads the presence of a series over `n` rows (the caller bounds `n`).
pub(crate) fn decode(r: &mut Reader<'_>, n: usize) -> Result<Vec<bool>, ChunkError> {
    match r.u8("presence tag")? {
        DENSE => Ok(vec![true; n]),
        BITMAP => {
            let bytes = r.bytes(n.div_ceil(8), "presence bitmap")?;
            let mask: Vec<bool> = (0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect();
            if !n.is_multiple_of(8) && bytes[n / 8] >> (n % 8) != 0 {
                return Err(ChunkError::Corrupt(
                    "presence bitmap has bits past its rows".into(),
                ));
            }
            Ok(mask)
        }
        RUNS => {
            let mut mask = Vec::with_capacity(n.min(r.remaining().saturating_mul(128)));
            let mut state = false;
            let mut first = true;
            while mask.len() < n {
                let len = r.uvarint("presence runs")?;
                let left = (n - mask.len()) as u64;
                if len > left || (len == 0 && !first) {
                    return Err(ChunkError::Corrupt(format!("presence run of {len} rows")));
                }
                mask.extend(std::iter::repeat_n(state, len as usize));
                state = !state;
                first = false;
            }
            Ok(mask)
        }
        t => Err(ChunkError::Corrupt(format!("unknown presence tag {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(mask: &[bool]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(mask, &mut out);
        let mut r = Reader::new(&out);
        assert_eq!(decode(&mut r, mask.len()).expect("decodes"), mask);
        assert_eq!(r.remaining(), 0);
        out
    }

    #[test]
    fn dense_runs_and_bitmaps() {
        assert_eq!(round_trip(&[true; 360]), vec![DENSE]);
        let unmounted: Vec<bool> = (0..360).map(|i| i < 120).collect();
        assert_eq!(round_trip(&unmounted), vec![RUNS, 0, 120, 0xf0, 0x01]);
        let mounted_late: Vec<bool> = (0..360).map(|i| i >= 200).collect();
        assert_eq!(round_trip(&mounted_late)[0], RUNS);
        let alternating: Vec<bool> = (0..37).map(|i| i % 2 == 0).collect();
        assert_eq!(round_trip(&alternating)[0], BITMAP);
        round_trip(&[false, true]);
        round_trip(&[]);
    }

    #[test]
    fn hostile_presence_fails_cleanly() {
        for bytes in [
            vec![RUNS, 0, 0],
            vec![RUNS, 5, 9],
            vec![BITMAP],
            vec![BITMAP, 0xff],
            vec![7],
        ] {
            assert!(decode(&mut Reader::new(&bytes), 4).is_err(), "{bytes:?}");
        }
    }
}
