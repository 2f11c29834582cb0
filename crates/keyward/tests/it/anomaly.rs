//! Anomaly detection and response through the real server, and `keyward simulate-leak`.

use keyward_engine::anomaly::{AnomalyAction, AnomalyConfig};
use serde_json::json;
use time::Duration;

use crate::KEYWARD;
use keyward_testkit::server::Server;

/// A leaked key through the HTTP API: steady traffic from three addresses, then twenty times
/// the rate; the tenant's `disable` quarantines the key, the audit log says so, and an
/// operator's PATCH brings it back.
#[tokio::test]
async fn a_spike_through_the_api_quarantines_the_key_until_an_operator_re_enables_it() {
    let server = Server::start_with(|engine| {
        engine.with_anomaly_detection(AnomalyConfig {
            tenants: [("acme".to_owned(), AnomalyAction::Disable)]
                .into_iter()
                .collect(),
            ..AnomalyConfig::default()
        })
    })
    .await;
    let (secret, key_id) = server
        .create(json!({"owner": "svc", "tenant": "acme"}))
        .await;
    let mut outcomes = Vec::new();
    for (per_second, seconds) in [(1, 20 * 60), (20, 60)] {
        for i in 0..per_second * seconds {
            server.clock.advance(Duration::seconds(1) / per_second);
            let body = server
                .verify(json!({"key": secret, "ip": format!("192.0.2.{}", i % 3 + 1)}))
                .await;
            assert_eq!(body["code"], "VALID", "{body}");
            outcomes.extend(server.engine.drain_anomalies().await);
            if !outcomes.is_empty() {
                break;
            }
        }
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].action, AnomalyAction::Disable);

    let body = server.verify(json!({"key": secret})).await;
    assert_eq!(body["code"], "DISABLED");
    let audit = server
        .admin("GET", "/v1/audit?action=anomaly.detected", None)
        .await
        .json();
    let event = &audit["events"][0];
    assert_eq!(event["target"], key_id.as_str());
    assert_eq!(event["actor"], "keyward:anomaly");
    assert_eq!(event["summary"]["kind"], "rate_spike");
    assert_eq!(event["summary"]["action"], "disable");
    let updates = server
        .admin(
            "GET",
            &format!("/v1/audit?key_id={key_id}&action=key.update"),
            None,
        )
        .await
        .json();
    assert_eq!(updates["events"][0]["summary"]["after"]["enabled"], false);
    assert_eq!(
        updates["events"][0]["summary"]["reason"],
        "anomaly: rate_spike"
    );

    let r = server
        .admin(
            "PATCH",
            &format!("/v1/keys/{key_id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(server.verify(json!({"key": secret})).await["code"], "VALID");
    let chain = server.admin("POST", "/v1/audit/verify", None).await.json();
    assert_eq!(chain["first_broken"], serde_json::Value::Null, "{chain}");
}

/// `keyward simulate-leak`, short form: one hour of baseline would be the default; fifteen
/// minutes and a 60 s leak keep the test quick. Stated bound: detected within 30 simulated
/// seconds, with the key disabled and no false positive during the baseline.
#[test]
fn simulate_leak_detects_the_leak_within_30_seconds() {
    let out = KEYWARD
        .command()
        .args([
            "simulate-leak",
            "--baseline-minutes",
            "15",
            "--max-spike-seconds",
            "60",
        ])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(1800 requests): 0 anomalies"), "{stdout}");
    let detected = stdout
        .lines()
        .find_map(|l| l.strip_prefix("detected: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let seconds: f64 = detected
        .split(") ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{detected}"));
    assert!(seconds <= 30.0, "{stdout}");
    assert!(detected.ends_with("action: disable"), "{stdout}");
    assert!(
        stdout.contains("the usual caller now gets: DISABLED"),
        "{stdout}"
    );
}

/// Issue 10, finding 4, through the HTTP API: with `disable`, 35 verifications of a secret
/// ended by rotation are a failure burst, reported and never acted on; the new secret keeps
/// verifying.
#[tokio::test]
async fn finding_4_an_old_secret_cannot_switch_off_the_live_key() {
    let server = Server::start_with(|engine| {
        engine.with_anomaly_detection(AnomalyConfig {
            on_anomaly: AnomalyAction::Disable,
            ..AnomalyConfig::default()
        })
    })
    .await;
    let (old, key_id) = server.create(json!({"owner": "svc"})).await;
    let rotated = server
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": 0})),
        )
        .await;
    assert_eq!(rotated.status, 201);
    let new = rotated.json()["key"].as_str().unwrap().to_owned();
    let mut outcomes = Vec::new();
    for _ in 0..35 {
        server.clock.advance(Duration::milliseconds(200));
        let body = server
            .verify(json!({"key": old, "ip": "203.0.113.66"}))
            .await;
        assert_eq!(body["code"], "EXPIRED", "{body}");
        outcomes.extend(server.engine.drain_anomalies().await);
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].action, AnomalyAction::Alert);
    assert_eq!(server.verify(json!({"key": new})).await["code"], "VALID");
    let audit = server
        .admin("GET", "/v1/audit?action=anomaly.detected", None)
        .await
        .json();
    assert_eq!(audit["events"][0]["summary"]["kind"], "key_failure_burst");
    assert_eq!(audit["events"][0]["summary"]["action"], "alert");
}
