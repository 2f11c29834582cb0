//! Anomaly detection maths: per-key traffic baselines and failure bursts, as pure functions of
//! the events and the times they are given (this module never reads the clock).
//!
//! A key's [`KeyBaseline`] keeps, in a few dozen bytes plus a small bounded IP set:
//!
//! - **Request rate** as two exponentially weighted moving averages of the arrival rate, a
//!   fast one ([`FAST_TAU`], one minute) and a slow one ([`SLOW_TAU`], one hour). Each event
//!   adds `1/τ` after decaying the average by `exp(-Δt/τ)`, so the average estimates events
//!   per second; it is divided by `1 - exp(-age/τ)` (bias correction) so a key seen for less
//!   than τ is not under-estimated. A **rate spike** is a fast rate above `spike_factor` times
//!   the slow rate, once the key has a baseline (`warmup`) and the fast rate is at least
//!   `min_rate_per_minute` (quiet keys never alert).
//! - **New caller IPs**: the last [`KNOWN_IPS`] distinct addresses (hashed), and a sliding
//!   one-minute count of addresses not among them, plus a slow EWMA of that count. A **new-IP
//!   burst** is at least `new_ips_per_minute` new addresses in a window and more than
//!   `spike_factor` times the key's usual new-address rate (keys with churning clients learn a
//!   higher baseline).
//! - **Failures** against the key (a sliding one-minute count): a **failure burst** is
//!   `failures_per_minute` failed verifications in a window. [`FailureCounter`] counts the
//!   same per caller IP for unknown keys (NOT_FOUND floods).
//!
//! Each signal has a **cooldown** per subject: after it fires it stays quiet for `cooldown`,
//! so a spike raises one anomaly, not one per request.

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

/// Time constant of the fast rate average.
pub const FAST_TAU: Duration = Duration::minutes(1);
/// Time constant of the slow (baseline) rate average.
pub const SLOW_TAU: Duration = Duration::hours(1);
/// Distinct caller addresses remembered per key (oldest forgotten first).
pub const KNOWN_IPS: usize = 64;

/// What was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    /// A key's request rate jumped far above its baseline.
    RateSpike,
    /// Many caller addresses a key has not been used from before.
    NewIps,
    /// Many failed verifications against one key.
    KeyFailureBurst,
    /// Many verifications of unknown keys from one address.
    IpFailureBurst,
}

impl AnomalyKind {
    /// Stable name (metrics label, audit summary, event `kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateSpike => "rate_spike",
            Self::NewIps => "new_ips",
            Self::KeyFailureBurst => "key_failure_burst",
            Self::IpFailureBurst => "ip_failure_burst",
        }
    }

    /// True for the signals that suggest a leaked key (traffic from someone else), as opposed
    /// to someone guessing or misusing.
    pub fn suggests_leak(self) -> bool {
        matches!(self, Self::RateSpike | Self::NewIps)
    }
}

/// Detection thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A fast rate (or new-IP rate) this many times the baseline is a spike.
    pub spike_factor: f64,
    /// Fast rates below this (requests per minute) never count as a spike.
    pub min_rate_per_minute: f64,
    /// A key needs this much history before rate and new-IP signals are judged.
    pub warmup: Duration,
    /// New caller addresses per minute that count as a burst (with the factor above).
    pub new_ips_per_minute: u32,
    /// Failed verifications per minute against one key (or from one address) that are a burst.
    pub failures_per_minute: u32,
    /// Quiet time of a signal per subject after it fired.
    pub cooldown: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            spike_factor: 5.0,
            min_rate_per_minute: 60.0,
            warmup: Duration::minutes(10),
            new_ips_per_minute: 20,
            failures_per_minute: 30,
            cooldown: Duration::minutes(15),
        }
    }
}

/// A detection: the signal and the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The signal.
    pub kind: AnomalyKind,
    /// Figures for operators (rates per minute, counts, thresholds).
    pub detail: Value,
}

fn seconds(d: Duration) -> f64 {
    d.as_seconds_f64().max(0.0)
}

/// An EWMA of an arrival rate (events per second) with time constant `tau`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    value: f64,
}

