//! The outbox: the reports waiting to be sent, behind one type. Each collected report is
//! appended to the durable on-disk [`Spool`] (`fsync`'ed) before anything else happens to
//! it; if the spool cannot be written (disk full, I/O error) it goes to a bounded
//! in-memory [`ReportQueue`] instead and is still sent (lost only if the agent stops
//! first: counted in [`StatsSnapshot::lost`](crate::StatsSnapshot::lost)). The sender
//! reads the oldest batch ([`Outbox::next_batch`], spool first) and removes it only once
//! the gateway answered ([`Outbox::remove`]).
//!
//! Both stores are bounded: the spool by `spool-max-bytes`, memory by
//! [`MEMORY_FALLBACK_REPORTS`]; when full, the oldest reports are dropped, counted and
//! logged. Spool I/O runs on the blocking pool.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_schemas::api::ReportIn;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::queue::ReportQueue;
use crate::spool::{Appended, Spool, SpoolError};
use crate::stats::{add, inc, Stats};
use crate::sync::lock;

/// Most reports held in memory when the spool cannot be written.
pub const MEMORY_FALLBACK_REPORTS: usize = 1000;

/// While the spool stays full every collection drops one report: the warning about it is
/// repeated at most this often, with the count since the previous one.
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Where a batch came from, to remove it once sent.
#[derive(Debug)]
pub(crate) enum Source {
    Spool(u64),
    Memory(u64),
}

/// Reports waiting to be sent: the spool, and memory when the spool fails.
#[derive(Debug)]
pub(crate) struct Outbox {
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    /// Reports the spool could not take, still to be sent.
    memory: Mutex<ReportQueue>,
    /// When the newest spool entries (at most `appended_cap`) were appended, to know when
    /// a partial batch is due. Entries older than these (from a previous run) are due now.
    appended: Mutex<VecDeque<(u64, Instant)>>,
    appended_cap: usize,
    /// When the last "spool full" warning was logged, and drops since.
    drop_log: Mutex<(Option<Instant>, u64)>,
    /// Signalled on every push.
    wake: Notify,
}

impl Outbox {
    /// An outbox over `spool`; `batch_max_reports` is the largest batch the sender sends.
    pub(crate) fn new(spool: Arc<Spool>, stats: Arc<Stats>, batch_max_reports: usize) -> Self {
        Self {
            spool,
            stats,
            memory: Mutex::new(ReportQueue::new(MEMORY_FALLBACK_REPORTS)),
            appended: Mutex::new(VecDeque::new()),
            appended_cap: batch_max_reports,
            drop_log: Mutex::new((None, 0)),
            wake: Notify::new(),
        }
    }

    /// The spool (for its path and size).
    pub(crate) fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Stores a collected report (see [`Outbox::store`]), updates the gauges and wakes
    /// the sender. `failing` carries whether the previous append failed, to log once per
    /// episode.
    pub(crate) async fn push(&self, report: ReportIn, failing: &mut bool) {
        self.store(report, failing).await;
        self.refresh_gauges();
        self.wake.notify_one();
    }

    /// Completes after the next [`Outbox::push`] (at once if one happened since the last
    /// wait).
    pub(crate) async fn pushed(&self) {
        self.wake.notified().await;
    }

