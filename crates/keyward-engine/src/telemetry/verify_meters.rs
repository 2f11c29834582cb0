//! The verify path's metric handles, resolved once instead of on every verification.
//!
//! A `counter!(name, labels)` call builds a metric key (allocating its labels), hashes it and
//! looks it up in the recorder's registry: about a thousand instructions, several times per
//! verification. Here each handle the verify path uses is resolved the first time it is
//! needed and kept: the latency histogram, the outcome counters of verifications without a
//! tenant (one per code), each tenant's outcome counters, the cache hit and miss counters, and
//! the per-key counters of the keys that hold a `key_id` label (at most
//! [`KEY_LABEL_SLOTS`](super::KEY_LABEL_SLOTS), see [`crate::heavy_hitters`]). Recording is
//! then an atomic add; the latency is aggregated per thread first (`latency.rs`).
//!
//! Handles bind to the recorder installed when they are resolved, so the process must install
//! its recorder before its first verification (the server and the gateway install it before
//! they build the engine); without one every handle is a no-op, as every `metrics` call is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use keyward_core::verify::VerifyCode;
use metrics::{Counter, SharedString, counter, histogram};

use super::aggregated::{Aggregated, COUNTERS};
use super::{
    CACHE_HITS, CACHE_MISSES, KEY_LABEL_PROMOTE_AFTER, KEY_LABEL_SLOTS, KEY_RATE_LIMITED,
    KEY_REQUESTS, VERIFICATIONS, VERIFY_DURATION,
};
use crate::error::EngineError;
use crate::heavy_hitters::{KeyLabels, OTHER};
use crate::verification::Verification;

/// Outcome labels: the verify codes at `code as usize`, then these two.
const STORE_UNAVAILABLE: usize = VerifyCode::ALL.len();
const ERROR: usize = STORE_UNAVAILABLE + 1;
const OUTCOMES: usize = ERROR + 1;

/// The slot of the outcome counter (tenant `none`) in the aggregated counters.
fn untenanted(outcome: usize) -> usize {
    outcome
}

/// The slot of a cache's hit or miss counter in the aggregated counters.
fn cache_slot(cache: CacheName, hit: bool) -> usize {
    OUTCOMES + 2 * cache as usize + usize::from(hit)
}

/// A slot no counter reads: for a latency sample whose count is kept elsewhere (a tenant's).
const NO_COUNTER: usize = OUTCOMES + 6;
const _: () = assert!(NO_COUNTER < COUNTERS, "a stripe holds every slot");

/// The counters of the aggregated slots, resolved.
fn fixed_counters() -> [Counter; COUNTERS] {
    let Outcomes(untenanted) = Outcomes::resolve(&SharedString::const_str("none"));
    std::array::from_fn(|slot| match slot {
        _ if slot < OUTCOMES => untenanted[slot].clone(),
        _ if slot < NO_COUNTER => {
            let cache = super::CACHES[(slot - OUTCOMES) / 2];
            let name = if (slot - OUTCOMES) % 2 == 1 {
                CACHE_HITS
            } else {
                CACHE_MISSES
            };
            counter!(name, "cache" => cache)
        }
        _ => Counter::noop(),
    })
}

/// The verify caches, as they appear in the `cache` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CacheName {
    Secrets = 0,
    Records = 1,
    NotFound = 2,
}

impl CacheName {
    /// The `cache` label value.
    pub(crate) fn label(self) -> &'static str {
        super::CACHES[self as usize]
    }
}

/// The handles; see the module docs. One per process, like the recorder.
pub(crate) struct VerifyMeters {
    /// The latency histogram and the fixed counters: the outcomes without a tenant (slots
    /// [`untenanted`]) and the cache lookups (slots [`cache_slot`]).
    aggregated: Aggregated,
    tenants: RwLock<HashMap<Box<str>, Outcomes>>,
    other_key: KeyCounters,
    labelled_keys: RwLock<HashMap<Box<str>, KeyCounters>>,
    /// Which keys have earned a label of their own.
    labels: Mutex<KeyLabels>,
    /// Every label slot is taken: no other key will ever get one, so the labels need not be
    /// asked again.
    slots_full: AtomicBool,
}

/// `keyward_verifications_total` of one tenant, by outcome.
struct Outcomes([Counter; OUTCOMES]);

/// The per-key counters of one `key_id` label value.
struct KeyCounters {
    requests: Counter,
    rate_limited: Counter,
}

static METERS: LazyLock<VerifyMeters> = LazyLock::new(VerifyMeters::resolve);

/// The clock verification latency is measured with: the CPU's time-stamp counter where it is
/// usable (quanta calibrates it against the monotonic clock once), so that timing a
/// verification costs two counter reads instead of two system clock calls; quanta falls back
/// to the monotonic clock itself where the counter is unusable.
static LATENCY_CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// See [`LATENCY_CLOCK`]: `raw()` at the start and end, `delta()` between them.
pub(crate) fn latency_clock() -> &'static quanta::Clock {
    &LATENCY_CLOCK
}

