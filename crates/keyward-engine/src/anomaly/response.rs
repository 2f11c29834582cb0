//! The automated response to anomalies (see the parent module): the tenant's action, the
//! safety brake, the audit events and the published events.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keyward_core::anomaly::AnomalyKind;
use keyward_core::audit::{AuditAction, AuditDraft, summary_diff};
use keyward_core::clock::Clock;
use keyward_core::record::{KeyKind, KeyRecord};
use keyward_store::{KeyStore, KeyWrite};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    ANOMALY_ACTOR, AnomalyAction, AnomalyConfig, AnomalyOutcome, BrakeScope, Detected, Detector,
};
use crate::clock::write_time;
use crate::error::EngineError;
use crate::events::Event;
use crate::lifecycle::Lifecycle;
use crate::lookup::KeyLookup;
use crate::verification::Verification;

/// Detection on the verify path and the response to what it finds; see the parent module.
pub(crate) struct Anomalies {
    detector: Detector,
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    events: tokio::sync::broadcast::Sender<Event>,
}

impl Anomalies {
    pub(crate) fn new(
        config: AnomalyConfig,
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        events: tokio::sync::broadcast::Sender<Event>,
    ) -> Self {
        Self {
            detector: Detector::new(config, clock.now()),
            store,
            clock,
            events,
        }
    }

    /// The same, with new detection settings (and fresh baselines).
    pub(crate) fn reconfigured(self, config: AnomalyConfig) -> Self {
        Self {
            detector: Detector::new(config, self.clock.now()),
            ..self
        }
    }

    /// Feeds one API-key verification to the baselines (see [`Detector::observe`]).
    #[inline]
    pub(crate) fn observe(
        &self,
        v: &Verification,
        ip: Option<IpAddr>,
        now: impl FnOnce() -> OffsetDateTime,
    ) {
        self.detector.observe(v, ip, now);
    }

    /// Anomalies detected by this node since it started (before any response).
    pub(crate) fn raised(&self) -> u64 {
        self.detector.raised.load(Ordering::Relaxed)
    }

    /// Responds to every anomaly already detected and returns what was done.
    pub(crate) async fn drain(
        &self,
        lifecycle: &Lifecycle,
        keys: &KeyLookup,
    ) -> Vec<AnomalyOutcome> {
        let mut inbox = self.detector.inbox.lock().await;
        let mut outcomes = Vec::new();
        while let Ok(detected) = inbox.try_recv() {
            outcomes.push(self.respond(detected, lifecycle, keys).await);
        }
        outcomes
    }

    /// Responds to anomalies as they are detected, until the process stops.
    pub(crate) async fn respond_until_stopped(&self, lifecycle: &Lifecycle, keys: &KeyLookup) {
        let mut inbox = self.detector.inbox.lock().await;
        while let Some(detected) = inbox.recv().await {
            self.respond(detected, lifecycle, keys).await;
        }
    }

    /// The detector's state (for tests).
    #[cfg(test)]
    pub(crate) fn detector(&self) -> &Detector {
        &self.detector
    }

