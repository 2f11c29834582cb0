//! keyward's service layer: the verify pipeline and the key lifecycle, on top of a
//! [`KeyStore`] and a [`Clock`].
//!
//! [`Keyward`] is what the HTTP API, the gateway and the ext_authz authorizer call. It knows
//! nothing of HTTP. It is a composition of components, each with its own state and a narrow
//! API, none of which knows `Keyward`:
//!
//! - `lookup` (`KeyLookup`): finding keys, by secret hash on the verify
//!   path (the verify cache and plan map, change-feed trust, the store probe, single-flight
//!   reads, the unknown-key budget) and by key_id;
//! - `admission` (`Admission`): limits and quotas, node-local or
//!   shared through Redis, and everything else about credits;
//! - `lifecycle` (`Lifecycle`): creating, updating, rotating and
//!   revoking keys, each write with its audit event and cache eviction;
//! - `plans`, `usage` (the `last_used_at` and usage buffers), `root_auth` (root permissions
//!   and refused admin calls), [`anomaly`] (detection and response) and [`rotation_policy`].
//!
//! `Keyward`'s own methods only tie components together: the verify pipeline in
//! `verify_pipeline.rs` (parse → hash → lookup → [`decide`](keyward_core::verify::decide) →
//! admission → usage), the admin operations in `admin.rs`, background work in `upkeep.rs`.

mod address_table;
mod admin;
mod admission;
pub mod anomaly;
mod audit_log;
mod cache;
pub mod clock;
mod error;
pub mod events;
pub mod heavy_hitters;
mod lifecycle;
mod lookup;
mod metered_store;
mod plans;
mod root_auth;
pub mod rotation_policy;
mod scope;
pub mod simulate;
mod single_flight;
pub mod telemetry;
mod types;
pub mod unknown_keys;
mod upkeep;
mod usage;
mod verification;
mod verify_pipeline;

use std::sync::Arc;

use keyward_core::clock::Clock;
use keyward_store::KeyStore;
use time::OffsetDateTime;

pub use admission::shared::{
    Enforcement, EnforcementSource, ReconcileReport, RedisConfig, RedisHealth, SyncReport,
};
pub use admission::{EXHAUSTED_QUOTA_RETRY_SECONDS, LimitReport};
pub use cache::{CacheConfig, CacheSizes};
pub use error::{AuthError, EngineError};
pub use keyward_core::validate::{
    DEFAULT_PAGE, DEFAULT_USAGE_PAGE, LimitSpec, MAX_COST, MAX_PAGE, MAX_USAGE_PAGE, QuotaSpec,
};
pub use keyward_store::CreditOp;
pub use root_auth::{
    ANONYMOUS_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, AUTH_FAILURE_EVENTS_PER_MINUTE,
    ROOT_PERMISSIONS,
};
pub use scope::{Principal, Scope};
pub use types::{
    ChainReport, Created, EngineConfig, KeyPatch, ListKeys, NewKey, PlanSpec, Rotated, UsageQuery,
    UsageReport,
};
pub use unknown_keys::UnknownKeyBudget;
pub use verification::{Degraded, QuotaReport, Verification};

/// The keyward service: a composition of the engine's components (see the crate docs).
pub struct Keyward {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// Finding keys and the freshness of what is cached.
    keys: lookup::KeyLookup,
    /// Limits and quotas.
    admission: admission::Admission,
    /// Key writes.
    lifecycle: lifecycle::Lifecycle,
    plans: plans::Plans,
    /// `last_used_at` and usage counts.
    usage: usage::Usage,
    /// Refused admin calls and their audit budgets.
    root_auth: root_auth::RootAuth,
    /// Per-key traffic baselines and the response to anomalies.
    anomaly: anomaly::Anomalies,
    /// Rotation policies and what was announced about them.
    rotation: rotation_policy::RotationPolicies,
    /// Events for webhooks and other subscribers.
    events: tokio::sync::broadcast::Sender<events::Event>,
}

impl Keyward {
    /// Builds the service over a store and a clock.
    pub fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>, config: EngineConfig) -> Self {
        let store: Arc<dyn KeyStore> = Arc::new(metered_store::MeteredStore::new(store));
        let events = tokio::sync::broadcast::channel(events::EVENT_BUFFER).0;
        // The latency clock calibrates the TSC once (up to a few hundred milliseconds): here,
        // not in the first request.
        telemetry::latency_clock();
        Self {
            keys: lookup::KeyLookup::new(Arc::clone(&store), &config),
            admission: admission::Admission::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                config.quota_lease,
            ),
            lifecycle: lifecycle::Lifecycle::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                events.clone(),
            ),
            plans: plans::Plans::new(Arc::clone(&store), Arc::clone(&clock)),
            usage: usage::Usage::new(Arc::clone(&store), Arc::clone(&clock)),
            root_auth: root_auth::RootAuth::new(Arc::clone(&store), Arc::clone(&clock)),
            anomaly: anomaly::Anomalies::new(
                anomaly::AnomalyConfig::default(),
                Arc::clone(&store),
                Arc::clone(&clock),
                events.clone(),
            ),
            rotation: rotation_policy::RotationPolicies::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                events.clone(),
            ),
            events,
            store,
            clock,
        }
    }

    /// Shares rate limits and quotas with every node using the same Redis and namespace (see
    /// the `admission::shared` module). Connects lazily: a Redis that is down at start means
    /// node-local fallback until it answers. Needs a Tokio runtime.
    pub fn with_redis(mut self, config: RedisConfig) -> Result<Self, EngineError> {
        self.admission.connect_redis(config)?;
        Ok(self)
    }

    /// Replaces the anomaly detection settings (the default alerts only).
    pub fn with_anomaly_detection(mut self, config: anomaly::AnomalyConfig) -> Self {
        self.anomaly = self.anomaly.reconfigured(config);
        self
    }

    /// The current time according to the injected clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
}

#[cfg(test)]
mod test_fixture;
