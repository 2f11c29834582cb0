//! keyward's events for operators' systems (webhooks and the like): what happened to which
//! key, never a secret. An [`Event`] is the type the engine publishes on its event bus and,
//! through its serde attributes and [`Event::webhook_body`], the JSON a webhook receiver gets.
//! `webhook-bodies.jsonl`, committed in this crate's directory, holds that JSON for every
//! variant, and a test fails when either drifts from the other.
//!
//! The crate knows nothing of how events travel: the engine's broadcast channel and its size
//! are in `keyward-engine`, signing and delivery in `keyward-webhooks`.
//!
//! ```
//! use keyward_events::Event;
//! use time::OffsetDateTime;
//!
//! let event = Event::KeyRevoked {
//!     key_id: "key_x".into(),
//!     owner: "billing".into(),
//!     tenant: None,
//!     reason: "leaked".into(),
//!     at: OffsetDateTime::UNIX_EPOCH,
//! };
//! assert_eq!(
//!     String::from_utf8(event.webhook_body("evt_1")).unwrap(),
//!     r#"{"at":"1970-01-01T00:00:00Z","id":"evt_1","key_id":"key_x","owner":"billing","reason":"leaked","tenant":null,"type":"key_revoked"}"#
//! );
//! ```

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

/// Something operators may want pushed to them. Serialised as `{"type": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A key was revoked (by an operator, or by an automated response).
    KeyRevoked {
        /// The key.
        key_id: String,
        /// Its owner.
        owner: String,
        /// Its tenant.
        tenant: Option<String>,
        /// Why.
        reason: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A key expires soon.
    KeyExpiringSoon {
        /// The key.
        key_id: String,
        /// Its owner.
        owner: String,
        /// Its tenant.
        tenant: Option<String>,
        /// When it expires.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// A key is older than its rotation policy allows.
    RotationOverdue {
        /// The key.
        key_id: String,
        /// Its owner.
        owner: String,
        /// Its tenant.
        tenant: Option<String>,
        /// Days since its current secret was issued.
        age_days: u64,
        /// The policy's maximum age in days.
        max_age_days: u64,
    },
    /// Unusual traffic on a key or from an address.
    Anomaly {
        /// The key concerned, if one.
        key_id: Option<String>,
        /// The caller address concerned, if one.
        ip: Option<String>,
        /// What was detected (for example `rate_spike`, `new_ips`, `failure_burst`).
        kind: String,
        /// The figures behind the detection.
        detail: Value,
        /// What keyward did: `alert` or `disable`.
        action: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A key was disabled (reversibly), by an operator or an automated response.
    KeyDisabled {
        /// The key.
        key_id: String,
        /// Why.
        reason: String,
        /// True if keyward disabled it on its own.
        automatic: bool,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl Event {
    /// The event's type name, as in its JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyRevoked { .. } => "key_revoked",
            Self::KeyExpiringSoon { .. } => "key_expiring_soon",
            Self::RotationOverdue { .. } => "rotation_overdue",
            Self::Anomaly { .. } => "anomaly",
            Self::KeyDisabled { .. } => "key_disabled",
        }
    }

    /// The JSON body a webhook receiver gets: the event's own fields and `type`, plus an `id`
    /// that stays the same across retries so receivers can drop duplicates. Keys are in
    /// alphabetical order (a `serde_json` object).
    pub fn webhook_body(&self, id: &str) -> Vec<u8> {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("id".into(), Value::String(id.to_owned()));
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    /// One event of every variant, with fixed values: the lines of `webhook-bodies.jsonl`, in
    /// order. Optional fields are set in some and `null` in others.
    fn examples() -> Vec<Event> {
        vec![
            Event::KeyRevoked {
                key_id: "key_01JD3S5W9Q".into(),
                owner: "billing".into(),
                tenant: Some("acme".into()),
                reason: "leaked in a log".into(),
                at: datetime!(2026-12-07 04:15:30 UTC),
            },
            Event::KeyExpiringSoon {
                key_id: "key_01JD3S5W9Q".into(),
                owner: "billing".into(),
                tenant: None,
                expires_at: datetime!(2026-12-14 00:00:00 UTC),
            },
            Event::RotationOverdue {
                key_id: "key_01JD3S5W9Q".into(),
                owner: "billing".into(),
                tenant: Some("acme".into()),
                age_days: 97,
                max_age_days: 90,
            },
            Event::Anomaly {
                key_id: Some("key_01JD3S5W9Q".into()),
                ip: None,
                kind: "rate_spike".into(),
                detail: json!({
                    "rate_per_minute": 1200.0,
                    "baseline_per_minute": 40.5,
                    "factor": 10.0,
                }),
                action: "disable".into(),
                at: datetime!(2026-12-07 04:15:30.25 UTC),
            },
            Event::KeyDisabled {
                key_id: "key_01JD3S5W9Q".into(),
                reason: "anomaly: rate_spike".into(),
                automatic: true,
                at: datetime!(2026-12-07 04:15:30.25 UTC),
            },
        ]
    }

    #[test]
    fn every_variant_has_an_example_whose_type_is_its_kind() {
        let mut seen = [false; 5];
        for event in examples() {
            // Exhaustive on purpose: a new variant does not compile here until it has an
            // example, and so a line in the snapshot.
            let index = match event {
                Event::KeyRevoked { .. } => 0,
                Event::KeyExpiringSoon { .. } => 1,
                Event::RotationOverdue { .. } => 2,
                Event::Anomaly { .. } => 3,
                Event::KeyDisabled { .. } => 4,
            };
            seen[index] = true;
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], event.kind());
        }
        assert_eq!(seen, [true; 5]);
    }

    /// The wire shape webhook receivers parse: a change to a field's name, type, format or
    /// presence changes these bytes. Receivers cannot be asked first, so a diff here is a
    /// change to announce, not a snapshot to refresh quietly.
    #[test]
    fn webhook_bodies_match_the_committed_snapshot() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/webhook-bodies.jsonl");
        let mut generated = String::new();
        for (i, event) in examples().iter().enumerate() {
            let body = event.webhook_body(&format!("evt_{i}"));
            generated.push_str(std::str::from_utf8(&body).unwrap());
            generated.push('\n');
        }
        if std::env::var_os("KEYWARD_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed, generated,
            "webhook-bodies.jsonl is out of date; run `KEYWARD_BLESS=1 cargo test -p keyward-events` and commit it"
        );
    }

    #[test]
    fn events_serialise_with_their_type_and_no_secret_fields() {
        let event = Event::KeyRevoked {
            key_id: "key_x".into(),
            owner: "billing".into(),
            tenant: None,
            reason: "leaked".into(),
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.kind());
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["key_id"], "key_x");
    }
}
