//! Schema registry interop: registering Fleetstream's schemas and switching the process to
//! the Confluent wire format.
//!
//! With `schema-registry-url` set, a role calls [`start`] at start, before it writes a
//! record: every current record schema (the `.avsc` text) is registered under the subject
//! `<topic>-value` (Confluent's TopicNameStrategy, topic = [`Record::TOPIC`]) after the
//! subject's compatibility is set to BACKWARD, and the ids the registry answers make the
//! role's [`Wire`]. Every `wire.encode` writes `00`, the 4-byte big-endian schema id and the
//! Avro datum, which any Confluent-compatible consumer decodes with the registry;
//! `wire.decode` reads both framings, and looks unknown ids up in the registry,
//! asynchronously, through [`SchemaRegistryClient`] (its [`SchemaLookup`]).
//!
//! [`Record::TOPIC`]: fleet_schemas::Record::TOPIC
//!
//! The client speaks the Confluent Schema Registry REST API, which Confluent's registry,
//! Karapace and Apicurio Registry (under `/apis/ccompat/v7`) serve: the URL is the base of
//! that API, for example `http://127.0.0.1:18081/apis/ccompat/v7`.

use std::sync::Arc;
use std::time::Duration;

use fleet_schemas::codec::{
    self, Catalog, CodecError, LookupError, RegistryFraming, SchemaLookup, Wire,
};
use serde::Deserialize;
use serde_json::json;

/// The compatibility level Fleetstream sets on its subjects.
pub const COMPATIBILITY: &str = "BACKWARD";

/// How long one request to the registry may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often start-up registration is tried while the registry is unreachable.
const START_ATTEMPTS: u32 = 5;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Every record type Fleetstream writes: (full name, topic). Every current `.avsc` of the
/// catalog is here (a test checks it).
pub fn records() -> Vec<(&'static str, &'static str)> {
    fleet_schemas::topics::ALL
        .iter()
        .map(|t| (t.record.full_name(), t.name))
        .collect()
}

/// The subject of a topic's record values (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// What went wrong talking to the schema registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The configured URL is not usable.
    #[error("schema-registry-url {url:?} is not an http:// or https:// URL")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
    },
    /// No connection, or no answer in time.
    #[error(
        "the schema registry at {url} is unreachable: {source} (is it running? check \
         schema-registry-url)"
    )]
    Unreachable {
        /// The request's URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused a schema as incompatible with the subject's earlier versions.
    #[error(
        "the schema registry refused the schema of {record} under subject {subject} as \
         incompatible with the versions registered before (compatibility {COMPATIBILITY}: a \
         new version must read data written with the old ones, so new fields need defaults): \
         {message}"
    )]
    Incompatible {
        /// The subject registered under.
        subject: String,
        /// The record's full name.
        record: String,
        /// The registry's explanation.
        message: String,
    },
    /// Any other error answer.
    #[error("the schema registry answered {status} to {method} {url}: {message}")]
    Refused {
        /// HTTP method.
        method: &'static str,
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's `error_code`, when it sent one (40401 subject not found,
        /// 40403 schema not found, 42201 invalid schema, ...).
        error_code: Option<i64>,
        /// The registry's message (or the body).
        message: String,
    },
    /// A success answer without what the API specifies.
    #[error(
        "the schema registry's answer to {method} {url} is not what the API specifies: {reason}"
    )]
    BadAnswer {
        /// HTTP method.
        method: &'static str,
        /// The request's URL.
        url: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// The ids do not make a framing (a record this build does not know).
    #[error("schema registry framing: {0}")]
    Codec(#[from] CodecError),
}

impl RegistryError {
    fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }

    /// Asking again later may succeed: unreachable, or a 5xx answer.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A schema registered for one record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The record's full name.
    pub record: &'static str,
    /// The topic it is written to.
    pub topic: &'static str,
    /// The subject it was registered under.
    pub subject: String,
    /// The id the registry gave the schema.
    pub id: u32,
}

