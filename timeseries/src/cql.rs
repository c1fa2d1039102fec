//! The CQL chunk store (ScyllaDB, or Apache Cassandra): see `ChunkStore`. Work in progress.
