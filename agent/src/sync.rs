//! Locking shared by the agent's tasks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when a panic poisoned it: the agent's mutexes guard plain data (queues,
/// counters, the command store), still usable after a panic elsewhere.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