    /// Runs a blocking spool operation on the blocking pool.
    async fn on_spool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<R, SpoolError> + Send + 'static,
    ) -> Result<R, SpoolError> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|e| SpoolError::Storage {
                path: self.spool.path().to_owned(),
                message: format!("spool task failed: {e}"),
            })?
    }

    /// Copies the spool and memory sizes into the gauges of [`Stats`].
    pub(crate) fn refresh_gauges(&self) {
        let s = &self.stats;
        s.spooled.store(self.spool.len(), Ordering::Relaxed);
        s.spooled_bytes.store(self.spool.bytes(), Ordering::Relaxed);
        s.spool_corrupt
            .store(self.spool.corrupt_total(), Ordering::Relaxed);
        s.in_memory
            .store(lock(&self.memory).len() as u64, Ordering::Relaxed);
    }

    /// Appends a report to the spool (durably), or to memory when the spool fails.
    async fn store(&self, report: ReportIn, failing: &mut bool) {
        let spool = Arc::clone(&self.spool);
        let joined = tokio::task::spawn_blocking(move || {
            let result = spool.append(&report);
            (result, report)
        })
        .await;
        match joined {
            Ok((Ok(appended), _)) => {
                {
                    let mut recent = lock(&self.appended);
                    recent.push_back((appended.seq, Instant::now()));
                    while recent.len() > self.appended_cap {
                        recent.pop_front();
                    }
                }
                if appended.dropped > 0 {
                    self.log_drops(&appended);
                }
                if *failing {
                    info!("Spool writable again.");
                    *failing = false;
                }
            }
            Ok((Err(e), report)) => {
                inc(&self.stats.spool_errors);
                if *failing {
                    debug!(error = %e, "Spool write failed again; report kept in memory.");
                } else {
                    error!(
                        error = %e,
                        "Cannot write the report to the spool; keeping reports in memory \
                         until sent (lost if the agent stops first)."
                    );
                    *failing = true;
                }
                if let Some(old) = lock(&self.memory).push(report) {
                    let total = self.stats.dropped_oldest.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        collected_at = %old.collected_at,
                        dropped_total = total,
                        "In-memory fallback full; dropped the oldest report."
                    );
                }
            }
            Err(e) => {
                inc(&self.stats.spool_errors);
                inc(&self.stats.lost);
                error!(error = %e, "Spooling a report failed abnormally; the report is lost.");
            }
        }
    }

    /// Counts reports the spool bound dropped, and warns: at once for the first drop, then
    /// at most every [`DROP_WARN_EVERY`] with the count since the previous warning (debug
    /// in between). Every drop is in [`StatsSnapshot::dropped_oldest`](crate::StatsSnapshot::dropped_oldest).
    fn log_drops(&self, appended: &Appended) {
        let total = self
            .stats
            .dropped_oldest
            .fetch_add(appended.dropped, Ordering::Relaxed)
            + appended.dropped;
        let (oldest, newest) = appended.dropped_range.unzip();
        let warn_now = {
            let mut log = lock(&self.drop_log);
            let (last_warning, unlogged) = &mut *log;
            *unlogged += appended.dropped;
            if last_warning.is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY) {
                *last_warning = Some(Instant::now());
                Some(std::mem::take(unlogged))
            } else {
                None
            }
        };
        match warn_now {
            Some(dropped) => warn!(
                dropped,
                newest_dropped_collected_at = ?newest,
                dropped_total = total,
                spooled_bytes = self.spool.bytes(),
                spool_max_bytes = self.spool.max_bytes(),
                "Spool full; dropped the oldest reports (raise spool-max-bytes to keep more)."
            ),
            None => debug!(
                dropped = appended.dropped,
                oldest_collected_at = ?oldest,
                newest_collected_at = ?newest,
                dropped_total = total,
                "Spool full; dropped the oldest reports."
            ),
        }
    }

    /// When the pending reports are due: now when a batch of `limit` is waiting or the
    /// oldest report comes from a previous run, else when the oldest has waited `flush`.
    /// `None` when nothing is pending.
    pub(crate) fn due_at(&self, limit: usize, flush: Duration) -> Option<Instant> {
        let spooled = self.spool.len();
        let (in_memory, memory_since) = {
            let m = lock(&self.memory);
            (m.len() as u64, m.oldest_enqueued_at())
        };
        let now = Instant::now();
        if spooled + in_memory == 0 {
            return None;
        }
        if spooled + in_memory >= limit as u64 {
            return Some(now);
        }
        let mut oldest = memory_since;
        if let Some(head) = self.spool.head_seq() {
            let since = lock(&self.appended)
                .iter()
                .find(|(seq, _)| *seq == head)
                .map(|(_, at)| *at);
            match since {
                Some(at) => oldest = Some(oldest.map_or(at, |o| o.min(at))),
                None => return Some(now),
            }
        }
        oldest.map(|at| at + flush)
    }

    /// Moves what only memory holds into the spool (at shutdown); counts what cannot be.
    pub(crate) async fn persist_memory(&self) {
        let left = {
            let mut m = lock(&self.memory);
            match m.batch(usize::MAX) {
                Some(b) => {
                    m.ack(b.through);
                    b.reports
                }
                None => return,
            }
        };
        let mut lost = 0usize;
        for report in left {
            if self.on_spool(move |s| s.append(&report)).await.is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            add(&self.stats.lost, lost);
            warn!(
                reports = lost,
                "Reports held only in memory (the spool failing) are lost at shutdown."
            );
        }
    }

    /// The oldest pending batch: from the spool, else from memory. `Err` when the spool
    /// cannot be read and memory holds nothing.
    pub(crate) async fn next_batch(
        &self,
        limit: usize,
    ) -> Result<Option<(Source, Vec<ReportIn>)>, ()> {
        let peeked = self.on_spool(move |s| s.peek(limit)).await;
        let spool_failed = match peeked {
            Ok(Some(batch)) => return Ok(Some((Source::Spool(batch.through), batch.reports))),
            Ok(None) => false,
            Err(e) => {
                inc(&self.stats.spool_errors);
                error!(error = %e, "Cannot read the spool; retrying later.");
                true
            }
        };
        match lock(&self.memory).batch(limit) {
            Some(batch) => Ok(Some((Source::Memory(batch.through), batch.reports))),
            None if spool_failed => Err(()),
            None => Ok(None),
        }
    }

    /// Removes a sent (or rejected) batch; false when the spool could not.
    pub(crate) async fn remove(&self, source: Source) -> bool {
        match source {
            Source::Spool(through) => match self.on_spool(move |s| s.ack(through)).await {
                Ok(_) => true,
                Err(e) => {
                    inc(&self.stats.spool_errors);
                    error!(
                        error = %e,
                        "Cannot remove sent reports from the spool; they will be sent again \
                         (harmless downstream: event ids derive from the collection time)."
                    );
                    false
                }
            },
            Source::Memory(through) => {
                lock(&self.memory).ack(through);
                true
            }
        }
    }
}
