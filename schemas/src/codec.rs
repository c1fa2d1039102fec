//! Avro single-object encoding of Fleetstream records.
//!
//! A record on a topic is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint
//! of the writer schema's Parsing Canonical Form, then the Avro binary datum. A reader looks
//! the writer schema up by fingerprint among the `.avsc` files it knows (current and
//! released versions) and resolves it against its own reader schema.
//!
//! With a schema registry (`schema-registry-url`), records are written in the Confluent
//! wire format instead: `00`, the 4-byte big-endian schema id the registry gave the writer
//! schema, then the same Avro binary datum. Which framing a process writes is a value, a
//! [`Wire`], built once at role start ([`Wire::plain`], or [`Wire::registry`] with the ids
//! the role registered) and passed to whatever encodes or decodes: there is no process-wide
//! framing, so two roles (or tests) in one process may write different framings. Every
//! [`Wire`] reads both framings, so a topic written before and after the switch stays
//! readable: an id the role registered maps to its own schema, any other id is looked up in
//! the registry (through an async [`SchemaLookup`] that the caller provides: this crate
//! does no I/O) and cached for the life of the [`RegistryFraming`].
//!
//! Decoding itself is synchronous and never waits for the registry: an id not fetched yet
//! is resolved first, asynchronously ([`Wire::resolve`], or [`Wire::decode`] which does
//! both); a synchronous [`Wire::decode_known`] of an unresolved id fails with the retriable
//! [`CodecError::Unresolved`]. The consumer runtime resolves the ids of each batch before
//! it hands the batch to a processor, so handlers decode synchronously.
//!
//! The datum itself is read and written by `serde_avro_fast`, straight between the bytes
//! and the record type (decoding is five to eight times cheaper than through apache-avro's
//! generic `Value` tree, `docs/BENCHMARKS.md`).
//! That direct read does no schema resolution, so it is used only for writer schemas
//! where it gives exactly what resolution against the current schema gives (decided once
//! per writer schema, see [`KnownSchema::reads_directly`]): the current schema itself, and
//! older or foreign ones that only add fields, lack optional fields whose default is
//! null, or lack enum symbols the current one appended. Any other writer schema is decoded as before, through apache-avro's resolution
//! ([`Codec::decode_resolving`]), which also stays the reference the direct path is tested
//! against (`tests/codec_differential.rs`). apache-avro still provides the derive, the
//! canonical forms and fingerprints, the compatibility checks and generic values
//! ([`Wire::decode_value`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex};

use apache_avro::rabin::Rabin;
use apache_avro::{AvroSchema, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::records::{
    AgentEvent, AgentLifecycle, AlertEvent, CommandEvent, DeadLetter, Heartbeat, MetricReport,
    RemoteConfigEvent, RuleEvent, SampleBatch, SoftwareInventory, TicketEvent,
};
use crate::topics;

/// The two marker bytes that open every single-object-encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: marker plus fingerprint.
pub const HEADER_LEN: usize = 10;
/// The magic byte that opens a record in the Confluent wire format (schema registry).
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// Length of the Confluent header: magic byte plus the 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes start with neither framing's marker.
    #[error(
        "not an Avro record: expected the single-object marker C3 01 or the Confluent magic \
         byte 00, got {0:02X?}"
    )]
    BadMagic(Vec<u8>),
    /// The record is shorter than its header.
    #[error(
        "record truncated: {0} bytes is shorter than its header (10 bytes single-object, \
         5 bytes Confluent)"
    )]
    Truncated(usize),
    /// A Confluent-framed record names a schema id this process cannot resolve.
    #[error(
        "record is in the Confluent wire format with schema id {0}, which is not one this \
         process registered, and no schema registry is configured to look it up (set \
         schema-registry-url)"
    )]
    UnknownSchemaId(u32),
    /// A Confluent-framed record names a schema id whose writer schema has not been fetched
    /// from the schema registry yet: resolve it first ([`Wire::resolve`]).
    #[error(
        "writer schema id {0} has not been fetched from the schema registry yet (resolve the \
         record before decoding it synchronously)"
    )]
    Unresolved(u32),
    /// The schema registry could not give the writer schema of a Confluent-framed record.
    #[error("writer schema id {id} from the schema registry: {message}")]
    Registry {
        /// The schema id in the record's header.
        id: u32,
        /// What went wrong (unreachable, not found, not a record schema, ...).
        message: String,
        /// The registry could not be asked (unreachable, timed out, 5xx): the same record
        /// may decode later, so a consumer retries rather than giving up on it.
        retriable: bool,
    },
    /// The wire writes the Confluent format, but this record type got no schema id at start.
    #[error(
        "records are written in the Confluent wire format, but {0} has no schema id: it was \
         not registered with the schema registry at start-up"
    )]
    NotRegistered(&'static str),
    /// A record from a topic the consumer does not read (not one it subscribed to).
    #[error("topic {0} holds records this consumer does not read")]
    NotProjected(String),
    /// A schema id was given for a record name this build has no `.avsc` for.
    #[error("no .avsc for record {0}")]
    UnknownRecord(String),
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
    /// How a datum written with this schema is read into the record type of its name.
    datum: DatumReader,
}

