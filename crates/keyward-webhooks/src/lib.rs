//! keyward's webhooks: every event received from the engine's event bus (the receiver that
//! `keyward_engine::Keyward::subscribe` returns) is POSTed as JSON ([`payload`]) to each
//! configured endpoint, signed ([`signature`]), retried with exponential backoff, and never on
//! the verify path. The events and their JSON are defined in `keyward-events`; this crate
//! depends on no engine, store or Redis code.
//!
//! ```text
//! engine.publish ─► broadcast (bounded, never blocks) ─► fan-out task
//!                                                    └─► per-endpoint queue (bounded, try_send)
//!                                                        └─► delivery task: POST, retry, backoff
//! ```
//!
//! A full queue drops the event and counts it (`keyward_webhook_deliveries_total{outcome="dropped"}`),
//! so a receiver that hangs costs its own queue, never a verification or another endpoint.
//! Payloads carry key ids, owners and tenants, never a key, a hash or the webhook secret.
//!
//! ```no_run
//! # async fn example(events: tokio::sync::broadcast::Receiver<keyward_events::Event>) -> Result<(), keyward_webhooks::WebhookError> {
//! let config = keyward_webhooks::WebhookConfig::new(
//!     vec!["http://alerts.internal/keyward".to_owned()],
//!     b"a shared secret of at least 32 bytes".to_vec(),
//! )?;
//! let dispatcher = keyward_webhooks::Dispatcher::spawn(events, config);
//! # drop(dispatcher); Ok(()) }
//! ```

pub mod signature;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyward_events::Event;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};

/// Name of the delivery counter, labelled `outcome` = `delivered`, `failed` or `dropped`.
pub const DELIVERIES_METRIC: &str = "keyward_webhook_deliveries_total";

/// Invalid webhook settings.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL does not parse or has no host.
    #[error("webhook URL `{0}` is not a valid absolute URL")]
    InvalidUrl(String),
    /// Only `http://` is supported (keyward has no TLS client); put a TLS-originating proxy
    /// in front of an `https://` receiver.
    #[error(
        "webhook URL `{0}`: only http:// is supported (use a local TLS-originating proxy for https)"
    )]
    UnsupportedScheme(String),
    /// Endpoints without a secret: receivers could not tell keyward's events from forgeries.
    #[error("webhooks need a signing secret (--webhook-secret or KEYWARD_WEBHOOK_SECRET)")]
    MissingSecret,
    /// A secret shorter than [`MIN_SECRET_BYTES`]: short enough to guess offline from one
    /// signed payload.
    #[error(
        "the webhook secret is {0} bytes; it must be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret(usize),
}

/// Shortest webhook secret accepted, in bytes: HMAC-SHA256's own output size, so the key is
/// never the weaker part (RFC 2104 section 3 recommends keys no shorter than the hash output).
pub const MIN_SECRET_BYTES: usize = 32;

/// Where and how events are delivered.
#[derive(Clone)]
pub struct WebhookConfig {
    endpoints: Vec<Uri>,
    secret: Zeroizing<Vec<u8>>,
    /// Events waiting per endpoint before new ones are dropped (default 1024).
    pub queue_capacity: usize,
    /// Attempts per event and endpoint, the first included (default 5).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failure (default 1 s).
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 60 s).
    pub max_backoff: Duration,
    /// Bound on one attempt, connection and response included (default 10 s).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("endpoints", &self.endpoints)
            .field("secret", &"<redacted>")
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl WebhookConfig {
    /// Endpoints (`http://` URLs) and the signing secret, with default queueing and retries.
    pub fn new(endpoints: Vec<String>, secret: Vec<u8>) -> Result<Self, WebhookError> {
        let secret = Zeroizing::new(secret);
        if secret.is_empty() {
            return Err(WebhookError::MissingSecret);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::ShortSecret(secret.len()));
        }
        let endpoints = endpoints
            .into_iter()
            .map(|url| {
                let uri: Uri = url
                    .parse()
                    .map_err(|_| WebhookError::InvalidUrl(url.clone()))?;
                match (uri.scheme_str(), uri.host()) {
                    (Some("http"), Some(_)) => Ok(uri),
                    (Some("https"), _) => Err(WebhookError::UnsupportedScheme(url)),
                    _ => Err(WebhookError::InvalidUrl(url)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            endpoints,
            secret,
            queue_capacity: 1024,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Uri] {
        &self.endpoints
    }
}

/// Delivery counters of one dispatcher (all endpoints), for tests and diagnostics; the same
/// outcomes go to the metrics recorder.
#[derive(Debug, Default)]
pub struct WebhookStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
    pending: AtomicU64,
}

/// A point-in-time copy of [`WebhookStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Events a receiver accepted (2xx).
    pub delivered: u64,
    /// Events given up on after the last attempt.
    pub failed: u64,
    /// Events dropped because a queue was full (or the bus overflowed).
    pub dropped: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Events queued or being delivered.
    pub pending: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }

    fn outcome(&self, outcome: &'static str, n: u64) {
        let counter = match outcome {
            "delivered" => &self.delivered,
            "failed" => &self.failed,
            _ => &self.dropped,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(DELIVERIES_METRIC, "outcome" => outcome).increment(n);
    }
}

/// One event, serialised once and shared by every endpoint's queue.
#[derive(Debug)]
struct Delivery {
    id: String,
    kind: &'static str,
    body: Bytes,
}

/// The running dispatcher; dropping it stops delivery (queued events are lost).
pub struct Dispatcher {
    stats: Arc<WebhookStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The JSON body of an event ([`Event::webhook_body`]): the event's own fields and `type`, plus
/// an `id` that stays the same across retries so receivers can drop duplicates.
pub fn payload(id: &str, event: &Event) -> Bytes {
    Bytes::from(event.webhook_body(id))
}

fn event_id() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("evt_{}", hex::encode(bytes))
}

impl Dispatcher {
    /// Starts delivering what `events` receives. Needs a Tokio runtime.
    pub fn spawn(events: broadcast::Receiver<Event>, config: WebhookConfig) -> Self {
        let stats = Arc::new(WebhookStats::default());
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let config = Arc::new(config);
        let mut tasks = Vec::new();
        let mut queues = Vec::new();
        for endpoint in config.endpoints.iter().cloned() {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            queues.push(tx);
            tasks.push(tokio::spawn(deliver_all(
                endpoint,
                rx,
                client.clone(),
                Arc::clone(&config),
                Arc::clone(&stats),
            )));
        }
        tasks.push(tokio::spawn(fan_out(events, queues, Arc::clone(&stats))));
        Self { stats, tasks }
    }

    /// The delivery counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

/// Copies each event into every endpoint's queue without ever waiting on one.
async fn fan_out(
    mut events: broadcast::Receiver<Event>,
    queues: Vec<mpsc::Sender<Arc<Delivery>>>,
    stats: Arc<WebhookStats>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "webhook dispatcher fell behind the event bus; events dropped"
                );
                stats.outcome("dropped", missed * queues.len() as u64);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let id = event_id();
        let delivery = Arc::new(Delivery {
            body: payload(&id, &event),
            id,
            kind: event.kind(),
        });
        for queue in &queues {
            stats.pending.fetch_add(1, Ordering::Relaxed);
            if queue.try_send(Arc::clone(&delivery)).is_err() {
                stats.pending.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(event = delivery.kind, "webhook queue full; event dropped");
                stats.outcome("dropped", 1);
            }
        }
    }
}

