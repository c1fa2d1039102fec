//! Series names, sorted and unique, front-coded: per name the bytes it shares with the
//! previous one, then the length and bytes of the rest (`disk.percent:/` then
//! `disk.percent:/var` costs 2 bytes plus `var`).

use crate::error::ChunkError;
use crate::limits::MAX_NAME_BYTES;
use crate::wire::{put_uvarint, Reader};

/// Writes `names` (strictly increasing).
pub(crate) fn encode<'a>(names: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    let mut prev: &[u8] = &[];
    for name in names {
        let name = name.as_bytes();
        let shared = prev.iter().zip(name).take_while(|(a, b)| a == b).count();
        put_uvarint(out, shared as u64);
        put_uvarint(out, (name.len() - shared) as u64);
        out.extend_from_slice(&name[shared..]);
        prev = name;
    }
}

/// Reads `n` names; fails unless they are valid UTF-8, within the length limit and
/// strictly increasing.
pub(crate) fn decode(r: &mut Reader<'_>, n: usize) -> Result<Vec<String>, ChunkError> {
    // Every name takes at least two bytes.
    if n > r.remaining() / 2 {
        return Err(ChunkError::Truncated {
            what: "series names",
        });
    }
    let mut names: Vec<String> = Vec::with_capacity(n);
    let mut prev: Vec<u8> = Vec::new();
    for _ in 0..n {
        let shared = r.count("series name prefix", prev.len())?;
        let rest = r.count("series name length", MAX_NAME_BYTES)?;
        let tail = r.bytes(rest, "series name")?;
        let mut name = prev[..shared].to_vec();
        name.extend_from_slice(tail);
        if name.len() > MAX_NAME_BYTES {
            return Err(ChunkError::TooLarge {
                what: "series name length",
                value: name.len() as u64,
                limit: MAX_NAME_BYTES as u64,
            });
        }
        if !names.is_empty() && name <= prev {
            return Err(ChunkError::Corrupt(
                "series names are not sorted and unique".into(),
            ));
        }
        let s = String::from_utf8(name.clone())
            .map_err(|_| ChunkError::Corrupt("series name is not UTF-8".into()))?;
        names.push(s);
        prev = name;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_coding_round_trips_and_shares_prefixes() {
        let names = [
            "cpu.percent",
            "disk.percent:/",
            "disk.percent:/var",
            "disk.used_bytes:/",
            "é",
        ];
        let mut out = Vec::new();
        encode(names.iter().copied(), &mut out);
        let plain: usize = names.iter().map(|n| n.len() + 1).sum();
        assert!(out.len() < plain);
        let mut r = Reader::new(&out);
        assert_eq!(decode(&mut r, names.len()).expect("decodes"), names);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn unsorted_or_broken_names_are_refused() {
        let mut out = Vec::new();
        encode(["b", "a"].into_iter(), &mut out);
        assert!(decode(&mut Reader::new(&out), 2).is_err());
        assert!(decode(&mut Reader::new(&[0, 1, 0xff]), 1).is_err());
        assert!(decode(&mut Reader::new(&[5, 1, b'a']), 1).is_err());
    }
}
