//! An OTLP/HTTP metrics body: the first byte picks protobuf (even) or JSON (odd). Beyond
//! not panicking: a refusal is a 400 or 413 naming a field, and accepted samples are
//! inside every limit, named in the charsets, labels sorted.
#![no_main]

use fleet_fuzz::*;
use fleet_protocols::otlp::{self, Encoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("proto_otlp"), |data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let limits = protocol_limits();
    let encoding = if mode % 2 == 0 { Encoding::Protobuf } else { Encoding::Json };
    let result = otlp::parse(body, encoding, &limits);
    assert_protocol(&result, &limits);
});