/// How a datum of one writer schema becomes the record type: decided once per writer
/// schema, when it enters the catalog or arrives from the registry.
enum DatumReader {
    /// `serde_avro_fast` with this (writer) schema, straight into the record type.
    Direct(serde_avro_fast::Schema),
    /// apache-avro: the datum to a `Value`, resolved against the current schema, then
    /// deserialized (other differences from the current schema, or a record type this
    /// build does not have). The writer schema for `serde_avro_fast`, when it parses it,
    /// checks the datum's lengths first ([`check_lengths`]).
    Resolve(Option<serde_avro_fast::Schema>),
}

impl std::fmt::Debug for DatumReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatumReader::Direct(_) => "Direct",
            DatumReader::Resolve(_) => "Resolve",
        })
    }
}

impl KnownSchema {
    /// Whether a datum written with this schema is decoded directly into the record type
    /// (`serde_avro_fast`), rather than through apache-avro's schema resolution; both give
    /// the same record, the direct read several times faster.
    pub fn reads_directly(&self) -> bool {
        matches!(self.datum, DatumReader::Direct(_))
    }

    /// The fast schema of a current schema, which always reads directly (the catalog
    /// refuses to load otherwise).
    fn direct(&self) -> Option<&serde_avro_fast::Schema> {
        match &self.datum {
            DatumReader::Direct(s) => Some(s),
            DatumReader::Resolve(_) => None,
        }
    }

    /// The writer schema for `serde_avro_fast`, whichever path reads its datums.
    fn fast(&self) -> Option<&serde_avro_fast::Schema> {
        match &self.datum {
            DatumReader::Direct(s) | DatumReader::Resolve(Some(s)) => Some(s),
            DatumReader::Resolve(None) => None,
        }
    }
}

/// The [`DatumReader`] of `writer` (parsed from `text`) for the record type whose current
/// schema is `current` (`None`: not a record of this build).
///
/// The direct read is chosen only where it gives what apache-avro's resolution gives, kept
/// deliberately narrow (see [`reads_directly`]). A writer schema `serde_avro_fast` cannot
/// parse is resolved by apache-avro like any other.
fn datum_reader(writer: &Schema, text: &str, current: Option<&Schema>) -> DatumReader {
    let fast = text.parse::<serde_avro_fast::Schema>().ok();
    match (current, fast) {
        (Some(reader), Some(fast)) if reads_directly(writer, reader) => DatumReader::Direct(fast),
        (_, fast) => DatumReader::Resolve(fast),
    }
}

