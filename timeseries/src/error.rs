//! The one error type of the crate.

/// Why a block or rollup set could not be built, or bytes could not be decoded.
///
/// Decoding never panics: hostile or corrupt bytes give one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The first byte names a format this build does not read (written by a newer
    /// version, or not a chunk at all).
    #[error("unsupported format version {0}: written by a newer Fleetstream, or not a chunk")]
    UnsupportedVersion(u8),
    /// The bytes end before the structure they announce.
    #[error("truncated: the bytes end inside the {what}")]
    Truncated {
        /// The part being read.
        what: &'static str,
    },
    /// The bytes are inconsistent (a count that does not match, timestamps out of order,
    /// an unknown tag, ...).
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A count over the format's limit (see [`crate::limits`]).
    #[error("{what} is {value}, over the limit of {limit}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The count found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The zstd frame could not be decompressed.
    #[error("compressed payload is damaged: {0}")]
    Compression(String),
    /// The values given to build a block or rollup set break one of its rules (unsorted
    /// or repeated timestamps, a column of the wrong length, a bucket width of zero, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Errors of the time-series store (the engine over a chunk store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL or a setting is wrong.
    #[error("time-series configuration: {0}")]
    Config(String),
    /// The store cannot serve now (connection refused, file held by another process);
    /// retry later.
    #[error("time-series store unavailable: {0}")]
    Unavailable(String),
    /// A query or a write argument is out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// Any other failure (a stored chunk that does not decode, an I/O error).
    #[error("time-series store: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result alias of the store side of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
