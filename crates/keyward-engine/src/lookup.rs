//! Finding keys: by secret hash on the verify path, and by key_id for the admin operations.
//!
//! [`KeyLookup`] owns what decides whether a cached answer may be served without a store read
//! (the freshness state): the verify cache and the plan map, whether the change feed is trusted
//! and since when, when the store last failed a verify-path read (the store probe), the
//! single-flight table of store reads in progress, and the per-address budget of store reads
//! for unknown keys. Writers ([`crate::lifecycle`], plan changes, the change feed) tell it what
//! to forget; it never writes to the store.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use keyward_core::key::{KeyHash, is_key_id};
use keyward_core::record::{KeyKind, KeyRecord, Plan};
use keyward_store::{KeyStore, StoreError};
use time::OffsetDateTime;

use crate::cache::{
    CacheConfig, CacheSizes, CachedRecord, CachedSecret, SecretLookup, VerifyCache,
};
use crate::error::EngineError;
use crate::single_flight::{Flights, Found};
use crate::telemetry;
use crate::types::EngineConfig;
use crate::unknown_keys::UnknownKeys;
use crate::verification::Degraded;

/// After a verify-path store read fails, how long lookups answer from stale-if-error without
/// trying the store again.
pub(crate) const STORE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The read side of the engine; see the module docs.
pub(crate) struct KeyLookup {
    store: Arc<dyn KeyStore>,
    cache: VerifyCache,
    cache_config: CacheConfig,
    /// Plans as verification applies them, by name (`None`: no such plan).
    plans: Mutex<HashMap<String, Option<Arc<Plan>>>>,
    /// Admit well-formed unknown keys while the store is unreachable (see [`EngineConfig`]).
    pub(crate) fail_open_unknown_keys: bool,
    /// False while the store's change feed is down: notifications may be missed, so the cache
    /// is not served without a store read until the feed is back and the cache is cleared.
    feed_trusted: AtomicBool,
    /// Entries filled before this instant (Unix nanoseconds; set by a resync) are not fresh,
    /// though they stay usable for stale-if-error.
    trusted_since: AtomicI64,
    /// When the store last failed a verify-path read (Unix nanoseconds, `i64::MIN` if it has
    /// not): until [`STORE_PROBE_INTERVAL`] has passed, lookups skip the store and answer from
    /// stale-if-error at once instead of each waiting out the connection timeout.
    store_failed_at: AtomicI64,
    /// Store reads in flight by secret hash, so concurrent misses of one key read it once.
    flights: Flights,
    /// Store reads for unknown keys per caller address.
    unknown_keys: UnknownKeys,
}

/// Nanoseconds since the Unix epoch, saturated to `i64` (good until the year 2262).
fn unix_nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

impl KeyLookup {
    pub(crate) fn new(store: Arc<dyn KeyStore>, config: &EngineConfig) -> Self {
        Self {
            store,
            cache: VerifyCache::new(config.cache),
            cache_config: config.cache,
            plans: Mutex::new(HashMap::new()),
            fail_open_unknown_keys: config.fail_open_unknown_keys,
            feed_trusted: AtomicBool::new(true),
            trusted_since: AtomicI64::new(i64::MIN),
            store_failed_at: AtomicI64::new(i64::MIN),
            flights: Flights::new(),
            unknown_keys: UnknownKeys::new(config.unknown_key_budget),
        }
    }

    /// True if an entry filled at `filled_at` may be served without a store read: the change
    /// feed is trusted (no notification may have been missed) and the entry was filled within
    /// the staleness bound of `now`. Within, on either side: an entry "filled" later than
    /// `now` by more than the bound (the wall clock stepped back) has no known age and is not
    /// fresh, as the cache has no clock of its own to cap it.
    ///
    /// Compared as Unix nanoseconds (`now` already converted by the caller): on the verify
    /// path, subtracting two `OffsetDateTime`s costs several times more.
    fn fresh(&self, filled_at: OffsetDateTime, now: i64, trusted: bool) -> bool {
        let filled = unix_nanos(filled_at);
        trusted
            && filled >= self.trusted_since.load(Ordering::Acquire)
            && (i128::from(now) - i128::from(filled)).unsigned_abs()
                <= self.cache_config.max_staleness.as_nanos()
    }