impl Rate {
    fn add(&mut self, elapsed: Duration, tau: Duration, amount: f64) {
        let tau = seconds(tau);
        self.value = self.value * (-seconds(elapsed) / tau).exp() + amount / tau;
    }

    /// The bias-corrected rate for a series that started `age` ago.
    fn per_second(&self, age: Duration, tau: Duration) -> f64 {
        let weight = 1.0 - (-seconds(age) / seconds(tau)).exp();
        if weight <= f64::EPSILON {
            0.0
        } else {
            self.value / weight
        }
    }
}

/// A sliding-window count: this window's count plus the previous window's, weighted by how
/// much of the previous window still overlaps the last `window` (O(1), no per-event storage).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlidingCount {
    window_start: OffsetDateTime,
    current: u32,
    previous: u32,
}

impl SlidingCount {
    fn new(now: OffsetDateTime) -> Self {
        Self {
            window_start: now,
            current: 0,
            previous: 0,
        }
    }

    fn add(&mut self, now: OffsetDateTime, window: Duration) -> f64 {
        let elapsed = now - self.window_start;
        if elapsed >= window * 2 {
            self.previous = 0;
            self.current = 0;
            self.window_start = now;
        } else if elapsed >= window {
            self.previous = self.current;
            self.current = 0;
            self.window_start += window;
        }
        self.current = self.current.saturating_add(1);
        let overlap = 1.0 - seconds(now - self.window_start) / seconds(window);
        f64::from(self.previous) * overlap.clamp(0.0, 1.0) + f64::from(self.current)
    }
}

/// The window of the sliding counts.
const WINDOW: Duration = Duration::minutes(1);

/// Failed verifications from one subject in a sliding minute, with a cooldown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureCounter {
    count: SlidingCount,
    quiet_until: Option<OffsetDateTime>,
    last_seen: OffsetDateTime,
}

impl FailureCounter {
    /// A counter with nothing counted.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            count: SlidingCount::new(now),
            quiet_until: None,
            last_seen: now,
        }
    }

    /// When the subject was last seen.
    pub fn last_seen(&self) -> OffsetDateTime {
        self.last_seen
    }

    /// Counts one failure at `now`; a burst (outside the cooldown) is returned as `kind`.
    pub fn fail(
        &mut self,
        now: OffsetDateTime,
        thresholds: &Thresholds,
        kind: AnomalyKind,
    ) -> Option<Finding> {
        self.last_seen = now;
        let count = self.count.add(now, WINDOW);
        if count < f64::from(thresholds.failures_per_minute) || quiet(self.quiet_until, now) {
            return None;
        }
        self.quiet_until = Some(now + thresholds.cooldown);
        Some(Finding {
            kind,
            detail: json!({
                "failures_per_minute": count.round(),
                "threshold_per_minute": thresholds.failures_per_minute,
            }),
        })
    }
}

fn quiet(until: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    until.is_some_and(|u| now < u)
}

/// What one verification of a known key looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// When.
    pub at: OffsetDateTime,
    /// A hash of the caller's address, if known.
    pub ip: Option<u64>,
    /// True if the verification failed (see the engine for which outcomes count).
    pub failed: bool,
}

/// One key's traffic baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBaseline {
    first_seen: OffsetDateTime,
    last_seen: OffsetDateTime,
    fast: Rate,
    slow: Rate,
    new_ip_slow: Rate,
    known_ips: std::collections::VecDeque<u64>,
    new_ips: SlidingCount,
    failures: FailureCounter,
    spike_quiet_until: Option<OffsetDateTime>,
    new_ips_quiet_until: Option<OffsetDateTime>,
}

