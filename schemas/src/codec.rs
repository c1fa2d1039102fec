//! Avro single-object encoding of Fleetstream records.
//!
//! A record on a topic is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint
//! of the writer schema's Parsing Canonical Form, then the Avro binary datum. A reader looks
//! the writer schema up by fingerprint among the `.avsc` files it knows (current and
//! released versions) and resolves it against its own reader schema.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::{AvroSchema, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::records::{
    AgentEvent, AgentLifecycle, AlertEvent, CommandEvent, Heartbeat, MetricReport, RuleEvent,
    SoftwareInventory, TicketEvent,
};
use crate::topics;

/// The two marker bytes that open every single-object-encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: marker plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes do not start with the Avro single-object marker.
    #[error("not an Avro single-object record: expected marker C3 01, got {0:02X?}")]
    BadMagic(Vec<u8>),
    /// The record is shorter than the header.
    #[error("record truncated: {0} bytes is shorter than the 10-byte single-object header")]
    Truncated(usize),
    /// No known schema has the fingerprint in the header.
    #[error(
        "unknown writer schema fingerprint {0:016x}: not one of the .avsc files this build knows"
    )]
    UnknownSchema(u64),
    /// The writer schema is for a different record type than the one asked for.
    #[error("record is a {found}, expected {expected}")]
    WrongRecord {
        /// Full name expected.
        expected: &'static str,
        /// Full name found in the header's schema.
        found: String,
    },
    /// Avro encoding or decoding failed.
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// The datum has bytes left over after decoding.
    #[error("{0} trailing bytes after the Avro datum")]
    TrailingBytes(usize),
}

/// A schema known to this build.
#[derive(Debug)]
pub struct KnownSchema {
    /// Full name, for example `io.fleetstream.MetricReport`.
    pub full_name: String,
    /// The parsed `.avsc`.
    pub schema: Schema,
    /// Parsing Canonical Form, as the Avro specification defines it.
    pub canonical_form: String,
    /// CRC-64-AVRO fingerprint of the canonical form.
    pub fingerprint: u64,
    /// File the schema came from (relative to `schemas/avro/`).
    pub file: &'static str,
}

/// Every `.avsc` this build carries: (file name, text). Current versions first, then the
/// released older versions (`history/`), which are only decoded (resolved against the
/// current schema), never written.
pub const AVSC_FILES: &[(&str, &str)] = &[
    (
        "metric_report.avsc",
        include_str!("../avro/metric_report.avsc"),
    ),
    ("heartbeat.avsc", include_str!("../avro/heartbeat.avsc")),
    ("agent_event.avsc", include_str!("../avro/agent_event.avsc")),
    ("alert_event.avsc", include_str!("../avro/alert_event.avsc")),
    (
        "agent_lifecycle.avsc",
        include_str!("../avro/agent_lifecycle.avsc"),
    ),
    (
        "command_event.avsc",
        include_str!("../avro/command_event.avsc"),
    ),
    (
        "software_inventory.avsc",
        include_str!("../avro/software_inventory.avsc"),
    ),
    (
        "ticket_event.avsc",
        include_str!("../avro/ticket_event.avsc"),
    ),
    ("rule_event.avsc", include_str!("../avro/rule_event.avsc")),
    // Released versions, still readable (records on the topics were written with them):
    // after every current one, so `Catalog::current` keeps naming the current file.
    (
        "history/agent_lifecycle.v1.avsc",
        include_str!("../avro/history/agent_lifecycle.v1.avsc"),
    ),
];

/// All schemas this build knows, parsed once.
#[derive(Debug)]
pub struct Catalog {
    by_fingerprint: HashMap<u64, usize>,
    by_name: HashMap<String, usize>,
    schemas: Vec<KnownSchema>,
}

