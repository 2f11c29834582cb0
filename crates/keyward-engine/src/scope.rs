//! Tenant-scoped root keys: who an authenticated root key is, and which tenants it may act on.
//!
//! A root key created with a `tenant` is confined to it, so a platform can hand each customer
//! team an admin credential of its own. The scope travels inside the [`Principal`] that
//! `Keyward::authenticate` returns, and every admin operation of the engine takes that
//! principal, so the HTTP layer cannot call one without it. The unscoped reads (`get_key`,
//! `list_keys`, ...) are private to the engine.
//!
//! What a scoped principal may do (an unscoped one may do all of it, on every tenant):
//!
//! - **Keys and root keys of its tenant**: read, list, create, update, rotate, revoke, read
//!   and adjust credits. A key of another tenant, or without a tenant, does not exist for it:
//!   [`EngineError::NotFound`], exactly what a key_id that was never issued answers, so a
//!   scoped key cannot even learn that a key_id exists elsewhere. A key it creates must name
//!   its tenant (a missing or other tenant is refused rather than filled in, so a script
//!   written for an unscoped key fails loudly instead of acting differently), and listing
//!   filters to it.
//! - **Root keys**: any root key grants only permissions it holds itself (no escalation;
//!   this holds for unscoped keys too), and a scoped key creates root keys of its own tenant
//!   only, so never an unscoped one.
//! - **Verification** (`POST /v1/keys/verify`, `/v1/auth`): an API key of another tenant
//!   answers `NOT_FOUND`, decided before limits, quotas and usage are touched, so a scoped
//!   caller cannot spend or observe another tenant's key. A scoped verification never fails
//!   open (the tenant of a key the store cannot look up is unknown).
//! - **Audit**: the events whose target or actor is a key of its tenant (its keys' lifecycle,
//!   anomalies on them, and its own root keys' failed authentications). The store decides
//!   with a key_id lookup per event (the tenant of a key never changes, so the answer is
//!   stable), which costs a walk over the events between two matches; no audit row carries a
//!   tenant of its own, so old events need no migration and the hash chain is unchanged.
//!   Walking the chain (`POST /v1/audit/verify`) covers every tenant's events and the whole
//!   log, so it is refused ([`EngineError::OutOfScope`]).
//! - **Usage and the rotation report**: only its tenant's rows and keys.
//! - **Plans** are shared by every tenant: a scoped key may read them (its keys may follow
//!   one) but not create, replace or delete them.

use std::sync::Arc;

use keyward_core::permission::Permission;
use keyward_core::record::{KeyKind, KeyRecord};
use keyward_core::validate::FieldError;

use crate::error::EngineError;

/// An authenticated root key.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The root key's key_id.
    pub key_id: String,
    /// The root key's record as it authenticated (shared with the verify cache, not copied).
    key: Arc<KeyRecord>,
}

/// The tenants a principal may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every tenant, and keys without one.
    All,
    /// Only keys of this tenant.
    Tenant(&'a str),
}

impl Scope<'_> {
    /// True if a key of `tenant` is inside the scope.
    pub fn admits(self, tenant: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(scope) => tenant == Some(scope),
        }
    }
}

impl Principal {
    /// The principal of an authenticated root key.
    pub fn new(key: impl Into<Arc<KeyRecord>>) -> Self {
        let key = key.into();
        Self {
            key_id: key.key_id.clone(),
            key,
        }
    }

