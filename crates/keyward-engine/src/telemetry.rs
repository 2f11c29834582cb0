//! Metrics: every name keyward exports, their help texts, and the helpers the engine calls to
//! record them through the `metrics` facade.
//!
//! The engine only emits; it installs no recorder. The server installs the Prometheus recorder
//! (`keyward-http`'s `metrics` module) and calls [`describe`], which describes and registers
//! every name in [`METRICS`], so each is in the scrape from the first one, with zero values,
//! including those no request has touched yet (dashboards and alerts then never see a series
//! appear out of nothing). Without a recorder (unit tests, library users) every call here is a
//! no-op.
//!
//! **Labels** carry key_ids, tenant names, verify codes and fixed words, never a key or its
//! hash. `key_id` labels are capped by [`crate::heavy_hitters`]; `tenant` values are the
//! operator's own tenants, a small set.
//!
//! The verify path records through handles resolved once ([`verify_meters`]).

use std::time::Duration;

use keyward_core::verify::VerifyCode;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::heavy_hitters::OTHER;

mod aggregated;
mod verify_meters;

pub(crate) use verify_meters::{CacheName, latency_clock, meters};

/// Hands what the verify path aggregated on its own (the latency histogram's samples) to the
/// recorder; call it before reading the recorder, as `/metrics` does.
pub fn flush() {
    meters().flush();
}

/// Verifications by outcome `code` (the verify codes, plus `STORE_UNAVAILABLE` and `ERROR`) and
/// `tenant` (`none` for keys without one and for unknown keys).
pub const VERIFICATIONS: &str = "keyward_verifications_total";
/// Wall time of a verification in the engine, cache, store and admission included.
pub const VERIFY_DURATION: &str = "keyward_verify_duration_seconds";
/// API keys created.
pub const KEYS_ISSUED: &str = "keyward_keys_issued_total";
/// API keys rotated.
pub const KEYS_ROTATED: &str = "keyward_keys_rotated_total";
/// API keys revoked.
pub const KEYS_REVOKED: &str = "keyward_keys_revoked_total";
/// Key writes (create, update, rotate, revoke) that failed in the store, by `action`.
pub const KEY_WRITE_FAILURES: &str = "keyward_key_write_failures_total";
/// Time from a key write to this node applying its change notification.
pub const REVOCATION_PROPAGATION: &str = "keyward_revocation_propagation_seconds";
/// Verifications of a known API key, by `key_id` (capped, see `heavy_hitters`).
pub const KEY_REQUESTS: &str = "keyward_key_requests_total";
/// Verifications refused with RATE_LIMITED or USAGE_EXCEEDED (HTTP 429), by `key_id`.
pub const KEY_RATE_LIMITED: &str = "keyward_key_rate_limited_total";
/// Anomalies detected, by `kind` and `action` taken.
pub const ANOMALIES: &str = "keyward_anomalies_total";
/// Keys disabled by the automated response.
pub const AUTO_DISABLES: &str = "keyward_auto_disables_total";
/// Leak and exposure events, by `source`.
pub const LEAK_EVENTS: &str = "keyward_leak_events_total";
/// Share of active keys within their rotation policy (0 to 1; NaN until first computed).
pub const ROTATION_COMPLIANCE: &str = "keyward_rotation_compliance_ratio";
/// Webhook deliveries by `outcome`.
pub const WEBHOOK_DELIVERIES: &str = "keyward_webhook_deliveries_total";
/// Verify cache lookups that found an entry, by `cache` (`secrets`, `records`, `not_found`).
pub const CACHE_HITS: &str = "keyward_cache_hits_total";
/// Verify cache lookups that found nothing, by `cache`.
pub const CACHE_MISSES: &str = "keyward_cache_misses_total";
/// Entries the verify caches dropped for size or age, by `cache`.
pub const CACHE_EVICTIONS: &str = "keyward_cache_evictions_total";
/// Duration of store calls, by `op` (the `KeyStore` method).
pub const STORE_DURATION: &str = "keyward_store_operation_duration_seconds";
/// Store calls that failed with a backend or data error, by `op`.
pub const STORE_ERRORS: &str = "keyward_store_errors_total";
/// Duration of Redis script calls.
pub const REDIS_DURATION: &str = "keyward_redis_duration_seconds";
/// Redis script calls that failed or timed out.
pub const REDIS_ERRORS: &str = "keyward_redis_errors_total";
/// Keys accepted from a URL query string (discouraged: URLs end up in logs).
pub const QUERY_KEY_WARNINGS: &str = "keyward_query_key_warnings_total";
/// Counter: connections the HTTP listeners closed themselves, by `listener` and `reason`.
pub const CONNECTIONS_CLOSED: &str = "keyward_connections_closed_total";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram (buckets from [`buckets`]).
    Histogram,
}

