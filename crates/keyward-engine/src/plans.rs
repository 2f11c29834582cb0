//! Plans: named sets of limits, quota and permissions that keys follow, so a change to the plan
//! reaches every key on it at once.
//!
//! [`Plans`] reads and writes them in the store, each write with its audit event. Plans are
//! shared by every tenant: a tenant-scoped root key may read them, not change them. What
//! verification applies (the plan map, forgotten on every plan change) is kept by
//! [`crate::lookup::KeyLookup`]; the caller tells it after a write.

use std::sync::Arc;

use keyward_core::audit::{AuditAction, AuditDraft};
use keyward_core::clock::Clock;
use keyward_core::permission::Permission;
use keyward_core::record::Plan;
use keyward_core::validate::{self, FieldError};
use keyward_store::{KeyStore, PlanWrite, StoreError};
use serde_json::{Value, json};

use crate::clock::write_time;
use crate::error::EngineError;
use crate::scope::Principal;
use crate::types::PlanSpec;

/// Why a tenant-scoped root key may read plans but not write them.
const PLANS_ARE_SHARED: &str =
    "plans are shared by every tenant (it may read them, not change them)";

fn plan_summary(plan: &Plan) -> Value {
    json!({
        "limits": serde_json::to_value(&plan.limits).unwrap_or(Value::Null),
        "quota": serde_json::to_value(plan.quota).unwrap_or(Value::Null),
        "permissions": plan.permissions.iter().map(Permission::as_str).collect::<Vec<_>>(),
    })
}

/// Refuses a plan name the store does not know, as an invalid `plan` field (a key naming it).
pub(crate) async fn require_plan(store: &dyn KeyStore, plan_id: &str) -> Result<(), EngineError> {
    match store.get_plan(plan_id).await? {
        Some(_) => Ok(()),
        None => Err(FieldError::new("plan", format!("no plan named {plan_id:?}")).into()),
    }
}

/// Plan reads and writes; see the module docs.
pub(crate) struct Plans {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
}

impl Plans {
    pub(crate) fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Reads a plan.
    pub(crate) async fn get(&self, plan_id: &str) -> Result<Plan, EngineError> {
        self.store
            .get_plan(plan_id)
            .await?
            .ok_or_else(|| EngineError::PlanNotFound {
                plan_id: plan_id.to_owned(),
            })
    }

    /// Lists every plan.
    pub(crate) async fn list(&self) -> Result<Vec<Plan>, EngineError> {
        Ok(self.store.list_plans().await?)
    }

    /// Creates (`create`) or replaces a plan.
    pub(crate) async fn put(
        &self,
        actor: &Principal,
        plan_id: &str,
        spec: PlanSpec,
        create: bool,
    ) -> Result<Plan, EngineError> {
        actor.require_unscoped(PLANS_ARE_SHARED)?;
        let plan_id = validate::ident("plan_id", plan_id)?;
        let now = write_time(self.clock.as_ref());
        let current = self.store.get_plan(&plan_id).await?;
        let (expected_version, created_at, version, action) = match (&current, create) {
            (Some(_), true) => return Err(EngineError::PlanExists { plan_id }),
            (None, false) => return Err(EngineError::PlanNotFound { plan_id }),
            (None, true) => (None, now, 1, AuditAction::PlanCreate),
            (Some(p), false) => (
                Some(p.version),
                p.created_at,
                p.version + 1,
                AuditAction::PlanUpdate,
            ),
        };
        let plan = Plan {
            plan_id: plan_id.clone(),
            limits: validate::limits("limits", &spec.limits)?,
            quota: validate::optional_quota("quota", spec.quota.as_ref())?,
            permissions: validate::permissions(&spec.permissions)?,
            version,
            created_at,
            updated_at: now,
        };
        let summary = json!({
            "before": current.as_ref().map(plan_summary),
            "after": plan_summary(&plan),
        });
        self.store
            .write_plan(PlanWrite {
                plan: plan.clone(),
                expected_version,
                delete: false,
                audit: AuditDraft {
                    time: now,
                    actor: Some(actor.key_id.clone()),
                    action,
                    target: Some(plan_id.clone()),
                    summary,
                },
            })
            .await?;
        Ok(plan)
    }

    /// Deletes a plan no live key references.
    pub(crate) async fn delete(&self, actor: &Principal, plan_id: &str) -> Result<(), EngineError> {
        actor.require_unscoped(PLANS_ARE_SHARED)?;
        let plan = self.get(plan_id).await?;
        let now = write_time(self.clock.as_ref());
        let summary = json!({"before": plan_summary(&plan)});
        let write = PlanWrite {
            expected_version: Some(plan.version),
            delete: true,
            audit: AuditDraft {
                time: now,
                actor: Some(actor.key_id.clone()),
                action: AuditAction::PlanDelete,
                target: Some(plan.plan_id.clone()),
                summary,
            },
            plan,
        };
        match self.store.write_plan(write).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict) => Err(EngineError::PlanInUse {
                plan_id: plan_id.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
