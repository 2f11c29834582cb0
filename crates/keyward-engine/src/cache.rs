//! The verify cache: bounded, in-process, invalidated by every write.
//!
//! Two positive maps and one negative map, all bounded by entry count:
//! - `secrets`: secret hash → (key_id, secret): which key a secret belongs to, and when the
//!   secret ends;
//! - `records`: key_id → key record;
//! - `not_found`: secret hashes the store does not know, so a flood of random well-formed
//!   keys costs one store lookup per distinct key and a bounded amount of memory.
//!
//! Every entry carries the time it was filled (by the engine's clock). The engine serves an
//! entry without a store read only while it is fresh: younger than `max_staleness` and filled
//! while the change feed was trusted. An older entry is kept until `stale_if_error`, for use
//! only when the store cannot be reached.
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
use quick_cache::{Lifecycle, OptionsBuilder, UnitWeighter};
use time::OffsetDateTime;

use crate::telemetry::{self, CacheName};

/// Cache sizing and freshness.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Most key records held.
    pub max_keys: u64,
    /// Most secrets held (a key has one or two live secrets).
    pub max_secrets: u64,
    /// Most NOT_FOUND hashes remembered.
    pub max_not_found: u64,
    /// Longest time an entry is served without a store read: a backstop behind the
    /// invalidations (this process's writes evict at once, other nodes' through the store's
    /// change feed).
    pub max_staleness: Duration,
    /// Longest time an entry may still be served when the store cannot be reached
    /// (stale-if-error). Unknown keys are never answered from this: they fail closed.
    pub stale_if_error: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_secrets: 200_000,
            max_not_found: 100_000,
            max_staleness: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
        }
    }
}

/// A cached secret: which key it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct CachedSecret {
    pub key_id: String,
    /// Shared with every verification it answers: handing it out is a reference count.
    pub secret: Arc<SecretInfo>,
    /// The version of the key's record this secret was read with. Every write to a key,
    /// a secret's change included, bumps the version, so a secret is served only with the
    /// record of the same version (see [`CachedSecret::matches`]).
    pub version: i64,
    pub filled_at: OffsetDateTime,
}

impl CachedSecret {
    /// True if this secret was read together with `record` (the same key, the same write).
    pub fn matches(&self, record: &KeyRecord) -> bool {
        self.version == record.version && self.key_id == record.key_id
    }
}

/// A cached record (the effective one, its plan applied).
#[derive(Debug, Clone)]
pub(crate) struct CachedRecord {
    pub record: Arc<KeyRecord>,
    pub filled_at: OffsetDateTime,
}

/// What the cache knows about a hash.
pub(crate) enum SecretLookup {
    Known(Arc<CachedSecret>),
    /// The store did not know the hash when it was asked at this time.
    NotFound(OffsetDateTime),
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

/// One of the maps: bounded by entry count, evicting by S3-FIFO (quick_cache), counting what it
/// evicts. A lookup is a read lock on one shard and a hash probe, with no clock read and no
/// allocation.
type Map<K, V> =
    quick_cache::sync::Cache<K, V, UnitWeighter, foldhash::fast::RandomState, Evictions>;

pub(crate) struct VerifyCache {
    secrets: Map<KeyHash, Arc<CachedSecret>>,
    records: Map<String, CachedRecord>,
    not_found: Map<KeyHash, OffsetDateTime>,
    generation: AtomicU64,
    /// Fills hold it shared for their check-then-insert; an invalidation holds it exclusively
    /// for its bump-then-evict, so the two never interleave. Cache reads never take it.
    fill_gate: RwLock<()>,
}

/// Counts the entries a map drops for size; invalidations and replacements are not evictions.
#[derive(Debug, Clone, Copy)]
struct Evictions(CacheName);

impl<K, V> Lifecycle<K, V> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut Self::RequestState, _: K, _: V) {
        telemetry::cache_eviction(self.0.label());
    }
}

/// A map of at most `capacity` entries.
fn map<K: Eq + std::hash::Hash, V: Clone>(capacity: u64, name: CacheName) -> Map<K, V> {
    let capacity = capacity.max(1);
    let items = usize::try_from(capacity).unwrap_or(usize::MAX);
    let hasher = foldhash::fast::RandomState::default();
    match OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(capacity)
        .build()
    {
        Ok(options) => Map::with_options(options, UnitWeighter, hasher, Evictions(name)),
        // The builder refuses only a zero capacity, which `max(1)` rules out.
        Err(_) => Map::with(1024, 1024, UnitWeighter, hasher, Evictions(name)),
    }
}

impl VerifyCache {
    pub fn new(config: CacheConfig) -> Self {
        // No time-to-live: the engine decides by its own clock, from each entry's
        // `filled_at`, whether it is fresh, usable only when the store cannot be reached, or
        // neither (then it is never served, and waits to be evicted by size).
        Self {
            secrets: map(config.max_secrets, CacheName::Secrets),
            records: map(config.max_keys, CacheName::Records),
            not_found: map(config.max_not_found, CacheName::NotFound),
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
            telemetry::meters().cache_lookup(CacheName::Secrets, true);
            return SecretLookup::Known(found);
        }
        telemetry::meters().cache_lookup(CacheName::Secrets, false);
        let not_found = self.not_found.get(hash);
        telemetry::meters().cache_lookup(CacheName::NotFound, not_found.is_some());
        match not_found {
            Some(at) => SecretLookup::NotFound(at),
            None => SecretLookup::Unknown,
        }
    }

