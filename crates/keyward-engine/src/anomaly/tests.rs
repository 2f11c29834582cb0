//! Engine tests of anomaly detection and response: real SQLite, a manual clock, and traffic
//! replayed request by request.

use std::sync::Arc;

use keyward_core::clock::Clock;
use keyward_core::permission::PermissionQuery;
use keyward_core::verify::VerifyRequest;
use keyward_store::{AuditFilter, SqliteStore};

use super::*;
use crate::clock::ManualClock;
use crate::events::Event;
use crate::{EngineConfig, EngineError, KeyPatch, Keyward, NewKey, Principal};
use keyward_core::audit::AuditAction;

use crate::test_fixture::T0;

struct Setup {
    engine: Keyward,
    clock: Arc<ManualClock>,
    actor: Principal,
    _dir: tempfile::TempDir,
}

async fn setup(config: AnomalyConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let engine =
        Keyward::new(store, clock.clone(), EngineConfig::default()).with_anomaly_detection(config);
    let root = engine.bootstrap().await.unwrap().unwrap();
    Setup {
        engine,
        clock,
        actor: Principal::new(root.record),
        _dir: dir,
    }
}

fn disable_for(tenants: &[&str]) -> AnomalyConfig {
    AnomalyConfig {
        tenants: tenants
            .iter()
            .map(|t| ((*t).to_owned(), AnomalyAction::Disable))
            .collect(),
        ..AnomalyConfig::default()
    }
}

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::from([10, 0, a, b])
}

impl Setup {
    async fn key(&self, tenant: &str) -> (String, String) {
        let created = self
            .engine
            .create_key(
                &self.actor,
                NewKey {
                    owner: "svc".into(),
                    tenant: Some(tenant.into()),
                    permissions: vec!["read".into()],
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        (created.key.expose().to_owned(), created.record.key_id)
    }

    async fn verify(&self, secret: &str, from: IpAddr) -> VerifyCode {
        let request = VerifyRequest {
            ip: Some(from),
            ..VerifyRequest::default()
        };
        self.engine.verify(secret, &request).await.unwrap().code
    }

    /// `per_second` requests a second for `seconds`, the i-th from `from(i)`; returns every
    /// anomaly responded to meanwhile.
    async fn traffic(
        &self,
        secret: &str,
        per_second: u32,
        seconds: u32,
        from: impl Fn(u32) -> IpAddr,
    ) -> Vec<AnomalyOutcome> {
        let mut outcomes = Vec::new();
        for i in 0..per_second * seconds {
            self.clock.advance(Duration::seconds(1) / per_second);
            self.verify(secret, from(i)).await;
            outcomes.extend(self.engine.drain_anomalies().await);
        }
        outcomes
    }

    async fn audit(&self, action: AuditAction) -> Vec<keyward_core::audit::AuditEvent> {
        let filter = AuditFilter {
            action: Some(action.as_str().into()),
            limit: 1000,
            ..AuditFilter::default()
        };
        self.engine.store.list_audit(&filter).await.unwrap().items
    }
}

/// Three usual addresses.
fn usual(i: u32) -> IpAddr {
    ip(0, (i % 3) as u8)
}

#[tokio::test]
async fn steady_traffic_raises_nothing() {
    let s = setup(disable_for(&["acme"])).await;
    let (secret, _) = s.key("acme").await;
    let outcomes = s.traffic(&secret, 2, 45 * 60, usual).await;
    assert!(outcomes.is_empty(), "{outcomes:?}");
    assert_eq!(s.engine.anomalies_raised(), 0);
    assert!(s.audit(AuditAction::AnomalyDetected).await.is_empty());
}

#[tokio::test]
async fn a_rate_spike_raises_exactly_one_anomaly_audited_and_published() {
    let s = setup(AnomalyConfig::default()).await;
    let mut events = s.engine.subscribe();
    let (secret, key_id) = s.key("acme").await;
    s.traffic(&secret, 1, 20 * 60, usual).await;
    // Twenty times the usual rate, from the usual addresses, for two minutes.
    let outcomes = s.traffic(&secret, 20, 120, usual).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, AnomalyKind::RateSpike);
    assert_eq!(outcomes[0].action, AnomalyAction::Alert);
    assert_eq!(outcomes[0].key_id.as_deref(), Some(key_id.as_str()));
    // Alert only: the key still works.
    assert_eq!(s.verify(&secret, usual(0)).await, VerifyCode::Valid);

    let audited = s.audit(AuditAction::AnomalyDetected).await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].target.as_deref(), Some(key_id.as_str()));
    assert_eq!(audited[0].actor.as_deref(), Some(ANOMALY_ACTOR));
    assert_eq!(audited[0].summary["kind"], "rate_spike");
    assert_eq!(audited[0].summary["action"], "alert");
    assert!(
        s.engine
            .verify_audit_chain()
            .await
            .unwrap()
            .first_broken
            .is_none()
    );

    let mut published = Vec::new();
    while let Ok(event) = events.try_recv() {
        published.push(event);
    }
    assert!(
        matches!(
            published.as_slice(),
            [Event::Anomaly { kind, action, .. }] if kind == "rate_spike" && action == "alert"
        ),
        "{published:?}"
    );
}

