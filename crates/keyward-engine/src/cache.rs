//! The verify cache: bounded, in-process, invalidated by every write.
//!
//! Two positive maps and one negative map, all bounded by entry count and by a maximum age:
//! - `secrets`: secret hash → (key_id, secret): which key a secret belongs to, and when the
//!   secret ends;
//! - `records`: key_id → key record;
//! - `not_found`: secret hashes the store does not know, so a flood of random well-formed
//!   keys costs one store lookup per distinct key and a bounded amount of memory.
//!
//! Splitting secrets from records lets a write evict exactly one record and the secrets it
//! changed, without scanning. A generation counter closes the race between a cache fill that
//! read the store before a write committed and the write's invalidation: fills started before
//! the latest write are dropped, and a fill's check-and-insert cannot interleave with an
//! invalidation's bump-and-evict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_core::key::KeyHash;
use keyward_core::record::{KeyRecord, SecretInfo};
use moka::sync::Cache;

/// Cache sizing.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Most key records held.
    pub max_keys: u64,
    /// Most secrets held (a key has one or two live secrets).
    pub max_secrets: u64,
    /// Most NOT_FOUND hashes remembered.
    pub max_not_found: u64,
    /// Longest time an entry is served without a store read (a backstop; writes through this
    /// process evict at once).
    pub max_staleness: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_secrets: 200_000,
            max_not_found: 100_000,
            max_staleness: Duration::from_secs(30),
        }
    }
}

/// A cached secret: which key it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct CachedSecret {
    pub key_id: String,
    pub secret: SecretInfo,
}

/// What the cache knows about a hash.
pub(crate) enum SecretLookup {
    Known(Arc<CachedSecret>),
    NotFound,
    Unknown,
}

/// Entry counts, for tests and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Cached key records.
    pub keys: u64,
    /// Cached secrets.
    pub secrets: u64,
    /// Cached NOT_FOUND hashes.
    pub not_found: u64,
}

pub(crate) struct VerifyCache {
    secrets: Cache<KeyHash, Arc<CachedSecret>>,
    records: Cache<String, Arc<KeyRecord>>,
    not_found: Cache<KeyHash, ()>,
    generation: AtomicU64,
    /// Fills hold it shared for their check-then-insert; an invalidation holds it exclusively
    /// for its bump-then-evict, so the two never interleave. Cache reads never take it.
    fill_gate: RwLock<()>,
}

impl VerifyCache {
    pub fn new(config: CacheConfig) -> Self {
        Self {
            secrets: Cache::builder()
                .max_capacity(config.max_secrets)
                .time_to_live(config.max_staleness)
                .build(),
            records: Cache::builder()
                .max_capacity(config.max_keys)
                .time_to_live(config.max_staleness)
                .build(),
            not_found: Cache::builder()
                .max_capacity(config.max_not_found)
                .time_to_live(config.max_staleness)
                .build(),
            generation: AtomicU64::new(0),
            fill_gate: RwLock::new(()),
        }
    }

    /// The generation to pass to the `fill_*` calls of a store read starting now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn secret(&self, hash: &KeyHash) -> SecretLookup {
        if let Some(found) = self.secrets.get(hash) {
            SecretLookup::Known(found)
        } else if self.not_found.contains_key(hash) {
            SecretLookup::NotFound
        } else {
            SecretLookup::Unknown
        }
    }

    pub fn record(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        self.records.get(key_id)
    }

    /// Inserts unless a write happened since `generation` was read (the fill's store read may
    /// predate that write).
    fn fill<K, V>(&self, cache: &Cache<K, V>, key: K, value: V, generation: u64)
    where
        K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let _shared = self.fill_gate.read().unwrap_or_else(|e| e.into_inner());
        if self.generation() == generation {
            cache.insert(key, value);
        }
    }

    pub fn fill_secret(&self, hash: KeyHash, secret: CachedSecret, generation: u64) {
        self.fill(&self.secrets, hash, Arc::new(secret), generation);
    }

    pub fn fill_record(&self, record: Arc<KeyRecord>, generation: u64) {
        self.fill(&self.records, record.key_id.clone(), record, generation);
    }

    pub fn fill_not_found(&self, hash: KeyHash, generation: u64) {
        self.fill(&self.not_found, hash, (), generation);
    }

    /// Evicts a key's record and the given secret hashes (changed or new secrets).
    pub fn invalidate<'a>(&self, key_id: &str, hashes: impl IntoIterator<Item = &'a KeyHash>) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate(key_id);
        for hash in hashes {
            self.secrets.invalidate(hash);
            self.not_found.invalidate(hash);
        }
    }

    /// Evicts every key record (a plan changed, and any record may inherit from it).
    pub fn invalidate_all_records(&self) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate_all();
    }

    pub fn sizes(&self) -> CacheSizes {
        self.secrets.run_pending_tasks();
        self.records.run_pending_tasks();
        self.not_found.run_pending_tasks();
        CacheSizes {
            keys: self.records.entry_count(),
            secrets: self.secrets.entry_count(),
            not_found: self.not_found.entry_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_started_before_a_write_is_dropped() {
        let cache = VerifyCache::new(CacheConfig::default());
        let hash = KeyHash::sha256_of("kw_live_x");
        let generation = cache.generation();
        // A write commits and invalidates while the fill's store read was in flight.
        cache.invalidate("key_x", [&hash]);
        cache.fill_not_found(hash, generation);
        assert!(matches!(cache.secret(&hash), SecretLookup::Unknown));
        // A fill that started after the write is kept.
        cache.fill_not_found(hash, cache.generation());
        assert!(matches!(cache.secret(&hash), SecretLookup::NotFound));
    }
}
