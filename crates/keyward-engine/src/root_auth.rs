//! Root keys: which permissions one may hold, and what happens when an admin call presents
//! one that does not pass ([`RootAuth::refuse`]). The check itself is a verification of the
//! presented key as a root key (`Keyward::authenticate`).
//!
//! Which failed admin authentications are written to the audit log (issue 10, finding 10):
//!
//! - A failure that **names an existing root key** (revoked, expired, disabled, or lacking the
//!   permission the call needs) is always audited, with that key_id as the actor. Its caller
//!   holds a real credential, and an escalation attempt (a `keys.read` key trying
//!   `keys.create`) must leave a row however much else is failing at the same time.
//! - **Anonymous** failures (no credential, a malformed or unknown one, an API key presented
//!   as a root key) cost nothing to send, so they are capped: at most
//!   [`ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE`] per caller address (grouped and bounded
//!   as in [`crate::address_table`]: an IPv6 /64 is one caller) and
//!   [`AUTH_FAILURE_EVENTS_PER_MINUTE`] in all, so one flooding address cannot use up what
//!   the others get and a flood from many cannot fill the disk. A suppressed failure is still
//!   logged (warn) and counted; the count is written with the next anonymous event
//!   (`suppressed_before`).
//!
//! The windows are fixed minutes of the injected clock.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use keyward_core::audit::{AuditAction, AuditDraft};
use keyward_core::clock::Clock;
use keyward_core::permission::Permission;
use keyward_core::validate::{self, FieldError};
use keyward_core::verify::VerifyCode;
use keyward_store::KeyStore;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::address_table::{AddressTable, Entry};
use crate::clock::write_time;
use crate::error::{AuthError, EngineError};

/// Permissions a root key may hold.
pub const ROOT_PERMISSIONS: [&str; 10] = [
    "keys.create",
    "keys.read",
    "keys.update",
    "keys.revoke",
    "keys.verify",
    "audit.read",
    "root.manage",
    "plans.read",
    "plans.write",
    "usage.read",
];

/// The permissions of a new root key: valid, each granting some root permission, at least one.
pub(crate) fn root_permissions(values: &[String]) -> Result<Vec<Permission>, FieldError> {
    let permissions = validate::permissions(values)?;
    for (i, p) in permissions.iter().enumerate() {
        let known = ROOT_PERMISSIONS.iter().any(|r| p.grants(r));
        if !known {
            return Err(FieldError::new(
                format!("permissions[{i}]"),
                format!(
                    "{p} grants none of the root permissions ({})",
                    ROOT_PERMISSIONS.join(", ")
                ),
            ));
        }
    }
    if permissions.is_empty() {
        return Err(FieldError::new(
            "permissions",
            "a root key needs at least one permission",
        ));
    }
    Ok(permissions)
}

/// Most anonymous failed admin authentications written to the audit log per minute, in all.
pub const AUTH_FAILURE_EVENTS_PER_MINUTE: u32 = 60;
/// Most anonymous failed admin authentications written per minute for one caller address.
pub const ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: u32 = 10;
/// Caller addresses whose anonymous failures are counted at most.
const TRACKED_ADDRESSES: usize = 10_000;

const WINDOW: Duration = Duration::minutes(1);

/// One fixed minute's count.
struct Window {
    start: OffsetDateTime,
    written: u32,
}

impl Window {
    fn new(now: OffsetDateTime) -> Self {
        Self {
            start: now,
            written: 0,
        }
    }

    /// Starts a new window if this one is over; true if one more may be written in it.
    fn has_room(&mut self, now: OffsetDateTime, cap: u32) -> bool {
        if now - self.start >= WINDOW {
            self.start = now;
            self.written = 0;
        }
        self.written < cap
    }
}

impl Entry for Window {
    fn last_seen(&self) -> OffsetDateTime {
        self.start
    }
    fn settled(&self, now: OffsetDateTime) -> bool {
        now - self.start >= WINDOW
    }
}