impl KeyBaseline {
    /// A baseline with no history, started at `now`.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            first_seen: now,
            last_seen: now,
            fast: Rate { value: 0.0 },
            slow: Rate { value: 0.0 },
            new_ip_slow: Rate { value: 0.0 },
            known_ips: std::collections::VecDeque::with_capacity(8),
            new_ips: SlidingCount::new(now),
            failures: FailureCounter::new(now),
            spike_quiet_until: None,
            new_ips_quiet_until: None,
        }
    }

    /// When the key was last seen.
    pub fn last_seen(&self) -> OffsetDateTime {
        self.last_seen
    }

    /// The bias-corrected fast and slow rates, in requests per minute.
    pub fn rates_per_minute(&self) -> (f64, f64) {
        let age = self.last_seen - self.first_seen;
        (
            self.fast.per_second(age, FAST_TAU) * 60.0,
            self.slow.per_second(age, SLOW_TAU) * 60.0,
        )
    }

    /// Adds one verification (O(1); the IP lookup is bounded by [`KNOWN_IPS`]) and returns
    /// what it set off, at most one finding per call (the first of: failure burst, rate spike,
    /// new-IP burst).
    pub fn observe(&mut self, seen: Observation, thresholds: &Thresholds) -> Option<Finding> {
        let now = seen.at.max(self.last_seen);
        let elapsed = now - self.last_seen;
        self.last_seen = now;
        if seen.failed {
            // Failures are not traffic of the key's owner: they do not move the baseline.
            return self
                .failures
                .fail(now, thresholds, AnomalyKind::KeyFailureBurst);
        }
        self.fast.add(elapsed, FAST_TAU, 1.0);
        self.slow.add(elapsed, SLOW_TAU, 1.0);
        let is_new_ip = seen.ip.is_some_and(|ip| !self.known_ips.contains(&ip));
        let new_ips = if let (true, Some(ip)) = (is_new_ip, seen.ip) {
            if self.known_ips.len() >= KNOWN_IPS {
                self.known_ips.pop_front();
            }
            self.known_ips.push_back(ip);
            self.new_ip_slow.add(elapsed, SLOW_TAU, 1.0);
            Some(self.new_ips.add(now, WINDOW))
        } else {
            self.new_ip_slow.add(elapsed, SLOW_TAU, 0.0);
            None
        };
        let age = now - self.first_seen;
        if age < thresholds.warmup {
            return None;
        }
        let (fast, slow) = self.rates_per_minute();
        if fast >= thresholds.min_rate_per_minute
            && fast > thresholds.spike_factor * slow
            && !quiet(self.spike_quiet_until, now)
        {
            self.spike_quiet_until = Some(now + thresholds.cooldown);
            return Some(Finding {
                kind: AnomalyKind::RateSpike,
                detail: json!({
                    "rate_per_minute": fast.round(),
                    "baseline_per_minute": (slow * 100.0).round() / 100.0,
                    "factor": thresholds.spike_factor,
                }),
            });
        }
        let new_ips = new_ips?;
        let usual = self.new_ip_slow.per_second(age, SLOW_TAU) * 60.0;
        if new_ips >= f64::from(thresholds.new_ips_per_minute)
            && new_ips > thresholds.spike_factor * usual
            && !quiet(self.new_ips_quiet_until, now)
        {
            self.new_ips_quiet_until = Some(now + thresholds.cooldown);
            return Some(Finding {
                kind: AnomalyKind::NewIps,
                detail: json!({
                    "new_ips_per_minute": new_ips.round(),
                    "baseline_per_minute": (usual * 100.0).round() / 100.0,
                    "threshold_per_minute": thresholds.new_ips_per_minute,
                }),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_testkit::T0;

    /// Feeds `count` successful requests `every` apart from `ips` in turn, starting at `start`;
    /// returns the findings and the time after the last request.
    fn feed(
        b: &mut KeyBaseline,
        start: OffsetDateTime,
        every: Duration,
        count: u32,
        ips: impl Fn(u32) -> u64,
    ) -> (Vec<(u32, Finding)>, OffsetDateTime) {
        let t = Thresholds::default();
        let mut found = Vec::new();
        let mut at = start;
        for i in 0..count {
            let seen = Observation {
                at,
                ip: Some(ips(i)),
                failed: false,
            };
            if let Some(f) = b.observe(seen, &t) {
                found.push((i, f));
            }
            at += every;
        }
        (found, at)
    }

    #[test]
    fn steady_traffic_raises_nothing_and_the_rates_match_it() {
        let mut b = KeyBaseline::new(T0);
        // 2 requests per second for 2 hours, from 3 addresses.
        let (found, _) = feed(&mut b, T0, Duration::milliseconds(500), 14_400, |i| {
            u64::from(i % 3)
        });
        assert!(found.is_empty(), "{found:?}");
        let (fast, slow) = b.rates_per_minute();
        assert!((fast - 120.0).abs() < 3.0, "fast {fast}");
        assert!((slow - 120.0).abs() < 3.0, "slow {slow}");
    }

    #[test]
    fn a_spike_is_detected_once_within_seconds() {
        let mut b = KeyBaseline::new(T0);
        let (_, at) = feed(&mut b, T0, Duration::seconds(1), 3600, |i| u64::from(i % 3));
        // 20 per second from the same addresses: the rate alone must fire.
        let (found, _) = feed(&mut b, at, Duration::milliseconds(50), 20 * 120, |i| {
            u64::from(i % 3)
        });
        assert_eq!(found.len(), 1, "{found:?}");
        let (i, f) = &found[0];
        assert_eq!(f.kind, AnomalyKind::RateSpike);
        // Fast reaches 5x the baseline after about 14 s (280 requests).
        assert!(*i < 20 * 20, "detected after {i} requests");
    }

    #[test]
    fn quiet_keys_never_spike() {
        let mut b = KeyBaseline::new(T0);
        let (_, at) = feed(&mut b, T0, Duration::minutes(1), 120, |_| 1);
        // From one a minute to 30 a minute: 30x, but under the minimum volume.
        let (found, _) = feed(&mut b, at, Duration::seconds(2), 600, |_| 1);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_burst_of_new_addresses_is_detected_at_an_unchanged_rate() {
        let mut b = KeyBaseline::new(T0);
        let (_, at) = feed(&mut b, T0, Duration::seconds(1), 3600, |i| u64::from(i % 3));
        let (found, _) = feed(&mut b, at, Duration::seconds(1), 120, |i| {
            1000 + u64::from(i)
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.kind, AnomalyKind::NewIps);
        assert_eq!(found[0].0, 19, "the 20th new address");
    }

    #[test]
    fn keys_with_churning_clients_learn_a_higher_new_address_baseline() {
        let mut b = KeyBaseline::new(T0);
        // Every request from a new address, 1 per 2 seconds (30 new per minute) for 2 hours.
        let (found, _) = feed(&mut b, T0, Duration::seconds(2), 3600, u64::from);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn failure_bursts_fire_once_per_cooldown() {
        let t = Thresholds::default();
        let mut c = FailureCounter::new(T0);
        let mut fired = Vec::new();
        for i in 0..200 {
            let at = T0 + Duration::milliseconds(100 * i64::from(i));
            if c.fail(at, &t, AnomalyKind::IpFailureBurst).is_some() {
                fired.push(i);
            }
        }
        assert_eq!(fired, vec![29]);
        // After the cooldown the next burst fires again.
        let later = T0 + t.cooldown + Duration::minutes(5);
        let fired_again = (0..30).any(|i| {
            c.fail(
                later + Duration::milliseconds(i),
                &t,
                AnomalyKind::IpFailureBurst,
            )
            .is_some()
        });
        assert!(fired_again);
    }

    #[test]
    fn slow_failures_never_fire() {
        let t = Thresholds::default();
        let mut c = FailureCounter::new(T0);
        // 20 a minute for an hour: under 30 per sliding minute.
        let fired = (0..1200).any(|i| {
            c.fail(
                T0 + Duration::seconds(3 * i),
                &t,
                AnomalyKind::IpFailureBurst,
            )
            .is_some()
        });
        assert!(!fired);
    }

    #[test]
    fn key_failures_do_not_move_the_rate_baseline() {
        let t = Thresholds::default();
        let mut b = KeyBaseline::new(T0);
        let f = (0..30)
            .filter_map(|i| {
                b.observe(
                    Observation {
                        at: T0 + Duration::seconds(i),
                        ip: None,
                        failed: true,
                    },
                    &t,
                )
            })
            .collect::<Vec<_>>();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, AnomalyKind::KeyFailureBurst);
        assert_eq!(b.rates_per_minute().0, 0.0);
    }
}