    /// The record of the key with secret `hash`, if both are cached (fresh or not), without
    /// counting a lookup: a scoped verification asks this before its real lookup.
    pub fn known_record(&self, hash: &KeyHash) -> Option<CachedRecord> {
        let secret = self.secrets.get(hash)?;
        self.records
            .get(&secret.key_id)
            .filter(|cached| secret.matches(&cached.record))
    }

    pub fn record(&self, key_id: &str) -> Option<CachedRecord> {
        let found = self.records.get(key_id);
        telemetry::meters().cache_lookup(CacheName::Records, found.is_some());
        found
    }

    /// Inserts unless a write happened since `generation` was read (the fill's store read may
    /// predate that write).
    fn fill<K, V>(&self, cache: &Map<K, V>, key: K, value: V, generation: u64)
    where
        K: std::hash::Hash + Eq,
        V: Clone,
    {
        let _shared = self.fill_gate.read().unwrap_or_else(|e| e.into_inner());
        if self.generation() == generation {
            cache.insert(key, value);
        }
    }

    pub fn fill_secret(&self, hash: KeyHash, secret: CachedSecret, generation: u64) {
        self.fill(&self.secrets, hash, Arc::new(secret), generation);
    }

    pub fn fill_record(&self, record: CachedRecord, generation: u64) {
        self.fill(
            &self.records,
            record.record.key_id.clone(),
            record,
            generation,
        );
    }

    pub fn fill_not_found(&self, hash: KeyHash, at: OffsetDateTime, generation: u64) {
        self.fill(&self.not_found, hash, at, generation);
    }

    /// Evicts a key's record and the given secret hashes (changed or new secrets).
    pub fn invalidate<'a>(&self, key_id: &str, hashes: impl IntoIterator<Item = &'a KeyHash>) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.records.remove(key_id);
        for hash in hashes {
            self.secrets.remove(hash);
            self.not_found.remove(hash);
        }
    }

    /// Evicts a key changed elsewhere. Which of its secrets changed is not known here, and
    /// finding them would mean scanning the secrets map; evicting the record is enough: the
    /// next verification of any of its secrets reads the store, and a cached secret is served
    /// only with a record of the version it was read with, which the change has bumped.
    pub fn invalidate_key(&self, key_id: &str) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.records.remove(key_id);
    }

    /// Drops every fill in flight (it may have read the store before a change this node
    /// missed) without evicting anything.
    pub fn bump_generation(&self) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Evicts every key record (a plan changed, and any record may inherit from it).
    pub fn invalidate_all_records(&self) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.records.clear();
    }

    pub fn sizes(&self) -> CacheSizes {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        CacheSizes {
            keys: count(self.records.len()),
            secrets: count(self.secrets.len()),
            not_found: count(self.not_found.len()),
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
        let at = OffsetDateTime::UNIX_EPOCH;
        let generation = cache.generation();
        // A write commits and invalidates while the fill's store read was in flight.
        cache.invalidate("key_x", [&hash]);
        cache.fill_not_found(hash, at, generation);
        assert!(matches!(cache.secret(&hash), SecretLookup::Unknown));
        // A fill that started after the write is kept.
        cache.fill_not_found(hash, at, cache.generation());
        assert!(matches!(cache.secret(&hash), SecretLookup::NotFound(t) if t == at));
    }

    /// Another node's change to a key evicts the key's record (only), and the key's cached
    /// secrets stop being servable: they match only a record of the version they were read
    /// with, and the change bumped it. (Before issue 12 the secrets were evicted by a scan of
    /// the whole map on every change-feed event.)
    #[test]
    fn invalidating_a_key_evicts_its_record_and_its_secrets_stop_matching() {
        let cache = VerifyCache::new(CacheConfig::default());
        let at = OffsetDateTime::UNIX_EPOCH;
        let secret = |key_id: &str, plaintext: &str| CachedSecret {
            key_id: key_id.into(),
            secret: Arc::new(SecretInfo {
                hash: KeyHash::sha256_of(plaintext),
                start: "kw_live_x".into(),
                created_at: at,
                expires_at: None,
            }),
            version: 1,
            filled_at: at,
        };
        let record = |key_id: &str, version: i64| {
            let mut record = KeyRecord::sample(at);
            record.key_id = key_id.into();
            record.version = version;
            record
        };
        for (key_id, plaintext) in [("key_a", "kw_live_a1"), ("key_b", "kw_live_b1")] {
            let hash = KeyHash::sha256_of(plaintext);
            cache.fill_secret(hash, secret(key_id, plaintext), cache.generation());
            let filled = CachedRecord {
                record: Arc::new(record(key_id, 1)),
                filled_at: at,
            };
            cache.fill_record(filled, cache.generation());
        }
        cache.invalidate_key("key_a");
        assert!(
            cache.record("key_a").is_none(),
            "the changed key's record is evicted"
        );
        assert!(cache.record("key_b").is_some(), "other keys are untouched");
        let SecretLookup::Known(a1) = cache.secret(&KeyHash::sha256_of("kw_live_a1")) else {
            panic!("the secret entry stays until evicted by size");
        };
        assert!(a1.matches(&record("key_a", 1)));
        assert!(
            !a1.matches(&record("key_a", 2)),
            "not with the changed record"
        );
        assert!(!a1.matches(&record("key_b", 1)), "nor with another key's");
        assert!(known_record_is_none(&cache, "kw_live_a1"));
    }

    fn known_record_is_none(cache: &VerifyCache, plaintext: &str) -> bool {
        cache.known_record(&KeyHash::sha256_of(plaintext)).is_none()
    }
}
