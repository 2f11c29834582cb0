//! The one API error type, its stable code table, and RFC 9457 problem bodies.
//!
//! Every error response is `application/problem+json` with a stable snake_case `code`. Internal
//! failures return a generic detail; what actually went wrong goes to the log. Details that
//! quote user input pass through key redaction first, so a key pasted into the wrong field is
//! never echoed back.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_core::permission::QueryError;
use keyward_core::redact::redact;
use keyward_core::validate::FieldError;
use keyward_engine::{AuthError, EngineError};
use keyward_store::StoreError;
use keyward_wire::Problem;

/// Stable error codes: (code, HTTP status, title). The table in docs/errors.md mirrors this.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    ("invalid_request", 400, "The request could not be read"),
    ("invalid_field", 400, "A field is invalid"),
    (
        "invalid_permission_query",
        400,
        "The permission query does not parse",
    ),
    ("unauthenticated", 401, "A valid root key is required"),
    ("missing_key", 401, "No API key was presented"),
    ("malformed_key", 401, "The API key is malformed"),
    ("unknown_key", 401, "The API key is not recognized"),
    ("revoked_key", 401, "The API key was revoked"),
    ("expired_key", 401, "The API key has expired"),
    ("disabled_key", 401, "The API key is disabled"),
    (
        "tenant_not_allowed",
        403,
        "The API key belongs to another tenant",
    ),
    (
        "environment_not_allowed",
        403,
        "The API key belongs to another environment",
    ),
    (
        "insufficient_permissions",
        403,
        "The API key lacks a permission",
    ),
    (
        "route_not_allowed",
        403,
        "The API key may not call this endpoint",
    ),
    (
        "ip_not_allowed",
        403,
        "The API key may not be used from this address",
    ),
    (
        "origin_not_allowed",
        403,
        "The API key may not be used from this origin",
    ),
    ("rate_limited", 429, "Rate limit reached"),
    ("usage_exceeded", 429, "Quota used up"),
    (
        "too_many_unknown_keys",
        429,
        "Too many unknown keys from this address",
    ),
    ("forbidden", 403, "The root key lacks a permission"),
    (
        "out_of_scope",
        403,
        "The root key is confined to one tenant",
    ),
    ("not_found", 404, "No such endpoint"),
    ("key_not_found", 404, "No such key"),
    ("plan_not_found", 404, "No such plan"),
    ("method_not_allowed", 405, "Method not allowed"),
    ("key_revoked", 409, "The key is revoked"),
    ("plan_exists", 409, "A plan with this name exists"),
    ("plan_in_use", 409, "Keys still follow this plan"),
    (
        "last_root_key",
        409,
        "The last root key that can manage root keys cannot be revoked",
    ),
    (
        "conflict",
        409,
        "The request conflicts with the key's current state",
    ),
    ("payload_too_large", 413, "The request body is too large"),
    (
        "request_timeout",
        408,
        "The request body did not arrive in time",
    ),
    (
        "misdirected_request",
        421,
        "This listener does not answer for that host",
    ),
    ("bad_gateway", 502, "The upstream failed"),
    (
        "gateway_timeout",
        504,
        "The upstream did not answer in time",
    ),
    (
        "unsupported_media_type",
        415,
        "The request body must be application/json",
    ),
    ("internal", 500, "Internal error"),
    (
        "auth_misconfigured",
        400,
        "The proxy's keyward root key is invalid",
    ),
    ("store_unavailable", 503, "The key store is unavailable"),
    ("store_saturated", 503, "The key store is busy"),
];

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    code: &'static str,
    detail: String,
    field: Option<String>,
    status: Option<StatusCode>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with one of the codes of [`ERROR_CODES`].
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: redact(&detail.into()).into_owned(),
            field: None,
            status: None,
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds` to the answer.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Answers with `status` instead of the code's usual one (nginx `auth_request` accepts
    /// only 2xx, 401 and 403 from the auth endpoint).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A 400 for a field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self::new("invalid_field", format!("{field}: {message}")).with_field(field)
    }

    /// A 500 whose cause is logged, not returned.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %redact(&error_chain(cause)), "internal error");
        Self::new("internal", "an internal error occurred; it has been logged")
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    fn status_and_title(&self) -> (StatusCode, &'static str) {
        let (status, title) = self.table_status_and_title();
        (self.status.unwrap_or(status), title)
    }

    fn table_status_and_title(&self) -> (StatusCode, &'static str) {
        ERROR_CODES
            .iter()
            .find(|(code, _, _)| *code == self.code)
            .and_then(|(_, status, title)| StatusCode::from_u16(*status).ok().map(|s| (s, *title)))
            .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "Internal error"))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl ApiError {
    /// The status and the problem+json body.
    pub fn problem(self) -> (StatusCode, Vec<u8>) {
        let (status, title) = self.status_and_title();
        let problem = Problem {
            type_: format!("urn:keyward:problem:{}", self.code),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            field: self.field,
        };
        (status, serde_json::to_vec(&problem).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after;
        let (status, body) = self.problem();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward\""),
            );
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::field(e.field, e.message)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::new("invalid_permission_query", e.to_string()).with_field("permissions")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict | StoreError::Duplicate => Self::new("conflict", e.to_string()),
            StoreError::PlanMissing(plan) => Self::field("plan", format!("no plan named {plan:?}")),
            StoreError::Backend(_) => {
                tracing::error!(error = %redact(&error_chain(&e)), "store unavailable");
                Self::new(
                    "store_unavailable",
                    "the key store did not answer; retry later",
                )
            }
            StoreError::Saturated(_) => {
                tracing::warn!(error = %redact(&error_chain(&e)), "store saturated: request shed");
                Self::new(
                    "store_saturated",
                    "the key store is busy; retry after Retry-After seconds",
                )
                .with_retry_after(1)
            }
            StoreError::LastRootKey(key_id) => Self::new(
                "last_root_key",
                format!(
                    "{key_id} is the last usable root key with root.manage; create another one first"
                ),
            ),
            StoreError::Open { .. } | StoreError::Corrupt(_) => Self::internal(&e),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound { key_id } => {
                Self::new("key_not_found", format!("no key with key_id {key_id}"))
            }
            EngineError::Invalid(field) => field.into(),
            EngineError::Revoked { key_id } => Self::new(
                "key_revoked",
                format!("key {key_id} is revoked and cannot be changed"),
            ),
            EngineError::Conflict => {
                Self::new("conflict", "the key was changed concurrently; retry")
            }
            EngineError::LastRootKey { .. } => Self::new("last_root_key", e.to_string()),
            EngineError::PlanNotFound { .. } => Self::new("plan_not_found", e.to_string()),
            EngineError::PlanExists { .. } => Self::new("plan_exists", e.to_string()),
            EngineError::PlanInUse { .. } => Self::new("plan_in_use", e.to_string()),
            EngineError::OutOfScope { .. } => Self::new("out_of_scope", e.to_string()),
            EngineError::Escalation { ref field, .. } => {
                let field = field.clone();
                Self::new("forbidden", e.to_string()).with_field(field)
            }
            EngineError::TooManyUnknownKeys {
                retry_after_seconds,
            } => Self::new(
                "too_many_unknown_keys",
                "this address presented too many keys that are not known; retry after \
                 Retry-After seconds",
            )
            .with_retry_after(retry_after_seconds),
            EngineError::Store(s) => s.into(),
            EngineError::Entropy(_) => Self::internal(&e),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated => Self::new(
                "unauthenticated",
                "send a valid root key as 'Authorization: Bearer <root key>'",
            ),
            AuthError::Forbidden { permission } => Self::new(
                "forbidden",
                format!("the root key lacks the permission {permission}"),
            ),
            AuthError::Engine(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique_and_maps_to_its_status() {
        for (i, (code, status, _)) in ERROR_CODES.iter().enumerate() {
            assert!(
                ERROR_CODES[i + 1..].iter().all(|(c, _, _)| c != code),
                "{code} twice"
            );
            let response = ApiError::new(code, "x").into_response();
            assert_eq!(response.status().as_u16(), *status, "{code}");
        }
    }

    #[test]
    fn finding_5_shed_and_throttled_answers_say_when_to_retry() {
        let saturated: ApiError =
            EngineError::Store(StoreError::Saturated("pool timed out".into())).into();
        let throttled: ApiError = EngineError::TooManyUnknownKeys {
            retry_after_seconds: 7,
        }
        .into();
        for (error, status, code, retry) in [
            (saturated, 503, "store_saturated", "1"),
            (throttled, 429, "too_many_unknown_keys", "7"),
        ] {
            assert_eq!(error.code(), code);
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[header::RETRY_AFTER], retry);
        }
    }

    #[test]
    fn details_are_redacted() {
        let e = ApiError::new(
            "invalid_request",
            "bad: kw_live_AbCdEfGhIjKlMnOpQrStUvWxYz01234567abcd",
        );
        assert_eq!(e.detail, "bad: [REDACTED]");
    }
}
