//! Byte-level building blocks shared by the chunk and rollup formats: LEB128 varints,
//! zigzag, a bounds-checked reader, the order-preserving integer view of an `f64`, and the
//! envelope (format byte, flags, optional zstd).

use std::borrow::Cow;
use std::cell::RefCell;

use crate::error::ChunkError;

/// Payloads up to this many bytes are stored as they are: zstd's frame overhead (about a
/// dozen bytes) eats what it could save on them.
pub(crate) const ZSTD_MIN_BYTES: usize = 128;

/// zstd level of every chunk and rollup encoding. Measured on the fleet data of the
/// `codecs` bench: see the crate docs.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// The largest decompressed payload a decoder accepts (bounds memory on hostile input).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Flag bit: the payload is one zstd frame, preceded by its decompressed length.
const FLAG_ZSTD: u8 = 1;

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint.
pub(crate) fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

/// Bytes `put_uvarint(v)` writes.
pub(crate) fn uvarint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes 1 byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes `put_ivarint(v)` writes.
pub(crate) fn ivarint_len(v: i64) -> usize {
    uvarint_len(zigzag(v))
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// The bits of `v` as an integer that orders like the floats (negative below positive,
/// `-0.0` right below `+0.0`); its own inverse.
pub(crate) fn ordered_bits(v: f64) -> i64 {
    from_ordered(v.to_bits() as i64) as i64
}

/// Inverse of [`ordered_bits`], returning raw `f64` bits.
pub(crate) fn from_ordered(o: i64) -> u64 {
    if o < 0 {
        (o ^ i64::MAX) as u64
    } else {
        o as u64
    }
}

/// A bounds-checked cursor over untrusted bytes: every read fails with
/// [`ChunkError::Truncated`] instead of panicking.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ChunkError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(ChunkError::Truncated { what })?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ChunkError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ChunkError::Truncated { what })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The unread rest, without consuming it.
    pub(crate) fn peek_rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The unread rest, consuming it.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn uvarint(&mut self, what: &'static str) -> Result<u64, ChunkError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(ChunkError::Corrupt(format!(
                    "{what}: varint overflows 64 bits"
                )));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError::Corrupt(format!(
            "{what}: varint longer than 10 bytes"
        )))
    }

    pub(crate) fn ivarint(&mut self, what: &'static str) -> Result<i64, ChunkError> {
        self.uvarint(what).map(unzigzag)
    }

    /// A count that must not exceed `max`.
    pub(crate) fn count(&mut self, what: &'static str, max: usize) -> Result<usize, ChunkError> {
        let v = self.uvarint(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(ChunkError::TooLarge {
                what,
                value: v,
                limit: max as u64,
            })
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), ChunkError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(ChunkError::Corrupt(format!(
                "{what}: {} unexpected bytes at the end",
                self.remaining()
            )))
        }
    }
}

thread_local! {
    /// One zstd context per thread: creating one costs more than compressing a small chunk.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn compress(payload: &[u8]) -> Vec<u8> {
    let attempt = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut().and_then(|c| c.compress(payload).ok())
    });
    // A context that cannot be made (out of memory) leaves the payload uncompressed:
    // still a valid encoding.
    attempt.unwrap_or_default()
}

/// Writes `[version, flags]`, the uncompressed `prefix`, then the payload: as it is when it
/// is small, else as one zstd frame preceded by its decompressed length (when that is
/// smaller).
pub(crate) fn seal(version: u8, prefix: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + prefix.len() + payload.len() / 2 + 16);
    out.push(version);
    if payload.len() > ZSTD_MIN_BYTES {
        let z = compress(payload);
        if !z.is_empty() && z.len() + uvarint_len(payload.len() as u64) < payload.len() {
            out.push(FLAG_ZSTD);
            out.extend_from_slice(prefix);
            put_uvarint(&mut out, payload.len() as u64);
            out.extend_from_slice(&z);
            return out;
        }
    }
    out.push(0);
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
    out
}

/// Reads the format byte and flags of an encoding made by [`seal`]; fails unless the
/// format is `version`.
pub(crate) fn open_envelope<'a>(
    bytes: &'a [u8],
    version: u8,
) -> Result<(u8, Reader<'a>), ChunkError> {
    let mut r = Reader::new(bytes);
    let v = r.u8("format version")?;
    if v != version {
        return Err(ChunkError::UnsupportedVersion(v));
    }
    let flags = r.u8("flags")?;
    if flags & !FLAG_ZSTD != 0 {
        return Err(ChunkError::Corrupt(format!("unknown flags {flags:#04x}")));
    }
    Ok((flags, r))
}

