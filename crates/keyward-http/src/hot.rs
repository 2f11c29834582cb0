//! The lean path for the two endpoints that carry the traffic: `POST /v1/keys/verify` and
//! `GET /v1/auth` (nginx's `auth_request`).
//!
//! The listener offers every admin request to [`Hot`] before the router sees it; it takes those
//! [`endpoint`] names, on their method and raw path bytes. A match is served here by the very extractors and handlers the
//! router would run (so the answers, problem bodies included, are the same by construction),
//! with the layers the router puts around them restated in the same order: the panic catcher
//! outermost, then the request span and log line ([`crate::logged`]), then the body limit.
//! What this skips is the router itself: route matching, the boxed and cloned services of each
//! layer, and the extensions they insert. Anything else, including a HEAD, another method on
//! these paths or a path spelt differently (`/v1/keys/verify/`, `%76erify`), goes to the router
//! and gets the router's answer.

use std::panic::AssertUnwindSafe;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Authorized, KeysVerify, RemoteAddr};

/// An endpoint served on the lean path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/keys/verify`.
    Verify,
    /// `GET /v1/auth`.
    Auth,
}

impl Endpoint {
    /// The route template, as the router's `MatchedPath` would name it in spans and logs.
    fn route(self) -> &'static str {
        match self {
            Self::Verify => "/v1/keys/verify",
            Self::Auth => "/v1/auth",
        }
    }
}

/// The lean-path endpoint a request is for, if any: an exact method and path match (the query
/// string is not part of the path).
pub(crate) fn endpoint<B>(request: &axum::http::Request<B>) -> Option<Endpoint> {
    let path = request.uri().path().as_bytes();
    match *request.method() {
        Method::POST if path == b"/v1/keys/verify" => Some(Endpoint::Verify),
        Method::GET if path == b"/v1/auth" => Some(Endpoint::Auth),
        _ => None,
    }
}

/// The lean path as the listener's front ([`crate::listener::Front`]).
#[derive(Clone)]
pub(crate) struct Hot(pub(crate) AppState);

impl crate::listener::Front for Hot {
    fn take(
        &self,
        request: Request,
    ) -> Result<impl Future<Output = Response> + Send + use<>, Request> {
        match endpoint(&request) {
            Some(endpoint) => Ok(serve(self.0.clone(), endpoint, request)),
            None => Err(request),
        }
    }
}

/// Serves `request` for `endpoint` as the router would.
async fn serve(state: AppState, endpoint: Endpoint, mut request: Request) -> Response {
    DefaultBodyLimit::max(crate::MAX_BODY_BYTES).apply(&mut request);
    let method = request.method().clone();
    let handled = crate::logged(
        &method,
        Some(endpoint.route()),
        handle(state, endpoint, request),
    );
    AssertUnwindSafe(handled)
        .catch_unwind()
        .await
        .unwrap_or_else(crate::panic_response)
}

async fn handle(state: AppState, endpoint: Endpoint, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    match endpoint {
        Endpoint::Verify => {
            // The handler's extractors in its argument order: the root key, then the body.
            let auth = match Authorized::<KeysVerify>::from_request_parts(&mut parts, &state).await
            {
                Ok(auth) => auth,
                Err(rejection) => return rejection.into_response(),
            };
            let body = match ApiJson::from_request(Request::from_parts(parts, body), &state).await {
                Ok(body) => body,
                Err(rejection) => return rejection.into_response(),
            };
            crate::keys::verify_key(State(state), auth, body)
                .await
                .into_response()
        }
        Endpoint::Auth => {
            let Ok(remote) = RemoteAddr::from_request_parts(&mut parts, &state).await;
            let query = match ApiQuery::from_request_parts(&mut parts, &state).await {
                Ok(query) => query,
                Err(rejection) => return rejection.into_response(),
            };
            let headers: HeaderMap = std::mem::take(&mut parts.headers);
            crate::auth::nginx_auth(State(state), remote, headers, query)
                .await
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> axum::http::Request<()> {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_the_exact_method_and_path_take_the_lean_path() {
        let cases = [
            (Method::POST, "/v1/keys/verify", Some(Endpoint::Verify)),
            (Method::POST, "/v1/keys/verify?x=1", Some(Endpoint::Verify)),
            (
                Method::POST,
                "http://h/v1/keys/verify",
                Some(Endpoint::Verify),
            ),
            (Method::GET, "/v1/auth", Some(Endpoint::Auth)),
            (
                Method::GET,
                "/v1/auth?permissions=a.b&cost=2",
                Some(Endpoint::Auth),
            ),
            (Method::GET, "/v1/keys/verify", None),
            (Method::PUT, "/v1/keys/verify", None),
            (Method::HEAD, "/v1/auth", None),
            (Method::POST, "/v1/auth", None),
            (Method::POST, "/v1/keys/verify/", None),
            (Method::POST, "/v1/keys/%76erify", None),
            (Method::POST, "/v1/keys//verify", None),
            (Method::POST, "/V1/KEYS/VERIFY", None),
            (Method::POST, "/v1/keys/verify;x", None),
            (Method::GET, "/v1/auth/", None),
            (Method::GET, "/v1/Auth", None),
            (Method::GET, "/v1/auth%00", None),
        ];
        for (method, uri, expected) in cases {
            assert_eq!(
                endpoint(&request(method.clone(), uri)),
                expected,
                "{method} {uri}"
            );
        }
    }
}