/// The process's verify-path handles, resolved on first use.
pub(crate) fn meters() -> &'static VerifyMeters {
    &METERS
}

fn outcome_label(outcome: usize) -> &'static str {
    match VerifyCode::ALL.iter().find(|c| **c as usize == outcome) {
        Some(code) => code.as_str(),
        None if outcome == STORE_UNAVAILABLE => "STORE_UNAVAILABLE",
        None => "ERROR",
    }
}

fn outcome(result: &Result<Verification, EngineError>) -> usize {
    match result {
        Ok(v) => v.code as usize,
        Err(EngineError::Store(_)) => STORE_UNAVAILABLE,
        Err(_) => ERROR,
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Outcomes {
    fn resolve(tenant: &SharedString) -> Self {
        Self(std::array::from_fn(
            |outcome| counter!(VERIFICATIONS, "code" => outcome_label(outcome), "tenant" => tenant.clone()),
        ))
    }
}

impl KeyCounters {
    fn resolve(key_id: SharedString) -> Self {
        Self {
            requests: counter!(KEY_REQUESTS, "key_id" => key_id.clone()),
            rate_limited: counter!(KEY_RATE_LIMITED, "key_id" => key_id),
        }
    }

    fn count(&self, limited: bool) {
        self.requests.increment(1);
        if limited {
            self.rate_limited.increment(1);
        }
    }
}

impl VerifyMeters {
    fn resolve() -> Self {
        Self {
            aggregated: Aggregated::new(
                histogram!(VERIFY_DURATION),
                super::buckets(VERIFY_DURATION).unwrap_or_default(),
                fixed_counters(),
            ),
            tenants: RwLock::new(HashMap::new()),
            other_key: KeyCounters::resolve(SharedString::const_str(OTHER)),
            labelled_keys: RwLock::new(HashMap::new()),
            labels: Mutex::new(KeyLabels::new(KEY_LABEL_SLOTS, KEY_LABEL_PROMOTE_AFTER)),
            slots_full: AtomicBool::new(false),
        }
    }

    /// Hands the latency samples aggregated since the last call to the recorder (see
    /// `latency.rs`).
    pub(crate) fn flush(&self) {
        self.aggregated.flush();
    }

    /// Records a verify cache lookup.
    pub(crate) fn cache_lookup(&self, cache: CacheName, hit: bool) {
        self.aggregated.record(cache_slot(cache, hit), None);
    }

    /// Records one API key verification: its outcome and tenant, its latency, and for a known
    /// key its per-key request and 429 counts.
    pub(crate) fn verification(
        &self,
        result: &Result<Verification, EngineError>,
        elapsed: Duration,
    ) {
        let key = result.as_ref().ok().and_then(|v| v.key.as_ref());
        let outcome = outcome(result);
        match key.and_then(|k| k.tenant.as_deref()) {
            None => self.aggregated.record(untenanted(outcome), Some(elapsed)),
            Some(tenant) => {
                self.aggregated.record(NO_COUNTER, Some(elapsed));
                self.count_tenant(tenant, outcome);
            }
        }
        let (Ok(v), Some(key)) = (result, key) else {
            return;
        };
        let limited = matches!(v.code, VerifyCode::RateLimited | VerifyCode::UsageExceeded);
        self.count_key(&key.key_id, limited);
    }

    fn count_tenant(&self, tenant: &str, outcome: usize) {
        if let Some(counters) = read(&self.tenants).get(tenant) {
            counters.0[outcome].increment(1);
            return;
        }
        let mut tenants = write(&self.tenants);
        let counters = tenants
            .entry(tenant.into())
            .or_insert_with(|| Outcomes::resolve(&SharedString::from(tenant.to_owned())));
        counters.0[outcome].increment(1);
    }

    fn count_key(&self, key_id: &str, limited: bool) {
        if let Some(counters) = read(&self.labelled_keys).get(key_id) {
            counters.count(limited);
            return;
        }
        if self.slots_full.load(Ordering::Relaxed) {
            self.other_key.count(limited);
            return;
        }
        let promoted = {
            let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
            let promoted = labels.observe(key_id);
            if labels.labelled() >= KEY_LABEL_SLOTS {
                self.slots_full.store(true, Ordering::Relaxed);
            }
            promoted
        };
        if !promoted {
            self.other_key.count(limited);
            return;
        }
        let mut keys = write(&self.labelled_keys);
        keys.entry(key_id.into())
            .or_insert_with(|| KeyCounters::resolve(SharedString::from(key_id.to_owned())))
            .count(limited);
    }
}
