//! Admission: the limit and quota stages after a VALID decision. A request is admitted only if
//! every limit and the quota admit it; a refused request consumes nothing from any of them.
//!
//! [`Admission::admit`] decides from node-local state (the `local` module: a GCRA limiter in
//! memory and credits leased from the store in blocks) or, with a Redis configured, from the
//! state every node shares (the `shared` module, which falls back to node-local enforcement
//! while Redis does not answer). Admission also owns everything else about credits: reading
//! and adjusting a balance, and handing leased credits back at shutdown.

mod local;
pub(crate) mod shared;

use std::sync::Arc;

use keyward_core::audit::{AuditAction, AuditDraft};
use keyward_core::clock::Clock;
use keyward_core::limit::ceil_seconds;
use keyward_core::quota::QuotaConfig;
use keyward_core::record::{KeyKind, KeyRecord};
use keyward_core::validate::FieldError;
use keyward_core::verify::VerifyCode;
use keyward_store::{CreditOp, KeyStore};
use serde_json::json;
use time::OffsetDateTime;

use crate::clock::write_time;
use crate::error::EngineError;
use crate::lookup::KeyLookup;
use crate::verification::{QuotaReport, Verification};
pub use local::LimitReport;
use local::{Leases, Limiter, period_of};
use shared::{Enforcement, EnforcementSource, RedisConfig, Shared};

/// Retry-After for a quota without a refill rule: only an operator can add credits, so ask
/// callers to come back in an hour rather than hammer.
pub const EXHAUSTED_QUOTA_RETRY_SECONDS: u64 = 3600;

/// What admission decided for one request: the parts of a [`Verification`] it fills.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// VALID, RATE_LIMITED or USAGE_EXCEEDED.
    pub code: VerifyCode,
    /// Each rate limit's state after this request.
    pub limits: Vec<LimitReport>,
    /// Credits left, if the request reached the quota stage.
    pub credits_remaining: Option<u64>,
    /// For a refused request: seconds until a retry can succeed.
    pub retry_after: Option<u64>,
    /// The quota as a RateLimit policy item, if the request reached the quota stage.
    pub quota: Option<QuotaReport>,
    /// Where the decision was made and why.
    pub enforcement: Option<Enforcement>,
}

impl Default for Admitted {
    fn default() -> Self {
        Self {
            code: VerifyCode::Valid,
            limits: Vec::new(),
            credits_remaining: None,
            retry_after: None,
            quota: None,
            enforcement: None,
        }
    }
}

impl Admitted {
    /// Writes the decision into a verification that was VALID until admission.
    pub(crate) fn apply_to(self, verification: &mut Verification) {
        verification.code = self.code;
        verification.limits = self.limits;
        verification.credits_remaining = self.credits_remaining;
        verification.retry_after = self.retry_after;
        verification.quota = self.quota;
        verification.enforcement = self.enforcement;
    }
}

/// The limit and quota state of this node (and its Redis side); see the module docs.
pub(crate) struct Admission {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    leases: Leases,
    /// Credits leased from the store at a time per key.
    quota_lease: u64,
    /// Shared limits and quotas, when a Redis is configured.
    shared: Option<Shared>,
}

