//! The audit log's events and hash chain.
//!
//! Every event carries the SHA-256 of the previous event (`prev_hash`) and its own `hash`,
//! computed over its sequence number, time, actor, action, target, summary and `prev_hash`.
//! Changing, removing or reordering any stored event breaks a link that [`ChainVerifier`]
//! reports. The first event links to [`GENESIS_HASH`].

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Kinds of audited actions. The names are stable and used as filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// An API key was created.
    KeyCreate,
    /// An API key's metadata changed.
    KeyUpdate,
    /// An API key got a new secret.
    KeyRotate,
    /// An API key was revoked.
    KeyRevoke,
    /// A root key was created.
    RootCreate,
    /// A root key was revoked.
    RootRevoke,
    /// A call to the admin API failed authentication.
    AuthFailed,
    /// A plan was created.
    PlanCreate,
    /// A plan changed.
    PlanUpdate,
    /// A plan was deleted.
    PlanDelete,
    /// A key's credit balance was set, increased or decreased.
    CreditsAdjust,
    /// Anomaly detection raised an alert (and says what it did about it).
    AnomalyDetected,
    /// The safety brake on automatic disables engaged: anomalies only alert for a while.
    AnomalyBrake,
}

impl AuditAction {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreate => "key.create",
            Self::KeyUpdate => "key.update",
            Self::KeyRotate => "key.rotate",
            Self::KeyRevoke => "key.revoke",
            Self::RootCreate => "root.create",
            Self::RootRevoke => "root.revoke",
            Self::AuthFailed => "auth.failed",
            Self::PlanCreate => "plan.create",
            Self::PlanUpdate => "plan.update",
            Self::PlanDelete => "plan.delete",
            Self::CreditsAdjust => "credits.adjust",
            Self::AnomalyDetected => "anomaly.detected",
            Self::AnomalyBrake => "anomaly.brake",
        }
    }

    /// Every action.
    pub const ALL: [AuditAction; 13] = [
        Self::KeyCreate,
        Self::KeyUpdate,
        Self::KeyRotate,
        Self::KeyRevoke,
        Self::RootCreate,
        Self::RootRevoke,
        Self::AuthFailed,
        Self::PlanCreate,
        Self::PlanUpdate,
        Self::PlanDelete,
        Self::CreditsAdjust,
        Self::AnomalyDetected,
        Self::AnomalyBrake,
    ];

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An event before the store gives it a sequence number and links it into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// When it happened.
    pub time: OffsetDateTime,
    /// key_id of the root key that acted, if known.
    pub actor: Option<String>,
    /// What happened.
    pub action: AuditAction,
    /// key_id of the key acted on, if any.
    pub target: Option<String>,
    /// Before/after summary; never a secret or a hash.
    pub summary: Value,
}

/// A stored, chained event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When it happened, at millisecond precision.
    pub time: OffsetDateTime,
    /// key_id of the acting root key.
    pub actor: Option<String>,
    /// Stable action name.
    pub action: String,
    /// key_id acted on.
    pub target: Option<String>,
    /// Before/after summary, parsed from `summary_json` (`null` if that text is not JSON).
    pub summary: Value,
    /// The summary exactly as stored; the hash covers this text, so verification never
    /// depends on re-serializing parsed JSON (floats, key order).
    pub summary_json: String,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// Hash of this event.
    pub hash: String,
}

