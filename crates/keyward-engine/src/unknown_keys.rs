//! The per-address budget of store reads for keys this node does not know (issue 10,
//! finding 5).
//!
//! A well-formed key costs nothing to mint (its checksum is public), and a key a node has not
//! cached is a store read. Without a bound, one client can turn random keys into as many store
//! reads as it can send. So each caller address (grouped as in [`crate::address_table`]: an
//! IPv6 /64 is one caller) has a token bucket of [`UnknownKeyBudget::per_minute`] tokens a
//! minute, holding at most [`UnknownKeyBudget::burst`]:
//!
//! - a verification of a key the cache does not hold (or holds only as unknown) may read the
//!   store only while the caller's bucket holds a whole token; otherwise it is refused at
//!   once, without a store read, with
//!   [`EngineError::TooManyUnknownKeys`](crate::EngineError::TooManyUnknownKeys) and the
//!   seconds until a token is back (HTTP: 429 `too_many_unknown_keys` with `Retry-After`);
//! - a read that finds no key takes a token; a read that finds one takes none, so only
//!   addresses that present unknown keys run out (while one has, a valid key it presents for
//!   the first time waits too);
//! - refreshing a key the cache holds (past its freshness) is never refused: the node knows
//!   the key, and a flood cannot make up keys the node has cached.
//!
//! Concurrent misses from one caller all pass the check while a token is left and each take
//! one afterwards, so a bucket can go into debt, down to `-burst`, which the caller pays back
//! before it reads again.
//!
//! Why 429 and not 401 NOT_FOUND: the refused key was not looked up, so it may be a valid key
//! this node had not cached yet; telling its holder that the key is unknown would be false,
//! and a client may act on it (discard the key, page someone). 429 says what happened.
//!
//! A tenant-scoped caller names the address itself, so for it the rule is stricter
//! (`Keyward::verify_scoped_budgeted`): every `NOT_FOUND` answer takes a token and only a key
//! of its own tenant that the node has cached skips the check, so that a key of another tenant
//! costs exactly what a key never issued does.
//!
//! Verifications without a caller address (`POST /v1/keys/verify` without `ip`, made by a
//! holder of a `keys.verify` root key) are not limited. This budget costs nothing on cache
//! hits: it is consulted only on the store-miss path.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::address_table::{AddressTable, Entry};

/// The budget of store reads for unknown keys per caller address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownKeyBudget {
    /// Tokens added per minute (one token is one store read that found no key); 0 turns the
    /// budget off.
    pub per_minute: u32,
    /// Most tokens a caller can hold (the burst of unknown keys it may present at once).
    pub burst: u32,
    /// Caller addresses remembered at most.
    pub max_addresses: usize,
}

impl Default for UnknownKeyBudget {
    fn default() -> Self {
        Self {
            per_minute: 60,
            burst: 60,
            max_addresses: 100_000,
        }
    }
}

/// One caller's bucket.
struct Bucket {
    tokens: f64,
    updated: OffsetDateTime,
}

impl Bucket {
    fn refilled(&self, now: OffsetDateTime, config: &UnknownKeyBudget) -> f64 {
        let elapsed = (now - self.updated).as_seconds_f64().max(0.0);
        (self.tokens + elapsed * f64::from(config.per_minute) / 60.0).min(f64::from(config.burst))
    }
}

/// The per-address buckets; see the module docs.
pub(crate) struct UnknownKeys {
    config: UnknownKeyBudget,
    table: AddressTable<BucketEntry>,
}

/// A bucket with the settings it refills by, so the table can tell a full one.
struct BucketEntry {
    bucket: Bucket,
    config: UnknownKeyBudget,
}

impl Entry for BucketEntry {
    fn last_seen(&self) -> OffsetDateTime {
        self.bucket.updated
    }
    fn settled(&self, now: OffsetDateTime) -> bool {
        self.bucket.refilled(now, &self.config) >= f64::from(self.config.burst)
    }
}

impl UnknownKeys {
    pub(crate) fn new(config: UnknownKeyBudget) -> Self {
        Self {
            config,
            table: AddressTable::new(config.max_addresses),
        }
    }

    fn off(&self, ip: Option<IpAddr>) -> bool {
        ip.is_none() || self.config.per_minute == 0 || self.config.burst == 0
    }

    /// `Ok` if the caller may read the store for a key not in the cache; otherwise the whole
    /// seconds until it may.
    pub(crate) fn check(&self, ip: Option<IpAddr>, now: OffsetDateTime) -> Result<(), u64> {
        if self.off(ip) {
            return Ok(());
        }
        let tokens = self
            .table
            .peek(ip, |e| e.bucket.refilled(now, &self.config))
            .unwrap_or(f64::from(self.config.burst));
        if tokens >= 1.0 {
            return Ok(());
        }
        let seconds = (1.0 - tokens) * 60.0 / f64::from(self.config.per_minute);
        Err((seconds.ceil() as u64).max(1))
    }

    /// Takes a token for a store read that found no key.
    pub(crate) fn charge(&self, ip: Option<IpAddr>, now: OffsetDateTime) {
        if self.off(ip) {
            return;
        }
        let config = self.config;
        self.table.with(
            ip,
            now,
            || BucketEntry {
                bucket: Bucket {
                    tokens: f64::from(config.burst),
                    updated: now,
                },
                config,
            },
            |e| {
                let tokens = e.bucket.refilled(now, &config);
                e.bucket.tokens = (tokens - 1.0).max(-f64::from(config.burst));
                e.bucket.updated = now.max(e.bucket.updated);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    use keyward_testkit::T0;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn budget(per_minute: u32, burst: u32) -> UnknownKeys {
        UnknownKeys::new(UnknownKeyBudget {
            per_minute,
            burst,
            max_addresses: 1000,
        })
    }

    #[test]
    fn a_caller_gets_its_burst_then_the_rate() {
        let b = budget(60, 5);
        let caller = ip("192.0.2.7");
        for _ in 0..5 {
            assert_eq!(b.check(caller, T0), Ok(()));
            b.charge(caller, T0);
        }
        assert_eq!(b.check(caller, T0), Err(1));
        // Another caller, and callers without an address, are not affected.
        assert_eq!(b.check(ip("192.0.2.8"), T0), Ok(()));
        assert_eq!(b.check(None, T0), Ok(()));
        // One token a second comes back.
        let later = T0 + Duration::seconds(1);
        assert_eq!(b.check(caller, later), Ok(()));
        b.charge(caller, later);
        assert_eq!(b.check(caller, later), Err(1));
    }

    #[test]
    fn concurrent_misses_leave_a_debt_that_is_paid_back() {
        let b = budget(60, 5);
        let caller = ip("2001:db8::1");
        // Ten misses passed the check together and all found nothing.
        for _ in 0..10 {
            b.charge(caller, T0);
        }
        // -5 tokens: six seconds until one is whole again.
        assert_eq!(b.check(caller, T0), Err(6));
        // Another address of the same /64 is the same caller.
        assert_eq!(b.check(ip("2001:db8::ffff"), T0), Err(6));
        assert_eq!(b.check(caller, T0 + Duration::seconds(6)), Ok(()));
    }

    #[test]
    fn a_zero_rate_turns_the_budget_off() {
        let b = budget(0, 5);
        for _ in 0..100 {
            b.charge(ip("192.0.2.7"), T0);
        }
        assert_eq!(b.check(ip("192.0.2.7"), T0), Ok(()));
    }
}
