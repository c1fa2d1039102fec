//! The SQL plumbing the store seams share: the registry (`fleet-registry`) and the read
//! model (`fleet-read-model`) are two SQL implementations, by default in one database.
//!
//! * [`StoreError`] and [`Result`]: the errors of both seams' traits. No database driver is
//!   needed for them, so a crate that only uses a trait (the gateway uses the registry's)
//!   builds without sqlx.
//! * With the `driver` feature: [`Database`], a pool on PostgreSQL or the embedded SQLite
//!   chosen by URL (`postgres://...`, `sqlite://path` or a bare path), the migration runner
//!   ([`Migrations`]: each seam owns the migrations of its tables) and the mapping of sqlx
//!   errors to [`StoreError`] (retry or not).

#[cfg(feature = "driver")]
mod database;

#[cfg(feature = "driver")]
pub use database::{decode_error, Database, Engine, Migration, Migrations};

/// Errors of the stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL or configuration is wrong.
    #[error("store configuration: {0}")]
    Config(String),
    /// The store cannot serve now (connection refused, pool timeout); retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A query argument is out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The thing named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing conflicts with an existing one (a duplicate name).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other failure.
    #[error("store: {0}")]
    Internal(String),
}

/// Result alias of the stores.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
