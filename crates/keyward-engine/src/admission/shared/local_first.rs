//! `mode = "local_first"` limits with Redis: decided from this node's view of each shared pool,
//! with no Redis round trip on the verify path, and reconciled with Redis in the background.
//!
//! Each node keeps, per local-first pool, a TAT (its view of the shared pool) and the units it
//! admitted since its last reconcile.
//! [`reconcile_local_first`](crate::Keyward::reconcile_local_first) (run every
//! [`RedisConfig::reconcile_interval`](super::RedisConfig), default 100 ms, by the server's
//! upkeep) sends those units for every pool in one `shared/reconcile.lua` call per node: the
//! script advances each shared TAT by `interval × units` (no admission check: the units were
//! already admitted, so an overshoot becomes debt) and returns the shared TAT, which the node
//! adopts, plus what it admitted while the call was in flight. So each node learns, one
//! interval late, what the others consumed.
//!
//! The overshoot this allows, its bound and the bound's derivation are stated once, in
//! docs/limits-and-quotas.md ("Overshoot bound").

use std::collections::HashMap;
use std::sync::Mutex;

use keyward_core::limit::{LimitMode, RateLimit, nanos};
use keyward_core::record::KeyRecord;
use time::OffsetDateTime;

use super::{CallError, POOL_TTL_MARGIN_MS, Shared, micros, micros_to_nanos, strings};
use crate::admission::Admission;
use crate::admission::local::{LimitDecision, PoolKey, evaluate, pool, rescaled};
use crate::lookup::KeyLookup;

/// Pools per reconcile script call: bounds the size of one call on a node with many pools.
const RECONCILE_BATCH: usize = 500;

/// One pool as this node sees it.
#[derive(Debug, Clone, Copy)]
struct LocalPool {
    /// The TAT of this node's view (nanoseconds).
    tat: i128,
    /// The emission interval `tat` was computed with.
    interval: i128,
    /// Units admitted here and not yet sent to Redis.
    pending: u64,
}

/// Units taken for one reconcile of one pool.
struct Batch {
    pool: PoolKey,
    interval: i128,
    units: u64,
}

/// What one [`reconcile_local_first`](crate::Keyward::reconcile_local_first) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Redis answered (or there was nothing to reconcile and Redis was not known to be down).
    pub redis_up: bool,
    /// Pools reconciled.
    pub pools: usize,
    /// Units sent to Redis.
    pub units: u64,
}

/// The local-first pools of this node.
#[derive(Debug, Default)]
pub(crate) struct LocalFirst(Mutex<HashMap<PoolKey, LocalPool>>);

/// True if a limit is decided locally with Redis configured.
pub(crate) fn is_local_first(limit: &RateLimit) -> bool {
    limit.mode == LimitMode::LocalFirst
}

/// `tat`, computed at `from` interval, rescaled to `to` (units used carry over at the new rate).
fn rescale_interval(tat: i128, from: i128, to: i128, now: i128) -> i128 {
    if from == to || from <= 0 || tat <= now {
        tat
    } else {
        now + (tat - now) * to / from
    }
}

impl LocalFirst {
    /// Checks every limit of `record` (all of them local-first) for `cost` at `now` against
    /// this node's view and, if all admit and `commit` is set, consumes them, atomically.
    /// Returns the decision and each pool's TAT before it.
    pub(crate) fn decide(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        commit: bool,
    ) -> (LimitDecision, Vec<Option<i128>>) {
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now_nanos = nanos(now);
        let keys: Vec<PoolKey> = record
            .policy
            .limits
            .iter()
            .map(|l| pool(record, l))
            .collect();
        let tats: Vec<Option<i128>> = record
            .policy
            .limits
            .iter()
            .zip(&keys)
            .map(|(limit, key)| {
                let state = pools.get(key).map(|p| (p.tat, p.interval));
                rescaled(state, limit, now_nanos)
            })
            .collect();
        let (decision, new_tats) = evaluate(record, &tats, cost, now);
        if decision.admitted && commit && cost > 0 {
            for ((key, tat), limit) in keys.into_iter().zip(new_tats).zip(&record.policy.limits) {
                let entry = pools.entry(key).or_insert(LocalPool {
                    tat,
                    interval: limit.emission_interval(),
                    pending: 0,
                });
                entry.tat = tat;
                entry.interval = limit.emission_interval();
                entry.pending += cost;
            }
        }
        (decision, tats)
    }

