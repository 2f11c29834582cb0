//! Extractors that turn every kind of bad input into a problem+json 4xx: JSON bodies (syntax,
//! unknown fields, wrong content type, size), query strings, and the root-key check, whose
//! required permission is part of the handler's type so a route cannot forget it.

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use keyward_engine::Principal;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;
use crate::listener::ConnectionInfo;

/// A JSON object body whose rejections are problem+json errors.
///
/// Every request body of the API is an object. serde would also accept a struct written as a
/// JSON array of its fields in order (`["kw_live_..."]` for a verify request), which no
/// client means to send; such bodies get a 400 like any other body of the wrong type.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(payload_too_large());
            }
            Err(rejection) if crate::listener::is_body_read_timeout(&rejection) => {
                return Err(request_timeout());
            }
            Err(rejection) => return Err(ApiError::new("invalid_request", rejection.body_text())),
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(
                "invalid_request",
                "invalid JSON body: expected a JSON object, found an array",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// `application/json`, or any `application/...+json`, as axum's `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .rsplit_once('+')
                .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json")))
}

fn payload_too_large() -> ApiError {
    ApiError::new(
        "payload_too_large",
        format!(
            "request bodies are limited to {} bytes",
            crate::MAX_BODY_BYTES
        ),
    )
}

/// The answer to a request whose body did not arrive within the listener's body read timeout.
pub(crate) fn request_timeout() -> ApiError {
    ApiError::new(
        "request_timeout",
        "the request body did not arrive in time; the connection will be closed",
    )
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        "unsupported_media_type",
        "send the body with 'Content-Type: application/json'",
    )
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
        _ => match rejection {
            JsonRejection::JsonDataError(e) => ApiError::new(
                "invalid_request",
                format!("invalid JSON body: {}", inner(e)),
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                "invalid_request",
                format!("malformed JSON body: {}", inner(e)),
            ),
            other => ApiError::new("invalid_request", other.body_text()),
        },
    }
}

fn inner(e: &dyn std::error::Error) -> String {
    // axum wraps serde's message ("Failed to deserialize ..."); the innermost source is the
    // precise one (field name, line and column).
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// A query string whose rejections are problem+json errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|e: QueryRejection| {
                ApiError::new(
                    "invalid_request",
                    format!("invalid query string: {}", inner(&e)),
                )
            })
    }
}

/// A path parameter whose rejections (for example invalid UTF-8) are problem+json errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e| ApiError::new("invalid_request", format!("invalid path: {}", inner(&e))))
    }
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the client it
/// forwards for (see [`crate::trusted_proxy`]). `None` only for a router served without
/// connection information.
pub struct RemoteAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for RemoteAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(remote_of(parts)))
    }
}

/// Where a request comes from in full: the client, and the peer whose word was taken for it
/// (the gateway builds `X-Forwarded-For` from it). `None` as for [`RemoteAddr`].
pub struct ClientAddr(pub Option<crate::trusted_proxy::Resolved>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(info) = parts.extensions.get::<ConnectionInfo>() {
            return Ok(Self(Some(info.resolve(&parts.headers))));
        }
        Ok(Self(remote_of(parts).map(|ip| {
            crate::trusted_proxy::Resolved {
                client: ip,
                peer: ip,
                peer_trusted: false,
            }
        })))
    }
}

pub(crate) fn remote_of(parts: &Parts) -> Option<std::net::IpAddr> {
    if let Some(info) = parts.extensions.get::<ConnectionInfo>() {
        return Some(info.resolve(&parts.headers).client);
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())
}

/// A permission a handler requires of the root key.
pub trait RequiredPermission: Send + Sync + 'static {
    /// The permission name.
    const NAME: &'static str;
}

macro_rules! permissions {
    ($($ty:ident => $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("The `", $name, "` permission.")]
            pub struct $ty;
            impl RequiredPermission for $ty {
                const NAME: &'static str = $name;
            }
        )*
    };
}

permissions! {
    KeysCreate => "keys.create",
    KeysRead => "keys.read",
    KeysUpdate => "keys.update",
    KeysRevoke => "keys.revoke",
    KeysVerify => "keys.verify",
    AuditRead => "audit.read",
    RootManage => "root.manage",
    PlansRead => "plans.read",
    PlansWrite => "plans.write",
    UsageRead => "usage.read",
}

/// A root key that holds permission `P`; extracting it is the authorization check.
pub struct Authorized<P> {
    /// The authenticated root key.
    pub principal: Principal,
    _permission: PhantomData<P>,
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<P: RequiredPermission> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let remote = remote_of(parts);
        let principal = state
            .engine
            .authenticate(bearer(parts), P::NAME, remote)
            .await?;
        Ok(Self {
            principal,
            _permission: PhantomData,
        })
    }
}
