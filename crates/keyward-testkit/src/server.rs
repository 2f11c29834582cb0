//! keyward inside the test process (feature `server`): the engine on a SQLite store in a
//! temporary directory, a manual clock, and the real HTTP stack on 127.0.0.1:0. Only the
//! binary's integration tests use it (see the crate docs for why no other crate may).

use std::sync::Arc;

use axum::Router;
use keyward_engine::clock::ManualClock;
use keyward_engine::{EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_http::listener::Connections;
use keyward_store::SqliteStore;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;

use crate::T0;
use crate::http::{Http, Response};

/// When the in-process server's clock starts: 09:00 on 1 June 2026, 151 days and 9 hours
/// after [`T0`]. Not `T0` itself, because the integration tests write the dates they expect
/// against this instant (the usage buckets of `2026-06-01T09:00:00Z` and `…T10:00:00Z`, the
/// 30-day usage window from `2026-05-03`, expiries and rotation due dates in June and July),
/// and they need an instant inside a day, where an hour's bucket and its day's bucket start
/// at different times; at `T0`, a midnight, they would coincide.
pub const START: OffsetDateTime = T0.saturating_add(Duration::hours(151 * 24 + 9));

/// keyward running in this process on port 0, with a manual clock starting at [`START`].
pub struct Server {
    pub http: Http,
    pub root_key: String,
    pub engine: Arc<Keyward>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// Starts with the default engine and listener settings.
    pub async fn start() -> Self {
        Self::start_with(|engine| engine).await
    }

    /// Starts with an engine adjusted by `configure` (for example its anomaly settings).
    pub async fn start_with(configure: impl FnOnce(Keyward) -> Keyward) -> Self {
        Self::start_listening(configure, Connections::defaults("admin")).await
    }

    /// Starts with the admin listener's connection policy (timeouts, cap, trusted proxies).
    pub async fn start_listening(
        configure: impl FnOnce(Keyward) -> Keyward,
        connections: Connections,
    ) -> Self {
        Self::launch(configure, connections, Router::new()).await
    }

    /// Starts with `extra` routes behind the router's layers (request log, panic catcher):
    /// routes the product must not have, such as one that panics.
    pub async fn start_with_routes(extra: Router<AppState>) -> Self {
        Self::launch(|engine| engine, Connections::defaults("admin"), extra).await
    }

    async fn launch(
        configure: impl FnOnce(Keyward) -> Keyward,
        connections: Connections,
        extra: Router<AppState>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let clock = Arc::new(ManualClock::new(START));
        let engine = Arc::new(configure(Keyward::new(
            Arc::new(store),
            clock.clone(),
            EngineConfig::default(),
        )));
        let root = engine.bootstrap().await.unwrap().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = AppState {
            engine: engine.clone(),
        };
        tokio::spawn(keyward_http::serve_api(
            listener,
            state.clone(),
            keyward_http::router_with(state, extra),
            connections,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            http: Http::new(addr),
            root_key: root.key.expose().to_owned(),
            engine,
            clock,
            dir,
            _shutdown: tx,
        }
    }

    /// A call authenticated with the bootstrap root key.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.http
            .call(method, path, Some(&self.root_key), body)
            .await
    }

    /// Creates a key and returns (secret, key_id).
    pub async fn create(&self, body: Value) -> (String, String) {
        self.http.create(&self.root_key, body).await
    }

    /// Revokes an API key.
    pub async fn revoke(&self, key_id: &str, reason: &str) -> Response {
        self.http.revoke(&self.root_key, key_id, reason).await
    }

    /// Verifies and returns the response body.
    pub async fn verify(&self, body: Value) -> Value {
        let r = self.admin("POST", "/v1/keys/verify", Some(body)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::START;

    /// The dates the integration tests assert are written against this instant.
    #[test]
    fn the_server_clock_starts_at_nine_on_the_first_of_june() {
        assert_eq!(START, datetime!(2026-06-01 09:00 UTC));
    }
}
