//! Rotation: how a new secret changes the secrets a key already has.
//!
//! At most two secrets of a key verify at once. Rotating gives the key a new current secret;
//! the old current secret keeps verifying until `now + grace` (grace 0 ends it at once); a
//! secret that was still in an earlier grace period ends immediately, and the plan says so.

use time::{Duration, OffsetDateTime};

use crate::key::KeyHash;
use crate::record::SecretInfo;

/// A change to an existing secret's end time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEnd {
    /// Which secret.
    pub hash: KeyHash,
    /// Its public start, for the response and the audit log.
    pub start: String,
    /// When it stops verifying.
    pub expires_at: OffsetDateTime,
}

/// What a rotation does to a key's existing secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotationPlan {
    /// The previous current secret and the end of its grace period.
    pub previous: Option<SecretEnd>,
    /// Secrets that were still in an earlier grace period and end now.
    pub ended: Vec<SecretEnd>,
}

impl RotationPlan {
    /// All secret changes, for the store.
    pub fn changes(&self) -> impl Iterator<Item = &SecretEnd> {
        self.previous.iter().chain(self.ended.iter())
    }
}

/// Plans a rotation of a key whose secrets are `secrets`, at `now`, with `grace`.
pub fn plan_rotation(secrets: &[SecretInfo], grace: Duration, now: OffsetDateTime) -> RotationPlan {
    let mut plan = RotationPlan::default();
    for secret in secrets.iter().filter(|s| s.is_live(now)) {
        let change = |expires_at| SecretEnd {
            hash: secret.hash,
            start: secret.start.clone(),
            expires_at,
        };
        match secret.expires_at {
            None => plan.previous = Some(change(now + grace)),
            Some(_) => plan.ended.push(change(now)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::secret;
    use keyward_testkit::T0;

    #[test]
    fn first_rotation_deprecates_the_current_secret() {
        let plan = plan_rotation(&[secret(None)], Duration::hours(1), T0);
        assert_eq!(plan.previous.unwrap().expires_at, T0 + Duration::hours(1));
        assert!(plan.ended.is_empty());
    }

    #[test]
    fn zero_grace_ends_the_old_secret_now() {
        let plan = plan_rotation(&[secret(None)], Duration::ZERO, T0);
        assert_eq!(plan.previous.unwrap().expires_at, T0);
    }

    #[test]
    fn rotating_during_a_grace_period_ends_the_older_secret() {
        let mut older = secret(Some(T0 + Duration::minutes(30)));
        older.start = "kw_live_old1".into();
        let plan = plan_rotation(&[secret(None), older], Duration::hours(1), T0);
        assert_eq!(plan.ended.len(), 1);
        assert_eq!(plan.ended[0].start, "kw_live_old1");
        assert_eq!(plan.ended[0].expires_at, T0);
        assert_eq!(plan.changes().count(), 2);
    }

    #[test]
    fn secrets_already_ended_are_left_alone() {
        let plan = plan_rotation(&[secret(None), secret(Some(T0))], Duration::hours(1), T0);
        assert!(plan.ended.is_empty());
    }
}