/// A client of the Confluent Schema Registry REST API.
#[derive(Debug, Clone)]
pub struct SchemaRegistryClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl SchemaRegistryClient {
    /// A client for the API at `url` (`http://host:port[/path]`, no trailing slash needed).
    pub fn new(url: &str) -> Result<SchemaRegistryClient, RegistryError> {
        let base = url.trim().trim_end_matches('/').to_owned();
        let invalid = || RegistryError::InvalidUrl {
            url: url.to_owned(),
        };
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(invalid)?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid());
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|source| RegistryError::Unreachable {
                url: base.clone(),
                source,
            })?;
        Ok(SchemaRegistryClient { base, http })
    }

    /// The base URL of the API.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(&url),
            "PUT" => self.http.put(&url),
            _ => self.http.get(&url),
        }
        .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        let unreachable = |source| RegistryError::Unreachable {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unreachable)?;
        if (200..300).contains(&status) {
            let value = serde_json::from_str(&text).map_err(|e| RegistryError::BadAnswer {
                method,
                url: url.clone(),
                reason: format!("not JSON ({e}): {}", clip(&text)),
            })?;
            return Ok((status, value));
        }
        let (error_code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody {
                error_code,
                message: Some(m),
            }) => (error_code, m),
            Ok(ErrorBody { error_code, .. }) => (error_code, clip(&text)),
            Err(_) => (None, clip(&text)),
        };
        Err(RegistryError::Refused {
            method,
            url,
            status,
            error_code,
            message,
        })
    }

    /// Registers an Avro schema under `subject` (or finds it registered) and returns its id.
    /// The registry checks it against the subject's compatibility level: refused, it is
    /// [`RegistryError::Incompatible`].
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", segment(subject));
        match self
            .call("POST", &path, Some(json!({ "schema": schema })))
            .await
        {
            Ok((_, answer)) => id_in(&answer).ok_or_else(|| RegistryError::BadAnswer {
                method: "POST",
                url: format!("{}{path}", self.base),
                reason: format!("no schema id in {answer}"),
            }),
            Err(RegistryError::Refused {
                status: 409,
                message,
                ..
            }) => Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                record: record_name(schema),
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// Sets the compatibility level of `subject` (it may not exist yet).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let path = format!("/config/{}", segment(subject));
        self.call("PUT", &path, Some(json!({ "compatibility": level })))
            .await
            .map(|_| ())
    }

    /// The compatibility level of `subject` (`None`: none of its own; the registry's
    /// global level applies).
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let path = format!("/config/{}", segment(subject));
        match self.call("GET", &path, None).await {
            Ok((_, answer)) => Ok(answer
                .get("compatibilityLevel")
                .or_else(|| answer.get("compatibility"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)),
            Err(RegistryError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema text registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let (_, answer) = self.call("GET", &path, None).await?;
        let bad = |reason: String| RegistryError::BadAnswer {
            method: "GET",
            url: format!("{}{path}", self.base),
            reason,
        };
        match answer.get("schemaType").and_then(|t| t.as_str()) {
            None | Some("AVRO") => {}
            Some(other) => return Err(bad(format!("schema {id} is {other}, not Avro"))),
        }
        answer
            .get("schema")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("no schema text in {answer}")))
    }

    /// Registers the current schema of every record type (see [`records`]) under
    /// `subject_of(topic)`, with the subject's compatibility set to BACKWARD first.
    pub async fn register_records(
        &self,
        subject_of: impl Fn(&str) -> String,
    ) -> Result<Vec<Registered>, RegistryError> {
        let mut out = Vec::new();
        for (record, topic) in records() {
            let schema = current_avsc(record)?;
            let subject = subject_of(topic);
            self.set_compatibility(&subject, COMPATIBILITY).await?;
            let id = self.register(&subject, schema).await?;
            out.push(Registered {
                record,
                topic,
                subject,
                id,
            });
        }
        Ok(out)
    }
}

/// The `.avsc` text of a record's current schema.
pub fn current_avsc(record: &str) -> Result<&'static str, CodecError> {
    let known = Catalog::get()
        .current(record)
        .ok_or_else(|| CodecError::UnknownRecord(record.to_owned()))?;
    codec::AVSC_FILES
        .iter()
        .find(|(file, _)| *file == known.file)
        .map(|(_, text)| *text)
        .ok_or_else(|| CodecError::UnknownRecord(record.to_owned()))
}

fn id_in(answer: &serde_json::Value) -> Option<u32> {
    answer
        .get("id")
        .and_then(|v| v.as_u64())
        .and_then(|id| u32::try_from(id).ok())
}

fn record_name(schema: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
    match (v.get("namespace").and_then(|n| n.as_str()), v.get("name")) {
        (Some(ns), Some(serde_json::Value::String(n))) => format!("{ns}.{n}"),
        (None, Some(serde_json::Value::String(n))) => n.clone(),
        _ => "the record".to_owned(),
    }
}

