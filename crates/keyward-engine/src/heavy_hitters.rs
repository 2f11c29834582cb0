//! The cardinality cap on per-key metric labels: which key_ids may appear as a `key_id` label
//! value, so a million keys cannot turn the scrape into a million series.
//!
//! [`KeyLabels`] hands out at most `top_n` label slots; every other key is counted under
//! [`OTHER`]. A key earns a slot only once a space-saving summary ([`SpaceSaving`], Metwally,
//! Agrawal and El Abbadi, "Efficient Computation of Frequent and Top-k Elements in Data
//! Streams", 2005) guarantees it has been seen at least `promote_after` times, so a burst of
//! one-off keys cannot take the slots before the keys that carry the traffic.
//!
//! A slot, once given, is kept for the life of the process: a Prometheus counter series must
//! not disappear while it is scraped (`rate()` would read its return as a reset), and the
//! exporter cannot delete a single series. The label values in a scrape are therefore at most
//! `top_n + 1` whatever the traffic; a restart ranks the keys afresh.

use std::collections::{BTreeSet, HashMap, HashSet};

/// The label value for every key without a slot of its own.
pub const OTHER: &str = "other";

/// A space-saving summary: at most `capacity` counters. A key not yet counted takes the place
/// of the smallest counter and inherits its count as its possible overestimate (`error`), so
/// `count - error` never exceeds the key's true frequency, and any key seen more than
/// `total / capacity` times is always present.
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    counts: HashMap<String, Counter>,
    /// `(count, key)`, smallest first: the counter a new key replaces.
    order: BTreeSet<(u64, String)>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    count: u64,
    error: u64,
}

impl SpaceSaving {
    /// A summary of at most `capacity` counters (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Counts one occurrence of `key`; returns the number of occurrences it is guaranteed to
    /// have had (its count less its possible overestimate).
    pub fn observe(&mut self, key: &str) -> u64 {
        if let Some(counter) = self.counts.get_mut(key) {
            self.order.remove(&(counter.count, key.to_owned()));
            counter.count += 1;
            self.order.insert((counter.count, key.to_owned()));
            return counter.count - counter.error;
        }
        let mut error = 0;
        if self.counts.len() >= self.capacity
            && let Some((smallest, evicted)) = self.order.pop_first()
        {
            self.counts.remove(&evicted);
            error = smallest;
        }
        let counter = Counter {
            count: error + 1,
            error,
        };
        self.counts.insert(key.to_owned(), counter);
        self.order.insert((counter.count, key.to_owned()));
        1
    }

    /// Counters held (at most the capacity).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True if nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Decides each key's label value: its key_id if it holds one of the `top_n` slots, else
/// [`OTHER`].
#[derive(Debug)]
pub struct KeyLabels {
    top_n: usize,
    promote_after: u64,
    summary: SpaceSaving,
    labelled: HashSet<String>,
}

impl KeyLabels {
    /// At most `top_n` keys get a label of their own, each after `promote_after` guaranteed
    /// requests. The summary keeps ten counters per slot, so a key must carry more than about
    /// a tenth of a slot's share of the unlabelled traffic to be sure of staying in it.
    pub fn new(top_n: usize, promote_after: u64) -> Self {
        Self {
            top_n,
            promote_after: promote_after.max(1),
            summary: SpaceSaving::new(top_n.saturating_mul(10).max(16)),
            labelled: HashSet::new(),
        }
    }

    /// Counts a request of `key_id` and returns true if it is counted under its own label
    /// (false: under [`OTHER`]).
    pub fn observe(&mut self, key_id: &str) -> bool {
        if self.labelled.contains(key_id) {
            return true;
        }
        if self.labelled.len() >= self.top_n {
            // No slot will ever be free again: counting would change nothing.
            return false;
        }
        if self.summary.observe(key_id) >= self.promote_after {
            self.labelled.insert(key_id.to_owned());
            return true;
        }
        false
    }

    /// True if `key_id` holds a slot (without counting a request).
    pub fn is_labelled(&self, key_id: &str) -> bool {
        self.labelled.contains(key_id)
    }

    /// Keys holding a slot.
    pub fn labelled(&self) -> usize {
        self.labelled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label<'a>(labels: &mut KeyLabels, key: &'a str) -> &'a str {
        if labels.observe(key) { key } else { OTHER }
    }

    #[test]
    fn a_million_distinct_keys_produce_at_most_n_plus_one_label_values() {
        let mut labels = KeyLabels::new(50, 3);
        let mut values = HashSet::new();
        for i in 0..1_000_000u32 {
            // Every key is seen a few times in a row, so many of them qualify for a slot.
            let key = format!("key_{i}");
            for _ in 0..4 {
                values.insert(label(&mut labels, &key).to_owned());
            }
        }
        assert_eq!(labels.labelled(), 50);
        assert_eq!(values.len(), 51, "50 keys and {OTHER}");
        assert!(values.contains(OTHER));
    }

    #[test]
    fn heavy_keys_win_their_slots_over_a_flood_of_one_off_keys() {
        let mut labels = KeyLabels::new(3, 20);
        for i in 0..200_000u32 {
            // Interleaved: three heavy keys, and a new key every request besides.
            for heavy in ["key_a", "key_b", "key_c"] {
                if i % 10 == 0 {
                    labels.observe(heavy);
                }
            }
            labels.observe(&format!("key_once_{i}"));
        }
        for heavy in ["key_a", "key_b", "key_c"] {
            assert!(labels.is_labelled(heavy), "{heavy}");
        }
        assert_eq!(labels.labelled(), 3);
    }

    #[test]
    fn a_key_is_labelled_after_its_threshold_and_stays_labelled() {
        let mut labels = KeyLabels::new(2, 3);
        assert!(!labels.observe("key_a"));
        assert!(!labels.observe("key_a"));
        assert!(labels.observe("key_a"));
        assert!(labels.observe("key_a"));
        for _ in 0..3 {
            labels.observe("key_b");
        }
        for _ in 0..10 {
            assert!(!labels.observe("key_c"), "the slots are taken");
        }
        assert!(labels.observe("key_a"));
    }

    #[test]
    fn space_saving_never_overstates_a_guaranteed_count() {
        let mut summary = SpaceSaving::new(4);
        let mut truth: HashMap<String, u64> = HashMap::new();
        for i in 0..10_000u64 {
            // A skewed stream: key_0 is frequent, the rest cycle through 50 keys.
            let key = if i % 3 == 0 {
                "key_0".to_owned()
            } else {
                format!("key_{}", i % 50)
            };
            let seen = truth.entry(key.clone()).or_default();
            *seen += 1;
            let guaranteed = summary.observe(&key);
            assert!(guaranteed <= *seen, "{key}: {guaranteed} > {seen}");
        }
        assert_eq!(summary.len(), 4);
        assert!(
            summary.observe("key_0") > 3000,
            "the frequent key is tracked"
        );
    }
}