#[tokio::test]
async fn a_burst_of_new_addresses_is_detected() {
    let s = setup(AnomalyConfig::default()).await;
    let (secret, _) = s.key("acme").await;
    s.traffic(&secret, 1, 20 * 60, usual).await;
    // The same rate, but every request from an address the key has not been used from.
    let outcomes = s
        .traffic(&secret, 1, 120, |i| {
            ip(1 + (i / 250) as u8, (i % 250) as u8)
        })
        .await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, AnomalyKind::NewIps);
}

#[tokio::test]
async fn a_not_found_flood_from_one_address_is_detected_and_others_are_not_blamed() {
    let s = setup(AnomalyConfig::default()).await;
    let flooder = ip(9, 9);
    let other = ip(9, 10);
    let mut outcomes = Vec::new();
    for i in 0..200u32 {
        s.clock.advance(Duration::milliseconds(100));
        // Well-formed keys nobody issued.
        let guess = keyward_core::key::generate_key(
            &keyward_core::key::Prefix::new("kw_live").unwrap(),
            &mut rand::rng(),
        )
        .unwrap();
        // Unknown, until the address has used up its budget of unknown keys (issue 10,
        // finding 5): then refused without a store read.
        let request = VerifyRequest {
            ip: Some(flooder),
            ..VerifyRequest::default()
        };
        match s.engine.verify(guess.expose(), &request).await {
            Ok(v) => assert_eq!(v.code, VerifyCode::NotFound),
            Err(e) => assert!(matches!(e, EngineError::TooManyUnknownKeys { .. }), "{e:?}"),
        }
        if i % 20 == 0 {
            s.verify(guess.expose(), other).await;
        }
        outcomes.extend(s.engine.drain_anomalies().await);
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, AnomalyKind::IpFailureBurst);
    assert_eq!(outcomes[0].ip, Some(flooder));
    assert_eq!(outcomes[0].key_id, None);
    let audited = s.audit(AuditAction::AnomalyDetected).await;
    assert_eq!(audited[0].summary["ip"], "10.0.9.9");
}

#[tokio::test]
async fn a_failure_burst_against_one_key_is_detected() {
    let s = setup(AnomalyConfig::default()).await;
    let (secret, key_id) = s.key("acme").await;
    let query = PermissionQuery::Require("admin".into());
    let request = VerifyRequest {
        query: Some(&query),
        ip: Some(usual(0)),
        ..VerifyRequest::default()
    };
    let mut outcomes = Vec::new();
    for _ in 0..100 {
        s.clock.advance(Duration::milliseconds(200));
        let v = s.engine.verify(&secret, &request).await.unwrap();
        assert_eq!(v.code, VerifyCode::InsufficientPermissions);
        outcomes.extend(s.engine.drain_anomalies().await);
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, AnomalyKind::KeyFailureBurst);
    assert_eq!(outcomes[0].key_id, Some(key_id));
}