impl Admission {
    pub(crate) fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>, quota_lease: u64) -> Self {
        Self {
            store,
            clock,
            limiter: Limiter::default(),
            leases: Leases::default(),
            quota_lease,
            shared: None,
        }
    }

    /// Shares limits and quotas through the Redis of `config` (see the `shared` module).
    pub(crate) fn connect_redis(&mut self, config: RedisConfig) -> Result<(), EngineError> {
        self.shared = Some(Shared::connect(config)?);
        Ok(())
    }

    /// The limit and quota stages, all-or-nothing: limits are checked without consuming,
    /// then the quota is charged, then the limits are consumed (re-checked under their lock);
    /// if that last step refuses, the quota charge is given back.
    pub(crate) async fn admit(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
    ) -> Result<Admitted, EngineError> {
        let mut admitted = Admitted::default();
        self.decide(record, cost, now, &mut admitted).await?;
        Ok(admitted)
    }

    async fn decide(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        admitted: &mut Admitted,
    ) -> Result<(), EngineError> {
        let policy = &record.policy;
        if policy.limits.is_empty() && policy.quota.is_none() {
            return Ok(());
        }
        if let Some(limit) = policy.limits.iter().find(|l| l.burst < cost) {
            // It could never pass: a client told to retry would retry forever.
            return Err(FieldError::new(
                "cost",
                format!(
                    "{cost} exceeds the burst {} of limit {:?}; it can never be admitted",
                    limit.burst, limit.name
                ),
            )
            .into());
        }
        if self.shared.is_some() {
            return self.admit_shared(record, cost, now, admitted).await;
        }
        admitted.enforcement = Some(Enforcement {
            source: EnforcementSource::Local,
            reason: "limits and quota of this node (no shared store configured)".into(),
        });
        let peek = self.limiter.decide(record, cost, now, false);
        if !peek.admitted {
            admitted.code = VerifyCode::RateLimited;
            admitted.retry_after = Some(peek.retry_after);
            admitted.limits = peek.reports;
            return Ok(());
        }
        if let Some(quota) = &policy.quota {
            let spent = self.spend_credits(&record.key_id, quota, cost, now).await?;
            let remaining = spent
                .unwrap_or_else(|| self.leases.reported_remaining(&record.key_id).unwrap_or(0));
            self.report_quota(quota, remaining, spent.is_some(), now, admitted);
            if spent.is_none() {
                admitted.code = VerifyCode::UsageExceeded;
                // Nothing was consumed: report the limits as they stand.
                admitted.limits = self.limiter.decide(record, 0, now, false).reports;
                return Ok(());
            }
        }
        let commit = self.limiter.decide(record, cost, now, true);
        if !commit.admitted {
            if policy.quota.is_some() {
                self.leases.refund(&record.key_id, cost);
            }
            admitted.code = VerifyCode::RateLimited;
            admitted.retry_after = Some(commit.retry_after);
        }
        admitted.limits = commit.reports;
        Ok(())
    }

    /// Fills the quota part of a decision: the RateLimit item, the credits left and, for a
    /// refused request, when a retry can succeed.
    pub(crate) fn report_quota(
        &self,
        quota: &QuotaConfig,
        remaining: u64,
        admitted: bool,
        now: OffsetDateTime,
        out: &mut Admitted,
    ) {
        let refill = quota.refill.and_then(|r| {
            let last = r.schedule.last_at_or_before(now)?;
            let next = r.schedule.next_after(now)?;
            Some((r.amount, (next - last).whole_seconds(), next))
        });
        let seconds_until = |t: OffsetDateTime| ceil_seconds((t - now).whole_nanoseconds());
        out.quota = Some(QuotaReport {
            quota: refill.map_or(quota.credits, |(amount, _, _)| amount),
            window_seconds: refill.and_then(|(_, window, _)| u64::try_from(window).ok()),
            remaining,
            reset_seconds: refill.map(|(_, _, next)| seconds_until(next)),
        });
        out.credits_remaining = Some(remaining);
        if !admitted {
            out.retry_after = Some(
                refill.map_or(EXHAUSTED_QUOTA_RETRY_SECONDS, |(_, _, next)| {
                    seconds_until(next).max(1)
                }),
            );
        }
    }

    /// Spends `cost` credits, leasing a block from the store when the local lease runs short;
    /// `None` if the balance does not cover it.
    async fn spend_credits(
        &self,
        key_id: &str,
        quota: &QuotaConfig,
        cost: u64,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, EngineError> {
        let period = period_of(quota, now);
        if let Some(remaining) = self.leases.try_spend(key_id, cost, period) {
            return Ok(Some(remaining));
        }
        // One refill per key at a time: concurrent misses wait for it instead of each taking a
        // block, which keeps at most one block per key in memory (the crash bound) and one
        // store write per block.
        let gate = self.leases.refill_gate(key_id);
        let _refilling = gate.lock().await;
        if let Some(remaining) = self.leases.try_spend(key_id, cost, period) {
            return Ok(Some(remaining));
        }
        if self.leases.exhausted(key_id, period) {
            // The store had nothing left for this period: no write per refused request.
            return Ok(None);
        }
        let want = cost.max(self.quota_lease);
        let (granted, balance) = self.store.take_credits(key_id, quota, want, now).await?;
        self.leases
            .add(key_id, granted, balance.remaining, balance.period);
        Ok(self.leases.try_spend(key_id, cost, balance.period))
    }

    /// Sets, increases or decreases the credits of `key_id`, whose quota (its own or its
    /// plan's) is `quota`, on behalf of the root key `actor`; unspent leased credits are returned
    /// to the balance first.
    pub(crate) async fn adjust_credits(
        &self,
        actor: &str,
        key_id: &str,
        quota: Option<QuotaConfig>,
        op: CreditOp,
    ) -> Result<u64, EngineError> {
        let Some(quota) = quota else {
            return Err(FieldError::new(
                "quota",
                "the key has no quota (set one on the key or its plan)",
            )
            .into());
        };
        let now = write_time(self.clock.as_ref());
        let (name, amount) = match op {
            CreditOp::Set(n) => ("set", n),
            CreditOp::Increase(n) => ("increase", n),
            CreditOp::Decrease(n) => ("decrease", n),
        };
        let audit = AuditDraft {
            time: now,
            actor: Some(actor.to_owned()),
            action: AuditAction::CreditsAdjust,
            target: Some(key_id.to_owned()),
            summary: json!({"op": name, "amount": amount}),
        };
        if let Some(after) = self
            .adjust_shared(key_id, &quota, op, audit.clone(), now)
            .await?
        {
            return Ok(after);
        }
        let unspent = self.leases.take(key_id);
        let balance = self
            .store
            .adjust_credits(key_id, &quota, unspent, op, audit, now)
            .await?;
        Ok(balance.remaining)
    }

    /// Credits left for a key with a quota (durable balance plus this process's lease);
    /// `record` is the effective one (its plan applied).
    pub(crate) async fn credits(&self, record: &KeyRecord) -> Result<Option<u64>, EngineError> {
        let Some(quota) = record.policy.quota else {
            return Ok(None);
        };
        if let Some(live) = self.shared_credits(&record.key_id, &quota).await {
            return Ok(Some(live));
        }
        let now = self.clock.now();
        let balance = self.store.balance(&record.key_id, &quota, now).await?;
        if self.shared.is_some() {
            // Redis does not hold the balance (not loaded yet, or unreachable): the store's,
            // less what this node spent locally during an outage.
            return Ok(Some(
                balance
                    .remaining
                    .saturating_sub(self.owed_credits(&record.key_id)),
            ));
        }
        let leased = self
            .leases
            .reported_remaining(&record.key_id)
            .map_or(0, |r| r.saturating_sub(balance.remaining));
        Ok(Some(balance.remaining + leased))
    }

    /// The balance of `key_id` changed elsewhere: credits leased before the change are
    /// dropped (at most one lease block, the same bound as a crash).
    pub(crate) fn balance_changed(&self, key_id: &str) {
        let dropped = self.leases.take(key_id);
        if dropped > 0 {
            tracing::debug!(key_id, dropped, "credits changed elsewhere; lease dropped");
        }
    }

    /// Periodic upkeep: forgets rate-limit state of full buckets.
    pub(crate) fn maintain(&self) -> usize {
        self.leases.sweep();
        self.maintain_shared();
        self.limiter.sweep(self.clock.now())
    }

    /// Returns unspent leased credits to the store (at shutdown), so a clean stop loses none.
    pub(crate) async fn release_leases(&self, keys: &KeyLookup) -> Result<(), EngineError> {
        self.release_shared(keys).await?;
        for (key_id, lease) in self.leases.drain() {
            if lease.available == 0 {
                continue;
            }
            let Ok(record) = keys.get_key(KeyKind::Api, &key_id, self.clock.now()).await else {
                continue;
            };
            if let Some(quota) = keys.effective_now(record).await?.policy.quota {
                let now = self.clock.now();
                self.store
                    .give_back_credits(&key_id, &quota, lease.available, lease.period, now)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
