//! Boots keyward for tests and talks HTTP to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyward_engine::clock::ManualClock;
use keyward_engine::{EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_store::SqliteStore;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::net::TcpListener;

pub const T0: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

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
}

/// keyward running in this process on port 0, with a manual clock.
pub struct Server {
    pub http: Http,
    pub root_key: String,
    pub engine: Arc<Keyward>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|engine| engine).await
    }

    /// Starts with an engine adjusted by `configure` (for example its anomaly settings).
    pub async fn start_with(configure: impl FnOnce(Keyward) -> Keyward) -> Self {
        Self::start_listening(
            configure,
            keyward_http::listener::Connections::defaults("admin"),
        )
        .await
    }

    /// Starts with the admin listener's connection policy (timeouts, cap, trusted proxies).
    pub async fn start_listening(
        configure: impl FnOnce(Keyward) -> Keyward,
        connections: keyward_http::listener::Connections,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let clock = Arc::new(ManualClock::new(T0));
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
        tokio::spawn(keyward_http::serve(
            listener,
            state,
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
        let r = self.admin("POST", "/v1/keys", Some(body)).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let json = r.json();
        (
            json["key"].as_str().unwrap().to_owned(),
            json["record"]["key_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Verifies and returns the response body.
    pub async fn verify(&self, body: Value) -> Value {
        let r = self.admin("POST", "/v1/keys/verify", Some(body)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

/// The Redis for shared-limit tests (`KEYWARD_TEST_REDIS_URL`), or `None` after printing that
/// the test was skipped; with `CI=true` a missing Redis fails the test instead.
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var("KEYWARD_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: KEYWARD_TEST_REDIS_URL is not set, and CI=true requires Redis"
            );
            // Past the harness's output capture, so the skip is seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: set KEYWARD_TEST_REDIS_URL=redis://127.0.0.1:6379 to run it"
            );
            None
        }
    }
}

/// A fresh Redis key namespace, so tests can run in parallel.
pub fn redis_namespace() -> String {
    let id = keyward_core::key::generate_key_id(&mut rand::rngs::SysRng).unwrap();
    format!("kwtest:{id}")
}

/// The keyward binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyward"))
}

/// A `keyward serve` child process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// The root key if this start bootstrapped one.
    pub root_key: Option<String>,
    pub stdout_lines: Vec<String>,
    /// Where the server's log (standard error, at debug level) is written.
    pub log_path: PathBuf,
}

impl Process {
    /// Starts `keyward serve` on port 0 in `data_dir` and waits for its "listening on" line.
    pub fn start(data_dir: &Path) -> Self {
        let dir = data_dir.to_str().unwrap();
        Self::start_with(&["--data-dir", dir], data_dir)
    }

    /// Starts `keyward serve` on port 0 with `args` (for example `--store URL`), its log in
    /// `log_dir`, and waits for its "listening on" line.
    pub fn start_with(args: &[&str], log_dir: &Path) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let log_path = log_dir.join("serve.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("KEYWARD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let addr = loop {
            let mut line = String::new();
            // The server prints its address after opening the store; EOF means it exited.
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "keyward serve exited early: {lines:?}"
            );
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            lines.push(line.trim_end().to_owned());
        };
        let root_key = lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix("kwroot_")
                .map(|rest| format!("kwroot_{rest}"))
        });
        Self {
            child,
            addr,
            root_key,
            stdout_lines: lines,
            log_path,
        }
    }

    /// Runs a CLI command against this server with `root_key`.
    pub fn cli(&self, root_key: &str, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .env("KEYWARD_URL", format!("http://{}", self.addr))
            .env("KEYWARD_ROOT_KEY", root_key)
            .output()
            .unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the process with SIGTERM and waits for it: its shutdown code runs (final flushes).
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "keyward serve exited with {status} after SIGTERM"
        );
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