    /// The store read of a lookup, unless the store failed less than [`STORE_PROBE_INTERVAL`]
    /// ago: then the lookup goes straight to stale-if-error (one probe per interval finds out
    /// when the store is back).
    ///
    /// For a hash the cache does not hold as a key (`budgeted`), the read is refused, without
    /// reading, while the caller's address is over its budget of unknown keys
    /// (`unknown_keys.rs`); a key the node has seen is refreshed whatever the budget.
    /// Concurrent reads of one hash are made once (`single_flight.rs`). A saturated store
    /// (`StoreError::Saturated`) is neither a failure nor a recovery: the request is shed and
    /// the store is not marked down, so a flood that fills the pool cannot switch a node to its
    /// outage behaviour.
    async fn probe_store(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        generation: u64,
        trusted: bool,
        ip: Option<IpAddr>,
        budgeted: bool,
    ) -> Result<Found, EngineError> {
        let failed_at = self.store_failed_at.load(Ordering::Acquire);
        if failed_at != i64::MIN
            && i128::from(unix_nanos(now)) - i128::from(failed_at)
                < STORE_PROBE_INTERVAL.as_nanos() as i128
        {
            return Err(EngineError::Store(StoreError::Backend(
                "the store failed moments ago; waiting for the next probe".into(),
            )));
        }
        if budgeted && let Err(retry_after_seconds) = self.unknown_keys.check(ip, now) {
            return Err(EngineError::TooManyUnknownKeys {
                retry_after_seconds,
            });
        }
        let (result, read_here) = self
            .flights
            .read(hash, generation, trusted, || {
                self.lookup_in_store(hash, now, generation, trusted)
            })
            .await;
        match &result {
            Err(EngineError::Store(StoreError::Backend(_))) => {
                self.store_failed_at
                    .store(unix_nanos(now), Ordering::Release);
            }
            Err(EngineError::Store(StoreError::Saturated(_))) => {}
            other => {
                if budgeted && read_here && matches!(other, Ok(None)) {
                    self.unknown_keys.charge(ip, now);
                }
                if failed_at != i64::MIN {
                    self.store_failed_at.store(i64::MIN, Ordering::Release);
                }
            }
        }
        result
    }

    /// Finds the key of a secret hash: from the cache while its entries are fresh, else from
    /// the store; if the store cannot be reached, from entries still within stale-if-error
    /// (reported in `fallback`), else the store's error (unknown keys fail closed).
    pub(crate) async fn lookup(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        ip: Option<IpAddr>,
        fallback: &mut Option<Degraded>,
    ) -> Result<Found, EngineError> {
        let generation = self.cache.generation();
        let trusted = self.feed_trusted.load(Ordering::Acquire);
        let cached = self.cache.secret(hash);
        let now_nanos = unix_nanos(now);
        let cached_record = match &cached {
            SecretLookup::NotFound(at) if self.fresh(*at, now_nanos, trusted) => return Ok(None),
            SecretLookup::Known(secret) => {
                let record = self.cache.record(&secret.key_id);
                if let Some(record) = &record
                    && secret.matches(&record.record)
                    && self.fresh(secret.filled_at, now_nanos, trusted)
                    && self.fresh(record.filled_at, now_nanos, trusted)
                {
                    return Ok(Some((
                        Arc::clone(&record.record),
                        Arc::clone(&secret.secret),
                    )));
                }
                record
            }
            SecretLookup::NotFound(_) | SecretLookup::Unknown => None,
        };
        // Boxed: the store read's future is large, and keeping it inline would make every
        // verification's future (moved on each call) that large, cache hits included.
        // A secret this node has cached (if stale) is a key it knows: refreshing it is not an
        // unknown-key read, so the per-address budget does not hold it back.
        let budgeted = !matches!(cached, SecretLookup::Known(_));
        match Box::pin(self.probe_store(hash, now, generation, trusted, ip, budgeted)).await {
            Err(EngineError::Store(StoreError::Backend(source))) => {
                // Within the bound on either side, as in `fresh`.
                let usable =
                    |at: OffsetDateTime| (now - at).abs() <= self.cache_config.stale_if_error;
                if let (SecretLookup::Known(secret), Some(record)) = (&cached, cached_record)
                    && secret.matches(&record.record)
                    && usable(secret.filled_at)
                    && usable(record.filled_at)
                {
                    let age = now - secret.filled_at.min(record.filled_at);
                    *fallback = Some(Degraded::StaleCache {
                        age_seconds: u64::try_from(age.whole_seconds()).unwrap_or(0),
                    });
                    return Ok(Some((record.record, Arc::clone(&secret.secret))));
                }
                Err(EngineError::Store(StoreError::Backend(source)))
            }
            other => other,
        }
    }

