//! A bounded table of state per caller address, for budgets that must hold against a flood
//! from many addresses without growing without bound.
//!
//! **Grouping.** Addresses are grouped the way a caller obtains them: an IPv4 address is one
//! entry; an IPv6 address counts by its /64 prefix, because one subscriber is usually handed a
//! whole /64 and per-address entries would be free to multiply; an IPv4-mapped IPv6 address
//! is its IPv4 address. A request whose address is not known shares one entry.
//!
//! **Memory.** [`SHARDS`] independently locked shards hold at most `capacity / SHARDS` entries
//! each. A full shard first forgets the entries its owner calls settled (state that carries no
//! information, such as a full token bucket), then, if that is not enough, the least recently
//! seen half, so the work is amortised O(1) per insert and recently active callers keep their
//! state. Forgetting a caller gives it a fresh entry: a flood from more addresses than the
//! table holds can reset entries, which is the price of the bound.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use time::OffsetDateTime;

/// Independently locked shards of a table.
pub(crate) const SHARDS: usize = 16;

/// A caller, as the tables count them (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// An IPv4 address (or an IPv4-mapped IPv6 address).
    V4([u8; 4]),
    /// The /64 prefix of an IPv6 address.
    V6Prefix(u64),
    /// No address was known.
    Unknown,
}

impl Source {
    /// The entry `ip` counts against.
    pub(crate) fn of(ip: Option<IpAddr>) -> Self {
        match ip {
            None => Self::Unknown,
            Some(IpAddr::V4(v4)) => Self::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => Self::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// What a table needs to know about its entries to make room.
pub(crate) trait Entry {
    /// When the caller was last seen.
    fn last_seen(&self) -> OffsetDateTime;
    /// True if forgetting the entry loses nothing (a new entry would behave the same).
    fn settled(&self, now: OffsetDateTime) -> bool;
}

/// State of type `V` per caller, bounded in size; see the module docs.
pub(crate) struct AddressTable<V> {
    shards: Vec<Mutex<HashMap<Source, V>>>,
    per_shard: usize,
    hasher: std::hash::RandomState,
}

impl<V: Entry> AddressTable<V> {
    /// A table of at most about `capacity` entries (at least one per shard).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard(&self, source: &Source) -> std::sync::MutexGuard<'_, HashMap<Source, V>> {
        let i = (self.hasher.hash_one(source) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the caller's entry, if it has one.
    pub(crate) fn peek<R>(&self, ip: Option<IpAddr>, f: impl FnOnce(&V) -> R) -> Option<R> {
        let source = Source::of(ip);
        self.shard(&source).get(&source).map(f)
    }

    /// Runs `f` on the caller's entry, creating it with `new` (after making room) if absent.
    pub(crate) fn with<R>(
        &self,
        ip: Option<IpAddr>,
        now: OffsetDateTime,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let source = Source::of(ip);
        let mut shard = self.shard(&source);
        if !shard.contains_key(&source) {
            make_room(&mut shard, self.per_shard, now);
        }
        f(shard.entry(source).or_insert_with(new))
    }

    /// Entries held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

fn make_room<V: Entry>(map: &mut HashMap<Source, V>, cap: usize, now: OffsetDateTime) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| !v.settled(now));
    if map.len() < cap {
        return;
    }
    let mut times: Vec<OffsetDateTime> = map.values().map(Entry::last_seen).collect();
    // The lower median: at least half the entries go, and with two the newer stays.
    let middle = (times.len() - 1) / 2;
    let (_, median, _) = times.select_nth_unstable(middle);
    let median = *median;
    map.retain(|_, v| v.last_seen() > median);
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    use keyward_testkit::T0;

    struct Seen(OffsetDateTime, bool);

    impl Entry for Seen {
        fn last_seen(&self) -> OffsetDateTime {
            self.0
        }
        fn settled(&self, _now: OffsetDateTime) -> bool {
            self.1
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn addresses_are_grouped_as_callers_obtain_them() {
        let check = |a: &str, b: &str, same: bool| {
            assert_eq!(Source::of(ip(a)) == Source::of(ip(b)), same, "{a} {b}");
        };
        check("192.0.2.1", "192.0.2.1", true);
        check("192.0.2.1", "192.0.2.2", false);
        // One /64 is one caller, whatever its interface identifiers.
        check("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", true);
        check("2001:db8:1:2::1", "2001:db8:1:3::1", false);
        // A mapped IPv4 address is that IPv4 address, not a /64 shared by all of IPv4.
        check("::ffff:192.0.2.1", "192.0.2.1", true);
        check("::ffff:192.0.2.1", "::ffff:192.0.2.2", false);
        assert_eq!(Source::of(None), Source::Unknown);
    }

    #[test]
    fn a_flood_of_addresses_stays_within_the_bound_and_keeps_recent_callers() {
        let table = AddressTable::<Seen>::new(64);
        for i in 0..10_000u32 {
            let at = T0 + Duration::milliseconds(i64::from(i));
            let addr = IpAddr::from(i.to_be_bytes());
            table.with(Some(addr), at, || Seen(at, false), |_| ());
            assert!(table.len() <= 64, "{} entries", table.len());
        }
        let last = IpAddr::from(9_999u32.to_be_bytes());
        assert!(table.peek(Some(last), |_| ()).is_some());
    }

    #[test]
    fn settled_entries_are_forgotten_before_older_unsettled_ones() {
        let mut map = HashMap::new();
        let later = T0 + Duration::minutes(5);
        map.insert(Source::of(ip("192.0.2.1")), Seen(T0, false));
        map.insert(Source::of(ip("192.0.2.2")), Seen(later, true));
        make_room(&mut map, 2, later);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key(&Source::of(ip("192.0.2.1"))));
        // Nothing settled: the least recently seen half goes.
        map.insert(Source::of(ip("192.0.2.3")), Seen(later, false));
        make_room(&mut map, 2, later);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key(&Source::of(ip("192.0.2.3"))));
    }
}