#[tokio::test]
async fn disable_tenants_get_the_key_quarantined_reversibly_and_audited() {
    let s = setup(disable_for(&["acme"])).await;
    let mut events = s.engine.subscribe();
    let (secret, key_id) = s.key("acme").await;
    s.traffic(&secret, 1, 20 * 60, usual).await;
    let outcomes = s.traffic(&secret, 20, 60, usual).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].action, AnomalyAction::Disable);
    assert!(!outcomes[0].braked);
    assert_eq!(s.verify(&secret, usual(0)).await, VerifyCode::Disabled);

    let updates = s.audit(AuditAction::KeyUpdate).await;
    let update = updates.last().unwrap();
    assert_eq!(update.actor.as_deref(), Some(ANOMALY_ACTOR));
    assert_eq!(update.target.as_deref(), Some(key_id.as_str()));
    assert_eq!(update.summary["after"]["enabled"], false);
    assert_eq!(update.summary["reason"], "anomaly: rate_spike");
    assert_eq!(
        s.audit(AuditAction::AnomalyDetected).await[0].summary["action"],
        "disable"
    );

    let mut published = Vec::new();
    while let Ok(event) = events.try_recv() {
        published.push(event);
    }
    assert!(
        published.iter().any(|e| matches!(
            e,
            Event::KeyDisabled { key_id: k, automatic: true, .. } if *k == key_id
        )),
        "{published:?}"
    );

    // Reversible: an operator re-enables the key.
    s.engine
        .update_key(
            &s.actor,
            &key_id,
            KeyPatch {
                enabled: Some(true),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.verify(&secret, usual(0)).await, VerifyCode::Valid);
}

#[tokio::test]
async fn the_brake_stops_automatic_disables_after_n_per_hour_and_alerts_continue() {
    let s = setup(AnomalyConfig {
        max_auto_disables_per_hour: 2,
        ..disable_for(&["acme"])
    })
    .await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(s.key("acme").await);
    }
    // All four keys build a baseline together, then all spike together.
    let mut outcomes = Vec::new();
    for (per_second, seconds) in [(1u32, 20 * 60u32), (20, 60)] {
        for i in 0..per_second * seconds {
            s.clock.advance(Duration::seconds(1) / per_second);
            for (secret, _) in &keys {
                s.verify(secret, usual(i)).await;
            }
            outcomes.extend(s.engine.drain_anomalies().await);
        }
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    let disabled: Vec<_> = outcomes
        .iter()
        .filter(|o| o.action == AnomalyAction::Disable)
        .collect();
    let braked: Vec<_> = outcomes.iter().filter(|o| o.braked).collect();
    assert_eq!((disabled.len(), braked.len()), (2, 2), "{outcomes:?}");
    for o in &braked {
        assert_eq!(o.action, AnomalyAction::Alert);
    }
    let mut codes = Vec::new();
    for (secret, _) in &keys {
        codes.push(s.verify(secret, usual(0)).await);
    }
    codes.sort_by_key(|c| c.as_str());
    assert_eq!(
        codes,
        [
            VerifyCode::Disabled,
            VerifyCode::Disabled,
            VerifyCode::Valid,
            VerifyCode::Valid
        ]
    );
    // The brake engaging is audited once, and every anomaly still is.
    assert_eq!(s.audit(AuditAction::AnomalyBrake).await.len(), 1);
    assert_eq!(s.audit(AuditAction::AnomalyDetected).await.len(), 4);

    // An hour later the brake has released.
    s.clock.advance(Duration::hours(1));
    let acme = BrakeScope::Tenant("acme".into());
    let (allowed, _) = s
        .engine
        .anomaly
        .detector()
        .allow_disable(&acme, s.clock.now());
    assert!(allowed);
}

