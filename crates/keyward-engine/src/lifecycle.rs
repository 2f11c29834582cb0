//! The key lifecycle: creating, updating, rotating and revoking API and root keys.
//!
//! Every change is one store write that carries its audit event ([`KeyWrite`]), made by
//! [`Lifecycle::modify`] with optimistic concurrency (read, change, write if the version is
//! unchanged, retry on a race), and followed at once by the eviction of what it touched from
//! the verify cache ([`KeyLookup::invalidate`]). Rotating keeps the previous secret for a grace
//! period (the plan is `keyward_core::rotation`); revoking an API key publishes
//! `Event::KeyRevoked`.

use std::sync::Arc;

use keyward_core::audit::{AuditAction, AuditDraft, summary_diff};
use keyward_core::clock::Clock;
use keyward_core::key::{
    EntropyError, KeyHash, PREFIX_ROOT, Prefix, generate_key, generate_key_id,
};
use keyward_core::record::{KeyKind, KeyPolicy, KeyRecord, SecretInfo};
use keyward_core::rotation::plan_rotation;
use keyward_core::validate::{self, FieldError};
use keyward_store::{KeyFilter, KeyStore, KeyWrite, Page, StoreError};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::clock::write_time;
use crate::error::EngineError;
use crate::events::Event;
use crate::lookup::KeyLookup;
use crate::plans::require_plan;
use crate::root_auth::root_permissions;
use crate::scope::Principal;
use crate::types::{Created, KeyPatch, ListKeys, NewKey, Rotated};

/// How many times a write is retried when it races another write to the same key.
const WRITE_ATTEMPTS: usize = 3;

fn prefix_of(start: &str) -> Option<Prefix> {
    let (prefix, _) = start.rsplit_once('_')?;
    Prefix::new(prefix).ok()
}

/// Key writes; see the module docs. Each method that writes takes the [`KeyLookup`] whose
/// cache it evicts.
pub(crate) struct Lifecycle {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    events: tokio::sync::broadcast::Sender<Event>,
}

impl Lifecycle {
    pub(crate) fn new(
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        events: tokio::sync::broadcast::Sender<Event>,
    ) -> Self {
        Self {
            store,
            clock,
            events,
        }
    }

    /// True if the store has a root key (so [`bootstrap`](Self::bootstrap) would create none).
    pub(crate) async fn has_root_key(&self) -> Result<bool, EngineError> {
        Ok(self.store.count_root_keys().await? > 0)
    }

    /// Creates the first root key if the store has never had one; returns it to print once.
    pub(crate) async fn bootstrap(&self, keys: &KeyLookup) -> Result<Option<Created>, EngineError> {
        if self.has_root_key().await? {
            return Ok(None);
        }
        let spec = NewKey {
            owner: "keyward-bootstrap".into(),
            name: Some("bootstrap root key".into()),
            permissions: vec!["*".into()],
            ..NewKey::default()
        };
        let (write, created) = self.prepare_create(None, KeyKind::Root, spec).await?;
        let hash = write.new_secret.as_ref().map(|s| s.hash);
        // Nodes starting together on an empty shared store all get here; the store writes the
        // key only if no root key exists yet, atomically, so exactly one of them mints one.
        if self.store.create_first_root_key(write).await?.is_none() {
            return Ok(None);
        }
        keys.invalidate(&created.record.key_id, &hash);
        tracing::info!(key_id = %created.record.key_id, kind = "root", "key created");
        Ok(Some(created))
    }

    /// Creates a key of `kind` on behalf of `actor` (none: the bootstrap key).
    pub(crate) async fn create(
        &self,
        keys: &KeyLookup,
        actor: Option<&Principal>,
        kind: KeyKind,
        spec: NewKey,
    ) -> Result<Created, EngineError> {
        let (write, created) = self.prepare_create(actor, kind, spec).await?;
        let hash = write.new_secret.as_ref().map(|s| s.hash);
        self.store.write_key(write).await?;
        keys.invalidate(&created.record.key_id, &hash);
        tracing::info!(key_id = %created.record.key_id, kind = kind.as_str(), "key created");
        Ok(created)
    }