/// Whether `serde_avro_fast`, reading a datum of `writer` straight into the Rust type of
/// `reader`, yields exactly what apache-avro's resolution of `writer` against `reader`
/// followed by `from_value` yields. True for identical types, for writer fields the reader
/// lacks and that hold no array or map (both read them through and drop them; serde would
/// jump over an array or map block by the byte size the datum announces, where apache-avro
/// reads its items, so a datum whose size lies would be read differently), and for reader
/// fields the writer lacks that are `["null", T]`
/// with default null (resolution fills in null, serde's derive reads a missing `Option`
/// field as `None`), and for enums the reader extends with symbols at the end.
/// Everything else (promotions, otherwise changed enums or unions, other defaults,
/// aliases, named references, logical types other than the timestamps) is left to
/// apache-avro, because serde would read it differently or not at all.
fn reads_directly(writer: &Schema, reader: &Schema) -> bool {
    use Schema as S;
    match (writer, reader) {
        (S::Null, S::Null)
        | (S::Boolean, S::Boolean)
        | (S::Int, S::Int)
        | (S::Long, S::Long)
        | (S::Float, S::Float)
        | (S::Double, S::Double)
        | (S::Bytes, S::Bytes)
        | (S::String, S::String)
        | (S::TimestampMillis, S::TimestampMillis)
        | (S::TimestampMicros, S::TimestampMicros) => true,
        (S::Array(w), S::Array(r)) => reads_directly(&w.items, &r.items),
        (S::Map(w), S::Map(r)) => reads_directly(&w.types, &r.types),
        // Symbols appended at the end (how an enum evolves here): each of the writer's
        // symbols has the same name and index in the reader, so a datum reads the same
        // whether by name (resolution) or by position.
        (S::Enum(w), S::Enum(r)) => w.name == r.name && r.symbols.starts_with(&w.symbols),
        (S::Union(w), S::Union(r)) => match (w.variants(), r.variants()) {
            ([S::Null, w], [S::Null, r]) => reads_directly(w, r),
            _ => false,
        },
        (S::Record(w), S::Record(r)) => {
            w.name == r.name
                && w.fields.iter().all(|wf| {
                    r.fields.iter().any(|rf| rf.name == wf.name) || !holds_blocks(&wf.schema)
                })
                && r.fields.iter().all(|rf| {
                    let aliased = rf.aliases.as_ref().is_some_and(|a| !a.is_empty());
                    !aliased
                        && match w.fields.iter().find(|wf| wf.name == rf.name) {
                            Some(wf) => reads_directly(&wf.schema, &rf.schema),
                            None => is_optional_with_null_default(rf),
                        }
                })
        }
        _ => false,
    }
}

/// Whether a datum of `schema` may hold array or map blocks (a named reference may).
fn holds_blocks(schema: &Schema) -> bool {
    match schema {
        Schema::Array(_) | Schema::Map(_) | Schema::Ref { .. } => true,
        Schema::Union(u) => u.variants().iter().any(holds_blocks),
        Schema::Record(r) => r.fields.iter().any(|f| holds_blocks(&f.schema)),
        _ => false,
    }
}

/// `["null", T]` with default null: an `Option` that serde's derive reads as `None` when the
/// writer lacks the field, as resolution fills in the default.
fn is_optional_with_null_default(field: &apache_avro::schema::RecordField) -> bool {
    let optional =
        matches!(&field.schema, Schema::Union(u) if matches!(u.variants(), [Schema::Null, _]));
    optional && field.default == Some(serde_json::Value::Null)
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
    ("dead_letter.avsc", include_str!("../avro/dead_letter.avsc")),
    (
        "sample_batch.avsc",
        include_str!("../avro/sample_batch.avsc"),
    ),
    (
        "remote_config.avsc",
        include_str!("../avro/remote_config.avsc"),
    ),
    // Released versions, still readable (records on the topics were written with them):
    // after every current one, so `Catalog::current` keeps naming the current file.
    (
        "history/agent_lifecycle.v1.avsc",
        include_str!("../avro/history/agent_lifecycle.v1.avsc"),
    ),
    (
        "history/rule_event.v1.avsc",
        include_str!("../avro/history/rule_event.v1.avsc"),
    ),
    (
        "history/rule_event.v2.avsc",
        include_str!("../avro/history/rule_event.v2.avsc"),
    ),
    (
        "history/heartbeat.v1.avsc",
        include_str!("../avro/history/heartbeat.v1.avsc"),
    ),
    (
        "history/metric_report.v1.avsc",
        include_str!("../avro/history/metric_report.v1.avsc"),
    ),
    (
        "history/command_event.v1.avsc",
        include_str!("../avro/history/command_event.v1.avsc"),
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
                datum: DatumReader::Resolve(None),
            });
        }
        let mut by_fingerprint = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, s) in schemas.iter().enumerate() {
            by_fingerprint.insert(s.fingerprint, i);
            by_name.entry(s.full_name.clone()).or_insert(i);
        }
        for (i, (file, text)) in AVSC_FILES.iter().enumerate() {
            let current = by_name[&schemas[i].full_name];
            let datum = datum_reader(&schemas[i].schema, text, Some(&schemas[current].schema));
            // Encoding needs the direct schema of every current version.
            assert!(
                i != current || matches!(datum, DatumReader::Direct(_)),
                "schemas/avro/{file}: serde_avro_fast does not read it directly"
            );
            schemas[i].datum = datum;
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
    /// `schema` for `serde_avro_fast`, which writes every datum.
    direct: &'static serde_avro_fast::Schema,
    header: [u8; HEADER_LEN],
    _t: PhantomData<fn() -> T>,
}

