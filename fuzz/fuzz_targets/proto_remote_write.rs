//! A Prometheus remote-write body. The first byte picks the variant: 0 a snappy 1.0 body,
//! 1 an uncompressed 1.0 `WriteRequest`, 2 an uncompressed 2.0 `Request`, 3 a snappy 2.0
//! body. Beyond not panicking or allocating past the limits (the declared snappy length
//! and the wire counts are checked first): a refusal is a 400 or 413 naming a field, and
//! accepted samples are inside every limit, named in the charsets, labels sorted.
#![no_main]

use fleet_fuzz::*;
use fleet_protocols::remote_write::{self, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("proto_remote_write"), |data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let limits = protocol_limits();
    let result = match mode % 4 {
        0 => remote_write::parse(body, Version::V1, &limits),
        1 => remote_write::parse_v1_protobuf(body, &limits),
        2 => remote_write::parse_v2_protobuf(body, &limits),
        _ => remote_write::parse(body, Version::V2, &limits),
    };
    assert_protocol(&result, &limits);
});
