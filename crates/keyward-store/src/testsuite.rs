//! The store behaviour suite: every [`KeyStore`] implementation must pass it. This file holds
//! the fixtures and [`run_all`]; the checks live in one file per area.

mod audit;
mod keys;
mod plans;
mod usage;

use keyward_core::audit::{AuditAction, AuditDraft, ChainVerifier};
use keyward_core::key::KeyHash;
use keyward_core::permission::Permission;
use keyward_core::record::{KeyKind, KeyRecord, KeyStatus, SecretInfo};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::{AuditFilter, KeyFilter, KeyStore, KeyWrite, StoreError};

pub(crate) use keyward_testkit::T0;

pub(crate) fn record(key_id: &str, owner: &str) -> KeyRecord {
    KeyRecord {
        key_id: key_id.into(),
        owner: owner.into(),
        name: Some("name".into()),
        tenant: Some("acme".into()),
        tags: vec!["ci".into()],
        meta: json!({"plan": "pro", "n": 1.5})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        permissions: vec![Permission::new("orders.*").unwrap()],
        created_by: Some("key_root".into()),
        ..KeyRecord::sample(T0)
    }
}

fn secret(plaintext: &str, created_at: OffsetDateTime) -> SecretInfo {
    SecretInfo {
        hash: KeyHash::sha256_of(plaintext),
        start: plaintext.chars().take(12).collect(),
        created_at,
        expires_at: None,
    }
}

pub(crate) fn draft(action: AuditAction, target: &str) -> AuditDraft {
    AuditDraft {
        time: T0,
        actor: Some("key_root".into()),
        action,
        target: Some(target.into()),
        summary: json!({"x": 1}),
    }
}

pub(crate) fn new_key_write(key_id: &str, plaintext: &str) -> KeyWrite {
    KeyWrite {
        record: record(key_id, "team"),
        expected_version: None,
        new_secret: Some(secret(plaintext, T0)),
        secret_ends: vec![],
        audit: draft(AuditAction::KeyCreate, key_id),
    }
}

fn id(n: usize) -> String {
    format!("key_{n:0>20}")
}

/// Runs every behaviour check against `store`, which must be empty.
pub(crate) async fn run_all(store: &dyn KeyStore) {
    keys::create_and_find(store).await;
    keys::optimistic_concurrency(store).await;
    keys::rotation_secrets(store).await;
    keys::listing_and_pagination(store).await;
    keys::last_used(store).await;
    audit::audit_chain(store).await;
    plans::policy_and_plans(store).await;
    plans::credits(store).await;
    keys::first_root_key_once(store).await;
    usage::usage(store).await;
    audit::audit_by_tenant(store).await;
    keys::finding_11_the_last_root_manage_key_is_guarded_inside_the_write(store).await;
}