impl<T: Record> Codec<T> {
    /// Builds the codec from the catalog's current schema for `T`.
    pub fn new() -> Codec<T> {
        let schema = Catalog::get()
            .current(T::FULL_NAME)
            .unwrap_or_else(|| panic!("no .avsc for {}", T::FULL_NAME));
        let direct = schema
            .direct()
            .unwrap_or_else(|| panic!("{} does not read directly", schema.file));
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2..].copy_from_slice(&schema.fingerprint.to_le_bytes());
        Codec {
            schema,
            direct,
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

    /// Appends the encoded record to `out` in the framing of `framing`: single-object
    /// without one, else the Confluent wire format with the id it holds for `T`.
    pub fn encode_into(
        &self,
        framing: Option<&RegistryFraming>,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        match framing {
            None => out.extend_from_slice(&self.header),
            Some(framing) => match framing.id_of(T::FULL_NAME) {
                Some(id) => out.extend_from_slice(&confluent_header(id)),
                None => return Err(CodecError::NotRegistered(T::FULL_NAME)),
            },
        }
        self.write_datum(value, out)
            .inspect_err(|_| out.truncate(start))
    }

    /// Appends the Avro binary datum of `value` (no header), written with the current
    /// schema: byte for byte what apache-avro writes (`tests/codec_differential.rs`).
    pub fn write_datum(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(self.direct);
        serde_avro_fast::to_datum(value, out, &mut config).map_err(|e| {
            CodecError::Avro(apache_avro::Error::new(
                apache_avro::error::Details::SerializeValue(e.to_string()),
            ))
        })?;
        Ok(())
    }

    /// Encodes single-object (`C3 01`, fingerprint, datum).
    pub fn encode_single_object(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        self.write_datum(value, &mut out)?;
        Ok(out)
    }

    /// Encodes in the Confluent wire format (`00`, `schema_id` big-endian, datum).
    /// `schema_id` must be the registry's id of [`Codec::schema`].
    pub fn encode_confluent(&self, schema_id: u32, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&confluent_header(schema_id));
        self.write_datum(value, &mut out)?;
        Ok(out)
    }

    /// Decodes a record in either framing, written with this or any known compatible
    /// schema version (or, with a registry framing, any compatible schema it has fetched).
    /// `framing`: `None`, no registry, so only this build's `.avsc` files resolve. Never
    /// asks the registry: an id it has not fetched is [`CodecError::Unresolved`].
    pub fn decode_with(
        &self,
        framing: Option<&RegistryFraming>,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        self.decode_part(framing, bytes, std::convert::identity)
    }

    /// Decodes only the fields of `P` from a record of `T` ([`Codec::decode_with`]'s
    /// framings and writer schemas): `P` is a struct naming some of `T`'s fields, which
    /// serde matches by name; the other fields are read past without being built (no
    /// allocation, strings not checked as UTF-8), and the datum must still end where its
    /// schema says. For a writer schema that needs resolution `T` is decoded whole and
    /// `part` takes `P` from it.
    pub fn decode_part<P: DeserializeOwned>(
        &self,
        framing: Option<&RegistryFraming>,
        bytes: &[u8],
        part: impl FnOnce(T) -> P,
    ) -> Result<P, CodecError> {
        // The common case, single-object with the current schema: no catalog lookup.
        if let Some(body) = bytes.strip_prefix(&self.header[..]) {
            return decode_direct(self.direct, body);
        }
        let (writer, body) = self.split_header(framing, bytes)?;
        match &writer.datum {
            DatumReader::Direct(schema) => {
                // Another writer schema may have fields the reader skips, and serde skips
                // them unread (a string's UTF-8 unchecked, an array or map block jumped
                // over by its byte size): read them through first, as apache-avro does.
                if writer.fingerprint != self.schema.fingerprint {
                    check_lengths(writer, body)?;
                }
                decode_direct(schema, body)
            }
            DatumReader::Resolve(_) => self.resolve(writer, body).map(part),
        }
    }

