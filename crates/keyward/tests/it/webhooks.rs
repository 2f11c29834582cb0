//! Webhooks and rotation policy: signed deliveries through the real server, retries, a hung
//! receiver that must not slow verification, the rotation report, the compliance gauge and
//! once-only announcements.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_engine::events::Event;
use keyward_engine::rotation_policy::{RotationConfig, RotationPolicy};
use keyward_webhooks::{Dispatcher, SignatureError, WebhookConfig};
use serde_json::{Value, json};
use time::Duration as Days;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use keyward_testkit::eventually;
use keyward_testkit::server::Server;

const SECRET: &[u8] = b"whsec_test_only_0123456789abcdef0123";

/// A request the receiver got.
struct Received {
    signature: String,
    event_id: String,
    body: Bytes,
}

/// An HTTP receiver on 127.0.0.1:0 answering with the scripted statuses (then 200), and
/// sending every request it gets to the returned channel.
async fn receiver(script: &[u16]) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (script, tx) = (Arc::clone(&script), tx.clone());
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let (script, tx) = (Arc::clone(&script), tx.clone());
                async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
                    };
                    let (signature, event_id) =
                        (header("keyward-signature"), header("keyward-event-id"));
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let _ = tx.send(Received {
                        signature,
                        event_id,
                        body,
                    });
                    let status = script.lock().unwrap().pop_front().unwrap_or(200);
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (url, rx)
}

/// Webhook settings for tests: no backoff, so retries are driven by the receiver's answers.
fn config(url: &str) -> WebhookConfig {
    let mut config = WebhookConfig::new(vec![url.to_owned()], SECRET.to_vec()).unwrap();
    config.initial_backoff = Duration::ZERO;
    config.max_backoff = Duration::ZERO;
    config
}

/// The next request, waiting at most 30 s (a bound against hanging, not a timing assertion).
async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no webhook request arrived")
        .unwrap()
}

/// How long a test waits for the dispatcher to reach a state.
const WAIT: Duration = Duration::from_secs(30);

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn revoke(s: &Server, key_id: &str) {
    let r = s.revoke(key_id, "leaked").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_revoke_through_the_server_delivers_a_signed_key_revoked_event() {
    let s = Server::start().await;
    let (url, mut requests) = receiver(&[]).await;
    let _dispatcher = Dispatcher::spawn(s.engine.subscribe(), config(&url));
    let (key, key_id) = s
        .create(json!({"owner": "billing", "tenant": "acme"}))
        .await;
    revoke(&s, &key_id).await;

    let got = next(&mut requests).await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "key_revoked");
    assert_eq!(body["key_id"], key_id.as_str());
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["reason"], "leaked");
    assert_eq!(body["id"], got.event_id.as_str());
    // The documented procedure: HMAC-SHA256 over "<t>.<body>" with the secret, t within 5 min.
    assert_eq!(
        keyward_webhooks::verify(SECRET, &got.signature, &got.body, unix_now(), 300),
        Ok(())
    );
    assert_eq!(
        keyward_webhooks::verify(
            b"not the secret",
            &got.signature,
            &got.body,
            unix_now(),
            300
        ),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        keyward_webhooks::verify(SECRET, &got.signature, &got.body, unix_now() + 301, 300),
        Err(SignatureError::Stale)
    );
    // Never a secret: neither the key nor the webhook secret is in the request.
    let text = String::from_utf8_lossy(&got.body);
    assert!(!text.contains(&key));
    assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));
    assert!(!got.signature.contains(std::str::from_utf8(SECRET).unwrap()));
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_event_on_the_third_attempt() {
    let s = Server::start().await;
    let (url, mut requests) = receiver(&[500, 500]).await;
    let dispatcher = Dispatcher::spawn(s.engine.subscribe(), config(&url));
    let (_, key_id) = s.create(json!({"owner": "o"})).await;
    revoke(&s, &key_id).await;

    let attempts = [
        next(&mut requests).await,
        next(&mut requests).await,
        next(&mut requests).await,
    ];
    // One event, delivered three times with the same id and body, each validly signed.
    for got in &attempts {
        assert_eq!(got.event_id, attempts[0].event_id);
        assert_eq!(got.body, attempts[0].body);
        keyward_webhooks::verify(SECRET, &got.signature, &got.body, unix_now(), 300).unwrap();
    }
    eventually(WAIT, "the delivery is counted", || async {
        (dispatcher.stats().delivered == 1).then_some(())
    })
    .await;
    let stats = dispatcher.stats();
    assert_eq!((stats.attempts, stats.failed, stats.pending), (3, 0, 0));
}

