//! A [`KeyStore`] wrapper that times every call the engine makes and counts its failures, and
//! counts the key lifecycle (issued, rotated, revoked) from the writes that commit.
//!
//! Counting lifecycle events here, from the audit action of each committed [`KeyWrite`], means
//! a counter moves exactly when a write commits, whichever engine path (an operator, an
//! automated response) made it, and a failed write is counted as a failure of its action.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use keyward_core::audit::{AuditAction, AuditDraft, AuditEvent};
use keyward_core::key::KeyHash;
use keyward_core::quota::{Balance, QuotaConfig};
use keyward_core::record::{KeyKind, KeyRecord, Plan};
use keyward_core::usage::UsageCount;
use keyward_store::{
    AuditFilter, ChangeFeed, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page, PlanWrite,
    StoreError, UsageFilter, UsagePage,
};
use metrics::{counter, histogram};
use time::OffsetDateTime;

use crate::telemetry::{
    KEY_WRITE_FAILURES, KEYS_ISSUED, KEYS_REVOKED, KEYS_ROTATED, STORE_DURATION, STORE_ERRORS,
};

/// Wraps a store; see the module doc.
pub(crate) struct MeteredStore {
    inner: Arc<dyn KeyStore>,
}

impl MeteredStore {
    pub(crate) fn new(inner: Arc<dyn KeyStore>) -> Self {
        Self { inner }
    }
}

/// Times `call` as `op` and counts it as an error if the store failed. A conflict, a duplicate
/// or a missing plan is an answer about the data, not a failure of the store.
async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    histogram!(STORE_DURATION, "op" => op).record(started.elapsed().as_secs_f64());
    if let Err(StoreError::Backend(_) | StoreError::Corrupt(_) | StoreError::Open { .. }) = &result
    {
        counter!(STORE_ERRORS, "op" => op).increment(1);
    }
    result
}

/// Counts a key write's outcome by its audit action.
fn count_write<T>(action: AuditAction, kind: KeyKind, result: &Result<T, StoreError>) {
    match result {
        Ok(_) if kind == KeyKind::Api => {
            let name = match action {
                AuditAction::KeyCreate => KEYS_ISSUED,
                AuditAction::KeyRotate => KEYS_ROTATED,
                AuditAction::KeyRevoke => KEYS_REVOKED,
                _ => return,
            };
            counter!(name).increment(1);
        }
        Ok(_) | Err(StoreError::Conflict) => {}
        Err(_) => counter!(KEY_WRITE_FAILURES, "action" => action.as_str()).increment(1),
    }
}

#[async_trait]
impl KeyStore for MeteredStore {
    async fn changes(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        timed("changes", self.inner.changes()).await
    }

    async fn change_head(&self) -> Result<i64, StoreError> {
        timed("change_head", self.inner.change_head()).await
    }

    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        timed("find_by_hash", self.inner.find_by_hash(hash, now)).await
    }

    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        timed("get_key", self.inner.get_key(key_id, now)).await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        timed("list_keys", self.inner.list_keys(filter)).await
    }

    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError> {
        let (action, kind) = (write.audit.action, write.record.kind);
        let result = timed("write_key", self.inner.write_key(write)).await;
        count_write(action, kind, &result);
        result
    }

    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        timed("append_audit", self.inner.append_audit(draft)).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        timed("list_audit", self.inner.list_audit(filter)).await
    }

    async fn touch_last_used(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        timed("touch_last_used", self.inner.touch_last_used(uses)).await
    }

    async fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        timed("add_usage", self.inner.add_usage(counts)).await
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError> {
        timed("list_usage", self.inner.list_usage(filter)).await
    }

    async fn count_root_keys(&self) -> Result<u64, StoreError> {
        timed("count_root_keys", self.inner.count_root_keys()).await
    }

    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        timed(
            "create_first_root_key",
            self.inner.create_first_root_key(write),
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", self.inner.ping()).await
    }

    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        timed("get_plan", self.inner.get_plan(plan_id)).await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        timed("list_plans", self.inner.list_plans()).await
    }

    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError> {
        timed("write_plan", self.inner.write_plan(write)).await
    }

    async fn take_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<(u64, Balance), StoreError> {
        timed(
            "take_credits",
            self.inner.take_credits(key_id, config, want, now),
        )
        .await
    }

    async fn adjust_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        unspent: u64,
        op: CreditOp,
        audit: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        timed(
            "adjust_credits",
            self.inner
                .adjust_credits(key_id, config, unspent, op, audit, now),
        )
        .await
    }

    async fn give_back_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        amount: u64,
        period: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        timed(
            "give_back_credits",
            self.inner
                .give_back_credits(key_id, config, amount, period, now),
        )
        .await
    }

    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError> {
        timed("balance", self.inner.balance(key_id, config, now)).await
    }
}

#[cfg(test)]
mod tests {
    use crate::telemetry::STORE_OPS;

    #[test]
    fn every_store_operation_is_listed_for_registration() {
        // The ops `timed` is called with, taken from this file, must all be pre-registered.
        let source = include_str!("metered_store.rs");
        let used: Vec<&str> = source
            .split("timed(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            // Drops this test's own mention of the pattern.
            .filter(|op| !op.is_empty() && op.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        assert_eq!(used.len(), STORE_OPS.len(), "{used:?}");
        for op in used {
            assert!(STORE_OPS.contains(&op), "{op}");
        }
    }
}
