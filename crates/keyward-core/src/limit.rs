//! Rate limits: GCRA (the generic cell rate algorithm) with an explicit burst and a cost per
//! request, checked all-or-nothing across every limit that applies to a request.
//!
//! A limit admits `limit` units per `period_seconds` with smooth refill: one unit becomes
//! available every `period / limit`. Up to `burst` units (default: `limit`) can be spent at once
//! from a full bucket. There is no window edge: unlike a fixed window, two adjacent windows
//! cannot together admit twice the limit in a burst; the most any stretch of time `t` can
//! admit is `burst + limit * t / period`.
//!
//! State per limit is one number, the theoretical arrival time (TAT), in nanoseconds since the
//! epoch. Everything here is pure: `now` is a parameter and the caller keeps the state.

use time::OffsetDateTime;

/// Longest period a limit may have: 366 days.
pub const MAX_PERIOD_SECONDS: u64 = 366 * 86_400;
/// Largest `limit` or `burst`.
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// Who shares a limit's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The key alone.
    Key,
    /// Every key of the same owner (one pool).
    Owner,
    /// Every key of the same tenant (one pool).
    Tenant,
}

impl LimitScope {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Owner => "owner",
            Self::Tenant => "tenant",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(Self::Key),
            "owner" => Some(Self::Owner),
            "tenant" => Some(Self::Tenant),
            _ => None,
        }
    }
}

/// How a limit is enforced when several nodes share it (through Redis). Without a shared
/// store both modes are the same node-local limit.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Every decision is made against the shared state: N nodes admit exactly the limit.
    #[default]
    Exact,
    /// Decided from this node's view of the shared state, reconciled in the background: no
    /// shared-store round trip per request, at the price of a bounded overshoot.
    LocalFirst,
}

impl LimitMode {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::LocalFirst => "local_first",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exact" => Some(Self::Exact),
            "local_first" => Some(Self::LocalFirst),
            _ => None,
        }
    }

    /// True for the default, [`LimitMode::Exact`] (it is not written out, so records stored
    /// before modes existed and records stored after are the same JSON).
    pub fn is_exact(&self) -> bool {
        *self == Self::Exact
    }
}

/// A named rate limit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    /// Name, unique per key, e.g. `per_second`.
    pub name: String,
    /// Units per period.
    pub limit: u64,
    /// Period length in seconds.
    pub period_seconds: u64,
    /// Units that can be spent at once from a full bucket (at least 1).
    pub burst: u64,
    /// Who shares the budget.
    pub scope: LimitScope,
    /// Exact or local-first enforcement across nodes; absent in stored JSON means exact.
    #[serde(default, skip_serializing_if = "LimitMode::is_exact")]
    pub mode: LimitMode,
}

impl RateLimit {
    /// Nanoseconds between two units becoming available.
    pub fn emission_interval(&self) -> i128 {
        i128::from(self.period_seconds) * 1_000_000_000 / i128::from(self.limit.max(1))
    }

    fn tolerance(&self) -> i128 {
        self.emission_interval() * i128::from(self.burst)
    }
}

/// The outcome of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Whether this limit admits the request.
    pub admitted: bool,
    /// Units left right after this decision (0 when refused).
    pub remaining: u64,
    /// Whole seconds until a request of the same cost would be admitted (0 if it would be now).
    pub reset_seconds: u64,
    /// The state to store if the request is admitted.
    pub new_tat: i128,
}

/// Nanoseconds since the epoch.
pub fn nanos(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos()
}

