//! The gateway's one cache of registry answers (agent credentials by agent id, ingest keys
//! by the SHA-256 of the key): each answer is trusted for `auth-cache`, then asked again.
//!
//! Bounded: at most `max` entries. When full, expired entries are dropped first; if it is
//! still full, only answers worth keeping (a found credential, a valid key) are added, so a
//! flood of made-up ids or keys cannot grow it, nor push out the entries of real callers.
//! A miss costs a registry lookup; an entry is never older than the TTL when served.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Registry answers by key, each trusted for a TTL.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// A cache of at most `max` entries trusted for `ttl` (zero: nothing is served).
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        TtlCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`, if one younger than the TTL is held.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock();
        let (v, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// Remembers `value` for `key` from now on. `keep` says whether the answer is worth
    /// keeping when the cache is full of fresh entries (see the module documentation).
    pub(crate) fn insert(&self, key: K, value: V, keep: bool) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.max {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        if keep || entries.len() < self.max {
            entries.insert(key, (value, Instant::now()));
        }
    }

    /// Forgets `key`'s answer.
    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_served_within_the_ttl_and_bounded() {
        let cache: TtlCache<String, Option<u32>> = TtlCache::new(Duration::from_secs(60), 2);
        cache.insert("a".into(), Some(1), true);
        cache.insert("b".into(), None, false);
        assert_eq!(cache.get("a"), Some(Some(1)));
        assert_eq!(cache.get("b"), Some(None));
        // Full of fresh entries: an answer not worth keeping is not added, one worth
        // keeping is.
        cache.insert("c".into(), None, false);
        assert_eq!(cache.get("c"), None);
        cache.insert("d".into(), Some(4), true);
        assert_eq!(cache.get("d"), Some(Some(4)));
        cache.remove("a");
        assert_eq!(cache.get("a"), None);

        let off: TtlCache<String, u32> = TtlCache::new(Duration::ZERO, 10);
        off.insert("a".into(), 1, true);
        assert_eq!(off.get("a"), None, "a zero TTL caches nothing");
    }

    #[test]
    fn expired_entries_make_room() {
        let cache: TtlCache<u8, u8> = TtlCache::new(Duration::from_millis(1), 1);
        cache.insert(1, 1, false);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get(&1), None, "expired");
        cache.insert(2, 2, false);
        assert_eq!(
            cache.entries.lock().len(),
            1,
            "the expired entry was dropped"
        );
    }
}
