//! Kafka's default partitioner for keyed records.
//!
//! The Java client (`BuiltInPartitioner.partitionForKey`) and librdkafka's `murmur2` /
//! `murmur2_random` partitioners place a keyed record on
//! `toPositive(murmur2(key)) % partitions`, where `murmur2` is MurmurHash2 (32 bit) with
//! seed `0x9747b28c` and little-endian 4-byte blocks (`org.apache.kafka.common.utils.Utils.murmur2`)
//! and `toPositive` clears the sign bit. The embedded log uses the same function, so a key
//! lands on the same partition number in both engines.
//!
//! It is written out here rather than taken from a crate: it is a dozen lines, and the
//! tests below pin it to the vectors of Kafka's `UtilsTest.testMurmur2` and librdkafka's
//! `unittest_murmur2` / `0048-partitioner` tests.

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// Kafka's `Utils.murmur2`: MurmurHash2 (32 bit) with seed `0x9747b28c`.
///
/// Returns the hash as an unsigned integer; Java's `int` result is `murmur2(key) as i32`.
pub fn murmur2(data: &[u8]) -> u32 {
    // The length is mixed in as a Java `int`: truncation to 32 bits is Kafka's behaviour.
    let mut h = SEED ^ (data.len() as u32);

    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // Java's `switch (length % 4)` with fall-through.
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner chooses for a keyed record:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// `partitions` must be at least 1; 0 is treated as 1 (partition 0).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka `clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java`,
    /// `testMurmur2` (Java `int` values).
    #[test]
    fn matches_kafka_utils_test() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// librdkafka `src/rdmurmur2.c`, `unittest_murmur2` (`java_murmur2_results`); covers
    /// every tail length.
    #[test]
    fn matches_librdkafka_unittest() {
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
            ("reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
            ("eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
            ("AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "murmur2({key:?})");
        }
    }

    /// librdkafka `tests/0048-partitioner.c`: the partitions the `murmur2` partitioner
    /// must choose for these keys on a topic with 17 (and, in quick mode, 7) partitions.
    #[test]
    fn matches_librdkafka_partitioner_test() {
        let cases: [(&str, u32); 4] = [
            ("", 0x106e_08d9),
            ("23456", 0x058d_780f),
            (
                "this is another string with more length to it perhaps",
                0x4f77_03da,
            ),
            ("hejsan", 0x5ec1_9395),
        ];
        for (key, hash) in cases {
            for partitions in [7, 17] {
                assert_eq!(
                    partition_for_key(key.as_bytes(), partitions),
                    hash % partitions,
                    "partition of {key:?} among {partitions}"
                );
            }
        }
    }

    #[test]
    fn sign_bit_is_cleared_and_result_in_range() {
        // murmur2("21") is negative as a Java int: toPositive must clear the sign bit,
        // not take the absolute value.
        let h = murmur2(b"21");
        assert!(h & 0x8000_0000 != 0);
        assert_eq!(partition_for_key(b"21", 1000), (h & 0x7fff_ffff) % 1000);
        for n in 1..50u32 {
            let key = n.to_string();
            assert!(partition_for_key(key.as_bytes(), n) < n);
        }
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }
}