/// Milliseconds since the epoch, the precision the log keeps.
pub fn unix_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Computes an event's hash from its fields.
pub fn event_hash(
    seq: i64,
    time: OffsetDateTime,
    actor: Option<&str>,
    action: &str,
    target: Option<&str>,
    summary_json: &str,
    prev_hash: &str,
) -> String {
    // A JSON array is an unambiguous encoding of the fields: no field can bleed into the next.
    let canonical = json!([
        seq,
        unix_millis(time),
        actor,
        action,
        target,
        summary_json,
        prev_hash
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

impl AuditDraft {
    /// Links the draft after an event with `prev_hash` at position `seq`.
    pub fn into_event(self, seq: i64, prev_hash: &str) -> AuditEvent {
        let time = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(unix_millis(self.time)) * 1_000_000,
        )
        .unwrap_or(self.time);
        let summary_json = self.summary.to_string();
        let hash = event_hash(
            seq,
            time,
            self.actor.as_deref(),
            self.action.as_str(),
            self.target.as_deref(),
            &summary_json,
            prev_hash,
        );
        AuditEvent {
            seq,
            time,
            actor: self.actor,
            action: self.action.as_str().to_owned(),
            target: self.target,
            summary: self.summary,
            summary_json,
            prev_hash: prev_hash.to_owned(),
            hash,
        }
    }
}

/// The first broken link found in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the event where the chain breaks.
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

/// Walks events in sequence order and finds the first broken link.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    expected_prev: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            expected_prev: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next event.
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let broken = |reason: String| BrokenLink {
            seq: event.seq,
            reason,
        };
        if event.seq != self.expected_seq {
            return Err(broken(format!(
                "expected event {} but found event {} (an event is missing or out of order)",
                self.expected_seq, event.seq
            )));
        }
        if event.prev_hash != self.expected_prev {
            return Err(broken(
                "prev_hash does not match the previous event's hash".to_owned(),
            ));
        }
        let recomputed = event_hash(
            event.seq,
            event.time,
            event.actor.as_deref(),
            &event.action,
            event.target.as_deref(),
            &event.summary_json,
            &event.prev_hash,
        );
        if recomputed != event.hash {
            return Err(broken(
                "the event's content does not match its hash (it was altered)".to_owned(),
            ));
        }
        self.expected_seq += 1;
        self.expected_prev.clone_from(&event.hash);
        self.checked += 1;
        Ok(())
    }

    /// Number of events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Sequence number and hash of the last event that checked out (0 and [`GENESIS_HASH`]
    /// before any). A chain cannot show that events were cut off its end: record the head
    /// somewhere else now and then, and compare.
    pub fn head(&self) -> (i64, &str) {
        (self.expected_seq - 1, &self.expected_prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let event = AuditDraft {
                    time: datetime!(2026-01-01 00:00:00.123456 UTC),
                    actor: Some("key_root".into()),
                    action: AuditAction::KeyCreate,
                    target: Some(format!("key_{seq}")),
                    summary: json!({"owner": "team", "n": seq}),
                }
                .into_event(seq, &prev);
                prev.clone_from(&event.hash);
                event
            })
            .collect()
    }

    fn first_break(events: &[AuditEvent]) -> Option<BrokenLink> {
        let mut v = ChainVerifier::default();
        events.iter().find_map(|e| v.check(e).err())
    }

    #[test]
    fn intact_chain_verifies() {
        let events = chain(5);
        assert_eq!(events[0].prev_hash, GENESIS_HASH);
        assert_eq!(events[0].time, datetime!(2026-01-01 00:00:00.123 UTC));
        assert_eq!(first_break(&events), None);
    }

    #[test]
    fn altered_event_is_reported() {
        let mut events = chain(5);
        events[2].summary_json = json!({"owner": "mallory", "n": 3}).to_string();
        assert_eq!(first_break(&events).unwrap().seq, 3);
    }

    #[test]
    fn rehashed_event_breaks_the_next_link() {
        let mut events = chain(5);
        events[2].actor = Some("key_mallory".into());
        let e = &events[2];
        events[2].hash = event_hash(
            e.seq,
            e.time,
            e.actor.as_deref(),
            &e.action,
            e.target.as_deref(),
            &e.summary_json,
            &e.prev_hash,
        );
        let broken = first_break(&events).unwrap();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("prev_hash"));
    }

    #[test]
    fn missing_event_is_reported() {
        let mut events = chain(5);
        events.remove(1);
        let broken = first_break(&events).unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("missing"));
    }

    #[test]
    fn actions_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::parse("key.delete"), None);
    }
}

/// The fields that differ between two summaries, as `{"before": {..}, "after": {..}}`.
pub fn summary_diff(before: &Value, after: &Value) -> Value {
    let (mut old, mut new) = (serde_json::Map::new(), serde_json::Map::new());
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (field, value) in a {
            let previous = b.get(field).unwrap_or(&Value::Null);
            if previous != value {
                old.insert(field.clone(), previous.clone());
                new.insert(field.clone(), value.clone());
            }
        }
    }
    json!({"before": old, "after": new})
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    #[test]
    fn diff_lists_only_changed_fields() {
        let before = json!({"name": "a", "enabled": true, "tags": ["x"]});
        let after = json!({"name": "b", "enabled": true, "tags": ["x", "y"]});
        assert_eq!(
            summary_diff(&before, &after),
            json!({"before": {"name": "a", "tags": ["x"]}, "after": {"name": "b", "tags": ["x", "y"]}})
        );
    }
}

#[cfg(test)]
mod stored_text_tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_hash_covers_the_stored_text_not_a_reserialization() {
        // A float with 17 significant digits need not survive parse-then-print exactly; the
        // chain must not depend on it.
        let draft = AuditDraft {
            time: datetime!(2026-01-01 00:00 UTC),
            actor: None,
            action: AuditAction::KeyCreate,
            target: None,
            summary: json!({"meta": {"ratio": 0.30000000000000004, "big": 1.7976931348623157e308}}),
        };
        let event = draft.into_event(1, GENESIS_HASH);
        let mut reread = event.clone();
        reread.summary = Value::Null;
        assert!(ChainVerifier::default().check(&reread).is_ok());
        reread.summary_json.push(' ');
        assert!(ChainVerifier::default().check(&reread).is_err());
    }
}
