//! `Keyward`'s admin operations, each delegating to the component that owns it: keys
//! ([`Lifecycle`](crate::lifecycle::Lifecycle)), plans ([`Plans`](crate::plans::Plans)),
//! credits ([`Admission`](crate::admission::Admission)), usage, the audit log and the rotation
//! report. Every operation takes the authenticated [`Principal`] and acts within its scope
//! (see `scope.rs`); the unscoped reads are private to the engine.

use keyward_core::audit::AuditEvent;
use keyward_core::record::{KeyKind, KeyRecord, Plan};
use keyward_core::validate;
use keyward_store::{CreditOp, Page};
use time::Duration;

use crate::error::EngineError;
use crate::rotation_policy::RotationReport;
use crate::scope::{Principal, Scope};
use crate::types::{
    ChainReport, Created, KeyPatch, ListKeys, NewKey, PlanSpec, Rotated, UsageQuery, UsageReport,
};
use crate::{Keyward, audit_log};

impl Keyward {
    /// True if the store has a root key (so [`Keyward::bootstrap`] would create none).
    pub async fn has_root_key(&self) -> Result<bool, EngineError> {
        self.lifecycle.has_root_key().await
    }

    /// Creates the first root key if the store has never had one; returns it to print once.
    pub async fn bootstrap(&self) -> Result<Option<Created>, EngineError> {
        self.lifecycle.bootstrap(&self.keys).await
    }

    /// Creates an API key.
    pub async fn create_key(
        &self,
        actor: &Principal,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        self.lifecycle
            .create(&self.keys, Some(actor), KeyKind::Api, spec)
            .await
    }

    /// Creates a root key.
    pub async fn create_root_key(
        &self,
        actor: &Principal,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        self.lifecycle
            .create(&self.keys, Some(actor), KeyKind::Root, spec)
            .await
    }

    /// Updates an API key's metadata.
    pub async fn update_key(
        &self,
        actor: &Principal,
        key_id: &str,
        patch: KeyPatch,
    ) -> Result<KeyRecord, EngineError> {
        self.lifecycle
            .update_key(&self.keys, actor, key_id, patch)
            .await
    }

    /// Gives an API key a new secret; the old one verifies for `grace` more.
    pub async fn rotate_key(
        &self,
        actor: &Principal,
        key_id: &str,
        grace: Duration,
    ) -> Result<Rotated, EngineError> {
        self.lifecycle
            .rotate_key(&self.keys, actor, key_id, grace)
            .await
    }

    /// Revokes a key of `kind`: every secret fails with REVOKED from now on.
    pub async fn revoke_key(
        &self,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
        reason: &str,
    ) -> Result<KeyRecord, EngineError> {
        self.lifecycle
            .revoke_key(&self.keys, actor, kind, key_id, reason)
            .await
    }

    /// Lists keys of `kind`, of every tenant (callers outside the engine use
    /// [`list_keys_as`](Self::list_keys_as)).
    pub(crate) async fn list_keys(
        &self,
        kind: KeyKind,
        query: ListKeys,
    ) -> Result<Page<KeyRecord>, EngineError> {
        self.lifecycle.list_keys(kind, query).await
    }

    /// Walks the whole audit chain and reports the first broken link (callers outside the
    /// engine use [`verify_audit_chain_as`](Self::verify_audit_chain_as)).
    pub(crate) async fn verify_audit_chain(&self) -> Result<ChainReport, EngineError> {
        audit_log::verify_chain(self.store.as_ref()).await
    }

    /// Reads usage of every tenant (callers outside the engine use
    /// [`usage_as`](Self::usage_as)).
    pub(crate) async fn usage(&self, query: UsageQuery) -> Result<UsageReport, EngineError> {
        self.usage.report(query).await
    }

    /// Reads a key of `kind`, whatever its tenant (callers outside the engine use
    /// [`get_key_as`](Self::get_key_as)).
    pub(crate) async fn get_key(
        &self,
        kind: KeyKind,
        key_id: &str,
    ) -> Result<KeyRecord, EngineError> {
        self.keys.get_key(kind, key_id, self.clock.now()).await
    }

    /// Reads a key of `kind` the principal may see.
    pub async fn get_key_as(
        &self,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
    ) -> Result<KeyRecord, EngineError> {
        let record = self.get_key(kind, key_id).await?;
        actor.reveal(&record)?;
        Ok(record)
    }