    /// Undoes a committed [`LocalFirst::decide`] of `cost` (the Redis part of the same request
    /// refused it or failed).
    pub(crate) fn give_back(&self, record: &KeyRecord, cost: u64) {
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for limit in &record.policy.limits {
            if let Some(p) = pools.get_mut(&pool(record, limit)) {
                p.tat -= p.interval * i128::from(cost);
                p.pending = p.pending.saturating_sub(cost);
            }
        }
    }

    /// Takes every pool's pending units for a reconcile (pools with none are included, so the
    /// node still learns what the others consumed).
    fn take(&self) -> Vec<Batch> {
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter_mut()
            .map(|(key, p)| Batch {
                pool: key.clone(),
                interval: p.interval,
                units: std::mem::take(&mut p.pending),
            })
            .collect()
    }

    /// Puts units back that did not reach Redis.
    fn restore(&self, batch: &[Batch]) {
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for b in batch {
            if let Some(p) = pools.get_mut(&b.pool) {
                p.pending += b.units;
            }
        }
    }

    /// Adopts the shared TAT Redis returned for a pool, plus what this node admitted since the
    /// units were taken (they are not in Redis yet).
    fn adopt(&self, b: &Batch, shared: Option<i128>, now: i128) {
        let Some(shared) = shared else {
            // Redis has no state: its bucket is full, and this node's view is already at least
            // as drained.
            return;
        };
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get_mut(&b.pool) {
            let shared = rescale_interval(shared, b.interval, p.interval, now);
            p.tat = shared + p.interval * i128::from(p.pending);
        }
    }

    /// Forgets pools whose view is a full bucket with nothing to send.
    pub(crate) fn sweep(&self, now: OffsetDateTime) {
        let now = nanos(now);
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|_, p| p.tat > now || p.pending > 0);
    }
}

impl Admission {
    /// How often [`reconcile_local_first`](crate::Keyward::reconcile_local_first) should run;
    /// `None` without Redis.
    pub(crate) fn reconcile_interval(&self) -> Option<std::time::Duration> {
        self.shared.as_ref().map(|s| s.config.reconcile_interval)
    }

    /// Reconciles this node's local-first pools with Redis: sends the units admitted locally
    /// since the last call (one script call per [`RECONCILE_BATCH`] pools) and adopts the
    /// shared state. Runs off the verify path (the server calls it every
    /// `RedisConfig::reconcile_interval`); tests call it explicitly. Never fails: a Redis
    /// failure keeps the units for the next call and marks Redis down. Without Redis, or with
    /// no local-first pool in use, it does nothing.
    pub(crate) async fn reconcile_local_first(&self, keys: &KeyLookup) -> ReconcileReport {
        let Some(shared) = self.shared.as_ref() else {
            return ReconcileReport::default();
        };
        let work = shared.local_first.take();
        if work.is_empty() {
            return ReconcileReport {
                redis_up: shared.is_up(),
                ..ReconcileReport::default()
            };
        }
        let now = self.clock.now();
        let mut report = ReconcileReport::default();
        let mut failure = None;
        for chunk in work.chunks(RECONCILE_BATCH) {
            if failure.is_some() {
                shared.local_first.restore(chunk);
                continue;
            }
            match reconcile_chunk(shared, chunk, now).await {
                Ok(tats) => {
                    for (b, tat) in chunk.iter().zip(&tats) {
                        shared
                            .local_first
                            .adopt(b, micros_to_nanos(tat), nanos(now));
                        report.units += b.units;
                    }
                    report.pools += chunk.len();
                }
                Err(e) => {
                    shared.local_first.restore(chunk);
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => shared.mark_down(&e),
            None => {
                report.redis_up = true;
                if shared.mark_up() {
                    self.settle_owed(shared, keys).await;
                }
            }
        }
        report
    }
}

async fn reconcile_chunk(
    shared: &Shared,
    chunk: &[Batch],
    now: OffsetDateTime,
) -> Result<Vec<String>, CallError> {
    let mut invocation = shared.scripts.reconcile.prepare_invoke();
    for b in chunk {
        invocation.key(b.pool.redis_key(&shared.config.namespace));
    }
    invocation.arg(micros(now)).arg(POOL_TTL_MARGIN_MS);
    for b in chunk {
        invocation
            .arg(format!("{:.3}", b.interval as f64 / 1000.0))
            .arg(b.units);
    }
    let tats = shared.run(&invocation).await.and_then(strings)?;
    if tats.len() != chunk.len() {
        return Err(CallError::Reply(format!(
            "{} TATs for {} pools",
            tats.len(),
            chunk.len()
        )));
    }
    Ok(tats)
}