#[tokio::test]
async fn attempts_are_bounded() {
    let s = Server::start().await;
    let (url, mut requests) = receiver(&[503, 503, 503, 503]).await;
    let mut config = config(&url);
    config.max_attempts = 3;
    let dispatcher = Dispatcher::spawn(s.engine.subscribe(), config);
    let (_, key_id) = s.create(json!({"owner": "o"})).await;
    revoke(&s, &key_id).await;
    eventually(WAIT, "the event is given up", || async {
        (dispatcher.stats().failed == 1).then_some(())
    })
    .await;
    assert_eq!(dispatcher.stats().attempts, 3);
    for _ in 0..3 {
        next(&mut requests).await;
    }
    assert!(requests.try_recv().is_err(), "a fourth attempt was made");
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_verify() {
    let s = Server::start().await;
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            holder.lock().unwrap().push(socket);
        }
    });
    let mut config = config(&url);
    config.queue_capacity = 2;
    config.request_timeout = Duration::from_secs(3600);
    let dispatcher = Dispatcher::spawn(s.engine.subscribe(), config);

    let (live_key, _) = s.create(json!({"owner": "o"})).await;
    let (_, first) = s.create(json!({"owner": "o"})).await;
    revoke(&s, &first).await;
    eventually(WAIT, "the first delivery is in flight", || async {
        (!held.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    for _ in 0..4 {
        let (_, key_id) = s.create(json!({"owner": "o"})).await;
        revoke(&s, &key_id).await;
    }
    // One delivery hangs, two wait in the queue, two were dropped and counted.
    eventually(WAIT, "the queue overflows", || async {
        (dispatcher.stats().dropped == 2).then_some(())
    })
    .await;
    for _ in 0..20 {
        let v = s.verify(json!({"key": live_key})).await;
        assert_eq!(v["valid"], true);
    }
    let stats = dispatcher.stats();
    assert_eq!((stats.pending, stats.delivered, stats.dropped), (3, 0, 2));
}

fn policies(rules: &[&str]) -> RotationConfig {
    RotationConfig {
        policies: rules
            .iter()
            .map(|r| RotationPolicy::parse(r).unwrap())
            .collect(),
        warning_days: 7,
    }
}

#[tokio::test]
async fn the_rotation_report_lists_keys_out_of_policy_and_due_soon() {
    let s = Server::start().await;
    s.engine
        .set_rotation_config(policies(&["acme/live=30", "*/test=90"]));
    let (_, acme_live) = s
        .create(json!({"owner": "o", "tenant": "acme", "environment": "live"}))
        .await;
    let (_, acme_test) = s
        .create(json!({"owner": "o", "tenant": "acme", "environment": "test"}))
        .await;
    let (_, _other) = s
        .create(json!({"owner": "o", "tenant": "other", "environment": "live"}))
        .await;
    let s = &s;
    let report = |query: &'static str| async move {
        let r = s
            .admin("GET", &format!("/v1/reports/rotation{query}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let ids = |v: &Value| -> Vec<(String, String)> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["key_id"].as_str().unwrap().to_owned(),
                    k["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    let v = report("").await;
    assert_eq!(ids(&v), vec![]);
    assert_eq!(
        (v["active_keys"].clone(), v["keys_with_policy"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(v["compliance_ratio"], 1.0);

    s.clock.advance(Days::days(24));
    let v = report("").await;
    assert_eq!(v["within_days"], 7);
    assert_eq!(ids(&v), vec![(acme_live.clone(), "due_soon".to_owned())]);
    assert_eq!(ids(&report("?within_days=0").await), vec![]);

    s.clock.advance(Days::days(6));
    let v = report("?within_days=60").await;
    assert_eq!(
        ids(&v),
        vec![
            (acme_live.clone(), "overdue".to_owned()),
            (acme_test.clone(), "due_soon".to_owned())
        ]
    );
    assert_eq!(v["keys"][0]["age_days"], 30);
    assert_eq!(v["keys"][0]["max_age_days"], 30);
    assert_eq!(v["keys"][0]["due_at"], "2026-07-01T09:00:00Z");
    assert!((v["compliance_ratio"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);

    // Rotating brings the key back into policy.
    let r = s
        .admin(
            "POST",
            &format!("/v1/keys/{acme_live}/rotate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 201);
    let v = report("").await;
    assert_eq!(ids(&v), vec![]);
    assert_eq!(v["compliance_ratio"], 1.0);

    s.admin("GET", "/v1/reports/rotation?within_days=x", None)
        .await
        .problem(400, "invalid_field");
}

/// Gauges set on this thread, by name.
#[derive(Default)]
struct Gauges(Mutex<std::collections::HashMap<String, f64>>);

struct GaugeCell(Arc<Gauges>, String);

impl metrics::GaugeFn for GaugeCell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.0.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

struct GaugeRecorder(Arc<Gauges>);

impl metrics::Recorder for GaugeRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(GaugeCell(
            Arc::clone(&self.0),
            key.name().to_owned(),
        )))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_checks_set_the_gauge_and_announce_each_condition_once() {
    let s = Server::start().await;
    s.engine.set_rotation_config(policies(&["*/live=30"]));
    let mut events = s.engine.subscribe();
    let (_, old) = s.create(json!({"owner": "o"})).await;
    let (_, expiring) = s
        .create(json!({"owner": "o", "environment": "test", "expires_at": "2026-06-11T09:00:00Z"}))
        .await;

    // The upkeep check, run on this thread so a thread-local recorder sees the gauge.
    let gauges = Arc::new(Gauges::default());
    let check = || {
        let recorder = GaugeRecorder(Arc::clone(&gauges));
        metrics::with_local_recorder(&recorder, || {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(s.engine.check_rotation())
            })
        })
        .unwrap()
    };
    let gauge = || gauges.0.lock().unwrap()["keyward_rotation_compliance_ratio"];
    let mut drain = || {
        let mut got = Vec::new();
        while let Ok(event) = events.try_recv() {
            got.push(event);
        }
        got
    };

    let c = check();
    assert_eq!((c.expiring_announced, c.overdue_announced), (0, 0));
    assert_eq!(gauge(), 1.0);

    // Day 4: the key expiring on day 10 is within the 7-day lead time; announced once.
    s.clock.advance(Days::days(4));
    assert_eq!(check().expiring_announced, 1);
    assert_eq!(check().expiring_announced, 0);
    let got = drain();
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0], Event::KeyExpiringSoon { key_id, .. } if *key_id == expiring));

    // Day 31: the live key is out of policy; announced once, and the gauge says 1 of 1 active
    // keys (the other expired) is out.
    s.clock.advance(Days::days(27));
    let c = check();
    assert_eq!((c.expiring_announced, c.overdue_announced), (0, 1));
    assert_eq!(gauge(), 0.0);
    assert_eq!(check().overdue_announced, 0);
    let got = drain();
    assert_eq!(got.len(), 1);
    assert!(matches!(
        &got[0],
        Event::RotationOverdue { key_id, age_days: 31, max_age_days: 30, .. } if *key_id == old
    ));

    // Rotating re-arms it: back in policy, then overdue again 30 days later, announced again.
    let r = s
        .admin("POST", &format!("/v1/keys/{old}/rotate"), Some(json!({})))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(check().overdue_announced, 0);
    assert_eq!(gauge(), 1.0);
    s.clock.advance(Days::days(30));
    assert_eq!(check().overdue_announced, 1);
    assert_eq!(check().overdue_announced, 0);
}

#[tokio::test]
async fn keyward_serve_delivers_to_its_webhook_flags_and_never_logs_the_secret() {
    let (url, mut requests) = receiver(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let secret = std::str::from_utf8(SECRET).unwrap();
    let node = crate::KEYWARD.serve_with(
        &[
            "--data-dir",
            &data,
            "--webhook",
            &url,
            "--webhook-secret",
            secret,
            "--rotation-policy",
            "*/*=30",
        ],
        dir.path(),
    );
    let root = node.root_key.clone().unwrap();
    let http = keyward_testkit::http::Http::new(node.addr);
    let (_, key_id) = http.create(&root, json!({"owner": "o"})).await;
    let r = http.revoke(&root, &key_id, "leaked").await;
    assert_eq!(r.status, 200);
    let got = next(&mut requests).await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["key_id"].as_str()),
        (Some("key_revoked"), Some(key_id.as_str()))
    );
    keyward_webhooks::verify(SECRET, &got.signature, &got.body, unix_now(), 300).unwrap();
    let report = http
        .call("GET", "/v1/reports/rotation", Some(&root), None)
        .await;
    assert_eq!(report.status, 200);
    assert!(!node.log().contains(secret));
    node.kill();
}

/// Issue 10: a webhook secret shorter than 32 bytes is refused at start, by `serve` (flag or
/// environment) and by `gateway` (environment), with an error that says why and never quotes
/// the secret.
#[test]
fn webhook_secrets_shorter_than_32_bytes_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let short = "thirty-one-bytes-of-a-secret-xx";
    assert_eq!(short.len(), 31);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nwebhooks = [\"http://127.0.0.1:9/hook\"]\n\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:9\"\n",
            data.display()
        ),
    )
    .unwrap();
    let serve = |extra: &[&str], env: Option<&str>| {
        let mut command = crate::KEYWARD.command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--webhook", "http://127.0.0.1:9/hook"])
            .args(extra)
            .env_remove("KEYWARD_WEBHOOK_SECRET");
        if let Some(secret) = env {
            command.env("KEYWARD_WEBHOOK_SECRET", secret);
        }
        command
    };
    let mut gateway = crate::KEYWARD.command();
    gateway
        .args(["gateway", "--config"])
        .arg(&config)
        .env("KEYWARD_WEBHOOK_SECRET", short);
    for mut command in [
        serve(&["--webhook-secret", short], None),
        serve(&[], Some(short)),
        gateway,
    ] {
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {err}");
        assert!(
            err.contains("the webhook secret is 31 bytes; it must be at least 32"),
            "{command:?}: {err}"
        );
        assert!(!err.contains(short), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(short));
    }
}
