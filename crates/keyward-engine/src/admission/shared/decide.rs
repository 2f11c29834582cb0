//! Admission decisions with Redis configured: one admission script in Redis, the
//! `local_first` limits from this node's view, or node-local fallback while Redis does not
//! answer (see the parent module).

use keyward_core::record::KeyRecord;
use keyward_core::verify::VerifyCode;
use keyward_store::StoreError;
use time::OffsetDateTime;

use super::local_first::is_local_first;
use super::{
    CallError, Enforcement, EnforcementSource, Outcome, POOL_TTL_MARGIN_MS, QUOTA_TTL_SECONDS,
    Shared, interval_micros, local_share, micros, micros_to_nanos, period_arg, strings,
};
use crate::admission::local::{evaluate, period_of, pool};
use crate::admission::{Admission, Admitted};
use crate::error::EngineError;

impl Admission {
    pub(super) fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// Runs the admission script, loading the key's balance from the store first if Redis does
    /// not hold it yet. The outer error is a store failure; the inner one a Redis failure.
    async fn shared_decision(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
    ) -> Result<Result<Outcome, CallError>, EngineError> {
        let limits = &record.policy.limits;
        let quota = record.policy.quota.as_ref();
        for _ in 0..3 {
            let mut invocation = shared.scripts.admit.prepare_invoke();
            for limit in limits {
                invocation.key(pool(record, limit).redis_key(&shared.config.namespace));
            }
            invocation
                .key(shared.quota_key(&record.key_id))
                .key(shared.dirty_key());
            invocation.arg(micros(now)).arg(cost).arg(limits.len());
            for limit in limits {
                invocation.arg(interval_micros(limit)).arg(limit.burst);
            }
            let period = quota.and_then(|q| period_of(q, now));
            let refill_amount = quota.and_then(|q| q.refill).map_or(0, |r| r.amount);
            invocation
                .arg(u8::from(quota.is_some()))
                .arg(period_arg(period))
                .arg(refill_amount)
                .arg(&record.key_id)
                .arg(QUOTA_TTL_SECONDS)
                .arg(POOL_TTL_MARGIN_MS);
            let reply = match shared.run(&invocation).await.and_then(strings) {
                Ok(reply) => reply,
                Err(e) => return Ok(Err(e)),
            };
            let status = reply.first().map(String::as_str).unwrap_or("");
            if status == "init" {
                if let Some(quota) = quota {
                    match shared
                        .init_quota(self.store.as_ref(), &record.key_id, quota, now)
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ok(Err(e)),
                        // The store is down (the key itself may be served from
                        // stale-if-error): decide from the local budget, as for a Redis outage.
                        Err(EngineError::Store(StoreError::Backend(e))) => {
                            return Ok(Err(CallError::StoreUnavailable(e.to_string())));
                        }
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let credits = reply.get(1).and_then(|c| c.parse::<u64>().ok());
            let tats: Vec<Option<i128>> = (0..limits.len())
                .map(|i| reply.get(2 + i).and_then(|t| micros_to_nanos(t)))
                .collect();
            if let Some(c) = credits {
                shared.known_credits.insert(record.key_id.clone(), c);
            }
            return Ok(Ok(match status {
                "admitted" => Outcome::Admitted { credits, tats },
                "limited" => Outcome::Limited { tats },
                "exhausted" => Outcome::Exhausted {
                    credits: credits.unwrap_or(0),
                    tats,
                },
                other => return Ok(Err(CallError::Reply(format!("status {other:?}")))),
            }));
        }
        Ok(Err(CallError::Reply(
            "the quota balance was not loaded after three attempts".into(),
        )))
    }

    /// The limit and quota stages with Redis configured: one script in Redis, or node-local
    /// fallback when Redis does not answer.
    pub(crate) async fn admit_shared(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        admitted: &mut Admitted,
    ) -> Result<(), EngineError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        if record.policy.limits.iter().any(is_local_first) {
            return self
                .admit_local_first(shared, record, cost, now, admitted)
                .await;
        }
        let mut error = None;
        if shared.should_try() {
            match self.shared_decision(shared, record, cost, now).await? {
                Ok(outcome) => {
                    // Back from an outage: what this node spent locally is settled into Redis by
                    // the next upkeep tick (`sync_shared`), never inline, so a verify cannot
                    // wait on a settlement of many keys.
                    shared.mark_up();
                    self.report_shared(record, cost, now, outcome, admitted);
                    admitted.enforcement = Some(Enforcement {
                        source: EnforcementSource::Redis,
                        reason: "shared limit state in Redis".into(),
                    });
                    return Ok(());
                }
                Err(e) => {
                    shared.mark_down(&e);
                    error = Some(e.to_string());
                }
            }
        }
        let error = error.unwrap_or_else(|| shared.last_error());
        self.admit_fallback(shared, record, cost, now, admitted, &error);
        Ok(())
    }

    /// Admission for a key with at least one `local_first` limit. Only local-first limits and
    /// no quota: decided from this node's view alone, with no Redis call. Otherwise the
    /// local-first limits are reserved locally first, then the exact limits and the quota are
    /// decided by the admission script, and the reservation is given back if the script
    /// refuses or fails; if a local limit refuses, the script runs with cost 0 (it consumes
    /// nothing and only reports the exact limits). Reserving (rather than checking, then
    /// committing after the script) means a concurrent request can never make the local
    /// commit fail after Redis has already consumed, which would need a compensating Redis
    /// call. While Redis is down, the node-local fallback decides everything, as for exact
    /// limits.
    async fn admit_local_first(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        admitted: &mut Admitted,
    ) -> Result<(), EngineError> {
        let interval = shared.config.reconcile_interval;
        let all_local =
            record.policy.quota.is_none() && record.policy.limits.iter().all(is_local_first);
        if all_local {
            if !shared.is_up() {
                let error = shared.last_error();
                self.admit_fallback(shared, record, cost, now, admitted, &error);
                return Ok(());
            }
            let (decision, _) = shared.local_first.decide(record, cost, now, true);
            if !decision.admitted {
                admitted.code = VerifyCode::RateLimited;
                admitted.retry_after = Some(decision.retry_after.max(1));
            }
            admitted.limits = decision.reports;
            admitted.enforcement = Some(Enforcement {
                source: EnforcementSource::LocalFirst,
                reason: format!(
                    "local_first limits decided from this node's view, reconciled with Redis \
                     every {} ms",
                    interval.as_millis()
                ),
            });
            return Ok(());
        }
        if !shared.should_try() {
            let error = shared.last_error();
            self.admit_fallback(shared, record, cost, now, admitted, &error);
            return Ok(());
        }
        let mut local = record.clone();
        local.policy.limits.retain(is_local_first);
        let mut exact = record.clone();
        exact.policy.limits.retain(|l| !is_local_first(l));
        let (reserved, local_tats) = shared.local_first.decide(&local, cost, now, true);
        let script_cost = if reserved.admitted { cost } else { 0 };
        let outcome = match self.shared_decision(shared, &exact, script_cost, now).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                if reserved.admitted {
                    shared.local_first.give_back(&local, cost);
                }
                shared.mark_down(&e);
                self.admit_fallback(shared, record, cost, now, admitted, &e.to_string());
                return Ok(());
            }
            Err(e) => {
                if reserved.admitted {
                    shared.local_first.give_back(&local, cost);
                }
                return Err(e);
            }
        };
        // Settled by the next upkeep tick, not inline (see above).
        shared.mark_up();
        let merge = |exact_tats: Vec<Option<i128>>| -> Vec<Option<i128>> {
            let mut exact_tats = exact_tats.into_iter();
            let mut local_tats = local_tats.iter().copied();
            record
                .policy
                .limits
                .iter()
                .map(|l| {
                    if is_local_first(l) {
                        local_tats.next().flatten()
                    } else {
                        exact_tats.next().flatten()
                    }
                })
                .collect()
        };
        if reserved.admitted && !matches!(outcome, Outcome::Admitted { .. }) {
            // The script refused: nothing of this request may stay consumed locally.
            shared.local_first.give_back(&local, cost);
        }
        let outcome = match outcome {
            Outcome::Admitted { credits, tats } if reserved.admitted => Outcome::Admitted {
                credits,
                tats: merge(tats),
            },
            // A local limit refused (the script ran with cost 0): rate limited, whatever else.
            Outcome::Admitted { tats, .. } | Outcome::Limited { tats } => {
                Outcome::Limited { tats: merge(tats) }
            }
            Outcome::Exhausted { tats, .. } if !reserved.admitted => {
                Outcome::Limited { tats: merge(tats) }
            }
            Outcome::Exhausted { credits, tats } => Outcome::Exhausted {
                credits,
                tats: merge(tats),
            },
        };
        self.report_shared(record, cost, now, outcome, admitted);
        admitted.enforcement = Some(Enforcement {
            source: EnforcementSource::Redis,
            reason: format!(
                "exact limits and quota in Redis; local_first limits from this node's view, \
                 reconciled every {} ms",
                interval.as_millis()
            ),
        });
        Ok(())
    }

    pub(super) fn report_shared(
        &self,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        outcome: Outcome,
        admitted: &mut Admitted,
    ) {
        let (tats, credits, code) = match outcome {
            Outcome::Admitted { credits, tats } => (tats, credits, VerifyCode::Valid),
            Outcome::Limited { tats } => (tats, None, VerifyCode::RateLimited),
            Outcome::Exhausted { credits, tats } => {
                (tats, Some(credits), VerifyCode::UsageExceeded)
            }
        };
        let (decision, _) = evaluate(record, &tats, cost, now);
        admitted.code = code;
        match code {
            VerifyCode::Valid => admitted.limits = decision.reports,
            VerifyCode::RateLimited => {
                admitted.limits = decision.reports;
                admitted.retry_after = Some(decision.retry_after.max(1));
            }
            _ => {
                // Nothing was consumed: the limits as they stand.
                admitted.limits = evaluate(record, &tats, 0, now).0.reports;
            }
        }
        if let (Some(quota), Some(credits)) = (record.policy.quota.as_ref(), credits) {
            self.report_quota(quota, credits, code == VerifyCode::Valid, now, admitted);
        }
    }

    /// The node-local decision while Redis is down.
    pub(super) fn admit_fallback(
        &self,
        shared: &Shared,
        record: &KeyRecord,
        cost: u64,
        now: OffsetDateTime,
        admitted: &mut Admitted,
        error: &str,
    ) {
        let nodes = shared.fallback_nodes();
        let mut local = record.clone();
        local.policy.limits = record
            .policy
            .limits
            .iter()
            .map(|l| local_share(l, nodes))
            .collect();
        let budget = shared.config.fallback_credits;
        admitted.enforcement = Some(Enforcement {
            source: EnforcementSource::LocalFallback,
            reason: format!(
                "Redis unreachable ({error}); this node enforces 1/{nodes} of each limit and at \
                 most {budget} credits per key until Redis answers"
            ),
        });
        let peek = shared.fallback.decide(&local, cost, now, false);
        if !peek.admitted {
            admitted.code = VerifyCode::RateLimited;
            admitted.retry_after = Some(peek.retry_after.max(1));
            admitted.limits = peek.reports;
            return;
        }
        if let Some(quota) = &record.policy.quota {
            let period = period_of(quota, now);
            let allowance = shared
                .known_credits
                .get(&record.key_id)
                .map_or(budget, |known| known.min(budget));
            let left = {
                let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                let entry = owed.entry(record.key_id.clone()).or_default();
                if entry.period < period {
                    // Spend of a period since refilled is owed to nobody.
                    entry.credits = 0;
                    entry.period = period;
                }
                let in_flight = entry.settling.as_ref().map_or(0, |s| s.credits);
                let used = entry.credits + in_flight;
                if used + cost <= allowance {
                    entry.credits += cost;
                    Some(allowance - used - cost)
                } else {
                    None
                }
            };
            match left {
                Some(left) => self.report_quota(quota, left, true, now, admitted),
                None => {
                    admitted.code = VerifyCode::UsageExceeded;
                    self.report_quota(quota, 0, false, now, admitted);
                    admitted.limits = shared.fallback.decide(&local, 0, now, false).reports;
                    return;
                }
            }
        }
        let commit = shared.fallback.decide(&local, cost, now, true);
        if !commit.admitted {
            if record.policy.quota.is_some() {
                let mut owed = shared.owed.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = owed.get_mut(&record.key_id) {
                    entry.credits = entry.credits.saturating_sub(cost);
                }
            }
            admitted.code = VerifyCode::RateLimited;
            admitted.retry_after = Some(commit.retry_after.max(1));
        }
        admitted.limits = commit.reports;
    }
}
