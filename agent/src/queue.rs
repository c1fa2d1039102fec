//! A bounded in-memory queue of reports: the agent's fallback for reports it could not
//! write to the on-disk [spool](crate::spool) (disk full, I/O error), so they are still
//! sent while the agent runs. Reports only held here are lost if the agent stops first
//! (counted and logged).
//!
//! Reports get increasing sequence numbers. A batch is read from the head without removing
//! it ([`ReportQueue::batch`]) and removed only once the gateway answered
//! ([`ReportQueue::ack`]), so a batch that must be retried stays at the head: the same
//! push / peek / ack shape as the spool.

use std::collections::VecDeque;

use fleet_schemas::api::ReportIn;
use tokio::time::Instant;

/// Reports waiting to be sent, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct ReportQueue {
    items: VecDeque<Queued>,
    capacity: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    enqueued_at: Instant,
    report: ReportIn,
}

/// The head of the queue, copied out for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedBatch {
    /// Sequence number of the last report in the batch: pass it to [`ReportQueue::ack`].
    pub through: u64,
    /// The reports, oldest first.
    pub reports: Vec<ReportIn>,
}

impl ReportQueue {
    /// An empty queue holding at most `capacity` reports (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity.min(64)),
            capacity,
            next_seq: 0,
        }
    }

    /// Appends a report. When the queue is full the oldest report is removed to make room
    /// and returned, so the caller can count and log it.
    pub fn push(&mut self, report: ReportIn) -> Option<ReportIn> {
        let dropped = if self.items.len() >= self.capacity {
            self.items.pop_front().map(|q| q.report)
        } else {
            None
        };
        self.items.push_back(Queued {
            seq: self.next_seq,
            enqueued_at: Instant::now(),
            report,
        });
        self.next_seq += 1;
        dropped
    }

    /// Number of queued reports.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Most reports the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// When the oldest queued report was pushed.
    pub fn oldest_enqueued_at(&self) -> Option<Instant> {
        self.items.front().map(|q| q.enqueued_at)
    }

    /// A copy of up to `max` reports from the head, or `None` when empty.
    pub fn batch(&self, max: usize) -> Option<QueuedBatch> {
        let reports: Vec<ReportIn> = self
            .items
            .iter()
            .take(max.max(1))
            .map(|q| q.report.clone())
            .collect();
        let through = self.items.get(reports.len().checked_sub(1)?)?.seq;
        Some(QueuedBatch { through, reports })
    }

    /// Removes every report up to and including sequence number `through` (some may have
    /// been dropped meanwhile); returns how many were removed.
    pub fn ack(&mut self, through: u64) -> usize {
        let mut removed = 0;
        while self.items.front().is_some_and(|q| q.seq <= through) {
            self.items.pop_front();
            removed += 1;
        }
        removed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid report whose `uptime_seconds` tells reports apart.
    pub(crate) use crate::spool::tests::report;

    fn ids(reports: &[ReportIn]) -> Vec<u64> {
        reports.iter().map(|r| r.uptime_seconds).collect()
    }

    #[test]
    fn full_queue_drops_oldest_and_returns_it() {
        let mut q = ReportQueue::new(3);
        for n in 0..3 {
            assert!(q.push(report(n)).is_none());
        }
        let dropped = q.push(report(3)).expect("oldest dropped");
        assert_eq!(dropped.uptime_seconds, 0);
        assert_eq!(q.len(), 3);
        assert_eq!(ids(&q.batch(10).unwrap().reports), vec![1, 2, 3]);
    }

    #[test]
    fn batch_stays_until_acked() {
        let mut q = ReportQueue::new(10);
        assert!(q.batch(2).is_none());
        for n in 0..5 {
            q.push(report(n));
        }
        let b = q.batch(2).unwrap();
        assert_eq!(ids(&b.reports), vec![0, 1]);
        // Not acked (retry): the same head again.
        assert_eq!(q.batch(2).unwrap(), b);
        assert_eq!(q.ack(b.through), 2);
        assert_eq!(ids(&q.batch(10).unwrap().reports), vec![2, 3, 4]);
    }

    #[test]
    fn ack_after_drops_removes_only_what_remains_of_the_batch() {
        let mut q = ReportQueue::new(3);
        for n in 0..3 {
            q.push(report(n));
        }
        let b = q.batch(2).unwrap(); // 0, 1 in flight
        q.push(report(3)); // drops 0 while in flight
        assert_eq!(q.ack(b.through), 1); // removes 1 only
        assert_eq!(ids(&q.batch(10).unwrap().reports), vec![2, 3]);
    }
}
