//! Why a request body was refused.

/// Who is to blame for a refusal, which decides the HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not what the protocol says (bad snappy, bad protobuf, bad line, a label
    /// name outside the charset, a duplicate label, a timestamp out of range): HTTP 400.
    /// Sending it again cannot succeed, and remote-write senders drop a 400 rather than
    /// retry it.
    Client,
    /// The body is well formed but larger than a [`crate::Limits`] allows: HTTP 413. A
    /// sender may split it (smaller batches, fewer labels).
    Limit,
}

/// A refused request body: the field or position, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The body is malformed at `field`.
    #[error("{field}: {message}")]
    Malformed {
        /// Where (`timeseries[3].labels[1].name`, `line 7`, `body`).
        field: String,
        /// What is wrong, in a sentence.
        message: String,
    },
    /// `field` goes over the limit `limit` (its key in the configuration).
    #[error("{field}: {message} (limit `{limit}` = {max})")]
    Limit {
        /// Where.
        field: String,
        /// What is over the limit.
        message: String,
        /// The [`crate::Limits`] key that refused it (kebab-case, as in the config).
        limit: &'static str,
        /// Its value.
        max: usize,
    },
}

impl ProtocolError {
    /// A malformed `field`.
    pub fn malformed(field: impl Into<String>, message: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `field` is over `limit` (= `max`).
    pub fn limit(
        field: impl Into<String>,
        message: impl Into<String>,
        limit: &'static str,
        max: usize,
    ) -> ProtocolError {
        ProtocolError::Limit {
            field: field.into(),
            message: message.into(),
            limit,
            max,
        }
    }

    /// Client error (400) or limit (413).
    pub fn refusal(&self) -> Refusal {
        match self {
            ProtocolError::Malformed { .. } => Refusal::Client,
            ProtocolError::Limit { .. } => Refusal::Limit,
        }
    }

    /// The HTTP status the gateway answers with: 400 or 413.
    pub fn status(&self) -> u16 {
        match self.refusal() {
            Refusal::Client => 400,
            Refusal::Limit => 413,
        }
    }

    /// The field or position the refusal names.
    pub fn field(&self) -> &str {
        match self {
            ProtocolError::Malformed { field, .. } | ProtocolError::Limit { field, .. } => field,
        }
    }
}
