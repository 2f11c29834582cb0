//! Health, readiness and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_wire::Health;
use serde_json::{Map, Value};

use crate::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        checks: None,
    })
}

/// Readiness, per dependency: `store` (`ok` or `unavailable`) and `change_feed` (`ok`, or
/// `disconnected` while this node cannot hear other nodes' changes and reads the store for
/// every verification). 503 when the store does not answer, so a load balancer prefers nodes
/// that can reach it; a lost change feed alone keeps 200 with status `degraded`, since the
/// node still answers correctly, only more slowly. With Redis configured, `redis` (`ok` or
/// `unavailable`): a Redis outage also keeps 200 with status `degraded`, since limits and quotas
/// fall back to node-local enforcement.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (store, redis) = tokio::join!(state.engine.ready(), state.engine.redis_health());
    let store_ok = match store {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            false
        }
    };
    let feed_ok = state.engine.change_feed_trusted();
    let mut checks = Map::new();
    checks.insert(
        "store".into(),
        Value::from(if store_ok { "ok" } else { "unavailable" }),
    );
    checks.insert(
        "change_feed".into(),
        Value::from(if feed_ok { "ok" } else { "disconnected" }),
    );
    let redis_ok = match redis {
        None => true,
        Some(health) => {
            if let Some(error) = &health.error {
                tracing::warn!(%error, "readiness check: Redis unavailable");
            }
            checks.insert(
                "redis".into(),
                Value::from(if health.up { "ok" } else { "unavailable" }),
            );
            health.up
        }
    };
    let (status, word) = match (store_ok, feed_ok && redis_ok) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    let body = Health {
        status: word.into(),
        checks: Some(checks),
    };
    (status, Json(body)).into_response()
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi_json(),
    )
        .into_response()
}