/// Whole seconds covering `nanos`, rounded up (0 for a past instant): a client told to retry
/// after this many seconds is never early.
pub fn ceil_seconds(nanos: i128) -> u64 {
    if nanos <= 0 {
        0
    } else {
        u64::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

/// Evaluates one limit for a request of `cost` at `now`, given the stored `tat` (`None` for a
/// limit never used). Nothing changes until the caller stores `new_tat`.
pub fn check(limit: &RateLimit, tat: Option<i128>, cost: u64, now: OffsetDateTime) -> LimitStatus {
    let now = nanos(now);
    let interval = limit.emission_interval();
    let tolerance = limit.tolerance();
    let tat = tat.unwrap_or(now).max(now);
    let increment = interval * i128::from(cost);
    let new_tat = tat + increment;
    let allow_at = new_tat - tolerance;
    let remaining_after = |tat_after: i128| -> u64 {
        let free = now + tolerance - tat_after;
        if free <= 0 || interval <= 0 {
            0
        } else {
            u64::try_from(free / interval)
                .unwrap_or(u64::MAX)
                .min(limit.burst)
        }
    };
    if cost > limit.burst || now < allow_at {
        // Refused: a request of this cost fits once the bucket has drained to allow it.
        let reset = if cost > limit.burst {
            limit.period_seconds
        } else {
            ceil_seconds(allow_at - now)
        };
        LimitStatus {
            admitted: false,
            remaining: remaining_after(tat),
            reset_seconds: reset,
            new_tat: tat,
        }
    } else {
        let next_allow_at = new_tat + increment - tolerance;
        LimitStatus {
            admitted: true,
            remaining: remaining_after(new_tat),
            reset_seconds: ceil_seconds(next_allow_at - now),
            new_tat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_testkit::T0;
    use time::Duration;

    fn limit(limit: u64, period_seconds: u64, burst: u64) -> RateLimit {
        RateLimit {
            name: "l".into(),
            limit,
            period_seconds,
            burst,
            scope: LimitScope::Key,
            mode: LimitMode::Exact,
        }
    }

    #[test]
    fn the_mode_defaults_to_exact_and_exact_is_not_written() {
        // A limit stored before modes existed reads as exact.
        let old = r#"{"name":"l","limit":10,"period_seconds":1,"burst":10,"scope":"key"}"#;
        let parsed: RateLimit = serde_json::from_str(old).unwrap();
        assert_eq!(parsed.mode, LimitMode::Exact);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), old);
        let local = RateLimit {
            mode: LimitMode::LocalFirst,
            ..parsed
        };
        let text = serde_json::to_string(&local).unwrap();
        assert!(text.ends_with(r#","mode":"local_first"}"#), "{text}");
        assert_eq!(serde_json::from_str::<RateLimit>(&text).unwrap(), local);
    }

    /// Runs `n` requests of `cost` at `now`, storing state as a caller would; counts admissions.
    fn run(
        l: &RateLimit,
        tat: &mut Option<i128>,
        n: usize,
        cost: u64,
        now: OffsetDateTime,
    ) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            let s = check(l, *tat, cost, now);
            if s.admitted {
                *tat = Some(s.new_tat);
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn a_full_bucket_admits_exactly_the_burst() {
        let l = limit(10, 1, 10);
        let mut tat = None;
        assert_eq!(run(&l, &mut tat, 100, 1, T0), 10);
        let refused = check(&l, tat, 1, T0);
        assert!(!refused.admitted);
        assert_eq!(refused.remaining, 0);
        assert_eq!(
            refused.reset_seconds, 1,
            "100 ms rounds up to a whole second"
        );
    }

    #[test]
    fn refill_is_smooth_not_windowed() {
        let l = limit(10, 1, 10);
        let mut tat = None;
        assert_eq!(run(&l, &mut tat, 10, 1, T0), 10);
        // One unit every 100 ms, not ten at the next window edge.
        assert_eq!(
            run(&l, &mut tat, 10, 1, T0 + Duration::milliseconds(100)),
            1
        );
        assert_eq!(
            run(&l, &mut tat, 10, 1, T0 + Duration::milliseconds(150)),
            0
        );
        assert_eq!(
            run(&l, &mut tat, 10, 1, T0 + Duration::milliseconds(500)),
            4
        );
        // Over any stretch t the total is at most burst + limit * t / period.
        let mut tat = None;
        let mut total = 0;
        for ms in (0..=1000).step_by(10) {
            total += run(&l, &mut tat, 5, 1, T0 + Duration::milliseconds(ms));
        }
        assert_eq!(total, 10 + 10);
    }

    #[test]
    fn burst_can_exceed_the_steady_rate() {
        let l = limit(50, 1, 100);
        let mut tat = None;
        assert_eq!(run(&l, &mut tat, 500, 1, T0), 100);
        assert_eq!(run(&l, &mut tat, 500, 1, T0 + Duration::seconds(1)), 50);
    }

    #[test]
    fn cost_counts_and_a_refusal_consumes_nothing() {
        let l = limit(10, 1, 10);
        let s = check(&l, None, 7, T0);
        assert!(s.admitted);
        assert_eq!(s.remaining, 3);
        let refused = check(&l, Some(s.new_tat), 4, T0);
        assert!(!refused.admitted);
        assert_eq!(refused.new_tat, s.new_tat);
        assert!(check(&l, Some(s.new_tat), 3, T0).admitted);
        // A cost larger than the burst can never pass.
        let never = check(&l, None, 11, T0);
        assert!(!never.admitted);
        assert_eq!(never.reset_seconds, 1);
    }

    #[test]
    fn remaining_and_reset_on_admission() {
        let l = limit(100_000, 86_400, 100_000);
        let s = check(&l, None, 1, T0);
        assert_eq!(
            (s.admitted, s.remaining, s.reset_seconds),
            (true, 99_999, 0)
        );
        let tight = limit(1, 60, 1);
        let s = check(&tight, None, 1, T0);
        assert_eq!((s.admitted, s.remaining, s.reset_seconds), (true, 0, 60));
    }
}