    /// Lists keys of `kind` the principal may see.
    pub async fn list_keys_as(
        &self,
        actor: &Principal,
        kind: KeyKind,
        mut query: ListKeys,
    ) -> Result<Page<KeyRecord>, EngineError> {
        let Some(tenant) = actor.tenant_filter(query.tenant.take()) else {
            // Validate the paging values all the same, so the answer does not depend on
            // which tenant was asked for.
            validate::page_limit(query.limit)?;
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        query.tenant = tenant;
        self.list_keys(kind, query).await
    }

    /// Credits left for an API key the principal may see (`None`: it has no quota).
    pub async fn credits_as(
        &self,
        actor: &Principal,
        key_id: &str,
    ) -> Result<Option<u64>, EngineError> {
        let record = self.get_key_as(actor, KeyKind::Api, key_id).await?;
        self.credits(&record).await
    }

    /// Credits left for a key with a quota (durable balance plus this process's lease).
    pub(crate) async fn credits(&self, record: &KeyRecord) -> Result<Option<u64>, EngineError> {
        let record = self.keys.effective_now(record.clone()).await?;
        self.admission.credits(&record).await
    }

    /// Sets, increases or decreases a key's credits; unspent leased credits are returned to
    /// the balance first.
    pub async fn adjust_credits(
        &self,
        actor: &Principal,
        key_id: &str,
        op: CreditOp,
    ) -> Result<u64, EngineError> {
        let record = self
            .keys
            .effective_now(self.get_key_as(actor, KeyKind::Api, key_id).await?)
            .await?;
        self.admission
            .adjust_credits(&actor.key_id, key_id, record.policy.quota, op)
            .await
    }

    /// Reads a plan.
    pub async fn get_plan(&self, plan_id: &str) -> Result<Plan, EngineError> {
        self.plans.get(plan_id).await
    }

    /// Lists every plan.
    pub async fn list_plans(&self) -> Result<Vec<Plan>, EngineError> {
        self.plans.list().await
    }

    /// Creates (`create`) or replaces a plan; every key on it changes at once.
    pub async fn put_plan(
        &self,
        actor: &Principal,
        plan_id: &str,
        spec: PlanSpec,
        create: bool,
    ) -> Result<Plan, EngineError> {
        let plan = self.plans.put(actor, plan_id, spec, create).await?;
        self.keys.forget_plans();
        Ok(plan)
    }

    /// Deletes a plan no live key references.
    pub async fn delete_plan(&self, actor: &Principal, plan_id: &str) -> Result<(), EngineError> {
        self.plans.delete(actor, plan_id).await?;
        self.keys.forget_plans();
        Ok(())
    }

    /// Lists the audit events the principal may read.
    pub async fn list_audit_as(
        &self,
        actor: &Principal,
        target: Option<String>,
        action: Option<String>,
        limit: Option<u32>,
        after: Option<i64>,
    ) -> Result<Page<AuditEvent>, EngineError> {
        let tenant = match actor.scope() {
            Scope::All => None,
            Scope::Tenant(t) => Some(t.to_owned()),
        };
        audit_log::page(self.store.as_ref(), target, action, limit, after, tenant).await
    }

    /// Lists audit events of every tenant (the engine's tests; callers outside the engine use
    /// [`list_audit_as`](Self::list_audit_as)).
    #[cfg(test)]
    pub(crate) async fn list_audit(
        &self,
        target: Option<String>,
        action: Option<String>,
        limit: Option<u32>,
        after: Option<i64>,
    ) -> Result<Page<AuditEvent>, EngineError> {
        audit_log::page(self.store.as_ref(), target, action, limit, after, None).await
    }

    /// Walks the audit chain; it spans every tenant, so only an unscoped principal may.
    pub async fn verify_audit_chain_as(
        &self,
        actor: &Principal,
    ) -> Result<ChainReport, EngineError> {
        actor.require_unscoped("the audit chain links every tenant's events")?;
        self.verify_audit_chain().await
    }

    /// Reads usage of the tenants the principal may see.
    pub async fn usage_as(
        &self,
        actor: &Principal,
        mut query: UsageQuery,
    ) -> Result<UsageReport, EngineError> {
        let asked = query.tenant.take();
        let visible = actor.tenant_filter(asked.clone());
        // The range and paging are validated the same way whichever tenant was asked for.
        query.tenant = visible.clone().unwrap_or(asked);
        let mut report = self.usage(query).await?;
        if visible.is_none() {
            report.items.clear();
            report.next = None;
        }
        Ok(report)
    }

    /// The rotation report over the keys the principal may see.
    pub async fn rotation_report_as(
        &self,
        actor: &Principal,
        within_days: Option<u32>,
    ) -> Result<RotationReport, EngineError> {
        let tenant = match actor.scope() {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        };
        self.rotation.report(tenant, within_days).await
    }
}