#[tokio::test]
async fn alert_tenants_are_never_disabled() {
    let s = setup(AnomalyConfig {
        on_anomaly: AnomalyAction::Disable,
        tenants: [("careful".to_owned(), AnomalyAction::Alert)]
            .into_iter()
            .collect(),
        ..AnomalyConfig::default()
    })
    .await;
    let (secret, _) = s.key("careful").await;
    s.traffic(&secret, 1, 20 * 60, usual).await;
    let outcomes = s
        .traffic(&secret, 20, 120, |i| {
            ip(1 + (i / 250) as u8, (i % 250) as u8)
        })
        .await;
    assert!(!outcomes.is_empty());
    assert!(
        outcomes
            .iter()
            .all(|o| o.action == AnomalyAction::Alert && !o.braked)
    );
    assert_eq!(s.verify(&secret, usual(0)).await, VerifyCode::Valid);
    assert!(s.audit(AuditAction::KeyUpdate).await.is_empty());
}

#[test]
fn the_tracked_maps_stay_bounded() {
    let mut map: HashMap<String, OffsetDateTime> = HashMap::new();
    for i in 0..10_000i64 {
        let now = T0 + Duration::seconds(i);
        make_room(&mut map, 100, now, |t| *t);
        map.insert(i.to_string(), now);
        assert!(map.len() <= 100);
    }
    // The most recently seen entries survive.
    assert!(map.contains_key("9999"));
}

// ---- Issue 10, finding 4: an old secret cannot switch off the live key ----

/// A key of `tenant` whose own limits refuse nothing, created with `spec` adjusted by `f`.
async fn key_with(s: &Setup, tenant: &str, f: impl FnOnce(&mut NewKey)) -> (String, String) {
    let mut spec = NewKey {
        owner: "svc".into(),
        tenant: Some(tenant.into()),
        permissions: vec!["read".into()],
        ..NewKey::default()
    };
    f(&mut spec);
    let created = s.engine.create_key(&s.actor, spec).await.unwrap();
    (created.key.expose().to_owned(), created.record.key_id)
}

/// Sends `n` refused verifications with `request`, 200 ms apart; returns what was responded.
async fn failures(
    s: &Setup,
    secret: &str,
    request: &VerifyRequest<'_>,
    n: u32,
    expected: VerifyCode,
) -> Vec<AnomalyOutcome> {
    let mut outcomes = Vec::new();
    for _ in 0..n {
        s.clock.advance(Duration::milliseconds(200));
        let v = s.engine.verify(secret, request).await.unwrap();
        assert_eq!(v.code, expected);
        outcomes.extend(s.engine.drain_anomalies().await);
    }
    outcomes
}

#[tokio::test]
async fn finding_4_a_secret_ended_by_rotation_cannot_disable_the_live_key() {
    let s = setup(disable_for(&["acme"])).await;
    let (old, key_id) = s.key("acme").await;
    let rotated = s
        .engine
        .rotate_key(&s.actor, &key_id, Duration::ZERO)
        .await
        .unwrap();
    let new = rotated.key.expose().to_owned();
    let from = VerifyRequest {
        ip: Some(ip(66, 6)),
        ..VerifyRequest::default()
    };
    // Repeated after every cooldown, the old secret is reported each time and never acted on.
    for round in 0..3 {
        let outcomes = failures(&s, &old, &from, 35, VerifyCode::Expired).await;
        assert_eq!(outcomes.len(), 1, "round {round}: {outcomes:?}");
        let o = &outcomes[0];
        assert_eq!(o.kind, AnomalyKind::KeyFailureBurst);
        assert_eq!(o.key_id.as_deref(), Some(key_id.as_str()));
        assert_eq!((o.action, o.braked), (AnomalyAction::Alert, false));
        assert_eq!(s.verify(&new, usual(0)).await, VerifyCode::Valid);
        s.clock.advance(Duration::minutes(16));
    }
    // Reported as before: audited with action alert; the key was never written.
    let audited = s.audit(AuditAction::AnomalyDetected).await;
    assert_eq!(audited.len(), 3);
    assert!(
        audited
            .iter()
            .all(|e| e.summary["action"] == "alert" && e.summary["kind"] == "key_failure_burst")
    );
    assert!(s.audit(AuditAction::KeyUpdate).await.is_empty());
}

