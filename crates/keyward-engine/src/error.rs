//! The engine's errors: what an operation can fail with ([`EngineError`]) and why an admin
//! call was refused ([`AuthError`]).

use keyward_core::key::EntropyError;
use keyward_core::validate::FieldError;
use keyward_store::StoreError;

/// Errors of engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No key with this key_id (of the kind asked for).
    #[error("no key with key_id {key_id}")]
    NotFound {
        /// The key_id asked for.
        key_id: String,
    },
    /// An input field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The key is revoked and cannot be changed.
    #[error("key {key_id} is revoked")]
    Revoked {
        /// The revoked key.
        key_id: String,
    },
    /// No plan with this name.
    #[error("no plan named {plan_id}")]
    PlanNotFound {
        /// The plan asked for.
        plan_id: String,
    },
    /// A plan with this name exists.
    #[error("a plan named {plan_id} exists")]
    PlanExists {
        /// The plan's name.
        plan_id: String,
    },
    /// Live keys still follow this plan.
    #[error("keys still follow plan {plan_id}; move them to another plan first")]
    PlanInUse {
        /// The plan's name.
        plan_id: String,
    },
    /// Revoking this root key would leave no usable root key with `root.manage`.
    #[error("{key_id} is the last usable root key with root.manage; create another one first")]
    LastRootKey {
        /// The root key that was to be revoked.
        key_id: String,
    },
    /// The key kept changing under concurrent writes.
    #[error("the key was changed concurrently; retry")]
    Conflict,
    /// A tenant-scoped root key asked for something that spans every tenant.
    #[error("this root key acts only on tenant {tenant:?}, and {what}")]
    OutOfScope {
        /// The root key's tenant.
        tenant: String,
        /// Why the operation is not confined to one tenant.
        what: &'static str,
    },
    /// A root key tried to create a root key holding a permission it does not hold itself.
    #[error(
        "{field}: a root key can grant only permissions it holds, and it does not hold {permission:?}"
    )]
    Escalation {
        /// The request field naming the permission.
        field: String,
        /// The permission asked for.
        permission: String,
    },
    /// The caller's address presented too many keys this node does not know; refused without
    /// a store read (see [`unknown_keys`](crate::unknown_keys)).
    #[error("too many unknown keys from this address; retry in {retry_after_seconds} s")]
    TooManyUnknownKeys {
        /// Seconds until the address may present an unknown key again.
        retry_after_seconds: u64,
    },
    /// The OS random generator failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            StoreError::LastRootKey(key_id) => Self::LastRootKey { key_id },
            StoreError::PlanMissing(plan) => {
                Self::Invalid(FieldError::new("plan", format!("no plan named {plan:?}")))
            }
            other => Self::Store(other),
        }
    }
}

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that is not a valid root key (401).
    #[error("a valid root key is required")]
    Unauthenticated,
    /// A valid root key without the permission needed (403).
    #[error("the root key lacks the permission {permission}")]
    Forbidden {
        /// The permission the call needs.
        permission: &'static str,
    },
    /// The check itself failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}
