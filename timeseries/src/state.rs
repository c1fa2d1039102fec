//! The stored form of a [`PartitionState`]: varints, length-prefixed strings.
//!
//! ```text
//! u8 version (1) · varint next_offset (zigzag) · varint watermark (zigzag) · varint agents
//! per agent: varint len, tenant · varint len, agent · varint max_ts (zigzag) · varint last_ingested (zigzag)
//! ```
//! The topic and partition are the key, not part of the value.

use crate::error::ChunkError;
use crate::store::{AgentKey, OpenAgent, PartitionState};
use crate::wire::{put_ivarint, put_uvarint, Reader};

const VERSION: u8 = 1;

/// Encodes the state (without topic and partition, which key it).
pub(crate) fn encode_state(s: &PartitionState) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + s.agents.len() * 64);
    out.push(VERSION);
    put_ivarint(&mut out, s.next_offset);
    put_ivarint(&mut out, s.watermark);
    put_uvarint(&mut out, s.agents.len() as u64);
    for a in &s.agents {
        for text in [&*a.agent.tenant, &*a.agent.agent] {
            put_uvarint(&mut out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        put_ivarint(&mut out, a.max_ts);
        put_ivarint(&mut out, a.last_ingested);
    }
    out
}

/// Decodes what [`encode_state`] wrote, for `topic`/`partition`.
pub(crate) fn decode_state(
    bytes: &[u8],
    topic: &str,
    partition: u32,
) -> Result<PartitionState, ChunkError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("partition state version")?;
    if version != VERSION {
        return Err(ChunkError::UnsupportedVersion(version));
    }
    let next_offset = r.ivarint("next offset")?;
    let watermark = r.ivarint("watermark")?;
    let n = r.uvarint("agent count")?;
    // Each agent takes at least 4 bytes: a hostile count cannot make us allocate more
    // than the input justifies.
    if n > (bytes.len() / 4) as u64 {
        return Err(ChunkError::Corrupt(format!(
            "{n} agents in {} bytes",
            bytes.len()
        )));
    }
    let mut agents = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut text = || -> Result<String, ChunkError> {
            let len = r.uvarint("name length")?;
            let raw = r.bytes(usize::try_from(len).unwrap_or(usize::MAX), "name")?;
            String::from_utf8(raw.to_vec())
                .map_err(|_| ChunkError::Corrupt("a name is not UTF-8".into()))
        };
        let tenant = text()?;
        let agent = text()?;
        agents.push(OpenAgent {
            agent: AgentKey::new(&tenant, &agent),
            max_ts: r.ivarint("max_ts")?,
            last_ingested: r.ivarint("last_ingested")?,
        });
    }
    Ok(PartitionState {
        topic: topic.to_owned(),
        partition,
        next_offset,
        watermark,
        agents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let s = PartitionState {
            topic: "fleet.metrics.v1".into(),
            partition: 3,
            next_offset: 12_345,
            watermark: -7,
            agents: vec![
                OpenAgent {
                    agent: AgentKey::new("t", "a1"),
                    max_ts: 1_700_000_000_000_000,
                    last_ingested: i64::MIN,
                },
                OpenAgent {
                    agent: AgentKey::new("t2", "ägent"),
                    max_ts: i64::MAX,
                    last_ingested: 0,
                },
            ],
        };
        let bytes = encode_state(&s);
        assert_eq!(decode_state(&bytes, "fleet.metrics.v1", 3).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(decode_state(&bytes[..cut], "t", 0).is_err(), "cut at {cut}");
        }
        assert!(decode_state(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f], "t", 0).is_err());
    }
}