#[tokio::test]
async fn finding_4_refused_addresses_origins_and_routes_cannot_disable_a_key() {
    let s = setup(disable_for(&["acme"])).await;
    let (by_ip, _) = key_with(&s, "acme", |k| k.ip_allowlist = vec!["10.0.0.0/24".into()]).await;
    let (by_origin, _) = key_with(&s, "acme", |k| k.origins = vec!["app.example".into()]).await;
    let (by_route, _) = key_with(&s, "acme", |k| k.routes = vec!["GET /orders/**".into()]).await;
    let stranger = VerifyRequest {
        ip: Some(ip(66, 6)),
        ..VerifyRequest::default()
    };
    let evil_origin = VerifyRequest {
        ip: Some(usual(0)),
        origin: Some("https://evil.example"),
        ..VerifyRequest::default()
    };
    let admin_path = keyward_core::path::normalize(b"/admin/users", Default::default()).unwrap();
    let other_route = VerifyRequest {
        ip: Some(usual(0)),
        method: Some("GET"),
        path: Some(&admin_path),
        ..VerifyRequest::default()
    };
    for (secret, request, code) in [
        (&by_ip, &stranger, VerifyCode::IpNotAllowed),
        (&by_origin, &evil_origin, VerifyCode::OriginNotAllowed),
        (&by_route, &other_route, VerifyCode::RouteNotAllowed),
    ] {
        let outcomes = failures(&s, secret, request, 35, code).await;
        assert_eq!(outcomes.len(), 1, "{code:?}: {outcomes:?}");
        assert_eq!(outcomes[0].kind, AnomalyKind::KeyFailureBurst);
        assert_eq!(outcomes[0].action, AnomalyAction::Alert, "{code:?}");
    }
    assert_eq!(s.verify(&by_ip, usual(0)).await, VerifyCode::Valid);
    let from_app = VerifyRequest {
        origin: Some("https://app.example"),
        ..VerifyRequest::default()
    };
    assert_eq!(
        s.engine.verify(&by_origin, &from_app).await.unwrap().code,
        VerifyCode::Valid
    );
    let orders_path = keyward_core::path::normalize(b"/orders/1", Default::default()).unwrap();
    let orders = VerifyRequest {
        method: Some("GET"),
        path: Some(&orders_path),
        ..VerifyRequest::default()
    };
    assert_eq!(
        s.engine.verify(&by_route, &orders).await.unwrap().code,
        VerifyCode::Valid
    );
    assert!(s.audit(AuditAction::KeyUpdate).await.is_empty());
}