struct Total {
    window: Window,
    suppressed: u64,
}

/// The budgets of anonymous failure events; see the module docs.
pub(crate) struct FailureAudit {
    total: Mutex<Total>,
    per_address: AddressTable<Window>,
}

impl FailureAudit {
    pub(crate) fn new(now: OffsetDateTime) -> Self {
        Self {
            total: Mutex::new(Total {
                window: Window::new(now),
                suppressed: 0,
            }),
            per_address: AddressTable::new(TRACKED_ADDRESSES),
        }
    }

    /// For an anonymous failure from `remote`: `Some(suppressed since the last written one)`
    /// if it is written, `None` if it is suppressed (and counted).
    fn admit_anonymous(&self, remote: Option<IpAddr>, now: OffsetDateTime) -> Option<u64> {
        self.per_address.with(
            remote,
            now,
            || Window::new(now),
            |own| {
                let mut total = self.total.lock().unwrap_or_else(|e| e.into_inner());
                let room = own.has_room(now, ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE)
                    && total.window.has_room(now, AUTH_FAILURE_EVENTS_PER_MINUTE);
                if !room {
                    total.suppressed += 1;
                    return None;
                }
                own.written += 1;
                total.window.written += 1;
                Some(std::mem::take(&mut total.suppressed))
            },
        )
    }
}

/// Refused admin calls: their log line and audit event; see the module docs.
pub(crate) struct RootAuth {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// Budgets of the `auth.failed` events of anonymous failures.
    failures: FailureAudit,
}

