//! Our block encoding against the alternatives, on the same blocks (one agent-hour each)
//! of the realistic fleet and of the constant fixture: bytes per sample, encode and decode
//! time per sample on one core (for "our payload + X" the decode time is the final stage
//! only).
//!
//! * ours: `chunk::encode` / `chunk::decode` (decimal + delta modes + XOR fallback,
//!   shared timestamps, zstd over the payload);
//! * our payload under another final stage: none, zstd at other levels, lz4_flex;
//! * pco (`pco::standalone`, default level) per column: the timestamp column and each
//!   series' values as f64, and again with our decimal mantissas as i64;
//! * tsz-compress (delta / delta-of-delta bit packing of integers): the timestamp column
//!   and our decimal mantissas (a series that is not decimal costs 8 bytes a value);
//! * bitpacking (`BitPacker4x`, blocks of 128 u32): zigzag deltas of the same integer
//!   columns, a byte of bit width per block, the tail as varints.
//!
//! The alternatives get the series names as zstd'd text and no presence (every series in
//! these data sets is dense but the backup disk's), so they are favoured slightly.
//!
//! usage: cargo bench -p fleet-timeseries --bench codecs --features codec-eval
//! Environment: BENCH_AGENTS (default 50), BENCH_HOURS (default 2).

#![allow(clippy::print_stdout)] // a bench prints its figures

extern crate alloc; // tsz-compress' derive macros name `::alloc`

mod support;

use std::time::{Duration, Instant};

use bitpacking::{BitPacker, BitPacker4x};
use fleet_timeseries::{chunk, eval, Block};
use support::{blocks, env_usize, Kind, Shape, HOUR_MICROS};

mod tsz_row {
    #![allow(missing_debug_implementations, unreachable_pub, clippy::all)]
    use tsz_compress::prelude::*;

    #[derive(Debug, Copy, Clone, CompressV2, DecompressV2)]
    pub struct Col {
        pub v: i64,
    }

    pub use compress::ColCompressorImpl;
    pub use decompress::ColDecompressorImpl;
}

/// One block as columns: timestamp offsets, then per series its present values.
struct Columns {
    names: String,
    ts: Vec<i64>,
    values: Vec<Vec<f64>>,
    /// Our decimal mantissas, where the series is decimal.
    decimal: Vec<Option<Vec<i64>>>,
}

fn columns(b: &Block) -> Columns {
    let first = b.timestamps().first().copied().unwrap_or(0);
    let values: Vec<Vec<f64>> = b
        .series()
        .iter()
        .map(|s| s.values().iter().flatten().copied().collect())
        .collect();
    Columns {
        names: b
            .series()
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join("\n"),
        ts: b.timestamps().iter().map(|t| t - first).collect(),
        decimal: values
            .iter()
            .map(|v| eval::decimal(v).map(|d| d.1))
            .collect(),
        values,
    }
}

fn names_bytes(c: &Columns) -> usize {
    zstd::bulk::compress(c.names.as_bytes(), 3).map_or(c.names.len(), |z| z.len())
}

