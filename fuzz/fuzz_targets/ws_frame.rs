//! A text frame on the agent WebSocket, read as the gateway reads it (size bounds, the
//! envelope, the payload into its type). Beyond not panicking:
//! * a refused frame gets an error frame the agent can read back, with a status of 400 or
//!   413 naming the field, and the request id when the frame has one;
//! * the gateway agrees with the protocol's own type (`AgentMessage`): whatever that type
//!   reads, the gateway decodes to the same message, and whatever the gateway decodes is
//!   a message of that type.
#![no_main]

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing::{self, Frame};
use fleet_schemas::api::{AgentMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(init: init("ws_frame"), |data: &[u8]| {
    // Text frames are UTF-8 (the WebSocket layer refuses others before the gateway).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let typed = serde_json::from_str::<AgentMessage>(text);
    match fuzzing::ws_frame(text) {
        Frame::Refused(answer) => {
            let ServerMessage::Error {
                id,
                status,
                error,
                retry_after_secs,
            } = &answer
            else {
                panic!("a refusal is an error frame: {answer:?}");
            };
            assert_refusal(*status, error, &[400, 413]);
            assert_eq!(*retry_after_secs, None);
            let wire = serde_json::to_string(&answer).expect("serializes");
            let back: ServerMessage = serde_json::from_str(&wire).expect("the agent reads it");
            assert_eq!(back, answer);
            // (serde_json's `Value` cannot hold every number a frame may carry elsewhere.)
            if let (Some(id), Ok(sent)) = (id, serde_json::from_str::<Map<String, Value>>(text)) {
                assert_eq!(sent.get("id").and_then(Value::as_u64), Some(*id));
            }
            if let Ok(m) = typed {
                panic!("refused a frame the protocol type reads: {m:?} -> {answer:?}");
            }
        }
        Frame::Decoded {
            id,
            kind,
            payload_key,
            payload,
        } => {
            let mut frame = match payload_key {
                Some(key) => Map::from_iter([(key.to_owned(), payload)]),
                None => match payload {
                    Value::Object(fields) => fields,
                    other => panic!("a batch payload is an object: {other}"),
                },
            };
            frame.insert("id".into(), id.into());
            frame.insert("type".into(), kind.into());
            let frame = Value::Object(frame);
            let message: AgentMessage = serde_json::from_value(frame.clone())
                .unwrap_or_else(|e| panic!("decoded a frame that is no message ({e}): {frame}"));
            if let Ok(m) = typed {
                assert_eq!(m, message, "the gateway read another message");
            }
        }
    }
});