/// Percent-encodes one URL path segment (subjects may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn clip(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_owned(),
    }
}

/// The codec's lookup of writer schemas by id: asynchronous, bounded by the client's
/// request and connect timeouts.
#[async_trait::async_trait]
impl SchemaLookup for SchemaRegistryClient {
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        SchemaRegistryClient::schema_by_id(self, id)
            .await
            .map_err(|e| LookupError {
                retriable: e.is_retriable(),
                message: e.to_string(),
            })
    }
}

/// Registers every record schema with the registry at `url` under `<topic>-value` (with
/// BACKWARD compatibility) and returns the role's [`Wire`]: the Confluent wire format with
/// those ids, unknown ids looked up in the same registry. Call once at role start, before
/// the first record is written. While the registry is unreachable it is tried a few
/// times, then the error says so; a schema the registry refuses is an error naming it.
pub async fn start(url: &str) -> Result<Wire, RegistryError> {
    let client = SchemaRegistryClient::new(url)?;
    let mut attempt = 1;
    let registered = loop {
        match client.register_records(value_subject).await {
            Ok(r) => break r,
            Err(e) if e.is_unreachable() && attempt < START_ATTEMPTS => {
                tracing::warn!(url = client.url(), error = %e, attempt, "Schema registry unreachable; retrying.");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let wire = wire(&client, &registered)?;
    for r in &registered {
        tracing::info!(record = r.record, subject = %r.subject, id = r.id, "Schema registered.");
    }
    tracing::info!(
        url = client.url(),
        "Records are written in the Confluent wire format (schema registry)."
    );
    Ok(wire)
}

/// The [`Wire`] of registered ids (the Confluent wire format with them), looking ids that
/// are not ours up through `client`. With no ids it writes nothing (every encode is
/// [`CodecError::NotRegistered`]) and reads both framings: for tools that only read.
pub fn wire(
    client: &SchemaRegistryClient,
    registered: &[Registered],
) -> Result<Wire, RegistryError> {
    let ids = registered.iter().map(|r| (r.record, r.id));
    let lookup: Arc<dyn SchemaLookup> = Arc::new(client.clone());
    Ok(Wire::registry(RegistryFraming::new(ids, Some(lookup))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_current_schema_is_registered() {
        let mut listed: Vec<&str> = records().iter().map(|(name, _)| *name).collect();
        listed.sort_unstable();
        let mut current: Vec<&str> = codec::AVSC_FILES
            .iter()
            .filter(|(file, _)| !file.starts_with("history/"))
            .filter_map(|(file, _)| {
                Catalog::get()
                    .all()
                    .iter()
                    .find(|s| s.file == *file)
                    .map(|s| s.full_name.as_str())
            })
            .collect();
        current.sort_unstable();
        assert_eq!(
            listed, current,
            "fleet_schema_registry::records() must list every record type"
        );
        for (name, topic) in records() {
            assert!(current_avsc(name).is_ok(), "{name}");
            assert!(
                fleet_schemas::topics::find(topic).is_some(),
                "{topic} is in the topic catalog"
            );
        }
    }

    #[test]
    fn urls_and_subjects() {
        assert!(SchemaRegistryClient::new("http://127.0.0.1:18081/").is_ok());
        assert_eq!(
            SchemaRegistryClient::new("http://h:1/apis/ccompat/v7/")
                .unwrap()
                .url(),
            "http://h:1/apis/ccompat/v7"
        );
        for bad in ["", "127.0.0.1:18081", "ftp://h", "http://", "http:///x"] {
            assert!(
                matches!(
                    SchemaRegistryClient::new(bad),
                    Err(RegistryError::InvalidUrl { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(value_subject("fleet.metrics.v1"), "fleet.metrics.v1-value");
        assert_eq!(segment("fleet.metrics.v1-value"), "fleet.metrics.v1-value");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            record_name(current_avsc("io.fleetstream.Heartbeat").unwrap()),
            "io.fleetstream.Heartbeat"
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_clear_error() {
        // Nothing listens on port 9 (discard) on loopback here.
        let client = SchemaRegistryClient::new("http://127.0.0.1:9").unwrap();
        let err = client.register("x-value", "\"string\"").await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
        let lookup: &dyn SchemaLookup = &client;
        let err = lookup.schema_by_id(1).await.unwrap_err();
        assert!(err.message.contains("unreachable"), "{err:?}");
        assert!(err.retriable);
    }
}
