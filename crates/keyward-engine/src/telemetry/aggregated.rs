//! The verify path's latency histogram and its fixed counters, aggregated on each verifying
//! thread and handed to the recorder when metrics are read.
//!
//! Recording a histogram sample in the Prometheus recorder pins an epoch and pushes into a
//! shared lock-free bucket, and incrementing a counter is a locked add on a cache line every
//! core shares: tens of nanoseconds per verification, the largest single cost of a MALFORMED
//! answer, and contention between cores under load. Here a verification adds to a per-thread
//! stripe of cells (one per histogram bucket, and one per fixed counter: the outcome counters
//! of verifications without a tenant and the cache hit and miss counters), each written by
//! its thread alone, so with no locked instruction; [`Aggregated::flush`] hands what
//! accumulated since the last flush to the recorder: per counter the increase, per bucket
//! `count` samples of the bucket's mean. A Prometheus histogram is its bucket counts, its count
//! and its sum, so the scrape is the same as with one sample per verification: each bucket's
//! count is exact (the mean of values in a bucket lies in that bucket), and so is the sum (what
//! a flush could not place exactly is carried to the next). `keyward-http` flushes before
//! rendering `/metrics`.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// Histogram buckets: one per bound of [`buckets`](super::buckets) (upper, inclusive) and the
/// one above them all.
const BUCKETS: usize = 16;

/// How many fixed counters a stripe holds (`VerifyMeters` says what each slot counts).
pub(crate) const COUNTERS: usize = 24;

/// One thread's counts, cumulative (never reset: the writer is the only one to write).
struct Stripe {
    counts: [AtomicU64; BUCKETS],
    sums: [AtomicU64; BUCKETS],
    counters: [AtomicU64; COUNTERS],
}

/// What the last flush took from one histogram bucket of a stripe.
#[derive(Clone, Copy, Default)]
struct Taken {
    count: u64,
    sum: u64,
}

/// A stripe and what has been flushed from it.
struct Registered {
    stripe: Arc<Stripe>,
    taken: [Taken; BUCKETS],
    counted: [u64; COUNTERS],
}

/// The aggregated histogram and counters; see the module docs.
pub(crate) struct Aggregated {
    histogram: Histogram,
    bounds: [u64; BUCKETS - 1],
    counters: [Counter; COUNTERS],
    stripes: Mutex<Vec<Registered>>,
}

thread_local! {
    /// This thread's stripe, registered on first use with the [`Aggregated`] it records into:
    /// there is one per process (in `VerifyMeters`), like the recorder.
    static STRIPE: OnceCell<Arc<Stripe>> = const { OnceCell::new() };
}

/// Adds `by` to a cell only its thread writes: a plain load and store, no locked instruction.
fn add(cell: &AtomicU64, by: u64, order: Ordering) {
    cell.store(cell.load(Ordering::Relaxed).wrapping_add(by), order);
}

impl Aggregated {
    /// Aggregates for `histogram`, whose buckets are `bounds` (seconds, ascending), and for
    /// `counters`, by slot.
    pub(crate) fn new(histogram: Histogram, bounds: &[f64], counters: [Counter; COUNTERS]) -> Self {
        debug_assert!(bounds.len() < BUCKETS, "more bounds than buckets");
        let mut nanos = [u64::MAX; BUCKETS - 1];
        for (slot, bound) in nanos.iter_mut().zip(bounds) {
            *slot = Duration::from_secs_f64(*bound).as_nanos() as u64;
        }
        Self {
            histogram,
            bounds: nanos,
            counters,
            stripes: Mutex::new(Vec::new()),
        }
    }

    /// Counts one in counter `slot` and, if given, adds a latency sample: one verification's
    /// worth in one visit to this thread's stripe.
    pub(crate) fn record(&self, slot: usize, elapsed: Option<Duration>) {
        let _ = STRIPE.try_with(|cell| {
            let stripe = cell.get_or_init(|| self.register());
            add(&stripe.counters[slot], 1, Ordering::Relaxed);
            if let Some(elapsed) = elapsed {
                let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                let bucket = self.bounds.partition_point(|&bound| bound < nanos);
                // The sum before the count (released with it): a flush that sees the count
                // sees the sum too.
                add(&stripe.sums[bucket], nanos, Ordering::Relaxed);
                add(&stripe.counts[bucket], 1, Ordering::Release);
            }
        });
    }