thread_local! {
    /// One zstd decompression context per thread, as for compression: making one per
    /// decode cost more than decoding a small chunk.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The payload after the prefix: the rest of `r`, decompressed when `flags` say so.
/// Memory stays bounded: the frame must state its decompressed size in its header (every
/// encoder of ours writes it), equal to the announced length, at most
/// [`MAX_PAYLOAD_BYTES`], before anything is allocated; it decompresses into exactly
/// that much.
pub(crate) fn open_payload<'a>(flags: u8, r: &mut Reader<'a>) -> Result<Cow<'a, [u8]>, ChunkError> {
    if flags & FLAG_ZSTD == 0 {
        return Ok(Cow::Borrowed(r.rest()));
    }
    let len = r.count("payload length", MAX_PAYLOAD_BYTES)?;
    let frame = r.rest();
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n == len as u64 => {}
        Ok(Some(n)) => {
            return Err(ChunkError::Corrupt(format!(
                "payload frame holds {n} bytes, {len} announced"
            )))
        }
        Ok(None) => {
            return Err(ChunkError::Corrupt(
                "payload frame does not state its size".into(),
            ))
        }
        Err(_) => return Err(ChunkError::Compression("not a zstd frame".into())),
    }
    let mut out = Vec::with_capacity(len);
    DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d.as_mut() {
                // The output never grows past its capacity: a frame longer than
                // announced fails.
                Some(d) => d.decompress_to_buffer(frame, &mut out),
                None => Err(std::io::Error::other("no zstd context")),
            }
        })
        .map_err(|e| ChunkError::Compression(e.to_string()))?;
    if out.len() != len {
        return Err(ChunkError::Corrupt(format!(
            "payload decompressed to {} bytes, {len} announced",
            out.len()
        )));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_know_their_length() {
        let values = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::MAX / 3,
            u64::MAX,
        ];
        for v in values {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            assert_eq!(Reader::new(&out).uvarint("v").ok(), Some(v));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(unzigzag(zigzag(v)), v);
            let mut out = Vec::new();
            put_ivarint(&mut out, v);
            assert_eq!(out.len(), ivarint_len(v));
            assert_eq!(Reader::new(&out).ivarint("v").ok(), Some(v));
        }
        // 11 continuation bytes and a 10th byte over 1 are refused, not wrapped.
        assert!(Reader::new(&[0xff; 11]).uvarint("v").is_err());
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Reader::new(&over).uvarint("v").is_err());
    }

    #[test]
    fn ordered_bits_order_like_floats() {
        let vs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            5e-324,
            1.0,
            f64::INFINITY,
        ];
        for w in vs.windows(2) {
            assert!(ordered_bits(w[0]) < ordered_bits(w[1]), "{} {}", w[0], w[1]);
        }
        assert_eq!(ordered_bits(0.0) - ordered_bits(-0.0), 1);
        for v in vs {
            assert_eq!(from_ordered(ordered_bits(v)), v.to_bits());
        }
    }

    #[test]
    fn envelope_compresses_only_when_it_pays() {
        let small = seal(1, &[7], &[1, 2, 3]);
        assert_eq!(small, vec![1, 0, 7, 1, 2, 3]);
        let big = vec![42u8; 10_000];
        let sealed = seal(1, &[], &big);
        assert!(sealed.len() < 100);
        let (flags, mut r) = open_envelope(&sealed, 1).expect("envelope");
        assert_eq!(
            open_payload(flags, &mut r).expect("payload").as_ref(),
            &big[..]
        );
        assert!(matches!(
            open_envelope(&sealed, 2),
            Err(ChunkError::UnsupportedVersion(1))
        ));
    }

    #[test]
    fn payloads_decompress_only_to_their_announced_size() {
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        let sealed = seal(1, &[], &big);
        // The same frame with another announced length, bytes after the frame, a frame
        // that does not state its size: refused before decompressing.
        let frame_at = 2 + uvarint_len(big.len() as u64);
        let frame = &sealed[frame_at..];
        let with_len = |len: u64, frame: &[u8]| {
            let mut b = vec![1, FLAG_ZSTD];
            put_uvarint(&mut b, len);
            b.extend_from_slice(frame);
            b
        };
        let open = |bytes: &[u8]| {
            let (flags, mut r) = open_envelope(bytes, 1)?;
            open_payload(flags, &mut r).map(|p| p.into_owned())
        };
        assert_eq!(open(&with_len(10_000, frame)).expect("valid"), big);
        for len in [9_999, 10_001, MAX_PAYLOAD_BYTES as u64] {
            assert!(open(&with_len(len, frame)).is_err(), "{len}");
        }
        let mut trailing = frame.to_vec();
        trailing.extend_from_slice(&[0, 1, 2, 3]);
        assert!(open(&with_len(10_000, &trailing)).is_err());
        let mut c = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        std::io::Write::write_all(&mut c, &big).expect("compress");
        let unsized_frame = c.finish().expect("frame");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&unsized_frame).ok(),
            Some(None),
            "a streamed frame does not state its size"
        );
        assert!(open(&with_len(10_000, &unsized_frame)).is_err());
        // Decoding many payloads on one thread reuses its context.
        for _ in 0..3 {
            assert_eq!(open(&sealed).expect("again"), big);
        }
    }
}