    /// [`Codec::decode_with`] through apache-avro's schema resolution and generic `Value`,
    /// whatever the writer schema: the path of writer schemas that do not read directly,
    /// and the reference the direct path is tested and benchmarked against. Several times
    /// slower.
    pub fn decode_resolving(
        &self,
        framing: Option<&RegistryFraming>,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        let (writer, body) = self.split_header(framing, bytes)?;
        self.resolve(writer, body)
    }

    /// The writer schema, which must be one of `T`'s, and the datum.
    fn split_header<'a>(
        &self,
        framing: Option<&RegistryFraming>,
        bytes: &'a [u8],
    ) -> Result<(&'static KnownSchema, &'a [u8]), CodecError> {
        let (writer, body) = split_header_with(framing, bytes)?;
        if writer.full_name != T::FULL_NAME {
            return Err(CodecError::WrongRecord {
                expected: T::FULL_NAME,
                found: writer.full_name.clone(),
            });
        }
        Ok((writer, body))
    }

    fn resolve(&self, writer: &KnownSchema, mut body: &[u8]) -> Result<T, CodecError> {
        check_lengths(writer, body)?;
        let reader_schema =
            (writer.fingerprint != self.schema.fingerprint).then_some(&self.schema.schema);
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, reader_schema)?;
        if !body.is_empty() {
            return Err(CodecError::TrailingBytes(body.len()));
        }
        Ok(apache_avro::from_value::<T>(&value)?)
    }
}

/// Reads a datum straight into `T` with the writer schema. Allocates nothing the bytes do
/// not hold: a length prefix longer than what is left fails before any allocation.
fn decode_direct<T: DeserializeOwned>(
    schema: &serde_avro_fast::Schema,
    body: &[u8],
) -> Result<T, CodecError> {
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(body, schema);
    let value = T::deserialize(state.deserializer()).map_err(|e| {
        CodecError::Avro(apache_avro::Error::new(
            apache_avro::error::Details::DeserializeValue(e.to_string()),
        ))
    })?;
    match std::io::BufRead::fill_buf(&mut state.into_reader()) {
        Ok(rest) if !rest.is_empty() => Err(CodecError::TrailingBytes(rest.len())),
        _ => Ok(value),
    }
}

impl<T: Record> Default for Codec<T> {
    fn default() -> Self {
        Codec::new()
    }
}