impl Catalog {
    fn load() -> Catalog {
        let mut schemas = Vec::new();
        for (file, text) in AVSC_FILES {
            // The files are compiled in and covered by tests; a broken one is a build defect.
            let schema = Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("schemas/avro/{file} does not parse: {e}"));
            let full_name = match &schema {
                Schema::Record(r) => r.name.fullname(None),
                other => panic!("schemas/avro/{file} is not a record schema: {other:?}"),
            };
            let (canonical_form, fingerprint) = canonical_form_and_fingerprint(text)
                .unwrap_or_else(|e| panic!("schemas/avro/{file}: {e}"));
            schemas.push(KnownSchema {
                full_name,
                schema,
                canonical_form,
                fingerprint,
                file,
            });
        }
        let mut by_fingerprint = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, s) in schemas.iter().enumerate() {
            by_fingerprint.insert(s.fingerprint, i);
            by_name.entry(s.full_name.clone()).or_insert(i);
        }
        Catalog {
            by_fingerprint,
            by_name,
            schemas,
        }
    }

    /// The catalog of this build.
    pub fn get() -> &'static Catalog {
        static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::load);
        &CATALOG
    }

    /// The current schema of a record by full name.
    pub fn current(&self, full_name: &str) -> Option<&KnownSchema> {
        self.by_name.get(full_name).map(|&i| &self.schemas[i])
    }

    /// A schema by fingerprint.
    pub fn by_fingerprint(&self, fp: u64) -> Option<&KnownSchema> {
        self.by_fingerprint.get(&fp).map(|&i| &self.schemas[i])
    }

    /// Every known schema.
    pub fn all(&self) -> &[KnownSchema] {
        &self.schemas
    }
}

/// The Parsing Canonical Form of a schema text and its CRC-64-AVRO fingerprint.
///
/// The specification's canonical form drops logical types (`{"type": "long", "logicalType":
/// "timestamp-micros"}` becomes `"long"`); apache-avro keeps `{"type":"long"}` there, which
/// would give a fingerprint other Avro implementations do not compute. So logical types are
/// removed from the JSON first, then the crate's canonical form is taken.
pub fn canonical_form_and_fingerprint(avsc: &str) -> Result<(String, u64), CodecError> {
    let mut json: serde_json::Value = serde_json::from_str(avsc).map_err(|e| {
        CodecError::Avro(apache_avro::Error::new(
            apache_avro::error::Details::ParseSchemaJson(e),
        ))
    })?;
    strip_logical_types(&mut json);
    let plain = Schema::parse(&json)?;
    Ok((plain.canonical_form(), fingerprint(&plain)))
}

fn strip_logical_types(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.remove("logicalType").is_some() {
                // Only the annotation goes; the underlying type stays. Attributes of
                // decimal (precision, scale) are not part of the canonical form either.
                map.remove("precision");
                map.remove("scale");
            }
            for (_, child) in map.iter_mut() {
                strip_logical_types(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_logical_types),
        _ => {}
    }
}

/// CRC-64-AVRO fingerprint of a schema without logical types.
pub fn fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut b = [0u8; 8];
    b.copy_from_slice(&fp.bytes[..8]);
    u64::from_le_bytes(b)
}

/// A record type that travels on a topic.
pub trait Record: AvroSchema + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Full Avro name, for example `io.fleetstream.MetricReport`.
    const FULL_NAME: &'static str;
    /// Topic the record is produced to.
    const TOPIC: &'static str;
    /// Partition key (UTF-8): the agent id unless the topic says otherwise.
    fn key(&self) -> &str;
    /// When the fact happened (µs since the epoch).
    fn occurred_at(&self) -> i64;
    /// The codec for this type, built once.
    fn codec() -> &'static Codec<Self>;
}

/// Encoder and decoder for one record type.
#[derive(Debug)]
pub struct Codec<T> {
    schema: &'static KnownSchema,
    header: [u8; HEADER_LEN],
    _t: PhantomData<fn() -> T>,
}