    fn register(&self) -> Arc<Stripe> {
        let stripe = Arc::new(Stripe {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sums: std::array::from_fn(|_| AtomicU64::new(0)),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        self.stripes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Registered {
                stripe: Arc::clone(&stripe),
                taken: [Taken::default(); BUCKETS],
                counted: [0; COUNTERS],
            });
        stripe
    }

    /// Hands what was counted since the last flush to the recorder.
    pub(crate) fn flush(&self) {
        let mut stripes = self.stripes.lock().unwrap_or_else(PoisonError::into_inner);
        for registered in stripes.iter_mut() {
            for (slot, counter) in self.counters.iter().enumerate() {
                let now = registered.stripe.counters[slot].load(Ordering::Relaxed);
                let new = now.wrapping_sub(registered.counted[slot]);
                if new > 0 {
                    counter.increment(new);
                    registered.counted[slot] = now;
                }
            }
            for bucket in 0..BUCKETS {
                let count = registered.stripe.counts[bucket].load(Ordering::Acquire);
                let sum = registered.stripe.sums[bucket].load(Ordering::Relaxed);
                let taken = &mut registered.taken[bucket];
                let new = count.wrapping_sub(taken.count);
                if new == 0 {
                    continue;
                }
                // The sum may already hold a sample whose count is not visible yet; clamping
                // the mean into the bucket keeps every sample in its bucket, and the part of
                // the sum not handed over now is handed over with the next flush.
                let (low, high) = self.range(bucket);
                let mean = (sum.wrapping_sub(taken.sum) as f64 / new as f64)
                    .clamp(low as f64, high as f64);
                let many = usize::try_from(new).unwrap_or(usize::MAX);
                self.histogram.record_many(mean / 1e9, many);
                taken.count = count;
                taken.sum = taken.sum.wrapping_add((mean * new as f64).round() as u64);
            }
        }
        // A stripe whose thread is gone and whose counts are all handed over is done. The
        // fence pairs with the release of the thread's last reference (dropping its `Arc`), so
        // its last counts are seen here: a stripe with any still to hand over is kept.
        stripes.retain(|r| {
            if Arc::strong_count(&r.stripe) > 1 {
                return true;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            (0..BUCKETS).any(|b| r.stripe.counts[b].load(Ordering::Acquire) != r.taken[b].count)
                || (0..COUNTERS)
                    .any(|c| r.stripe.counters[c].load(Ordering::Relaxed) != r.counted[c])
        });
    }

    /// The nanoseconds a sample of `bucket` may have: above the previous bound, up to its own.
    fn range(&self, bucket: usize) -> (u64, u64) {
        let low = match bucket {
            0 => 0,
            _ => self.bounds[bucket - 1].saturating_add(1),
        };
        let high = self.bounds.get(bucket).copied().unwrap_or(u64::MAX);
        (low, high.max(low))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics::{HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;

    /// A counter's running total.
    struct Total(Arc<AtomicU64>);

    impl metrics::CounterFn for Total {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    /// A recorder that keeps every sample of every histogram.
    #[derive(Default)]
    struct Samples(Arc<Mutex<Vec<f64>>>);

    struct Into(Arc<Mutex<Vec<f64>>>);

    impl HistogramFn for Into {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    impl Recorder for Samples {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Into(Arc::clone(&self.0))))
        }
    }

    /// Bucket counts, the sum and the counters after a flush are those of what was recorded,
    /// on every thread that recorded, and a second flush adds only what came since.
    #[test]
    fn a_flush_gives_the_recorder_the_same_buckets_and_sum() {
        let recorder = Samples::default();
        let seen = Arc::clone(&recorder.0);
        let bounds = [0.000_05, 0.001, 0.1];
        let histogram = metrics::with_local_recorder(&recorder, || metrics::histogram!("t"));
        let totals: [Arc<AtomicU64>; 2] = std::array::from_fn(|_| Arc::default());
        let counters = std::array::from_fn(|slot| match totals.get(slot) {
            Some(total) => metrics::Counter::from_arc(Arc::new(Total(Arc::clone(total)))),
            None => metrics::Counter::noop(),
        });
        let latency = Arc::new(Aggregated::new(histogram, &bounds, counters));
        let nanos = [
            100u64,
            49_999,
            50_000,
            50_001,
            999_999,
            5_000_000,
            200_000_000,
        ];
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for n in nanos {
                        latency.record(0, Some(Duration::from_nanos(n)));
                        latency.record(1, None);
                    }
                });
            }
        });
        latency.flush();
        let bucket_of = |secs: f64| {
            bounds
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(bounds.len())
        };
        let summary = |values: &[f64]| {
            let mut counts = [0usize; 4];
            for v in values {
                counts[bucket_of(*v)] += 1;
            }
            (counts, values.iter().sum::<f64>())
        };
        let expected: Vec<f64> = nanos.iter().map(|n| *n as f64 / 1e9).collect();
        let (want_counts, want_sum) = summary(&expected.repeat(3));
        let (got_counts, got_sum) = summary(&seen.lock().unwrap());
        assert_eq!(got_counts, want_counts);
        let total = |slot: usize| totals[slot].load(Ordering::Relaxed);
        assert_eq!(
            (total(0), total(1)),
            (21, 21),
            "each counter's increase, once"
        );
        assert!((got_sum - want_sum).abs() < 1e-9, "{got_sum} vs {want_sum}");

        std::thread::scope(|s| {
            s.spawn(|| latency.record(0, Some(Duration::from_nanos(7))));
        });
        latency.flush();
        latency.flush();
        assert_eq!(
            (total(0), total(1)),
            (22, 21),
            "a second flush adds only what is new"
        );
        let all = seen.lock().unwrap().clone();
        assert_eq!(all.len(), 3 * nanos.len() + 1);
        assert!((all.last().unwrap() - 7e-9).abs() < 1e-15);
    }
}
