//! A protobuf wire scanner: walks the fields of one message without decoding them, so
//! counts (series, labels, samples) are checked against the limits before prost allocates
//! the decoded message (a 2-byte empty message on the wire becomes a 48-byte struct).

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, WireType};

use crate::ProtocolError;

/// Calls `f(tag, payload)` for each length-delimited field of the message in `buf`
/// (skipping the other wire types). A malformed encoding or a group is refused as a
/// malformed `field()`.
pub(crate) fn scan(
    buf: &[u8],
    field: impl Fn() -> String,
    mut f: impl FnMut(u32, &[u8]) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let mut wrapped = Ok(());
    let walked = walk(buf, |tag, payload| {
        f(tag, payload).map_err(|e| {
            wrapped = Err(e);
            String::new()
        })
    });
    wrapped?;
    walked.map_err(|m| ProtocolError::malformed(field(), format!("not valid protobuf: {m}")))
}

fn walk(mut buf: &[u8], mut f: impl FnMut(u32, &[u8]) -> Result<(), String>) -> Result<(), String> {
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => skip(&mut buf, 8, tag)?,
            WireType::ThirtyTwoBit => skip(&mut buf, 4, tag)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= buf.len())
                    .ok_or_else(|| format!("field {tag}: length {len} runs past the end"))?;
                f(tag, &buf[..len])?;
                buf.advance(len);
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(format!("field {tag}: groups are not part of this message"));
            }
        }
    }
    Ok(())
}

fn skip(buf: &mut &[u8], n: usize, tag: u32) -> Result<(), String> {
    if buf.len() < n {
        return Err(format!("field {tag}: truncated"));
    }
    buf.advance(n);
    Ok(())
}

/// Number of varints in a packed repeated field's payload.
pub(crate) fn packed_varints(payload: &[u8]) -> usize {
    payload.iter().filter(|b| **b & 0x80 == 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_fields_and_refuses_overruns_and_groups() {
        // field 1 (len 2, "ab"), field 2 varint 150, field 3 fixed64.
        let msg = [
            0x0A, 2, b'a', b'b', 0x10, 0x96, 0x01, 0x19, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut seen = Vec::new();
        scan(
            &msg,
            || "body".into(),
            |t, p| {
                seen.push((t, p.to_vec()));
                Ok(())
            },
        )
        .expect("valid");
        assert_eq!(seen, vec![(1, b"ab".to_vec())]);
        let err = |b: &[u8]| {
            scan(b, || "body".into(), |_, _| Ok(()))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[0x0A, 5, b'a']).contains("past the end"));
        assert!(err(&[0x0B]).contains("groups"));
        assert!(err(&[0x19, 0, 0]).contains("truncated"));
        assert!(
            err(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
                .starts_with("body: ")
        );
        // The callback's own refusal comes back as it is.
        let own = scan(
            &msg,
            || "body".into(),
            |_, _| Err(ProtocolError::malformed("x", "y")),
        );
        assert_eq!(own, Err(ProtocolError::malformed("x", "y")));
        assert_eq!(packed_varints(&[0x96, 0x01, 0x05, 0x00]), 3);
    }
}