/// Reads the header (single-object or Confluent, with `framing` for Confluent ids):
/// returns the writer schema and the datum bytes. Never asks the registry.
pub fn split_header_with<'a>(
    framing: Option<&RegistryFraming>,
    bytes: &'a [u8],
) -> Result<(&'static KnownSchema, &'a [u8]), CodecError> {
    if bytes.first() == Some(&CONFLUENT_MAGIC) {
        let Some(id) = confluent_id(bytes) else {
            return Err(CodecError::Truncated(bytes.len()));
        };
        let writer = match framing {
            Some(f) => f.writer_schema(id)?,
            None => return Err(CodecError::UnknownSchemaId(id)),
        };
        return Ok((writer, &bytes[CONFLUENT_HEADER_LEN..]));
    }
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

/// Reads a datum of `writer` through `serde_avro_fast` without keeping any of it, and
/// refuses a string or bytes length, or an array or map count, larger than the datum.
/// Run before apache-avro decodes a datum: it reserves what a length or count announces
/// before reading (up to its 512 MiB bound, in items for arrays and maps), so a record of
/// a few hundred bytes could make the process ask for gigabytes and abort
/// (`tests/hostile_lengths.rs`). Every Avro item but `null` takes a byte at least; a
/// sequence of more nulls than the datum has bytes is refused too. Also run before a
/// direct read of a writer schema other than the current one, so that the fields the
/// reader skips are checked as apache-avro checks them (valid UTF-8, every block item).
fn check_lengths(writer: &KnownSchema, body: &[u8]) -> Result<(), CodecError> {
    use serde::Deserialize as _;
    // Every schema this build or a registry gave parses here; should one not, apache-avro
    // reads it unchecked, as before.
    let Some(fast) = writer.fast() else {
        return Ok(());
    };
    let mut config = serde_avro_fast::de::DeserializerConfig::new(fast);
    config.max_seq_size = body.len();
    let mut state = serde_avro_fast::de::DeserializerState::with_config(
        serde_avro_fast::de::read::SliceRead::new(body),
        config,
    );
    Walk::deserialize(state.deserializer()).map_err(|e| {
        CodecError::Avro(apache_avro::Error::new(
            apache_avro::error::Details::DeserializeValue(e.to_string()),
        ))
    })?;
    Ok(())
}

/// Any datum, read through and dropped ([`check_lengths`]): unlike serde's `IgnoredAny`,
/// which lets `serde_avro_fast` skip a block by its byte size, every item is read.
struct Walk;

impl<'de> serde::Deserialize<'de> for Walk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Walk, D::Error> {
        d.deserialize_any(Walk)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk {
    type Value = Walk;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Avro datum")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_str<E>(self, _: &str) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_unit<E>(self) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Walk, A::Error> {
        while seq.next_element::<Walk>()?.is_some() {}
        Ok(Walk)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Walk, A::Error> {
        while map.next_entry::<Walk, Walk>()?.is_some() {}
        Ok(Walk)
    }
}

fn confluent_header(schema_id: u32) -> [u8; CONFLUENT_HEADER_LEN] {
    let mut h = [CONFLUENT_MAGIC; CONFLUENT_HEADER_LEN];
    h[1..].copy_from_slice(&schema_id.to_be_bytes());
    h
}

/// Looks writer schemas up by id in a schema registry, for [`Wire::resolve`]. Implemented
/// outside this crate, which does no I/O (`fleet_schema_registry`). Called for an id seen
/// for the first time (and again after a failure); an implementation bounds the wait.
#[async_trait::async_trait]
pub trait SchemaLookup: Send + Sync + std::fmt::Debug {
    /// The schema text the registry holds under `id`, or why it cannot be had.
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError>;
}

/// Why a [`SchemaLookup`] has no schema for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    /// What went wrong.
    pub message: String,
    /// The registry could not be asked (unreachable, timed out, 5xx), as opposed to an
    /// answer that it has no such schema.
    pub retriable: bool,
}

impl CodecError {
    /// The record may decode later: the registry that holds its writer schema could not be
    /// asked, or has not been asked yet ([`CodecError::Unresolved`]). Every other error is a
    /// property of the bytes.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            CodecError::Unresolved(_)
                | CodecError::Registry {
                    retriable: true,
                    ..
                }
        )
    }
}

/// The schema ids of the Confluent wire format: which id a role writes for each record
/// type, and how it finds the writer schema of any other id.
#[derive(Debug)]
pub struct RegistryFraming {
    ids: HashMap<&'static str, u32>,
    own: HashMap<u32, &'static KnownSchema>,
    lookup: Option<Arc<dyn SchemaLookup>>,
    fetched: Mutex<Fetched>,
}

/// What the registry answered so far, per id.
#[derive(Debug, Default)]
struct Fetched {
    schemas: HashMap<u32, &'static KnownSchema>,
    /// Ids the registry answered without a usable schema (not found, not an Avro record),
    /// with the message: a synchronous decode reports it; the next resolve asks again.
    refused: HashMap<u32, String>,
}

impl RegistryFraming {
    /// `ids`: (record full name, the schema id the registry gave its current schema);
    /// `lookup`: where ids that are not ours are looked up (`None`: nowhere, such records
    /// fail to decode with [`CodecError::UnknownSchemaId`]).
    pub fn new<'a>(
        ids: impl IntoIterator<Item = (&'a str, u32)>,
        lookup: Option<Arc<dyn SchemaLookup>>,
    ) -> Result<RegistryFraming, CodecError> {
        let mut by_name = HashMap::new();
        let mut own = HashMap::new();
        for (name, id) in ids {
            let schema = Catalog::get()
                .current(name)
                .ok_or_else(|| CodecError::UnknownRecord(name.to_owned()))?;
            by_name.insert(schema.full_name.as_str(), id);
            own.insert(id, schema);
        }
        Ok(RegistryFraming {
            ids: by_name,
            own,
            lookup,
            fetched: Mutex::new(Fetched::default()),
        })
    }

    /// The schema id written for a record type.
    pub fn id_of(&self, full_name: &str) -> Option<u32> {
        self.ids.get(full_name).copied()
    }

    /// Every (record full name, schema id) this framing writes.
    pub fn ids(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.ids.iter().map(|(n, id)| (*n, *id))
    }