    /// Validates `spec` and generates the key: the write that stores it, and what the caller
    /// gets back once it committed.
    async fn prepare_create(
        &self,
        actor: Option<&Principal>,
        kind: KeyKind,
        spec: NewKey,
    ) -> Result<(KeyWrite, Created), EngineError> {
        let now = self.clock.now();
        let environment =
            validate::ident("environment", spec.environment.as_deref().unwrap_or("live"))?;
        let (permissions, prefix) = match kind {
            KeyKind::Api => (
                validate::permissions(&spec.permissions)?,
                validate::prefix(spec.prefix.as_deref(), &environment)?,
            ),
            KeyKind::Root => {
                if spec.prefix.is_some() {
                    return Err(FieldError::new(
                        "prefix",
                        format!("root keys always use the prefix {PREFIX_ROOT}"),
                    )
                    .into());
                }
                (
                    root_permissions(&spec.permissions)?,
                    Prefix::new(PREFIX_ROOT)
                        .map_err(|e| FieldError::new("prefix", e.to_string()))?,
                )
            }
        };
        if let Some(actor) = actor {
            actor.may_create(kind, spec.tenant.as_deref(), &permissions)?;
        }
        let expires_at = match (spec.expires_at, spec.ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "ttl_seconds",
                    "give expires_at or ttl_seconds, not both",
                )
                .into());
            }
            (Some(at), None) => Some(validate::expires_at("expires_at", at, now)?),
            (None, Some(ttl)) => Some(validate::ttl(ttl, now)?),
            (None, None) => None,
        };
        let mut rng = rand::rngs::SysRng;
        let key = generate_key(&prefix, &mut rng)?;
        let parsed = key
            .parsed()
            .map_err(|_| EngineError::Entropy(EntropyError))?;
        let secret = SecretInfo {
            hash: parsed.hash(),
            start: parsed.start().to_owned(),
            created_at: now,
            expires_at: None,
        };
        let record = KeyRecord {
            key_id: generate_key_id(&mut rng)?,
            kind,
            owner: validate::text("owner", &spec.owner)?,
            name: validate::optional_text("name", spec.name.as_deref())?,
            tenant: spec
                .tenant
                .as_deref()
                .map(|t| validate::ident("tenant", t))
                .transpose()?,
            environment,
            purpose: validate::optional_text("purpose", spec.purpose.as_deref())?,
            tags: validate::tags(&spec.tags)?,
            meta: validate::meta(spec.meta.clone().unwrap_or_default())?,
            permissions,
            routes: validate::routes(&spec.routes)?,
            expires_at,
            enabled: spec.enabled.unwrap_or(true),
            created_at: now,
            created_by: actor.map(|a| a.key_id.clone()),
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_at: None,
            version: 1,
            secrets: vec![secret.clone()],
            policy: match kind {
                KeyKind::Api => self.policy(&spec).await?,
                KeyKind::Root => KeyPolicy::default(),
            },
        };
        let action = match kind {
            KeyKind::Api => AuditAction::KeyCreate,
            KeyKind::Root => AuditAction::RootCreate,
        };
        let write = KeyWrite {
            record: record.clone(),
            expected_version: None,
            new_secret: Some(secret),
            secret_ends: Vec::new(),
            audit: AuditDraft {
                time: now,
                actor: actor.map(|a| a.key_id.clone()),
                action,
                target: Some(record.key_id.clone()),
                summary: record.audit_summary(),
            },
        };
        Ok((write, Created { key, record }))
    }

    /// Validates the policy part of a new key.
    async fn policy(&self, spec: &NewKey) -> Result<KeyPolicy, EngineError> {
        if let Some(plan_id) = &spec.plan {
            require_plan(self.store.as_ref(), plan_id).await?;
        }
        Ok(KeyPolicy {
            plan: spec.plan.clone(),
            limits: validate::limits("limits", &spec.limits)?,
            quota: validate::optional_quota("quota", spec.quota.as_ref())?,
            ip_allowlist: validate::ip_allowlist(&spec.ip_allowlist)?,
            origins: validate::origins(&spec.origins)?,
        })
    }

    /// Lists keys of `kind`, of every tenant (callers outside the engine use
    /// `Keyward::list_keys_as`).
    pub(crate) async fn list_keys(
        &self,
        kind: KeyKind,
        query: ListKeys,
    ) -> Result<Page<KeyRecord>, EngineError> {
        let filter = KeyFilter {
            kind,
            owner: query.owner,
            tenant: query.tenant,
            status: query.status,
            now: self.clock.now(),
            limit: validate::page_limit(query.limit)?,
            after: query.after,
        };
        Ok(self.store.list_keys(&filter).await?)
    }

    /// Reads, changes and writes a key with optimistic concurrency, retrying on a race, then
    /// evicts what the write touched from `keys`' cache. The change returns the write (the new
    /// record, the secret changes and the audit event) and a value of its own, which `modify`
    /// returns with the record as written: the value of the attempt that committed.
    pub(crate) async fn modify<T, F>(
        &self,
        keys: &KeyLookup,
        kind: KeyKind,
        key_id: &str,
        change: F,
    ) -> Result<(KeyRecord, T), EngineError>
    where
        F: Fn(&KeyRecord, OffsetDateTime) -> Result<(KeyWrite, T), EngineError>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let current = keys.get_key(kind, key_id, self.clock.now()).await?;
            let now = write_time(self.clock.as_ref());
            let (mut write, value) = change(&current, now)?;
            write.expected_version = Some(current.version);
            write.record.version = current.version + 1;
            write.record.updated_at = now;
            write.record.last_used_at = current.last_used_at;
            // The record as it is after the write, built here rather than read back: once the
            // write commits, a failing read must not lose a new secret that exists only in
            // this response.
            let mut written = write.record.clone();
            written.secrets = write.new_secret.iter().cloned().collect();
            for secret in &current.secrets {
                let mut secret = secret.clone();
                if let Some((_, ends)) = write.secret_ends.iter().find(|(h, _)| *h == secret.hash) {
                    secret.expires_at = Some(*ends);
                }
                if secret.is_live(now) {
                    written.secrets.push(secret);
                }
            }
            let touched: Vec<KeyHash> = written
                .secrets
                .iter()
                .chain(current.secrets.iter())
                .map(|s| s.hash)
                .collect();
            match self.store.write_key(write).await {
                Ok(_) => {
                    keys.invalidate(key_id, &touched);
                    return Ok((written, value));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict)
    }

    /// [`modify`](Self::modify) on behalf of `actor`: a key outside its scope is not found.
    async fn modify_as<T, F>(
        &self,
        keys: &KeyLookup,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
        change: F,
    ) -> Result<(KeyRecord, T), EngineError>
    where
        F: Fn(&KeyRecord, OffsetDateTime) -> Result<(KeyWrite, T), EngineError>,
    {
        self.modify(keys, kind, key_id, |current, now| {
            actor.reveal(current)?;
            change(current, now)
        })
        .await
    }

    /// Updates an API key's metadata.
    pub(crate) async fn update_key(
        &self,
        keys: &KeyLookup,
        actor: &Principal,
        key_id: &str,
        patch: KeyPatch,
    ) -> Result<KeyRecord, EngineError> {
        let nothing = patch.name.is_none()
            && patch.permissions.is_none()
            && patch.routes.is_none()
            && patch.meta.is_none()
            && patch.tags.is_none()
            && patch.expires_at.is_none()
            && patch.enabled.is_none()
            && patch.plan.is_none()
            && patch.limits.is_none()
            && patch.quota.is_none()
            && patch.ip_allowlist.is_none()
            && patch.origins.is_none();
        // Plan existence is checked before the write, outside the retry loop.
        if let Some(Some(plan_id)) = &patch.plan {
            require_plan(self.store.as_ref(), plan_id).await?;
        }
        if nothing {
            return Err(FieldError::new("body", "names no field to update").into());
        }
        let (record, ()) = self
            .modify_as(keys, actor, KeyKind::Api, key_id, |current, now| {
                if current.revoked_at.is_some() {
                    return Err(EngineError::Revoked {
                        key_id: key_id.to_owned(),
                    });
                }
                let mut next = current.clone();
                if let Some(name) = &patch.name {
                    next.name = validate::optional_text("name", name.as_deref())?;
                }
                if let Some(p) = &patch.permissions {
                    next.permissions = validate::permissions(p)?;
                }
                if let Some(r) = &patch.routes {
                    next.routes = validate::routes(r)?;
                }
                if let Some(m) = &patch.meta {
                    next.meta = validate::meta(m.clone())?;
                }
                if let Some(t) = &patch.tags {
                    next.tags = validate::tags(t)?;
                }
                if let Some(e) = patch.expires_at {
                    next.expires_at = e
                        .map(|at| validate::expires_at("expires_at", at, now))
                        .transpose()?;
                }
                if let Some(enabled) = patch.enabled {
                    next.enabled = enabled;
                }
                if let Some(plan) = &patch.plan {
                    next.policy.plan.clone_from(plan);
                }
                if let Some(limits) = &patch.limits {
                    next.policy.limits = validate::limits("limits", limits)?;
                }
                if let Some(quota) = &patch.quota {
                    next.policy.quota = validate::optional_quota("quota", quota.as_ref())?;
                }
                if let Some(ips) = &patch.ip_allowlist {
                    next.policy.ip_allowlist = validate::ip_allowlist(ips)?;
                }
                if let Some(origins) = &patch.origins {
                    next.policy.origins = validate::origins(origins)?;
                }
                Ok((
                    KeyWrite {
                        audit: AuditDraft {
                            time: now,
                            actor: Some(actor.key_id.clone()),
                            action: AuditAction::KeyUpdate,
                            target: Some(key_id.to_owned()),
                            summary: summary_diff(&current.audit_summary(), &next.audit_summary()),
                        },
                        record: next,
                        expected_version: None,
                        new_secret: None,
                        secret_ends: Vec::new(),
                    },
                    (),
                ))
            })
            .await?;
        Ok(record)
    }

    /// Gives an API key a new secret; the old one verifies for `grace` more.
    pub(crate) async fn rotate_key(
        &self,
        keys: &KeyLookup,
        actor: &Principal,
        key_id: &str,
        grace: Duration,
    ) -> Result<Rotated, EngineError> {
        let grace = validate::grace(grace)?;
        let (record, (key, plan)) = self
            .modify_as(keys, actor, KeyKind::Api, key_id, |current, now| {
                if current.revoked_at.is_some() {
                    return Err(EngineError::Revoked { key_id: key_id.to_owned() });
                }
                let prefix = current
                    .secrets
                    .first()
                    .and_then(|s| prefix_of(&s.start))
                    .map_or_else(|| validate::prefix(None, &current.environment), Ok)?;
                let key = generate_key(&prefix, &mut rand::rngs::SysRng)?;
                let parsed = key.parsed().map_err(|_| EngineError::Entropy(EntropyError))?;
                let secret = SecretInfo {
                    hash: parsed.hash(),
                    start: parsed.start().to_owned(),
                    created_at: now,
                    expires_at: None,
                };
                let plan = plan_rotation(&current.secrets, grace, now);
                let mut next = current.clone();
                next.rotated_at = Some(now);
                let summary = json!({
                    "new_secret": secret.start,
                    "grace_period_seconds": grace.whole_seconds(),
                    "previous_secret": plan.previous.as_ref().map(|p| json!({"start": p.start, "expires_at": p.expires_at.unix_timestamp()})),
                    "ended_secrets": plan.ended.iter().map(|e| e.start.as_str()).collect::<Vec<_>>(),
                });
                let write = KeyWrite {
                    record: next,
                    expected_version: None,
                    new_secret: Some(secret),
                    secret_ends: plan.changes().map(|c| (c.hash, c.expires_at)).collect(),
                    audit: AuditDraft {
                        time: now,
                        actor: Some(actor.key_id.clone()),
                        action: AuditAction::KeyRotate,
                        target: Some(key_id.to_owned()),
                        summary,
                    },
                };
                Ok((write, (key, plan)))
            })
            .await?;
        tracing::info!(key_id, "key rotated");
        Ok(Rotated { key, record, plan })
    }

    /// Revokes a key of `kind`: every secret fails with REVOKED from now on.
    pub(crate) async fn revoke_key(
        &self,
        keys: &KeyLookup,
        actor: &Principal,
        kind: KeyKind,
        key_id: &str,
        reason: &str,
    ) -> Result<KeyRecord, EngineError> {
        let reason = validate::reason(reason)?;
        // The last usable root.manage key is guarded inside the write's transaction by the
        // store (`KeyStore::write_key`), for the key being revoked only; an out-of-scope key
        // is not found first (`modify_as`), before that guard could tell otherwise.
        let (record, ()) = self
            .modify_as(keys, actor, kind, key_id, |current, now| {
                if current.revoked_at.is_some() {
                    return Err(EngineError::Revoked { key_id: key_id.to_owned() });
                }
                let mut next = current.clone();
                next.revoked_at = Some(now);
                next.revoked_reason = Some(reason.clone());
                Ok((KeyWrite {
                    audit: AuditDraft {
                        time: now,
                        actor: Some(actor.key_id.clone()),
                        action: match kind {
                            KeyKind::Api => AuditAction::KeyRevoke,
                            KeyKind::Root => AuditAction::RootRevoke,
                        },
                        target: Some(key_id.to_owned()),
                        summary: json!({
                            "reason": reason,
                            "secrets": current.secrets.iter().map(|s| s.start.as_str()).collect::<Vec<_>>(),
                        }),
                    },
                    record: next,
                    expected_version: None,
                    new_secret: None,
                    secret_ends: Vec::new(),
                }, ()))
            })
            .await?;
        tracing::info!(key_id, kind = kind.as_str(), "key revoked");
        if kind == KeyKind::Api {
            // Never blocks; with no subscriber the event is dropped.
            let _ = self.events.send(Event::KeyRevoked {
                key_id: record.key_id.clone(),
                owner: record.owner.clone(),
                tenant: record.tenant.clone(),
                reason,
                at: record.revoked_at.unwrap_or_else(|| self.clock.now()),
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod root_guard_tests;
#[cfg(test)]
mod tests;