/// Every metric keyward exports: name, kind, help text.
pub const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        VERIFICATIONS,
        MetricKind::Counter,
        "API key verifications by outcome code and tenant.",
    ),
    (
        VERIFY_DURATION,
        MetricKind::Histogram,
        "Time to verify an API key, in seconds.",
    ),
    (KEYS_ISSUED, MetricKind::Counter, "API keys created."),
    (KEYS_ROTATED, MetricKind::Counter, "API keys rotated."),
    (KEYS_REVOKED, MetricKind::Counter, "API keys revoked."),
    (
        KEY_WRITE_FAILURES,
        MetricKind::Counter,
        "Key writes that failed in the store, by audit action.",
    ),
    (
        REVOCATION_PROPAGATION,
        MetricKind::Histogram,
        "Seconds from a key write to this node applying its change notification.",
    ),
    (
        KEY_REQUESTS,
        MetricKind::Counter,
        "Verifications of a known API key by key_id (top keys, the rest as key_id=\"other\").",
    ),
    (
        KEY_RATE_LIMITED,
        MetricKind::Counter,
        "Verifications refused by a rate limit or quota (HTTP 429) by key_id (top keys, the rest as \"other\").",
    ),
    (
        ANOMALIES,
        MetricKind::Counter,
        "Anomalies detected, by kind and action taken.",
    ),
    (
        AUTO_DISABLES,
        MetricKind::Counter,
        "Keys disabled by the automated anomaly response.",
    ),
    (
        LEAK_EVENTS,
        MetricKind::Counter,
        "Key leak and exposure events, by source.",
    ),
    (
        ROTATION_COMPLIANCE,
        MetricKind::Gauge,
        "Share of active keys within their rotation policy (NaN until computed).",
    ),
    (
        WEBHOOK_DELIVERIES,
        MetricKind::Counter,
        "Webhook deliveries, by outcome.",
    ),
    (
        CACHE_HITS,
        MetricKind::Counter,
        "Verify cache lookups that found an entry, by cache.",
    ),
    (
        CACHE_MISSES,
        MetricKind::Counter,
        "Verify cache lookups that found nothing, by cache.",
    ),
    (
        CACHE_EVICTIONS,
        MetricKind::Counter,
        "Verify cache entries dropped for size or age, by cache.",
    ),
    (
        STORE_DURATION,
        MetricKind::Histogram,
        "Duration of key store calls, by operation, in seconds.",
    ),
    (
        STORE_ERRORS,
        MetricKind::Counter,
        "Key store calls that failed, by operation.",
    ),
    (
        REDIS_DURATION,
        MetricKind::Histogram,
        "Duration of Redis script calls, in seconds.",
    ),
    (
        REDIS_ERRORS,
        MetricKind::Counter,
        "Redis script calls that failed or timed out.",
    ),
    (
        QUERY_KEY_WARNINGS,
        MetricKind::Counter,
        "API keys accepted from a URL query string.",
    ),
    (
        CONNECTIONS_CLOSED,
        MetricKind::Counter,
        "HTTP connections closed by keyward: at the connection cap, or after a header, idle or PROXY protocol failure.",
    ),
];

/// The verify caches, as they appear in the `cache` label.
pub const CACHES: [&str; 3] = ["secrets", "records", "not_found"];