struct Figure {
    name: String,
    bytes: usize,
    encode: Duration,
    decode: Duration,
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn ours(blocks: &[Block]) -> Figure {
    let (enc, encode) = time(|| blocks.iter().map(chunk::encode).collect::<Vec<_>>());
    let (_, decode) = time(|| {
        for e in &enc {
            std::hint::black_box(chunk::decode(e).expect("decodes"));
        }
    });
    Figure {
        name: format!("ours (zstd {})", eval::ZSTD_LEVEL),
        bytes: enc.iter().map(Vec::len).sum(),
        encode,
        decode,
    }
}

/// Our payload through another final stage; the encode time includes making the payload.
fn ours_with(
    blocks: &[Block],
    name: &str,
    compress: impl Fn(&[u8]) -> Vec<u8>,
    decompress: impl Fn(&[u8]) -> Vec<u8>,
) -> Figure {
    let (parts, prepare) = time(|| blocks.iter().map(eval::chunk_parts).collect::<Vec<_>>());
    let (enc, squeeze) = time(|| {
        parts
            .iter()
            .map(|(prefix, payload)| (prefix.len() + 2, compress(payload)))
            .collect::<Vec<_>>()
    });
    let (_, decode) = time(|| {
        for (_, z) in &enc {
            std::hint::black_box(decompress(z));
        }
    });
    Figure {
        name: name.to_owned(),
        bytes: enc.iter().map(|(p, z)| p + z.len()).sum(),
        encode: prepare + squeeze,
        decode,
    }
}

fn pco_figure(cols: &[Columns], mantissas: bool) -> Figure {
    let config = pco::ChunkConfig::default();
    let (enc, encode) = time(|| {
        cols.iter()
            .map(|c| {
                let mut parts: Vec<(bool, Vec<u8>)> = Vec::new();
                parts.push((
                    true,
                    pco::standalone::simple_compress(&c.ts, &config).expect("pco"),
                ));
                for (v, d) in c.values.iter().zip(&c.decimal) {
                    match d.as_ref().filter(|_| mantissas) {
                        Some(m) => parts.push((
                            true,
                            pco::standalone::simple_compress(m, &config).expect("pco"),
                        )),
                        None => parts.push((
                            false,
                            pco::standalone::simple_compress(v, &config).expect("pco"),
                        )),
                    }
                }
                (names_bytes(c), parts)
            })
            .collect::<Vec<_>>()
    });
    let (_, decode) = time(|| {
        for (_, parts) in &enc {
            for (int, p) in parts {
                if *int {
                    std::hint::black_box(
                        pco::standalone::simple_decompress::<i64>(p).expect("pco"),
                    );
                } else {
                    std::hint::black_box(
                        pco::standalone::simple_decompress::<f64>(p).expect("pco"),
                    );
                }
            }
        }
    });
    Figure {
        name: if mantissas {
            "pco, our decimal mantissas"
        } else {
            "pco, f64 values"
        }
        .to_owned(),
        bytes: enc
            .iter()
            .map(|(n, parts)| n + parts.iter().map(|p| p.1.len()).sum::<usize>())
            .sum(),
        encode,
        decode,
    }
}

fn tsz_figure(cols: &[Columns]) -> Figure {
    use tsz_compress::prelude::{TszCompressV2 as _, TszDecompressV2 as _};
    let column = |v: &[i64]| {
        let mut c = tsz_row::ColCompressorImpl::new(v.len());
        for &x in v {
            c.compress(tsz_row::Col { v: x });
        }
        c.finish()
    };
    let (enc, encode) = time(|| {
        cols.iter()
            .map(|c| {
                let mut bytes = names_bytes(c) + column(&c.ts).len();
                let mut out = vec![column(&c.ts)];
                for (v, d) in c.values.iter().zip(&c.decimal) {
                    match d {
                        Some(m) => {
                            let z = column(m);
                            bytes += z.len();
                            out.push(z);
                        }
                        None => bytes += 8 * v.len(),
                    }
                }
                (bytes, out)
            })
            .collect::<Vec<_>>()
    });
    let (_, decode) = time(|| {
        for (_, cols) in &enc {
            for z in cols {
                let mut d = tsz_row::ColDecompressorImpl::new();
                d.decompress(z).expect("tsz");
                std::hint::black_box(d.col_v());
            }
        }
    });
    Figure {
        name: "tsz-compress, our decimal mantissas".to_owned(),
        bytes: enc.iter().map(|e| e.0).sum(),
        encode,
        decode,
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Zigzag deltas of `v` as u32 blocks of 128 (bit width byte + packed), tail as varints;
/// `None` when a delta does not fit in 32 bits.
fn bitpack(v: &[i64], packer: &BitPacker4x) -> Option<Vec<u8>> {
    let mut deltas = Vec::with_capacity(v.len());
    let mut prev = 0i64;
    for &x in v {
        deltas.push(u32::try_from(zigzag(x.wrapping_sub(prev))).ok()?);
        prev = x;
    }
    let mut out = Vec::new();
    let mut chunks = deltas.chunks_exact(BitPacker4x::BLOCK_LEN);
    let mut buf = vec![0u8; 4 * BitPacker4x::BLOCK_LEN];
    for block in &mut chunks {
        let bits = packer.num_bits(block);
        let n = packer.compress(block, &mut buf, bits);
        out.push(bits);
        out.extend_from_slice(&buf[..n]);
    }
    for &d in chunks.remainder() {
        let mut d = d;
        while d >= 0x80 {
            out.push((d as u8) | 0x80);
            d >>= 7;
        }
        out.push(d as u8);
    }
    Some(out)
}

fn unbitpack(bytes: &[u8], n: usize, packer: &BitPacker4x) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    let mut block = vec![0u32; BitPacker4x::BLOCK_LEN];
    let mut prev = 0i64;
    let mut push = |d: u32, out: &mut Vec<i64>| {
        let d = u64::from(d);
        prev = prev.wrapping_add(((d >> 1) as i64) ^ -((d & 1) as i64));
        out.push(prev);
    };
    for _ in 0..n / BitPacker4x::BLOCK_LEN {
        let bits = bytes[pos];
        pos += 1;
        pos += packer.decompress(&bytes[pos..], &mut block, bits);
        for &d in &block {
            push(d, &mut out);
        }
    }
    while out.len() < n {
        let (mut d, mut shift) = (0u32, 0);
        loop {
            let b = bytes[pos];
            pos += 1;
            d |= u32::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        push(d, &mut out);
    }
    out
}

fn bitpacking_figure(cols: &[Columns]) -> Figure {
    let packer = BitPacker4x::new();
    let (enc, encode) = time(|| {
        cols.iter()
            .map(|c| {
                let mut bytes = names_bytes(c);
                let mut out = Vec::new();
                for col in std::iter::once(Some(&c.ts)).chain(c.decimal.iter().map(Option::as_ref))
                {
                    if let Some((n, b)) =
                        col.and_then(|m| bitpack(m, &packer).map(|b| (m.len(), b)))
                    {
                        bytes += b.len();
                        out.push((n, b));
                    }
                }
                for (v, d) in c.values.iter().zip(&c.decimal) {
                    if d.as_ref().is_none_or(|m| bitpack(m, &packer).is_none()) {
                        bytes += 8 * v.len();
                    }
                }
                (bytes, out)
            })
            .collect::<Vec<_>>()
    });
    let (_, decode) = time(|| {
        for (_, cols) in &enc {
            for (n, b) in cols {
                std::hint::black_box(unbitpack(b, *n, &packer));
            }
        }
    });
    Figure {
        name: "bitpacking 4x, our decimal mantissas".to_owned(),
        bytes: enc.iter().map(|e| e.0).sum(),
        encode,
        decode,
    }
}

fn main() {
    let shape = Shape {
        agents: env_usize("BENCH_AGENTS", 50),
        hours: env_usize("BENCH_HOURS", 2),
        interval_micros: 10_000_000,
        start_micros: 1_790_000_000_000_000 / HOUR_MICROS * HOUR_MICROS,
    };
    println!(
        "{} agents x {} h at 10 s, blocks of one agent-hour; times on one core",
        shape.agents, shape.hours
    );
    for kind in [Kind::Realistic, Kind::Constant] {
        let (blocks, samples) = blocks(kind, shape);
        let cols: Vec<Columns> = blocks.iter().map(columns).collect();
        let mut figures = vec![ours(&blocks)];
        figures.push(ours_with(
            &blocks,
            "our payload, no final stage",
            <[u8]>::to_vec,
            <[u8]>::to_vec,
        ));
        for level in [1, 3, 6, 9, 15, 19] {
            figures.push(ours_with(
                &blocks,
                &format!("our payload + zstd {level}"),
                |p| zstd::bulk::compress(p, level).expect("zstd"),
                |z| zstd::stream::decode_all(z).expect("zstd"),
            ));
        }
        figures.push(ours_with(
            &blocks,
            "our payload + lz4_flex",
            lz4_flex::compress_prepend_size,
            |z| lz4_flex::decompress_size_prepended(z).expect("lz4"),
        ));
        figures.push(pco_figure(&cols, false));
        figures.push(pco_figure(&cols, true));
        figures.push(tsz_figure(&cols));
        figures.push(bitpacking_figure(&cols));

        println!(
            "\n== {}: {} blocks, {samples} samples",
            kind.name(),
            blocks.len()
        );
        println!("| encoding | bytes/sample | encode ns/sample | decode ns/sample |");
        println!("| --- | --- | --- | --- |");
        for f in figures {
            println!(
                "| {} | {:.3} | {:.1} | {:.1} |",
                f.name,
                f.bytes as f64 / samples as f64,
                f.encode.as_nanos() as f64 / samples as f64,
                f.decode.as_nanos() as f64 / samples as f64
            );
        }
    }
}