/// Delivers one endpoint's queue in order, each event with its retries.
async fn deliver_all(
    endpoint: Uri,
    mut queue: mpsc::Receiver<Arc<Delivery>>,
    client: Client<HttpConnector, Full<Bytes>>,
    config: Arc<WebhookConfig>,
    stats: Arc<WebhookStats>,
) {
    while let Some(delivery) = queue.recv().await {
        let mut backoff = config.initial_backoff;
        let mut attempt = 1;
        loop {
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            let result = attempt_once(&client, &endpoint, &config, &delivery).await;
            match result {
                Ok(()) => {
                    stats.outcome("delivered", 1);
                    break;
                }
                Err(reason) if attempt >= config.max_attempts => {
                    tracing::warn!(%endpoint, event = delivery.kind, id = %delivery.id, attempt, %reason, "webhook delivery failed; giving up");
                    stats.outcome("failed", 1);
                    break;
                }
                Err(reason) => {
                    tracing::info!(%endpoint, event = delivery.kind, id = %delivery.id, attempt, %reason, "webhook delivery failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.max_backoff);
                    attempt += 1;
                }
            }
        }
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One POST; `Err` names why it did not count as delivered.
async fn attempt_once(
    client: &Client<HttpConnector, Full<Bytes>>,
    endpoint: &Uri,
    config: &WebhookConfig,
    delivery: &Delivery,
) -> Result<(), String> {
    // Signed at send time, so a retry carries a fresh timestamp within the receiver's window.
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let request = hyper::Request::post(endpoint.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "keyward-webhooks")
        .header(
            SIGNATURE_HEADER,
            sign(&config.secret, timestamp, &delivery.body),
        )
        .header("keyward-event-id", &delivery.id)
        .header("keyward-event-type", delivery.kind)
        .body(Full::new(delivery.body.clone()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the (ignored) body so the connection can be reused.
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(config.request_timeout, exchange).await {
        Err(_) => Err("timed out".to_owned()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.is_success() => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn only_http_urls_and_a_secret_are_accepted() {
        let ok = |url: &str| WebhookConfig::new(vec![url.into()], SECRET.to_vec());
        assert!(ok("http://127.0.0.1:9/x").is_ok());
        assert!(matches!(
            ok("https://example.com"),
            Err(WebhookError::UnsupportedScheme(_))
        ));
        assert!(matches!(ok("not a url"), Err(WebhookError::InvalidUrl(_))));
        assert!(matches!(
            WebhookConfig::new(vec!["http://x".into()], Vec::new()),
            Err(WebhookError::MissingSecret)
        ));
    }

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        let url = || vec!["http://127.0.0.1:9/x".to_owned()];
        for len in [1, 16, 31] {
            let err = WebhookConfig::new(url(), vec![b'x'; len]).unwrap_err();
            assert!(
                matches!(err, WebhookError::ShortSecret(n) if n == len),
                "{err:?}"
            );
            assert!(err.to_string().contains("at least 32"), "{err}");
        }
        assert!(WebhookConfig::new(url(), vec![b'x'; 32]).is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = WebhookConfig::new(vec![], SECRET.to_vec()).unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn payload_is_the_event_with_an_id() {
        let event = Event::KeyRevoked {
            key_id: "key_x".into(),
            owner: "o".into(),
            tenant: None,
            reason: "leaked".into(),
            at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let body: Value = serde_json::from_slice(&payload("evt_1", &event)).unwrap();
        assert_eq!(body["id"], "evt_1");
        assert_eq!(body["type"], "key_revoked");
        assert_eq!(body["key_id"], "key_x");
    }
}
