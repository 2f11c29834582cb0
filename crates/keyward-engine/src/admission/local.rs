//! The admission stages after a VALID decision: rate limits (GCRA, in memory) and quotas
//! (credits leased from the store in blocks). A request is admitted only if every limit and
//! the quota admit it; a refused request consumes nothing from any of them.
//!
//! Quota durability: credits are taken from the store's balance in blocks of `lease_size`
//! (one durable write per block, off the common path) and spent from memory. The store's
//! balance therefore never exceeds what is really left, so a crash never refunds; it can
//! overcharge by at most the unspent part of one block per key (< `lease_size` credits).
//! A clean shutdown returns unspent credits.

// Keyed by key ids, tenants, owners and limit names, which admins choose and clients cannot:
// foldhash (seeded per map) rather than SipHash, which cost a fifth of a limit decision.
use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::limit::{LimitScope, RateLimit, check, nanos};
use keyward_core::quota::QuotaConfig;
use keyward_core::record::KeyRecord;
use time::OffsetDateTime;

pub use crate::verification::LimitReport;

/// Which pool a limit draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    scope: LimitScope,
    id: String,
    limit: String,
}

pub(crate) fn pool(key: &KeyRecord, limit: &RateLimit) -> PoolKey {
    let (scope, id) = match (limit.scope, &key.tenant) {
        // Owners are named per tenant: "admin" of one tenant is not "admin" of another.
        (LimitScope::Owner, tenant) => (
            LimitScope::Owner,
            format!("{}\u{1f}{}", tenant.as_deref().unwrap_or(""), key.owner),
        ),
        (LimitScope::Tenant, Some(tenant)) => (LimitScope::Tenant, tenant.clone()),
        // A tenant-scoped limit on a key without a tenant applies to the key alone.
        (LimitScope::Tenant, None) | (LimitScope::Key, _) => (LimitScope::Key, key.key_id.clone()),
    };
    PoolKey {
        scope,
        id,
        limit: limit.name.clone(),
    }
}

impl PoolKey {
    /// The pool's Redis key under `namespace`. The id's length is part of the name, so ids and
    /// limit names that contain `:` cannot make two pools collide.
    pub(crate) fn redis_key(&self, namespace: &str) -> String {
        format!(
            "{namespace}:l:{}:{}:{}:{}",
            self.scope.as_str(),
            self.id.len(),
            self.id,
            self.limit
        )
    }
}

/// Rate-limit state of this process: per pool, the theoretical arrival time and the emission
/// interval it was computed with. When a limit changes (a plan or key update), the units already
/// used are carried over at the new rate, so raising a limit takes effect at once.
#[derive(Debug, Default)]
pub(crate) struct Limiter(Mutex<HashMap<PoolKey, (i128, i128)>>);

pub(crate) fn rescaled(state: Option<(i128, i128)>, limit: &RateLimit, now: i128) -> Option<i128> {
    let (tat, interval) = state?;
    let current = limit.emission_interval();
    if interval == current || interval <= 0 || tat <= now {
        return Some(tat);
    }
    Some(now + (tat - now) * current / interval)
}

/// A limit decision: whether all limits admit, and the per-limit reports.
pub(crate) struct LimitDecision {
    pub admitted: bool,
    pub reports: Vec<LimitReport>,
    pub retry_after: u64,
}

/// Evaluates every limit of `key` for `cost` at `now` from the given TATs (one per limit, in
/// order; `None` for a pool never used). Returns the decision and the TATs to store if it admits.
/// Pure: the in-memory limiter and the Redis path both report through it.
pub(crate) fn evaluate(
    key: &KeyRecord,
    tats: &[Option<i128>],
    cost: u64,
    now: OffsetDateTime,
) -> (LimitDecision, Vec<i128>) {
    let limits = &key.policy.limits;
    let mut reports = Vec::with_capacity(limits.len());
    let mut new_tats = Vec::with_capacity(limits.len());
    let mut admitted = true;
    let mut retry_after = 0;
    for (limit, tat) in limits.iter().zip(tats) {
        let status = check(limit, *tat, cost, now);
        admitted &= status.admitted;
        if !status.admitted {
            retry_after = retry_after.max(status.reset_seconds);
        }
        reports.push(LimitReport {
            name: limit.name.clone(),
            limit: limit.limit,
            period_seconds: limit.period_seconds,
            remaining: status.remaining,
            reset_seconds: status.reset_seconds,
        });
        new_tats.push(status.new_tat);
    }
    if !admitted {
        // What a refused request reports is the state as it stays.
        for ((report, limit), tat) in reports.iter_mut().zip(limits).zip(tats) {
            report.remaining = check(limit, *tat, 0, now).remaining;
            if check(limit, *tat, cost, now).admitted {
                // This limit alone would have admitted the request.
                report.reset_seconds = 0;
            }
        }
    }
    (
        LimitDecision {
            admitted,
            reports,
            retry_after,
        },
        new_tats,
    )
}

