//! A small HTTP client for the admin API, used by the CLI's client commands, and [`connect`],
//! which sets one up with a [`Printer`] from a command's `--url` and `--output`.
//!
//! Errors are one line for the user: the server's problem `detail` and `code`, or why the
//! server could not be reached. The root key comes from `KEYWARD_ROOT_KEY` and is sent only as
//! a bearer token.

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyward_wire::Problem;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::output::Printer;
use crate::cli::client::ClientArgs;

/// Environment variable holding the root key.
pub const ROOT_KEY_ENV: &str = "KEYWARD_ROOT_KEY";

/// A client of one server's admin API, sending the root key with every request.
pub struct Client {
    base: String,
    root_key: String,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

/// A non-2xx answer from the server.
#[derive(Debug, thiserror::Error)]
#[error("{detail} ({code}, HTTP {status})")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub detail: String,
}

/// The client and printer a command's `--url` and `--output` ask for.
pub fn connect(args: &ClientArgs) -> anyhow::Result<(Client, Printer)> {
    Ok((Client::new(&args.url)?, Printer::new(args.output)))
}

impl Client {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url must be an http:// URL (terminate TLS in front of keyward); got {url:?}");
        }
        let root_key = std::env::var(ROOT_KEY_ENV).map_err(|_| {
            anyhow!("set {ROOT_KEY_ENV} to a root key (printed once by the first `keyward serve`)")
        })?;
        Ok(Self {
            base,
            root_key: root_key.trim().to_owned(),
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn get<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<T> {
        let query = serde_urlencoded::to_string(query).context("cannot encode the query")?;
        let path = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.send(Method::GET, &path, None).await
    }

    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
    }

    pub async fn put<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(Method::PUT, path, Some(serde_json::to_vec(body)?))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send::<serde_json::Value>(Method::DELETE, path, None)
            .await
            .map(|_| ())
    }

    pub async fn patch<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(Method::PATCH, path, Some(serde_json::to_vec(body)?))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.root_key))
            .header("accept", "application/json");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("cannot build the request")?;
        let response =
            self.inner.request(request).await.map_err(|e| {
                anyhow!("cannot reach keyward at {}: {}", self.base, root_cause(&e))
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response from {}: {e}", self.base))?
            .to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => ApiFailure {
                    status: status.as_u16(),
                    code: p.code,
                    detail: p.detail,
                }
                .into(),
                Err(_) => anyhow!("keyward answered HTTP {status} without a problem body"),
            });
        }
        // 204 No Content has no body to decode.
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected response body from {url}"))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}
