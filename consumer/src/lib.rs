//! The consumer runtime every Fleetstream processor runs on.
//!
//! The delivery-critical sequence of a consumer (poll, take a changed assignment, decode
//! (writer schemas resolved first, without blocking the thread) or note a dead letter, write the output until the log acknowledged it, write the dead
//! letters, commit, report lag and batch time, back off on what may pass, stop cleanly)
//! is written once, in [`runtime::ConsumerRuntime`]. Each processor implements the small
//! [`Processor`] trait (`on_assigned`, `handle`, `on_tick`) and returns an [`Output`]: the
//! records to write and what to commit.
//!
//! * [`runtime`]: the loop, the trait, outputs and commit points.
//! * [`deadletter`]: what a consumer does with a record it cannot use.
//! * [`follow`]: throw-away groups that read topics from their start and follow them
//!   (state rebuilt from a topic).
//! * [`log`]: topics of the catalog, next offsets, writing until acknowledged, reading a
//!   topic to its end, the lag gauge.
//! * [`backoff`]: the one back-off of every retry loop (0.2 s × attempt, at most 5 s).
//! * [`metrics`]: `fleet_consumer_lag`, `fleet_deadletters_total`.
//!
//! # Committing less than was read
//!
//! A processor that makes its work durable later than it reads (an engine that keeps
//! samples in memory and writes them in chunks) must not commit what it has only read:
//! after a crash the records past its last durable point must come again. It reports a
//! low-water mark, the next offset per partition below which everything is durable, as
//! [`Commit::Upto`]; the runtime commits exactly that, and nothing while the processor
//! reports none. The read model is the other variant: it stores its offsets in its own
//! transaction, skips records below them, and lets the runtime commit what it read as a
//! hint of where to resume ([`Commit::Read`], the default).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use fleet_consumer::deadletter::DeadLetters;
//! use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
//! use fleet_event_log::{CommitOffset, ConsumedRecord, EventLog};
//!
//! /// Keeps records in memory and makes them durable every 1,000; commits only those.
//! struct Chunked {
//!     buffered: Vec<ConsumedRecord>,
//!     /// Per partition, the next offset below which everything is durable.
//!     durable: BTreeMap<(String, u32), i64>,
//! }
//!
//! impl Chunked {
//!     fn mark(&self) -> Vec<CommitOffset> {
//!         self.durable
//!             .iter()
//!             .map(|((topic, partition), next)| CommitOffset {
//!                 topic: topic.clone(),
//!                 partition: *partition,
//!                 next_offset: *next,
//!             })
//!             .collect()
//!     }
//! }
//!
//! impl Processor for Chunked {
//!     async fn on_assigned(&mut self, a: &mut Assignment<'_>) -> anyhow::Result<Output> {
//!         // What is buffered for partitions given up is read again by their next owner,
//!         // from the last mark committed.
//!         let held = a.current().clone();
//!         self.buffered.retain(|r| held.contains(&(r.topic.to_string(), r.partition)));
//!         self.durable.retain(|tp, _| held.contains(tp));
//!         Ok(Output::new())
//!     }
//!
//!     async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
//!         self.buffered.extend_from_slice(batch);
//!         // Read, not durable: the mark stays where it was (none at first: nothing).
//!         Output::upto(self.mark())
//!     }
//!
//!     async fn on_tick(&mut self, _handled: usize) -> Output {
//!         if self.buffered.len() >= 1000 {
//!             // ... write the chunk durably, then:
//!             for r in self.buffered.drain(..) {
//!                 let next = self.durable.entry((r.topic.to_string(), r.partition)).or_default();
//!                 *next = (*next).max(r.offset + 1);
//!             }
//!         }
//!         Output::upto(self.mark())
//!     }
//! }
//!
//! # async fn run(log: Arc<dyn EventLog>) -> anyhow::Result<()> {
//! let wire = fleet_schemas::Wire::plain(); // or the role's, with a schema registry
//! let dead = DeadLetters::open(log.clone(), wire, "chunked", "fleet-chunked").await?;
//! let settings = Settings::group("fleet-chunked", &["fleet.metrics.v1"]);
//! let runtime = ConsumerRuntime::subscribe(log, settings, dead).await?;
//! let mut processor = Chunked { buffered: Vec::new(), durable: BTreeMap::new() };
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! runtime.run(&mut processor, shutdown).await;
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod deadletter;
pub mod follow;
pub mod log;
pub mod metrics;
pub mod runtime;

pub use backoff::{retry_backoff, Backoff};
pub use deadletter::{DeadLetters, Reason};
pub use runtime::{Assignment, Commit, ConsumerRuntime, Output, Processor, Settings};