    pub(super) async fn respond(
        &self,
        d: Detected,
        lifecycle: &Lifecycle,
        keys: &KeyLookup,
    ) -> AnomalyOutcome {
        let kind = d.finding.kind;
        // Only traffic that verified can tell of a leak; failures are reported, never acted on.
        let wanted = match &d.key_id {
            Some(_) if kind.suggests_leak() => self.detector.config.action_for(d.tenant.as_deref()),
            _ => AnomalyAction::Alert,
        };
        let mut action = AnomalyAction::Alert;
        let mut braked = false;
        if let (AnomalyAction::Disable, Some(key_id)) = (wanted, &d.key_id) {
            let scope = BrakeScope::of(d.tenant.as_deref(), d.owner.as_deref());
            let (allowed, engaged_now) = self.detector.allow_disable(&scope, d.at);
            if allowed {
                match self
                    .disable_automatically(lifecycle, keys, key_id, kind)
                    .await
                {
                    Ok(true) => action = AnomalyAction::Disable,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(key_id, error = %e, "automatic disable failed");
                    }
                }
            } else {
                braked = true;
                metrics::counter!("keyward_auto_disable_brakes_total").increment(1);
                tracing::warn!(
                    key_id,
                    tenant = d.tenant.as_deref(),
                    max_per_hour = self.detector.config.max_auto_disables_per_hour,
                    "safety brake: automatic disable limit reached, anomaly only alerts"
                );
                if engaged_now {
                    let mut summary = scope.summary();
                    if let Some(map) = summary.as_object_mut() {
                        map.insert(
                            "max_auto_disables_per_hour".into(),
                            self.detector.config.max_auto_disables_per_hour.into(),
                        );
                        map.insert("first_held_back".into(), key_id.as_str().into());
                    }
                    self.audit_anomaly(AuditAction::AnomalyBrake, None, summary)
                        .await;
                }
            }
        }
        metrics::counter!(
            "keyward_anomalies_total",
            "kind" => kind.as_str(),
            "action" => action.as_str()
        )
        .increment(1);
        if kind.suggests_leak() {
            metrics::counter!("keyward_leak_events_total", "source" => "anomaly").increment(1);
        }
        let ip = d.ip.map(|ip| ip.to_string());
        tracing::warn!(
            kind = kind.as_str(),
            key_id = d.key_id.as_deref(),
            ip = ip.as_deref(),
            action = action.as_str(),
            braked,
            detail = %d.finding.detail,
            "anomaly detected"
        );
        // Leak signals are always audited: they need traffic that verified and fire once per
        // key and cooldown, so failures (which anyone can send) cannot crowd them out of the
        // per-minute cap.
        if kind.suggests_leak() || self.detector.may_audit(d.at) {
            self.audit_anomaly(
                AuditAction::AnomalyDetected,
                d.key_id.clone(),
                json!({
                    "kind": kind.as_str(),
                    "ip": ip,
                    "action": action.as_str(),
                    "braked": braked,
                    "detail": d.finding.detail,
                }),
            )
            .await;
        }
        // Never blocks; with no subscriber an event is dropped.
        let _ = self.events.send(Event::Anomaly {
            key_id: d.key_id.clone(),
            ip,
            kind: kind.as_str().to_owned(),
            detail: d.finding.detail.clone(),
            action: action.as_str().to_owned(),
            at: d.at,
        });
        if let (AnomalyAction::Disable, Some(key_id)) = (action, &d.key_id) {
            let _ = self.events.send(Event::KeyDisabled {
                key_id: key_id.clone(),
                reason: format!("anomaly: {}", kind.as_str()),
                automatic: true,
                at: d.at,
            });
        }
        AnomalyOutcome {
            kind,
            key_id: d.key_id,
            ip: d.ip,
            action,
            braked,
            at: d.at,
            detail: d.finding.detail,
        }
    }

    async fn audit_anomaly(&self, action: AuditAction, target: Option<String>, summary: Value) {
        let draft = AuditDraft {
            time: write_time(self.clock.as_ref()),
            actor: Some(ANOMALY_ACTOR.to_owned()),
            action,
            target,
            summary,
        };
        if let Err(e) = self.store.append_audit(draft).await {
            tracing::error!(error = %e, action = action.as_str(), "writing the anomaly audit event failed");
        }
    }

    /// Disables a key as an automated response, through the audited write; false if it was
    /// already disabled or revoked (nothing written).
    async fn disable_automatically(
        &self,
        lifecycle: &Lifecycle,
        keys: &KeyLookup,
        key_id: &str,
        kind: AnomalyKind,
    ) -> Result<bool, EngineError> {
        let current = keys.get_key(KeyKind::Api, key_id, self.clock.now()).await?;
        if !current.enabled || current.revoked_at.is_some() {
            return Ok(false);
        }
        let reason = format!("anomaly: {}", kind.as_str());
        lifecycle
            .modify(keys, KeyKind::Api, key_id, |current: &KeyRecord, now| {
                let mut next = current.clone();
                next.enabled = false;
                let mut summary = summary_diff(&current.audit_summary(), &next.audit_summary());
                if let Some(map) = summary.as_object_mut() {
                    map.insert("reason".into(), Value::String(reason.clone()));
                    map.insert("automatic".into(), Value::Bool(true));
                }
                Ok((
                    KeyWrite {
                        audit: AuditDraft {
                            time: now,
                            actor: Some(ANOMALY_ACTOR.to_owned()),
                            action: AuditAction::KeyUpdate,
                            target: Some(key_id.to_owned()),
                            summary,
                        },
                        record: next,
                        expected_version: None,
                        new_secret: None,
                        secret_ends: Vec::new(),
                    },
                    (),
                ))
            })
            .await?;
        metrics::counter!("keyward_auto_disables_total").increment(1);
        Ok(true)
    }
}
