//! A leaked-key drill: replays steady traffic on one key, then a sudden spike from many new
//! addresses, through a real engine on a [`ManualClock`], and reports how long detection took.
//!
//! Everything runs in-process against the store it is given (the CLI's `keyward
//! simulate-leak` uses a throwaway SQLite store): no network, and the work is bounded by
//! [`LeakScenario::validate`] (at most [`MAX_REQUESTS`] verifications). Simulated time moves
//! only by the clock, so a two-hour baseline takes well under a second of real time and the
//! reported detection time is exact and repeatable.
//!
//! Addresses come from ranges reserved for documentation and benchmarking: the baseline from
//! 192.0.2.0/24, the spike from 198.18.0.0/15.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use keyward_core::anomaly::{AnomalyKind, Thresholds};
use keyward_core::clock::Clock;
use keyward_core::validate::FieldError;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_store::KeyStore;
use time::{Duration, OffsetDateTime};

use crate::anomaly::{AnomalyAction, AnomalyConfig, AnomalyOutcome};
use crate::clock::ManualClock;
use crate::{EngineConfig, EngineError, Keyward, NewKey, Principal};

/// Most verifications one simulation may run.
pub const MAX_REQUESTS: u64 = 2_000_000;
/// The tenant of the simulated key.
pub const TENANT: &str = "simulated";

/// The traffic pattern.
#[derive(Debug, Clone)]
pub struct LeakScenario {
    /// Minutes of steady traffic before the spike (1 to 1440).
    pub baseline_minutes: u32,
    /// Requests per second of the steady traffic (1 to 1000).
    pub baseline_per_second: u32,
    /// Addresses the steady traffic comes from (1 to 250).
    pub baseline_ips: u32,
    /// Extra requests per second during the spike (1 to 10000), each from an address of the
    /// spike pool in turn.
    pub spike_per_second: u32,
    /// Size of the spike's address pool (1 to 100000).
    pub spike_ips: u32,
    /// Longest the spike runs if nothing detects it (1 to 3600 seconds).
    pub max_spike_seconds: u32,
    /// The simulated tenant's response.
    pub action: AnomalyAction,
    /// Detection thresholds.
    pub thresholds: Thresholds,
}

impl Default for LeakScenario {
    fn default() -> Self {
        Self {
            baseline_minutes: 60,
            baseline_per_second: 2,
            baseline_ips: 3,
            spike_per_second: 50,
            spike_ips: 500,
            max_spike_seconds: 300,
            action: AnomalyAction::Disable,
            thresholds: Thresholds::default(),
        }
    }
}

fn within(field: &str, value: u32, low: u32, high: u32) -> Result<(), FieldError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be between {low} and {high}"),
        ))
    }
}

impl LeakScenario {
    /// Checks every bound, so a simulation always ends quickly.
    pub fn validate(&self) -> Result<(), FieldError> {
        within("baseline_minutes", self.baseline_minutes, 1, 1440)?;
        within("baseline_per_second", self.baseline_per_second, 1, 1000)?;
        within("baseline_ips", self.baseline_ips, 1, 250)?;
        within("spike_per_second", self.spike_per_second, 1, 10_000)?;
        within("spike_ips", self.spike_ips, 1, 100_000)?;
        within("max_spike_seconds", self.max_spike_seconds, 1, 3600)?;
        let requests = u64::from(self.baseline_minutes) * 60 * u64::from(self.baseline_per_second)
            + u64::from(self.max_spike_seconds)
                * u64::from(self.baseline_per_second + self.spike_per_second);
        if requests > MAX_REQUESTS {
            return Err(FieldError::new(
                "scenario",
                format!("would run {requests} verifications, more than {MAX_REQUESTS}"),
            ));
        }
        Ok(())
    }
}

/// When and how the spike was detected.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The first anomaly on the key after the spike began.
    pub outcome: AnomalyOutcome,
    /// Verifications (all of them, baseline included) from the spike's start to detection.
    pub requests_after_spike: u64,
    /// Simulated seconds from the spike's start to detection.
    pub seconds_after_spike: f64,
}

/// What a simulation saw.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakReport {
    /// Verifications of the steady phase.
    pub baseline_requests: u64,
    /// Anomalies raised during the steady phase (false positives; 0 expected).
    pub baseline_anomalies: usize,
    /// The detection, if the spike was detected within `max_spike_seconds`.
    pub detection: Option<Detection>,
    /// Every anomaly of the spike phase (the debounce keeps this short).
    pub spike_anomalies: Vec<AnomalyOutcome>,
    /// The verify outcome of the key's usual caller after the spike.
    pub code_after: VerifyCode,
}

fn baseline_ip(i: u64, ips: u32) -> IpAddr {
    let host = (i % u64::from(ips)) as u8;
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, host.saturating_add(1)))
}