    /// The tenants this root key may act on.
    pub fn scope(&self) -> Scope<'_> {
        match &self.key.tenant {
            None => Scope::All,
            Some(tenant) => Scope::Tenant(tenant),
        }
    }

    /// The root key's permissions.
    pub fn permissions(&self) -> &[Permission] {
        &self.key.permissions
    }

    /// `NotFound` unless `record` is inside the scope: a key of another tenant must be
    /// indistinguishable from a key_id that was never issued.
    pub(crate) fn reveal(&self, record: &KeyRecord) -> Result<(), EngineError> {
        if self.scope().admits(record.tenant.as_deref()) {
            Ok(())
        } else {
            Err(EngineError::NotFound {
                key_id: record.key_id.clone(),
            })
        }
    }

    /// Refuses a scoped principal an operation that spans every tenant.
    pub(crate) fn require_unscoped(&self, what: &'static str) -> Result<(), EngineError> {
        match self.scope() {
            Scope::All => Ok(()),
            Scope::Tenant(tenant) => Err(EngineError::OutOfScope {
                tenant: tenant.to_owned(),
                what,
            }),
        }
    }

    /// Checks a new key against the scope and, for a root key, that it grants only what this
    /// one holds (`permissions` are the new key's, already validated).
    pub(crate) fn may_create(
        &self,
        kind: KeyKind,
        tenant: Option<&str>,
        permissions: &[Permission],
    ) -> Result<(), EngineError> {
        if let Scope::Tenant(scope) = self.scope()
            && tenant != Some(scope)
        {
            return Err(FieldError::new(
                "tenant",
                format!("must be {scope:?}: this root key acts only on tenant {scope:?}"),
            )
            .into());
        }
        if kind == KeyKind::Root {
            // A root key grants only what it holds: `keys.*` may hand out `keys.read` or
            // `keys.*`, never `*` or `root.manage`. Grants are compared as patterns, so a
            // wildcard is covered only by an equal or wider wildcard.
            for (i, wanted) in permissions.iter().enumerate() {
                if !self
                    .permissions()
                    .iter()
                    .any(|held| held.grants(wanted.as_str()))
                {
                    return Err(EngineError::Escalation {
                        field: format!("permissions[{i}]"),
                        permission: wanted.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The tenant filter a scoped listing runs with: the scope itself, or `None` when the
    /// caller asked for another tenant (nothing of it is visible).
    pub(crate) fn tenant_filter(&self, asked: Option<String>) -> Option<Option<String>> {
        match self.scope() {
            Scope::All => Some(asked),
            Scope::Tenant(scope) => match asked {
                Some(other) if other != scope => None,
                _ => Some(Some(scope.to_owned())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: Option<&str>, held: &[&str]) -> Principal {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        Principal::new(KeyRecord {
            key_id: "key_00000000000000000001".into(),
            kind: KeyKind::Root,
            owner: "o".into(),
            tenant: tenant.map(str::to_owned),
            permissions: grants(held),
            ..KeyRecord::sample(t0)
        })
    }

    fn grants(values: &[&str]) -> Vec<Permission> {
        values.iter().map(|g| Permission::new(g).unwrap()).collect()
    }

    #[test]
    fn a_root_key_grants_only_what_it_holds_compared_as_patterns() {
        let check = |held: &[&str], wanted: &[&str]| {
            principal(None, held)
                .may_create(KeyKind::Root, None, &grants(wanted))
                .is_ok()
        };
        assert!(check(&["*"], &["*"]));
        assert!(check(&["keys.*"], &["keys.read", "keys.*", "keys.items.*"]));
        assert!(check(&["keys.read", "audit.read"], &["audit.read"]));
        assert!(!check(&["keys.*"], &["*"]));
        assert!(!check(&["keys.*"], &["root.manage"]));
        assert!(!check(&["keys.read"], &["keys.*"]));
        assert!(!check(&["root.manage"], &["root.*"]));
        assert!(!check(&["keys.read"], &["keys.read", "keys.update"]));
        // API keys' permissions are the application's, not root permissions: not compared.
        assert!(
            principal(None, &["keys.create"])
                .may_create(KeyKind::Api, None, &grants(&["*"]))
                .is_ok()
        );
        // The field names the first permission not held.
        match principal(None, &["keys.read"]).may_create(
            KeyKind::Root,
            None,
            &grants(&["keys.read", "keys.update"]),
        ) {
            Err(EngineError::Escalation { field, permission }) => {
                assert_eq!(
                    (field.as_str(), permission.as_str()),
                    ("permissions[1]", "keys.update")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_scoped_root_key_creates_keys_of_its_tenant_only() {
        let acme = principal(Some("acme"), &["*"]);
        for kind in [KeyKind::Api, KeyKind::Root] {
            assert!(acme.may_create(kind, Some("acme"), &grants(&["*"])).is_ok());
            for tenant in [None, Some("globex"), Some("ACME")] {
                assert!(
                    matches!(
                        acme.may_create(kind, tenant, &grants(&["*"])),
                        Err(EngineError::Invalid(e)) if e.field == "tenant"
                    ),
                    "{kind:?} {tenant:?}"
                );
            }
        }
        // An unscoped key may create keys of any tenant, or none.
        let all = principal(None, &["*"]);
        assert!(all.may_create(KeyKind::Root, None, &grants(&["*"])).is_ok());
        assert!(
            all.may_create(KeyKind::Root, Some("globex"), &grants(&["*"]))
                .is_ok()
        );
        assert!(matches!(
            acme.require_unscoped("x"),
            Err(EngineError::OutOfScope { .. })
        ));
        assert!(all.require_unscoped("x").is_ok());
    }

    #[test]
    fn a_scope_admits_its_own_tenant_only() {
        assert!(Scope::All.admits(None));
        assert!(Scope::All.admits(Some("acme")));
        assert!(Scope::Tenant("acme").admits(Some("acme")));
        assert!(!Scope::Tenant("acme").admits(Some("globex")));
        assert!(!Scope::Tenant("acme").admits(None));
        // Tenants are compared exactly: no case folding, no prefixes.
        assert!(!Scope::Tenant("acme").admits(Some("ACME")));
        assert!(!Scope::Tenant("acme").admits(Some("acme2")));
        assert!(!Scope::Tenant("acme2").admits(Some("acme")));
    }
}