    async fn lookup_in_store(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
        generation: u64,
        trusted: bool,
    ) -> Result<Found, EngineError> {
        let Some(found) = self.store.find_by_hash(hash, now).await? else {
            self.cache.fill_not_found(*hash, now, generation);
            return Ok(None);
        };
        let record = Arc::new(self.effective(found.record, trusted).await?);
        let secret = Arc::new(found.secret);
        self.cache.fill_record(
            CachedRecord {
                record: Arc::clone(&record),
                filled_at: now,
            },
            generation,
        );
        self.cache.fill_secret(
            *hash,
            CachedSecret {
                key_id: record.key_id.clone(),
                secret: Arc::clone(&secret),
                version: record.version,
                filled_at: now,
            },
            generation,
        );
        Ok(Some((record, secret)))
    }

    /// The record as verification sees it: its plan's settings filled in.
    /// While the change feed is not trusted, plans are read from the store, not the plan map.
    pub(crate) async fn effective(
        &self,
        record: KeyRecord,
        trusted: bool,
    ) -> Result<KeyRecord, EngineError> {
        let Some(plan_id) = record.policy.plan.clone() else {
            return Ok(record);
        };
        let cached = if trusted {
            self.plans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&plan_id)
                .cloned()
        } else {
            None
        };
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let generation = self.cache.generation();
                let plan = self.store.get_plan(&plan_id).await?.map(Arc::new);
                let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
                // A plan change since the read bumped the generation: do not cache what it
                // replaced (the plan map is cleared under the same lock order by forget_plans).
                if self.cache.generation() == generation {
                    plans.insert(plan_id, plan.clone());
                }
                plan
            }
        };
        Ok(record.with_plan(plan.as_deref()))
    }

    /// [`effective`](Self::effective) with the plan map trusted as far as the feed is.
    pub(crate) async fn effective_now(&self, record: KeyRecord) -> Result<KeyRecord, EngineError> {
        self.effective(record, self.change_feed_trusted()).await
    }

    /// Reads a key of `kind`, whatever its tenant, from the store (admin reads are never
    /// cached).
    pub(crate) async fn get_key(
        &self,
        kind: KeyKind,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<KeyRecord, EngineError> {
        let not_found = || EngineError::NotFound {
            key_id: key_id.to_owned(),
        };
        if !is_key_id(key_id) {
            return Err(not_found());
        }
        match self.store.get_key(key_id, now).await? {
            Some(record) if record.kind == kind => Ok(record),
            _ => Err(not_found()),
        }
    }

    /// The cached record of a secret hash, fresh or not, if the cache holds it as a key.
    pub(crate) fn known_record(&self, hash: &KeyHash) -> Option<CachedRecord> {
        self.cache.known_record(hash)
    }

    /// The per-address budget of store reads for unknown keys.
    pub(crate) fn unknown_keys(&self) -> &UnknownKeys {
        &self.unknown_keys
    }

    /// A write changed `key_id` and the secrets `hashes`: evicts them at once.
    pub(crate) fn invalidate<'a>(
        &self,
        key_id: &str,
        hashes: impl IntoIterator<Item = &'a KeyHash>,
    ) {
        self.cache.invalidate(key_id, hashes);
    }

    /// A plan changed: every cached record may have inherited from it.
    pub(crate) fn forget_plans(&self) {
        // Bump the generation first, then clear: a plan read that raced with the change either
        // sees the new generation and does not cache, or cached before the clear.
        self.cache.invalidate_all_records();
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A key changed (seen on the change feed, `propagation` after it committed).
    pub(crate) fn key_changed(&self, key_id: &str, propagation: Option<time::Duration>) {
        if let Some(delay) = propagation {
            telemetry::propagation(delay);
        }
        self.cache.invalidate_key(key_id);
    }

    /// The change feed is connected again (or for the first time): nothing cached before `now`
    /// is fresh any more (it may predate a missed change), but it stays usable for
    /// stale-if-error should the store fail again.
    pub(crate) fn resync(&self, now: OffsetDateTime) {
        self.trusted_since.store(unix_nanos(now), Ordering::Release);
        self.cache.bump_generation();
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if !self.feed_trusted.swap(true, Ordering::AcqRel) {
            tracing::info!("change feed connected; cache cleared and trusted again");
        }
    }

    /// The change feed is lost: the cache is not served without a store read until it is back.
    pub(crate) fn distrust(&self, error: &StoreError) {
        if self.feed_trusted.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %error,
                "change feed lost: verifying from the store until it is back"
            );
        }
    }

    /// True while the store's change feed is connected (or the store has no other writers).
    pub(crate) fn change_feed_trusted(&self) -> bool {
        self.feed_trusted.load(Ordering::Acquire)
    }

    /// Current cache entry counts.
    pub(crate) fn cache_sizes(&self) -> CacheSizes {
        self.cache.sizes()
    }
}

#[cfg(test)]
mod store_miss_tests;
#[cfg(test)]
mod tests;