#[tokio::test]
async fn finding_4_one_tenant_spending_its_brake_leaves_other_tenants_protected() {
    let s = setup(AnomalyConfig {
        max_auto_disables_per_hour: 2,
        ..disable_for(&["mallory", "acme"])
    })
    .await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(s.key("mallory").await);
    }
    let (victim, victim_id) = s.key("acme").await;
    keys.push((victim.clone(), victim_id.clone()));
    // Every key builds a baseline; then mallory spikes its own three keys to spend the brake,
    // and only after that does acme's key leak.
    let mut outcomes = Vec::new();
    for (per_second, seconds, spiking) in [(1u32, 20 * 60u32, 4usize), (20, 60, 3), (20, 60, 4)] {
        for i in 0..per_second * seconds {
            s.clock.advance(Duration::seconds(1) / per_second);
            for (n, (secret, _)) in keys.iter().enumerate() {
                if n < spiking || i % per_second == 0 {
                    s.verify(secret, usual(i)).await;
                }
            }
            outcomes.extend(s.engine.drain_anomalies().await);
        }
    }
    let of = |key_id: &str| {
        outcomes
            .iter()
            .filter(|o| o.key_id.as_deref() == Some(key_id))
            .collect::<Vec<_>>()
    };
    let mallory: Vec<_> = keys[..3].iter().flat_map(|(_, id)| of(id)).collect();
    assert_eq!(mallory.len(), 3, "{outcomes:?}");
    let braked = mallory.iter().filter(|o| o.braked).count();
    let disabled = mallory
        .iter()
        .filter(|o| o.action == AnomalyAction::Disable)
        .count();
    assert_eq!((disabled, braked), (2, 1), "{mallory:?}");
    // acme's brake is its own: the leak of its key is acted on.
    let acme = of(&victim_id);
    assert_eq!(acme.len(), 1, "{outcomes:?}");
    assert_eq!(acme[0].kind, AnomalyKind::RateSpike);
    assert_eq!(
        (acme[0].action, acme[0].braked),
        (AnomalyAction::Disable, false)
    );
    assert_eq!(s.verify(&victim, usual(0)).await, VerifyCode::Disabled);
    let brake = s.audit(AuditAction::AnomalyBrake).await;
    assert_eq!(brake.len(), 1);
    assert_eq!(brake[0].summary["tenant"], "mallory");
}

#[test]
fn finding_4_keys_without_a_tenant_are_braked_per_owner() {
    let detector = Detector::new(
        AnomalyConfig {
            max_auto_disables_per_hour: 1,
            ..AnomalyConfig::default()
        },
        T0,
    );
    let mallory = BrakeScope::of(None, Some("mallory"));
    let alice = BrakeScope::of(None, Some("alice"));
    assert_eq!(detector.allow_disable(&mallory, T0), (true, false));
    assert_eq!(detector.allow_disable(&mallory, T0), (false, true));
    assert_eq!(detector.allow_disable(&mallory, T0), (false, false));
    assert_eq!(detector.allow_disable(&alice, T0), (true, false));
    // A tenant is its own scope even where an owner has the tenant's name.
    let tenant = BrakeScope::of(Some("mallory"), Some("mallory"));
    assert_eq!(detector.allow_disable(&tenant, T0), (true, false));
}

#[tokio::test]
async fn finding_4_failure_bursts_cannot_crowd_leak_signals_out_of_the_audit_log() {
    let s = setup(AnomalyConfig::default()).await;
    let (_, key_id) = s.key("acme").await;
    let now = s.clock.now();
    let detected = |kind| Detected {
        key_id: Some(key_id.clone()),
        tenant: Some("acme".into()),
        owner: Some("svc".into()),
        ip: None,
        finding: Finding {
            kind,
            detail: json!({}),
        },
        at: now,
    };
    // Failure bursts (which anyone holding an old secret can cause) use up this minute's cap.
    for _ in 0..AUDIT_EVENTS_PER_MINUTE + 5 {
        s.engine
            .anomaly
            .respond(
                detected(AnomalyKind::KeyFailureBurst),
                &s.engine.lifecycle,
                &s.engine.keys,
            )
            .await;
    }
    assert_eq!(
        s.audit(AuditAction::AnomalyDetected).await.len(),
        AUDIT_EVENTS_PER_MINUTE as usize
    );
    // A leak signal in the same minute is still audited.
    s.engine
        .anomaly
        .respond(
            detected(AnomalyKind::RateSpike),
            &s.engine.lifecycle,
            &s.engine.keys,
        )
        .await;
    let audited = s.audit(AuditAction::AnomalyDetected).await;
    assert_eq!(audited.len(), AUDIT_EVENTS_PER_MINUTE as usize + 1);
    assert_eq!(audited.last().unwrap().summary["kind"], "rate_spike");
}