impl Limiter {
    /// Checks every limit of `key` for `cost` at `now` and, if all admit and `commit` is set,
    /// records the consumption, atomically.
    pub fn decide(
        &self,
        key: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        commit: bool,
    ) -> LimitDecision {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now_nanos = nanos(now);
        let pools: Vec<PoolKey> = key.policy.limits.iter().map(|l| pool(key, l)).collect();
        let tats: Vec<Option<i128>> = key
            .policy
            .limits
            .iter()
            .zip(&pools)
            .map(|(limit, pool)| rescaled(state.get(pool).copied(), limit, now_nanos))
            .collect();
        let (decision, new_tats) = evaluate(key, &tats, cost, now);
        if decision.admitted && commit {
            for ((pool, tat), limit) in pools.into_iter().zip(new_tats).zip(&key.policy.limits) {
                state.insert(pool, (tat, limit.emission_interval()));
            }
        }
        decision
    }

    /// Forgets pools whose bucket is full again (their state equals a fresh one).
    pub fn sweep(&self, now: OffsetDateTime) -> usize {
        let now = nanos(now);
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = state.len();
        state.retain(|_, (tat, _)| *tat > now);
        before - state.len()
    }
}

/// Credits leased from the store and not yet spent, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub available: u64,
    /// The store's balance after the last take (for reporting).
    pub store_remaining: u64,
    /// The refill period the credits belong to.
    pub period: Option<OffsetDateTime>,
}

#[derive(Debug, Default)]
pub(crate) struct Leases(
    Mutex<HashMap<String, Lease>>,
    Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
);

/// The refill period `now` falls in, for a quota.
pub(crate) fn period_of(config: &QuotaConfig, now: OffsetDateTime) -> Option<OffsetDateTime> {
    config
        .refill
        .and_then(|r| r.schedule.last_at_or_before(now))
}

impl Leases {
    /// Spends `cost` from the key's lease if it holds enough credits of the current period;
    /// returns the credits left to report.
    pub fn try_spend(
        &self,
        key_id: &str,
        cost: u64,
        period: Option<OffsetDateTime>,
    ) -> Option<u64> {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases.get_mut(key_id)?;
        if period > lease.period {
            // The balance was refilled since: credits of the old period are gone.
            leases.remove(key_id);
            return None;
        }
        if period < lease.period {
            // A request that read the clock just before a refill must not throw away the new
            // period's lease; it goes to the store like a miss.
            return None;
        }
        if lease.available < cost {
            return None;
        }
        lease.available -= cost;
        Some(lease.available + lease.store_remaining)
    }

    /// The per-key lock that serialises refills from the store.
    pub fn refill_gate(&self, key_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.1.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(gates.entry(key_id.to_owned()).or_default())
    }

    /// True if the store was found empty for this period and nothing is leased.
    pub fn exhausted(&self, key_id: &str, period: Option<OffsetDateTime>) -> bool {
        let leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .get(key_id)
            .is_some_and(|l| l.period == period && l.store_remaining == 0)
    }

    /// Forgets refill locks nobody holds (periodic upkeep).
    pub fn sweep(&self) {
        let mut gates = self.1.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
    }

    /// Adds credits taken from the store.
    pub fn add(
        &self,
        key_id: &str,
        granted: u64,
        store_remaining: u64,
        period: Option<OffsetDateTime>,
    ) {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases.entry(key_id.to_owned()).or_insert(Lease {
            available: 0,
            store_remaining,
            period,
        });
        if lease.period != period {
            *lease = Lease {
                available: 0,
                store_remaining,
                period,
            };
        }
        lease.available += granted;
        lease.store_remaining = store_remaining;
    }

    /// Gives credits back to the lease (a request that a later stage refused).
    pub fn refund(&self, key_id: &str, cost: u64) {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = leases.get_mut(key_id) {
            lease.available += cost;
        }
    }

    /// Removes a key's lease, returning its unspent credits.
    pub fn take(&self, key_id: &str) -> u64 {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        leases.remove(key_id).map_or(0, |l| l.available)
    }

    /// Removes every lease, for a clean shutdown.
    pub fn drain(&self) -> Vec<(String, Lease)> {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        leases.drain().collect()
    }

    pub fn reported_remaining(&self, key_id: &str) -> Option<u64> {
        let leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(key_id).map(|l| l.available + l.store_remaining)
    }
}
