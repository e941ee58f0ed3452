//! Compiled scripts, kept as QuickJS bytecode so that a run loads instead of
//! parsing.
//!
//! A small least-recently-used map, bounded by count and by bytes. Bytecode
//! belongs to no runtime, so every worker's fresh runtime can load it. A
//! script's key names its version; an entry also remembers a hash of the
//! source it came from, so a caller that reuses a key for other source gets a
//! fresh compile instead of the old program.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytecode by script key, least recently used first out.
pub(super) struct Cache {
    /// The map and its accounting; one short lock per lookup or insert.
    inner: Mutex<Inner>,
    /// Most entries kept: each costs a key and a map slot besides its bytes.
    max_entries: usize,
    /// Most bytecode bytes kept in all.
    max_bytes: usize,
}

struct Inner {
    entries: HashMap<String, Entry>,
    /// Sum of the entries' bytecode lengths, checked against `max_bytes`.
    bytes: usize,
    /// A clock that ticks on every use, for finding the least recently used.
    clock: u64,
}

struct Entry {
    /// The module's bytecode, shared with the runs loading it right now.
    code: Arc<[u8]>,
    /// Hash of the source the bytecode came from.
    source_hash: u64,
    /// `clock` at the last use.
    used: u64,
}

impl Cache {
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
            max_entries,
            max_bytes,
        }
    }

    /// The bytecode for `key`, if it was compiled from this `source`.
    pub(super) fn get(&self, key: &str, source: &str) -> Option<Arc<[u8]>> {
        let hash = source_hash(source);
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.entries.get_mut(key)?;
        if entry.source_hash != hash {
            return None;
        }
        entry.used = now;
        Some(entry.code.clone())
    }

    /// Keeps `code`, compiled from `source`, under `key`, then drops the least
    /// recently used entries until the cache is within its bounds again.
    pub(super) fn insert(&self, key: &str, source: &str, code: Arc<[u8]>) {
        if code.len() > self.max_bytes || self.max_entries == 0 {
            return;
        }
        let hash = source_hash(source);
        let mut inner = self.lock();
        inner.clock += 1;
        let entry = Entry {
            code,
            source_hash: hash,
            used: inner.clock,
        };
        inner.bytes += entry.code.len();
        if let Some(old) = inner.entries.insert(key.to_owned(), entry) {
            inner.bytes -= old.code.len();
        }
        while inner.entries.len() > self.max_entries || inner.bytes > self.max_bytes {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { break };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.code.len();
            }
        }
    }

    /// How many scripts are cached.
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent between statements, so a panic elsewhere
        // while holding the lock leaves nothing half done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn source_hash(source: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    source.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(len: usize) -> Arc<[u8]> {
        vec![0u8; len].into()
    }

    #[test]
    fn least_recently_used_goes_first() {
        let cache = Cache::new(2, 1 << 20);
        cache.insert("a", "A", code(1));
        cache.insert("b", "B", code(1));
        assert!(cache.get("a", "A").is_some());
        cache.insert("c", "C", code(1));
        assert!(cache.get("a", "A").is_some());
        assert!(cache.get("b", "B").is_none());
        assert!(cache.get("c", "C").is_some());
    }

    #[test]
    fn bounded_by_bytes_and_checks_the_source() {
        let cache = Cache::new(10, 100);
        cache.insert("a", "A", code(60));
        cache.insert("b", "B", code(60));
        assert_eq!(cache.len(), 1);
        assert!(cache.get("b", "B").is_some());
        assert!(cache.get("b", "other source").is_none());
        cache.insert("huge", "H", code(101));
        assert!(cache.get("huge", "H").is_none());
    }
}
