//! The errors of replay, verify, export and dead-letter handling.

/// What went wrong. The message of a [`Error::Context`] says what was being done; its
/// source says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request cannot be done as given (a target that is not empty, a window that is
    /// empty, a dead letter that is not there): the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] fleet_event_log::LogError),
    /// The read model failed.
    #[error(transparent)]
    Store(#[from] fleet_read_model::StoreError),
    /// The time-series store failed.
    #[error(transparent)]
    TimeSeries(#[from] fleet_timeseries::Error),
    /// A record did not encode.
    #[error(transparent)]
    Codec(#[from] fleet_schemas::codec::CodecError),
    /// Writing an Avro file failed.
    #[error(transparent)]
    Avro(Box<apache_avro::Error>),
    /// Writing JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Another library's failure (creating the topics).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
    /// A task of the run stopped or failed to join.
    #[error("{0}")]
    Internal(String),
    /// What was being done when `source` happened.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

impl From<apache_avro::Error> for Error {
    fn from(e: apache_avro::Error) -> Self {
        Error::Avro(Box::new(e))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an error (as `anyhow::Context` does, typed).
pub(crate) trait Context<T> {
    /// With a fixed text.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// With a text made only on failure.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.into(),
            source: Box::new(e.into()),
        })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}

/// Returns an [`Error::Invalid`] with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn context_says_what_was_done_and_keeps_why() {
        let failed: Result<()> = Err(fleet_event_log::LogError::Unavailable("broker down".into()))
            .context("reading fleet.metrics.v1");
        let e = failed.expect_err("failed");
        assert_eq!(e.to_string(), "reading fleet.metrics.v1");
        let why = e.source().map(ToString::to_string);
        assert_eq!(why.as_deref(), Some("event log unavailable: broker down"));
        assert!(matches!(
            e,
            Error::Context { ref source, .. } if matches!(**source, Error::Log(_))
        ));
    }
}