impl RootAuth {
    pub(crate) fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>) -> Self {
        let failures = FailureAudit::new(clock.now());
        Self {
            store,
            clock,
            failures,
        }
    }

    /// Refuses an admin call needing `permission`: `reason` is the verification's code (or
    /// `MISSING`), `actor` the key_id of the root key presented, when one was found. Logs and
    /// audits the failure (see the module docs) and returns the refusal: 403 for a valid root
    /// key lacking the permission, 401 otherwise.
    pub(crate) async fn refuse(
        &self,
        reason: &'static str,
        actor: Option<String>,
        permission: &'static str,
        remote: Option<IpAddr>,
    ) -> AuthError {
        tracing::info!(
            key_id = actor.as_deref(),
            reason,
            permission,
            "root key refused"
        );
        let forbidden = reason == VerifyCode::InsufficientPermissions.as_str();
        if let Err(e) = self.audit_failure(reason, actor, permission, remote).await {
            return e.into();
        }
        if forbidden {
            AuthError::Forbidden { permission }
        } else {
            AuthError::Unauthenticated
        }
    }

    /// Writes the `auth.failed` event of a refused admin call, if its budget allows (see the
    /// module docs); `actor` is the key_id of the root key presented, when one was found.
    async fn audit_failure(
        &self,
        reason: &str,
        actor: Option<String>,
        permission: &str,
        remote: Option<IpAddr>,
    ) -> Result<(), EngineError> {
        let now = write_time(self.clock.as_ref());
        let suppressed = match &actor {
            Some(_) => 0,
            None => match self.failures.admit_anonymous(remote, now) {
                Some(suppressed) => suppressed,
                None => {
                    tracing::warn!(
                        reason,
                        permission,
                        "failed admin authentication (audit event suppressed by the rate cap)"
                    );
                    return Ok(());
                }
            },
        };
        tracing::warn!(
            reason,
            permission,
            actor = actor.as_deref(),
            "failed admin authentication"
        );
        self.store
            .append_audit(AuditDraft {
                time: now,
                actor,
                action: AuditAction::AuthFailed,
                target: None,
                summary: json!({
                    "reason": reason,
                    "permission": permission,
                    "remote_addr": remote.map(|ip| ip.to_string()),
                    "suppressed_before": suppressed,
                }),
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture::{fixture, fixture_with};
    use crate::{EngineConfig, Keyward};
    use keyward_core::audit::AuditEvent;
    use keyward_core::record::KeyKind;
    use keyward_store::Page;

    use keyward_testkit::T0;

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn one_address_cannot_use_up_the_others_budget() {
        let audit = FailureAudit::new(T0);
        let per = ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE as usize;
        let written = (0..1000)
            .filter(|_| audit.admit_anonymous(ip(1), T0).is_some())
            .count();
        assert_eq!(written, per);
        assert_eq!(audit.admit_anonymous(ip(2), T0), Some(1000 - per as u64));
        // Next minute, the flooding address gets its share again.
        let next = T0 + WINDOW;
        assert_eq!(audit.admit_anonymous(ip(1), next), Some(0));
    }

    #[test]
    fn many_addresses_together_stay_within_the_total() {
        let audit = FailureAudit::new(T0);
        let written = (0..10_000)
            .filter(|n| audit.admit_anonymous(ip(*n), T0).is_some())
            .count();
        assert_eq!(written, AUTH_FAILURE_EVENTS_PER_MINUTE as usize);
    }

    async fn failures(engine: &Keyward) -> Vec<AuditEvent> {
        engine
            .list_audit(None, Some("auth.failed".into()), Some(1000), None)
            .await
            .unwrap()
            .items
    }

    #[tokio::test]
    async fn finding_10_an_escalation_attempt_is_audited_under_a_flood_of_anonymous_failures() {
        let f = fixture_with(EngineConfig::default()).await;
        let reader = f.create_root(&["keys.read"]).await;
        let retired = f.create_root(&["keys.read"]).await;
        f.engine
            .revoke_key(&f.root, KeyKind::Root, &retired.record.key_id, "left")
            .await
            .unwrap();
        // A flood of anonymous failures from one address, then from many: both caps fill.
        for _ in 0..1000 {
            let _ = f
                .engine
                .authenticate(Some("junk"), "keys.read", ip(7))
                .await;
        }
        for n in 0..1000 {
            let _ = f.engine.authenticate(None, "keys.read", ip(100 + n)).await;
        }
        let anonymous = failures(&f.engine).await.len();
        assert_eq!(anonymous, AUTH_FAILURE_EVENTS_PER_MINUTE as usize);

        // In the same minute, a real keys.read key tries keys.create, and a revoked root key
        // is presented: both are audited, naming the key.
        let refused = f
            .engine
            .authenticate(Some(reader.key.expose()), "keys.create", ip(7))
            .await;
        assert!(
            matches!(refused, Err(AuthError::Forbidden { .. })),
            "{refused:?}"
        );
        let refused = f
            .engine
            .authenticate(Some(retired.key.expose()), "keys.read", ip(7))
            .await;
        assert!(
            matches!(refused, Err(AuthError::Unauthenticated)),
            "{refused:?}"
        );
        let events = failures(&f.engine).await;
        let named: Vec<_> = events[anonymous..]
            .iter()
            .map(|e| {
                (
                    e.actor.clone().unwrap_or_default(),
                    e.summary["reason"].as_str().unwrap_or_default().to_owned(),
                    e.summary["permission"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                (
                    reader.record.key_id.clone(),
                    "INSUFFICIENT_PERMISSIONS".to_owned(),
                    "keys.create".to_owned()
                ),
                (
                    retired.record.key_id.clone(),
                    "REVOKED".to_owned(),
                    "keys.read".to_owned()
                ),
            ]
        );
        assert_eq!(events[anonymous].summary["remote_addr"], "0.0.0.7");
    }

    #[tokio::test]
    async fn finding_10_one_flooding_address_leaves_room_for_the_others() {
        let f = fixture_with(EngineConfig::default()).await;
        for _ in 0..1000 {
            let _ = f
                .engine
                .authenticate(Some("junk"), "keys.read", ip(7))
                .await;
        }
        let _ = f
            .engine
            .authenticate(Some("junk"), "keys.read", ip(8))
            .await;
        let events = failures(&f.engine).await;
        let per = ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE as usize;
        assert_eq!(events.len(), per + 1);
        let last = &events[per];
        assert_eq!(last.summary["remote_addr"], "0.0.0.8");
        assert_eq!(last.summary["suppressed_before"], 1000 - per);
    }

    #[tokio::test]
    async fn root_keys_and_api_keys_do_not_mix() {
        let f = fixture().await;
        let api = f.create(&["*"]).await;
        // The root key does not verify as an API key, and an API key cannot administer keyward.
        assert_eq!(f.code(f.root_key.expose()).await, VerifyCode::NotFound);
        assert!(matches!(
            f.engine
                .authenticate(
                    Some(api.key.expose()),
                    "keys.read",
                    Some([127, 0, 0, 1].into())
                )
                .await,
            Err(AuthError::Unauthenticated)
        ));
        let principal = f
            .engine
            .authenticate(Some(f.root_key.expose()), "keys.read", None)
            .await
            .unwrap();
        assert_eq!(principal, f.root);

        let reader = f.create_root(&["keys.read"]).await;
        assert!(reader.key.expose().starts_with("kwroot_"));
        assert!(
            f.engine
                .authenticate(Some(reader.key.expose()), "keys.read", None)
                .await
                .is_ok()
        );
        assert!(matches!(
            f.engine
                .authenticate(Some(reader.key.expose()), "keys.create", None)
                .await,
            Err(AuthError::Forbidden {
                permission: "keys.create"
            })
        ));
        f.engine
            .revoke_key(
                &f.root,
                KeyKind::Root,
                &reader.record.key_id,
                "rotated staff",
            )
            .await
            .unwrap();
        assert!(matches!(
            f.engine
                .authenticate(Some(reader.key.expose()), "keys.read", None)
                .await,
            Err(AuthError::Unauthenticated)
        ));
        assert!(matches!(
            f.engine.authenticate(None, "keys.read", None).await,
            Err(AuthError::Unauthenticated)
        ));

        let failures = f
            .engine
            .list_audit(None, Some("auth.failed".into()), None, None)
            .await
            .unwrap();
        let reasons: Vec<_> = failures
            .items
            .iter()
            .map(|e| e.summary["reason"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            reasons,
            [
                "NOT_FOUND",
                "INSUFFICIENT_PERMISSIONS",
                "REVOKED",
                "MISSING"
            ]
        );
        assert_eq!(failures.items[0].summary["remote_addr"], "127.0.0.1");
        for event in &failures.items {
            assert!(!event.summary.to_string().contains(api.key.expose()));
            assert!(!event.summary.to_string().contains(reader.key.expose()));
        }
    }

    #[tokio::test]
    async fn failed_authentications_are_audited_at_a_bounded_rate() {
        let f = fixture().await;
        // Anonymous failures from many addresses: the total cap holds (one address alone is
        // capped lower, see root_auth.rs).
        for i in 0..(AUTH_FAILURE_EVENTS_PER_MINUTE + 10) {
            let from = std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let _ = f
                .engine
                .authenticate(Some("junk"), "keys.read", Some(from))
                .await;
        }
        let count = |page: Page<AuditEvent>| page.items.len();
        let audited = count(
            f.engine
                .list_audit(None, Some("auth.failed".into()), Some(1000), None)
                .await
                .unwrap(),
        );
        assert_eq!(audited, AUTH_FAILURE_EVENTS_PER_MINUTE as usize);
        f.clock.advance(Duration::minutes(1));
        let _ = f.engine.authenticate(Some("junk"), "keys.read", None).await;
        let page = f
            .engine
            .list_audit(None, Some("auth.failed".into()), Some(1000), None)
            .await
            .unwrap();
        let last = page.items.last().unwrap();
        assert_eq!(last.summary["suppressed_before"], 10);
    }
}
