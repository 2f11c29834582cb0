//! A small HTTP/1 client bound to one server, reading each response whole, with checks for
//! keyward's problem+json errors.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (failing the test, with the body, if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The header's value, or `""` when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// Asserts a problem+json error with `status` and `code`; returns the body.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/problem+json");
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status);
        assert_eq!(body["type"], format!("urn:keyward:problem:{code}"));
        body
    }
}

/// A small HTTP client bound to one server.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a built request and reads the whole response.
    async fn send(&self, builder: hyper::http::request::Builder, body: Vec<u8>) -> Response {
        let request = builder.body(Full::new(Bytes::from(body))).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Response {
            status,
            headers,
            body,
        }
    }

    fn builder(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("{}{}", self.base, path))
    }

    /// Sends a request with an optional bearer token and raw body with content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Response {
        let mut builder = self.builder(method, path);
        if let Some(token) = bearer {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                if !content_type.is_empty() {
                    builder = builder.header("content-type", content_type);
                }
                bytes
            }
            None => Vec::new(),
        };
        self.send(builder, bytes).await
    }

    /// A request with arbitrary headers and no body.
    pub async fn raw_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut builder = self.builder(method, path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.send(builder, Vec::new()).await
    }

    /// A `GET /v1/auth` as nginx sends it: its root key in `X-Keyward-Root-Key`, the client's key
    /// as a bearer token, and the original request's headers.
    pub async fn auth_request(
        &self,
        root: Option<&str>,
        key: Option<&str>,
        extra: &[(&str, &str)],
        query: &str,
    ) -> Response {
        let mut headers: Vec<(&str, String)> =
            extra.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
        if let Some(root) = root {
            headers.push(("x-keyward-root-key", root.to_owned()));
        }
        if let Some(key) = key {
            headers.push(("authorization", format!("Bearer {key}")));
        }
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.raw_with_headers("GET", &format!("/v1/auth{query}"), &pairs)
            .await
    }

    /// Sends `body` (if any) as JSON, with an optional bearer token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        self.raw(method, path, bearer, body).await
    }

    /// Creates a key with `POST /v1/keys` authenticated by `root`; returns (key, key_id).
    pub async fn create(&self, root: &str, body: Value) -> (String, String) {
        let r = self.call("POST", "/v1/keys", Some(root), Some(body)).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let json = r.json();
        (
            json["key"].as_str().unwrap().to_owned(),
            json["record"]["key_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Revokes an API key with `POST /v1/keys/{key_id}/revoke`, authenticated by `root`.
    pub async fn revoke(&self, root: &str, key_id: &str, reason: &str) -> Response {
        let path = format!("/v1/keys/{key_id}/revoke");
        let body = serde_json::json!({ "reason": reason });
        self.call("POST", &path, Some(root), Some(body)).await
    }

    /// `POST /v1/keys/verify` with `body`, authenticated by `root`.
    pub async fn verify(&self, root: &str, body: Value) -> Response {
        self.call("POST", "/v1/keys/verify", Some(root), Some(body))
            .await
    }
}