fn spike_ip(i: u64, ips: u32) -> IpAddr {
    let n = (i % u64::from(ips)) as u32;
    IpAddr::V4(Ipv4Addr::new(
        198,
        18 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

/// Runs the scenario on a fresh engine over `store` (which should be empty: the engine
/// bootstraps a root key in it) with its clock starting at `start`.
pub async fn simulate_leak(
    store: Arc<dyn KeyStore>,
    start: OffsetDateTime,
    scenario: &LeakScenario,
) -> Result<LeakReport, EngineError> {
    scenario.validate()?;
    let clock = Arc::new(ManualClock::new(start));
    let config = AnomalyConfig {
        thresholds: scenario.thresholds,
        tenants: [(TENANT.to_owned(), scenario.action)].into_iter().collect(),
        ..AnomalyConfig::default()
    };
    let engine =
        Keyward::new(store, clock.clone(), EngineConfig::default()).with_anomaly_detection(config);
    let actor = match engine.bootstrap().await? {
        Some(root) => Principal::new(root.record),
        None => {
            return Err(FieldError::new("store", "must be empty (it has a root key)").into());
        }
    };
    let key = engine
        .create_key(
            &actor,
            NewKey {
                owner: "simulate-leak".into(),
                tenant: Some(TENANT.into()),
                ..NewKey::default()
            },
        )
        .await?;
    let secret = key.key.expose().to_owned();
    let verify = |ip: IpAddr| {
        let engine = &engine;
        let secret = &secret;
        async move {
            let request = VerifyRequest {
                ip: Some(ip),
                ..VerifyRequest::default()
            };
            engine.verify(secret, &request).await
        }
    };

    let base = u64::from(scenario.baseline_per_second);
    let step = Duration::seconds(1) / scenario.baseline_per_second;
    let mut baseline_requests = 0;
    let mut baseline_anomalies = 0;
    for _ in 0..u64::from(scenario.baseline_minutes) * 60 * base {
        clock.advance(step);
        verify(baseline_ip(baseline_requests, scenario.baseline_ips)).await?;
        baseline_requests += 1;
        baseline_anomalies += engine.drain_anomalies().await.len();
    }

    // The spike: the steady traffic continues, and the leaked key's new users join it.
    let per_second = base + u64::from(scenario.spike_per_second);
    let step = Duration::seconds(1) / (per_second as u32);
    let spike_start = clock.now();
    let mut detection = None;
    let mut spike_anomalies = Vec::new();
    let (mut sent, mut steady, mut leaked) = (0u64, baseline_requests, 0u64);
    while sent < u64::from(scenario.max_spike_seconds) * per_second {
        clock.advance(step);
        // Spread the steady requests evenly among the spike's.
        let ip = if (sent + 1) * base / per_second > sent * base / per_second {
            steady += 1;
            baseline_ip(steady, scenario.baseline_ips)
        } else {
            leaked += 1;
            spike_ip(leaked, scenario.spike_ips)
        };
        verify(ip).await?;
        sent += 1;
        for outcome in engine.drain_anomalies().await {
            if detection.is_none() && outcome.key_id.is_some() {
                let elapsed = outcome.at - spike_start;
                detection = Some(Detection {
                    outcome: outcome.clone(),
                    requests_after_spike: sent,
                    seconds_after_spike: elapsed.as_seconds_f64(),
                });
            }
            spike_anomalies.push(outcome);
        }
        if detection.is_some() && sent % per_second == 0 {
            // Run on to the end of the second in which it was detected, then stop.
            break;
        }
    }
    let code_after = verify(baseline_ip(0, scenario.baseline_ips)).await?.code;
    Ok(LeakReport {
        baseline_requests,
        baseline_anomalies,
        detection,
        spike_anomalies,
        code_after,
    })
}

/// A short label for a detection's signal.
pub fn describe(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::RateSpike => "request rate above its baseline",
        AnomalyKind::NewIps => "burst of new caller addresses",
        AnomalyKind::KeyFailureBurst => "burst of failed verifications on the key",
        AnomalyKind::IpFailureBurst => "burst of unknown keys from one address",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::SqliteStore;
    use time::macros::datetime;

    #[tokio::test]
    async fn a_leak_is_detected_and_the_key_disabled_within_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let scenario = LeakScenario {
            baseline_minutes: 20,
            max_spike_seconds: 120,
            ..LeakScenario::default()
        };
        let report = simulate_leak(store, datetime!(2026-01-01 00:00 UTC), &scenario)
            .await
            .unwrap();
        assert_eq!(report.baseline_requests, 20 * 60 * 2);
        assert_eq!(report.baseline_anomalies, 0);
        let detection = report.detection.expect("the spike is detected");
        assert!(
            detection.seconds_after_spike <= 60.0,
            "detected after {} s",
            detection.seconds_after_spike
        );
        assert_eq!(detection.outcome.action, AnomalyAction::Disable);
        assert_eq!(report.code_after, VerifyCode::Disabled);
        assert_eq!(
            report.spike_anomalies.len(),
            1,
            "{:?}",
            report.spike_anomalies
        );
    }

    #[test]
    fn scenarios_are_bounded() {
        let huge = LeakScenario {
            baseline_minutes: 1440,
            baseline_per_second: 1000,
            ..LeakScenario::default()
        };
        assert!(huge.validate().is_err());
        assert!(LeakScenario::default().validate().is_ok());
    }
}
