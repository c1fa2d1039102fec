//! The Fleetstream contract.
//!
//! * `avro/*.avsc` are the source of truth for every record on a topic. The Rust types in
//!   [`records`] derive their Avro schema, and a test asserts that the derived schema's
//!   Parsing Canonical Form equals the `.avsc` file's.
//! * [`codec`] writes and reads Avro single-object encoding (`C3 01`, the CRC-64-AVRO
//!   fingerprint of the writer schema, then the Avro binary datum), so any reader holding
//!   the `.avsc` files can decode any record.
//! * [`topics`] is the topic catalog; [`api`] holds the JSON types agents send to the
//!   gateway; [`ids`] makes deterministic ids; [`samples`] flattens a report into named
//!   metric samples (the metric names rules and charts use); [`series`] names the series of
//!   the standard write protocols and their sources.

pub mod api;
pub mod codec;
pub mod fixtures;
pub mod ids;
pub mod records;
pub mod remote_config;
pub mod rules;
pub mod samples;
pub mod series;
pub mod text;
pub mod time;
pub mod topics;

pub use codec::{CodecError, Record, Wire};
pub use records::*;