    /// The writer schema of a Confluent-framed record as known now: one of ours or one
    /// fetched before. Never asks the registry: an id not fetched yet is
    /// [`CodecError::Unresolved`] (retriable: [`RegistryFraming::resolve`] it), one the
    /// registry refused at the last [`resolve`](RegistryFraming::resolve) is that
    /// refusal, and without a lookup any other id is [`CodecError::UnknownSchemaId`].
    pub fn writer_schema(&self, id: u32) -> Result<&'static KnownSchema, CodecError> {
        if let Some(s) = self.own.get(&id) {
            return Ok(s);
        }
        let fetched = self.lock_fetched();
        if let Some(s) = fetched.schemas.get(&id) {
            return Ok(s);
        }
        if self.lookup.is_none() {
            return Err(CodecError::UnknownSchemaId(id));
        }
        match fetched.refused.get(&id) {
            Some(message) => Err(CodecError::Registry {
                id,
                message: message.clone(),
                retriable: false,
            }),
            None => Err(CodecError::Unresolved(id)),
        }
    }

    /// The writer schema of a Confluent-framed record: one of ours, one fetched before, or
    /// fetched now through the lookup (asynchronously) and cached. A fetched schema that
    /// is one of this build's `.avsc` files (same fingerprint) is that file's; any other is
    /// parsed and kept for the life of the process (one per distinct id). A failure is not
    /// cached: the next call asks again.
    pub async fn resolve(&self, id: u32) -> Result<&'static KnownSchema, CodecError> {
        match self.writer_schema(id) {
            Err(CodecError::Unresolved(_) | CodecError::Registry { .. }) => {}
            known => return known,
        }
        let Some(lookup) = &self.lookup else {
            return Err(CodecError::UnknownSchemaId(id));
        };
        let fetched = match lookup.schema_by_id(id).await {
            Ok(text) => schema_from_registry(id, &text),
            Err(e) => Err(CodecError::Registry {
                id,
                message: e.message,
                retriable: e.retriable,
            }),
        };
        let mut cache = self.lock_fetched();
        match fetched {
            Ok(schema) => {
                cache.refused.remove(&id);
                Ok(*cache.schemas.entry(id).or_insert_with(|| match schema {
                    FromRegistry::Known(s) => s,
                    FromRegistry::New(s) => Box::leak(s),
                }))
            }
            Err(e) => {
                if let CodecError::Registry {
                    message,
                    retriable: false,
                    ..
                } = &e
                {
                    cache.refused.insert(id, message.clone());
                }
                Err(e)
            }
        }
    }

    fn lock_fetched(&self) -> std::sync::MutexGuard<'_, Fetched> {
        self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum FromRegistry {
    Known(&'static KnownSchema),
    New(Box<KnownSchema>),
}

fn schema_from_registry(id: u32, text: &str) -> Result<FromRegistry, CodecError> {
    let bad = |what: String| CodecError::Registry {
        id,
        message: what,
        retriable: false,
    };
    let (canonical_form, fingerprint) = canonical_form_and_fingerprint(text)
        .map_err(|e| bad(format!("the registry's schema does not parse: {e}")))?;
    if let Some(known) = Catalog::get().by_fingerprint(fingerprint) {
        return Ok(FromRegistry::Known(known));
    }
    let schema = Schema::parse_str(text)
        .map_err(|e| bad(format!("the registry's schema does not parse: {e}")))?;
    let full_name = match &schema {
        Schema::Record(r) => r.name.fullname(None),
        _ => return Err(bad(format!("not an Avro record schema: {canonical_form}"))),
    };
    let current = Catalog::get().current(&full_name).map(|c| &c.schema);
    let datum = datum_reader(&schema, text, current);
    Ok(FromRegistry::New(Box::new(KnownSchema {
        full_name,
        schema,
        canonical_form,
        fingerprint,
        file: "(schema registry)",
        datum,
    })))
}

/// How a role writes and reads records: single-object ([`Wire::plain`]) or the Confluent
/// wire format with the schema ids it registered ([`Wire::registry`]). Built once at role
/// start and passed to everything that encodes or decodes; cheap to clone (clones share
/// the registry framing and the writer schemas it fetched).
#[derive(Debug, Clone)]
pub struct Wire {
    registry: Option<Arc<RegistryFraming>>,
}

impl Wire {
    /// Single-object encoding; reads single-object records only (a Confluent-framed one is
    /// [`CodecError::UnknownSchemaId`]).
    pub fn plain() -> Wire {
        Wire { registry: None }
    }

    /// The Confluent wire format with the ids of `framing`; reads both framings.
    pub fn registry(framing: RegistryFraming) -> Wire {
        Wire {
            registry: Some(Arc::new(framing)),
        }
    }

    /// The registry framing (`None`: single-object).
    pub fn framing(&self) -> Option<&RegistryFraming> {
        self.registry.as_deref()
    }

    /// Encodes a record in this wire's framing.
    pub fn encode<T: Record>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends a record, encoded in this wire's framing, to `out`.
    pub fn encode_into<T: Record>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        T::codec().encode_into(self.framing(), value, out)
    }

    /// Fetches the writer schema of a Confluent-framed record whose id is not known yet
    /// (asynchronously, through the registry framing's lookup), so that a synchronous
    /// [`Wire::decode_known`] of the same bytes does not meet [`CodecError::Unresolved`].
    /// Single-object records and known ids need nothing. An error is the lookup's (a
    /// retriable one may pass later); the bytes are not checked beyond their header.
    pub async fn resolve(&self, bytes: &[u8]) -> Result<(), CodecError> {
        match (confluent_id(bytes), self.framing()) {
            (Some(id), Some(framing)) => framing.resolve(id).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Decodes a record in either framing, fetching an unknown writer schema id from the
    /// registry first ([`Wire::resolve`]); never blocks the thread.
    pub async fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.resolve(bytes).await?;
        self.decode_known(bytes)
    }

    /// Decodes a record whose writer schema is known now (single-object, one of our ids,
    /// or one resolved before): never asks the registry, so an id not fetched yet is the
    /// retriable [`CodecError::Unresolved`].
    pub fn decode_known<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        T::codec().decode_with(self.framing(), bytes)
    }

    /// [`Codec::decode_part`] of a record whose writer schema is known now (as
    /// [`Wire::decode_known`]).
    pub fn decode_known_part<T: Record, P: DeserializeOwned>(
        &self,
        bytes: &[u8],
        part: impl FnOnce(T) -> P,
    ) -> Result<P, CodecError> {
        T::codec().decode_part(self.framing(), bytes, part)
    }

    /// Reads the header: the writer schema (known now, as [`Wire::decode_known`]) and the
    /// datum bytes.
    pub fn split_header<'a>(
        &self,
        bytes: &'a [u8],
    ) -> Result<(&'static KnownSchema, &'a [u8]), CodecError> {
        split_header_with(self.framing(), bytes)
    }

    /// Decodes any record whose writer schema is known now into a generic Avro value (for
    /// tools: export, dead letters); resolve Confluent ids first ([`Wire::resolve`]).
    pub fn decode_value(
        &self,
        bytes: &[u8],
    ) -> Result<(&'static KnownSchema, apache_avro::types::Value), CodecError> {
        let (writer, mut body) = self.split_header(bytes)?;
        check_lengths(writer, body)?;
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, None)?;
        Ok((writer, value))
    }
}

