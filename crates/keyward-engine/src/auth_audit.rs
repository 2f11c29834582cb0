//! Which failed admin authentications are written to the audit log (issue 10, finding 10).
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
use std::sync::Mutex;

use keyward_core::audit::{AuditAction, AuditDraft};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::address_table::{AddressTable, Entry};
use crate::{EngineError, Keyward};

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

impl Keyward {
    /// Writes the `auth.failed` event of a refused admin call, if its budget allows (see the
    /// module docs); `actor` is the key_id of the root key presented, when one was found.
    pub(crate) async fn audit_auth_failure(
        &self,
        reason: &str,
        actor: Option<String>,
        permission: &str,
        remote: Option<IpAddr>,
    ) -> Result<(), EngineError> {
        let now = self.write_time();
        let suppressed = match &actor {
            Some(_) => 0,
            None => match self.auth_failures.admit_anonymous(remote, now) {
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
    use crate::tests::fixture_with;
    use crate::{AuthError, EngineConfig, NewKey};
    use keyward_core::audit::AuditEvent;
    use keyward_core::record::KeyKind;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

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
        let reader = f
            .engine
            .create_root_key(
                &f.root,
                NewKey {
                    owner: "ops".into(),
                    permissions: vec!["keys.read".into()],
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let retired = f
            .engine
            .create_root_key(
                &f.root,
                NewKey {
                    owner: "ops".into(),
                    permissions: vec!["keys.read".into()],
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
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
}
