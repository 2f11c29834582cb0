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

/// Readiness: the store answers. 503 otherwise, so a load balancer stops sending traffic.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = match state.engine.ready().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            false
        }
    };
    let mut checks = Map::new();
    checks.insert(
        "store".into(),
        Value::from(if store_ok { "ok" } else { "unavailable" }),
    );
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if store_ok { "ok" } else { "unavailable" }.into(),
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
