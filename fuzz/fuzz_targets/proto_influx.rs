//! An Influx line-protocol body; the first byte picks the precision (ns, us, ms, s, m, h).
//! Beyond not panicking (timestamps scale with checked arithmetic): a refusal is a 400 or
//! 413 naming a line or the body, and accepted samples are inside every limit, named in
//! the charsets, labels sorted.
#![no_main]

use fleet_fuzz::*;
use fleet_protocols::influx::{self, Precision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("proto_influx"), |data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let precision = [
        Precision::Nanoseconds,
        Precision::Microseconds,
        Precision::Milliseconds,
        Precision::Seconds,
        Precision::Minutes,
        Precision::Hours,
    ][usize::from(mode) % 6];
    let limits = protocol_limits();
    let result = influx::parse(body, precision, NOW, &limits);
    assert_protocol(&result, &limits);
});