impl<T: Record> Codec<T> {
    /// Builds the codec from the catalog's current schema for `T`.
    pub fn new() -> Codec<T> {
        let schema = Catalog::get()
            .current(T::FULL_NAME)
            .unwrap_or_else(|| panic!("no .avsc for {}", T::FULL_NAME));
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2..].copy_from_slice(&schema.fingerprint.to_le_bytes());
        Codec {
            schema,
            header,
            _t: PhantomData,
        }
    }

    /// The writer schema.
    pub fn schema(&self) -> &'static Schema {
        &self.schema.schema
    }

    /// The fingerprint written into each header.
    pub fn fingerprint(&self) -> u64 {
        self.schema.fingerprint
    }

    /// Encodes into a new buffer.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.header);
        apache_avro::write_avro_datum_ref(&self.schema.schema, value, out)?;
        Ok(())
    }

    /// Decodes a record written with this or any known compatible schema version.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (writer, mut body) = split_header(bytes)?;
        if writer.full_name != T::FULL_NAME {
            return Err(CodecError::WrongRecord {
                expected: T::FULL_NAME,
                found: writer.full_name.clone(),
            });
        }
        let reader_schema =
            (writer.fingerprint != self.schema.fingerprint).then_some(&self.schema.schema);
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, reader_schema)?;
        if !body.is_empty() {
            return Err(CodecError::TrailingBytes(body.len()));
        }
        Ok(apache_avro::from_value::<T>(&value)?)
    }
}

impl<T: Record> Default for Codec<T> {
    fn default() -> Self {
        Codec::new()
    }
}

/// Reads the single-object header: returns the writer schema and the datum bytes.
pub fn split_header(bytes: &[u8]) -> Result<(&'static KnownSchema, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(CodecError::BadMagic(bytes[..2].to_vec()));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fp = u64::from_le_bytes(fp);
    let writer = Catalog::get()
        .by_fingerprint(fp)
        .ok_or(CodecError::UnknownSchema(fp))?;
    Ok((writer, &bytes[HEADER_LEN..]))
}

/// Decodes any known record into a generic Avro value (for tools: export, dead letters).
pub fn decode_value(
    bytes: &[u8],
) -> Result<(&'static KnownSchema, apache_avro::types::Value), CodecError> {
    let (writer, mut body) = split_header(bytes)?;
    let value = apache_avro::from_avro_datum(&writer.schema, &mut body, None)?;
    Ok((writer, value))
}

/// Encodes a record with its type's codec.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, CodecError> {
    T::codec().encode(value)
}

/// Decodes a record with its type's codec.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    T::codec().decode(bytes)
}

macro_rules! record {
    ($ty:ty, $name:literal, $topic:expr, |$r:ident| $key:expr) => {
        impl Record for $ty {
            const FULL_NAME: &'static str = $name;
            const TOPIC: &'static str = $topic;
            fn key(&self) -> &str {
                let $r = self;
                $key
            }
            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
            fn codec() -> &'static Codec<Self> {
                static CODEC: LazyLock<Codec<$ty>> = LazyLock::new(Codec::new);
                &CODEC
            }
        }
    };
}

record!(
    MetricReport,
    "io.fleetstream.MetricReport",
    topics::METRICS,
    |r| &r.agent_id
);
record!(
    Heartbeat,
    "io.fleetstream.Heartbeat",
    topics::HEARTBEATS,
    |r| &r.agent_id
);
record!(
    AgentEvent,
    "io.fleetstream.AgentEvent",
    topics::EVENTS,
    |r| &r.agent_id
);
record!(
    AlertEvent,
    "io.fleetstream.AlertEvent",
    topics::ALERTS,
    |r| &r.agent_id
);
record!(
    AgentLifecycle,
    "io.fleetstream.AgentLifecycle",
    topics::AGENTS,
    |r| &r.agent_id
);
record!(
    CommandEvent,
    "io.fleetstream.CommandEvent",
    topics::COMMANDS,
    |r| &r.agent_id
);
record!(
    TicketEvent,
    "io.fleetstream.TicketEvent",
    topics::TICKETS,
    |r| &r.ticket_id
);
record!(
    SoftwareInventory,
    "io.fleetstream.SoftwareInventory",
    topics::INVENTORY,
    |r| &r.agent_id
);
record!(RuleEvent, "io.fleetstream.RuleEvent", topics::RULES, |r| &r
    .rule_id);
