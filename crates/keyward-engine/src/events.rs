//! Events for operators' systems (webhooks and the like): what happened to which key, never a
//! secret. The engine publishes them on a bounded broadcast channel; a slow or absent
//! subscriber never blocks a publisher (it misses the oldest events and is told how many).

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

/// Capacity of the broadcast channel: events a lagging subscriber may fall behind by.
pub const EVENT_BUFFER: usize = 4096;

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