/// The schema id of a Confluent-framed record (`None`: not one, or shorter than its header).
pub fn confluent_id(bytes: &[u8]) -> Option<u32> {
    if bytes.first() != Some(&CONFLUENT_MAGIC) {
        return None;
    }
    let id: [u8; 4] = bytes.get(1..CONFLUENT_HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(id))
}

#[cfg(test)]
mod framing_tests;

macro_rules! record {
    ($ty:ty, $name:literal, $topic:expr, |$r:ident| $key:expr) => {
        record!($ty, $name, $topic, |$r| $key, occurred_at);
    };
    ($ty:ty, $name:literal, $topic:expr, |$r:ident| $key:expr, $at:ident) => {
        impl Record for $ty {
            const FULL_NAME: &'static str = $name;
            const TOPIC: &'static str = $topic;
            fn key(&self) -> &str {
                let $r = self;
                $key
            }
            fn occurred_at(&self) -> i64 {
                self.$at
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
record!(
    RemoteConfigEvent,
    "io.fleetstream.RemoteConfigEvent",
    topics::CONFIG,
    |r| &r.config_key
);
record!(
    DeadLetter,
    "io.fleetstream.DeadLetter",
    topics::DEADLETTER,
    |r| &r.event_id
);
record!(
    SampleBatch,
    "io.fleetstream.SampleBatch",
    topics::SAMPLES,
    |r| &r.partition_key,
    received_at
);