/// The `KeyStore` operations, as they appear in the `op` label.
pub const STORE_OPS: [&str; 21] = [
    "changes",
    "change_head",
    "find_by_hash",
    "get_key",
    "list_keys",
    "write_key",
    "append_audit",
    "list_audit",
    "touch_last_used",
    "add_usage",
    "list_usage",
    "count_root_keys",
    "create_first_root_key",
    "ping",
    "get_plan",
    "list_plans",
    "write_plan",
    "take_credits",
    "adjust_credits",
    "give_back_credits",
    "balance",
];

/// How many key_ids may appear as label values; the rest are counted as `key_id="other"`.
pub const KEY_LABEL_SLOTS: usize = 100;
/// Requests a key must be guaranteed to have had before it may take a label slot.
pub const KEY_LABEL_PROMOTE_AFTER: u64 = 5;

/// The histogram buckets (in seconds) for `name`, if it is a histogram.
pub fn buckets(name: &str) -> Option<&'static [f64]> {
    const FAST: &[f64] = &[
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ];
    const PROPAGATION: &[f64] = &[
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    match name {
        VERIFY_DURATION | STORE_DURATION | REDIS_DURATION => Some(FAST),
        REVOCATION_PROPAGATION => Some(PROPAGATION),
        _ => None,
    }
}

/// Describes every metric and registers it with zero values (labelled ones under their known
/// label values), so the first scrape already lists them all. Call once the recorder is
/// installed; calling again is harmless.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => describe_counter!(name, Unit::Count, help),
            MetricKind::Gauge => describe_gauge!(name, help),
            MetricKind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
    for code in VerifyCode::ALL {
        counter!(VERIFICATIONS, "code" => code.as_str(), "tenant" => "none").absolute(0);
    }
    for name in [
        KEYS_ISSUED,
        KEYS_ROTATED,
        KEYS_REVOKED,
        AUTO_DISABLES,
        REDIS_ERRORS,
        QUERY_KEY_WARNINGS,
    ] {
        counter!(name).absolute(0);
    }
    // Labels only other parts of keyward know: an unlabelled zero series stands in for the
    // family until they count something.
    for name in [
        ANOMALIES,
        LEAK_EVENTS,
        WEBHOOK_DELIVERIES,
        KEY_WRITE_FAILURES,
        CONNECTIONS_CLOSED,
    ] {
        counter!(name).absolute(0);
    }
    for name in [KEY_REQUESTS, KEY_RATE_LIMITED] {
        counter!(name, "key_id" => OTHER).absolute(0);
    }
    for cache in CACHES {
        for name in [CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS] {
            counter!(name, "cache" => cache).absolute(0);
        }
    }
    for op in STORE_OPS {
        counter!(STORE_ERRORS, "op" => op).absolute(0);
        drop(histogram!(STORE_DURATION, "op" => op));
    }
    // Registering a histogram is enough for it to be rendered (with empty buckets).
    for name in [VERIFY_DURATION, REVOCATION_PROPAGATION, REDIS_DURATION] {
        drop(histogram!(name));
    }
    // Not computed yet: NaN compares false, so no alert fires on a value nobody measured.
    gauge!(ROTATION_COMPLIANCE).set(f64::NAN);
}

/// Records how long a change took from its write to this node (negative skew counts as 0).
pub(crate) fn propagation(lag: time::Duration) {
    let seconds = lag.as_seconds_f64().max(0.0);
    histogram!(REVOCATION_PROPAGATION).record(seconds);
}

/// Records a verify cache entry dropped for size or age.
pub(crate) fn cache_eviction(cache: &'static str) {
    counter!(CACHE_EVICTIONS, "cache" => cache).increment(1);
}

/// Records one Redis script call.
pub(crate) fn redis_call(elapsed: Duration, ok: bool) {
    histogram!(REDIS_DURATION).record(elapsed.as_secs_f64());
    if !ok {
        counter!(REDIS_ERRORS).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_valid_prometheus_name_with_the_keyward_prefix_and_a_fitting_suffix() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in METRICS {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(name.starts_with("keyward_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(!help.is_empty(), "{name}");
            match kind {
                MetricKind::Counter => assert!(name.ends_with("_total"), "{name}"),
                MetricKind::Histogram => {
                    assert!(name.ends_with("_seconds"), "{name}");
                    assert!(buckets(name).is_some(), "{name} has buckets");
                }
                MetricKind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }
}
