//! The no-leak test (issue 5): a whole session of creating, verifying, rotating and revoking
//! keys, with every kind of mistake a client makes with a key (in the URL path and query, in
//! unknown JSON fields, in metadata, as a root key, in a broken body), and a panicking handler.
//! Every key the session created or presented is then looked for in every output channel: the
//! server's JSON log at debug level, every response body and header, the audit log (through the
//! API and in the bytes of the SQLite files), `GET /metrics` when the server has it, and the
//! usage report (`GET /v1/usage` and its CSV export).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use keyward_core::key::{Prefix, generate_key};
use keyward_core::redact::REDACTED;
use keyward_engine::clock::ManualClock;
use keyward_engine::{EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_store::SqliteStore;
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::testkit::{Http, Process, Response, T0};

/// A fresh, well-formed key that the server has never seen.
fn stranger(prefix: &str) -> String {
    let prefix = Prefix::new(prefix).unwrap();
    generate_key(&prefix, &mut rand::rngs::SysRng)
        .unwrap()
        .expose()
        .to_owned()
}

/// The 32 random characters of a key: what must not appear anywhere, whatever surrounds it.
fn secret_part(key: &str) -> &str {
    let body = &key[key.rfind('_').unwrap() + 1..];
    &body[..32]
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn assert_no_key(channel: &str, output: &[u8], keys: &[String]) {
    for key in keys {
        assert!(
            !contains(output, secret_part(key)),
            "{channel} contains the key {key}:\n{}",
            String::from_utf8_lossy(output)
        );
    }
}

/// Talks to the server and keeps every response (headers and body) for the final check.
struct Session {
    http: Http,
    root: String,
    keys: Vec<String>,
    responses: Vec<u8>,
}

impl Session {
    fn keep(&mut self, r: &Response) {
        self.keep_headers(r);
        self.responses.extend_from_slice(&r.body);
        self.responses.push(b'\n');
    }

    /// For the two responses that carry a new key by design (create and rotate).
    fn keep_headers(&mut self, r: &Response) {
        for (name, value) in &r.headers {
            self.responses.extend_from_slice(name.as_str().as_bytes());
            self.responses.extend_from_slice(b": ");
            self.responses.extend_from_slice(value.as_bytes());
            self.responses.push(b'\n');
        }
    }

    /// A call whose response body is the one place a new key is meant to appear.
    async fn issue(&mut self, path: &str, body: Value) -> Response {
        let r = self
            .http
            .call("POST", path, Some(&self.root), Some(body))
            .await;
        self.keep_headers(&r);
        r
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let r = self.http.call(method, path, bearer, body).await;
        self.keep(&r);
        r
    }

    async fn admin(&mut self, method: &str, path: &str, body: Option<Value>) -> Response {
        let root = self.root.clone();
        self.call(method, path, Some(&root), body).await
    }

    async fn raw(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Response {
        let root = self.root.clone();
        let r = self
            .http
            .raw(
                method,
                path,
                Some(&root),
                Some((content_type, body.into_bytes())),
            )
            .await;
        self.keep(&r);
        r
    }

    async fn headers(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let r = self.http.raw_with_headers(method, path, headers).await;
        self.keep(&r);
        r
    }

    /// Creates a key, remembers it, returns (key, key_id).
    async fn create(&mut self, path: &str, body: Value) -> (String, String) {
        let r = self.issue(path, body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let json = r.json();
        let key = json["key"].as_str().unwrap().to_owned();
        self.keys.push(key.clone());
        (key, json["record"]["key_id"].as_str().unwrap().to_owned())
    }

    async fn verify(&mut self, body: Value) -> Value {
        let r = self.admin("POST", "/v1/keys/verify", Some(body)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_reaches_any_output_channel() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let serve_args = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--log-format",
        "json",
    ];
    let server = Process::start_with(&serve_args, logs.path());
    let root = server.root_key.clone().unwrap();
    let mut s = Session {
        http: Http::new(server.addr),
        root: root.clone(),
        keys: vec![root.clone()],
        responses: Vec::new(),
    };

    // Create: an API key, one with a custom prefix, and a narrow root key.
    let (live, live_id) = s
        .create(
            "/v1/keys",
            json!({"owner": "billing", "permissions": ["orders.read"], "meta": {"plan": "pro"}}),
        )
        .await;
    let (other, other_id) = s
        .create("/v1/keys", json!({"owner": "ops", "prefix": "acme_prod"}))
        .await;
    let (reader, reader_id) = s
        .create(
            "/v1/root-keys",
            json!({"owner": "support", "permissions": ["keys.read"]}),
        )
        .await;

    // Verify: valid, unknown, bad checksum, truncated, in an unknown field, in the permissions.
    assert_eq!(
        s.verify(json!({"key": live, "permissions": "orders.read"}))
            .await["code"],
        "VALID"
    );
    let unknown = stranger("kw_live");
    s.keys.push(unknown.clone());
    assert_eq!(s.verify(json!({"key": unknown})).await["code"], "NOT_FOUND");
    let mut bad_checksum = live.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(
        s.verify(json!({"key": bad_checksum})).await["code"],
        "MALFORMED"
    );
    assert_eq!(
        s.verify(json!({"key": &live[..live.len() - 3]})).await["code"],
        "MALFORMED"
    );
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": live, "api_key": live})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .admin(
            "POST",
            "/v1/keys/verify",
            Some(json!({"key": live, "permissions": live})),
        )
        .await;
    assert!(r.status == 400 || r.status == 200, "{}", r.status);
    assert_eq!(
        s.verify(json!({"key": other, "permissions": "orders.read"}))
            .await["code"],
        "INSUFFICIENT_PERMISSIONS"
    );

    // A key in the URL path (also with its separator percent-encoded) and in the query string.
    for path in [
        format!("/v1/keys/{live}"),
        format!("/v1/keys/kw_live%5F{}", &live[8..]),
        format!("/v1/keys/{live}/revoke"),
        format!("/v1/keys?owner={live}"),
        format!("/v1/keys?api_key={live}&limit={live}"),
        format!("/no/such/route/{live}?key={live}"),
    ] {
        // Listing by an owner that is a key finds nothing; the rest are errors.
        let r = s.admin("GET", &path, None).await;
        assert!(
            r.status >= 400 || r.json()["keys"] == json!([]),
            "{}",
            r.status
        );
    }
    let r = s
        .admin("POST", &format!("/v1/keys/{live}/revoke"), Some(json!({})))
        .await;
    assert!(r.status >= 400);

    // Keys as metadata, owner or name are refused.
    for body in [
        json!({"owner": "o", "meta": {"note": live}}),
        json!({"owner": live}),
        json!({"owner": "o", "name": format!("copy of {live}")}),
        json!({"owner": "o", "tags": [live]}),
    ] {
        let r = s.admin("POST", "/v1/keys", Some(body.clone())).await;
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // Bad bodies quoting a key.
    for (content_type, body) in [
        ("application/json", format!("{{\"key\": \"{live}")),
        (
            "application/json",
            format!("{{\"key\": 123, \"x\": \"{live}\"}}"),
        ),
        ("application/json", format!("[\"{live}\"]")),
        ("text/plain", format!("key={live}")),
        (
            "application/json",
            format!("{{\"key\": \"{live}\\u00e9\\n{other}\"}}"),
        ),
    ] {
        let r = s.raw("POST", "/v1/keys/verify", content_type, body).await;
        // serde reads a struct from a JSON array too, so `["<key>"]` is a valid request.
        assert!(r.status >= 400 || r.status == 200, "{}", r.status);
    }

    // Root-key failures: an API key, an unknown and a malformed root key, a narrow root key
    // beyond its permissions, the root key in the wrong header.
    let unknown_root = stranger("kwroot");
    s.keys.push(unknown_root.clone());
    for bearer in [
        live.as_str(),
        unknown_root.as_str(),
        &root[..root.len() - 1],
        other.as_str(),
    ] {
        let r = s.call("GET", "/v1/keys", Some(bearer), None).await;
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = s
        .call(
            "POST",
            "/v1/keys",
            Some(&reader),
            Some(json!({"owner": "o"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .headers(
            "GET",
            "/v1/keys",
            &[("x-api-key", &root), ("authorization", &root)],
        )
        .await;
    assert_eq!(r.status, 401);

    // The edge-auth endpoint, with the client key as a bearer token and in the query string.
    let bearer = format!("Bearer {live}");
    s.headers(
        "GET",
        "/v1/auth",
        &[("x-keyward-root-key", &root), ("authorization", &bearer)],
    )
    .await;
    s.headers(
        "GET",
        &format!("/v1/auth?api_key={live}"),
        &[("x-keyward-root-key", &root)],
    )
    .await;

    // Rotate (the old key in grace), revoke, then use both.
    let r = s
        .issue(
            &format!("/v1/keys/{live_id}/rotate"),
            json!({"grace_period_seconds": 60}),
        )
        .await;
    assert_eq!(r.status, 201);
    let rotated = r.json()["key"].as_str().unwrap().to_owned();
    s.keys.push(rotated.clone());
    assert_eq!(s.verify(json!({"key": rotated})).await["code"], "VALID");
    let r = s
        .admin(
            "POST",
            &format!("/v1/keys/{other_id}/revoke"),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.verify(json!({"key": other})).await["code"], "REVOKED");
    let r = s
        .admin(
            "POST",
            &format!("/v1/root-keys/{reader_id}/revoke"),
            Some(json!({"reason": "no longer needed"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = s.call("GET", "/v1/keys", Some(&reader), None).await;
    assert_eq!(r.status, 401);

    // The audit log through the API, every page.
    let mut audit = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?limit=100&cursor={c}"),
            None => "/v1/audit?limit=100".to_owned(),
        };
        let page = s.admin("GET", &path, None).await;
        assert_eq!(page.status, 200);
        audit.extend_from_slice(&page.body);
        match page.json()["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(
        contains(&audit, &live_id) && contains(&audit, &other_id),
        "the audit log names key_ids"
    );
    assert_eq!(s.admin("POST", "/v1/audit/verify", None).await.status, 200);

    // Metrics, where this build has them.
    let metrics = s.admin("GET", "/metrics", None).await;
    let scraped_metrics = metrics.status == 200;
    if scraped_metrics {
        assert_no_key("GET /metrics", &metrics.body, &s.keys);
    }

    let keys = s.keys.clone();
    assert!(keys.len() >= 7);
    // A clean stop writes the usage counts; a second start serves them (the usage report and
    // its CSV export are output channels too).
    server.terminate();
    let server = Process::start_with(&serve_args, logs.path());
    s.http = Http::new(server.addr);
    let usage = s.admin("GET", "/v1/usage?granularity=day", None).await;
    assert_eq!(usage.status, 200);
    assert!(contains(&usage.body, &live_id), "usage names key_ids");
    let csv = server.cli(&root, &["usage", "export", "--granularity", "day"]);
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    assert!(contains(&csv.stdout, &live_id));
    assert_no_key("keyward usage export", &csv.stdout, &keys);
    server.kill();

    // The log: JSON lines, naming key_ids, never a key.
    let log = std::fs::read(logs.path().join("serve.log")).unwrap();
    assert_no_key("the server log", &log, &keys);
    let lines: Vec<Value> = String::from_utf8(log)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect();
    let logged = |message: &str, key_id: &str| {
        lines
            .iter()
            .any(|l| l["fields"]["message"] == message && l["fields"]["key_id"] == key_id)
    };
    assert!(logged("key created", &live_id), "{lines:?}");
    assert!(logged("key rotated", &live_id));
    assert!(logged("key revoked", &other_id));
    assert!(
        logged("verification refused", &other_id),
        "refusals name the key_id"
    );
    assert!(logged("root key refused", &reader_id));

    assert_no_key("HTTP responses", &s.responses, &keys);
    assert_no_key("the audit log (API)", &audit, &keys);
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert_no_key(&format!("{}", path.display()), &bytes, &keys);
        }
    }
    eprintln!(
        "no-leak: {} keys checked; GET /metrics scraped: {scraped_metrics}",
        keys.len()
    );
}

/// Collects what the logging writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A handler that panics with the key it was sent in its message. It exists only here: the
/// product has no such route.
async fn panic_with_key(body: String) -> &'static str {
    std::panic::panic_any(format!("handler failed on {body}"))
}

/// A panic in a handler, whose message quotes a key, goes through the real logging (JSON, the
/// redacting writer, the panic hook) and the real router's panic catcher: neither the log nor
/// the response holds the key. In-process on a current-thread runtime, so the handler runs
/// on this thread and its panic is logged to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_handler_leaks_no_key() {
    let capture = Capture::default();
    let log = keyward_telemetry::subscriber(
        keyward_telemetry::Format::Json,
        EnvFilter::new("debug"),
        capture.clone(),
        false,
    );
    let _guard = tracing::subscriber::set_default(log);
    keyward_telemetry::install_panic_hook();

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let engine = Arc::new(Keyward::new(
        Arc::new(store),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    ));
    let root = engine
        .bootstrap()
        .await
        .unwrap()
        .unwrap()
        .key
        .expose()
        .to_owned();
    let state = AppState { engine };
    let extra = Router::new().route("/v1/test/panic", post(panic_with_key));
    let app = keyward_http::router_with(state, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let http = Http::new(addr);

    let key = stranger("kw_live");
    let r = http
        .raw(
            "POST",
            "/v1/test/panic",
            Some(&root),
            Some(("text/plain", key.clone().into_bytes())),
        )
        .await;
    assert_eq!(r.status, 500);
    let r2 = http
        .call(
            "POST",
            "/v1/keys/verify",
            Some(&root),
            Some(json!({"key": key})),
        )
        .await;
    assert_eq!(r2.json()["code"], "NOT_FOUND");

    let keys = vec![key, root];
    let out = capture.0.lock().unwrap().clone();
    assert_no_key("the log", &out, &keys);
    for r in [&r, &r2] {
        assert_no_key("the response", &r.body, &keys);
        for value in r.headers.values() {
            assert_no_key("a response header", value.as_bytes(), &keys);
        }
    }
    let text = String::from_utf8(out).unwrap();
    let panicked = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|l| l["fields"]["message"] == "a thread panicked")
        .unwrap_or_else(|| panic!("the panic was not logged: {text}"));
    assert_eq!(
        panicked["fields"]["panic"],
        format!("handler failed on {REDACTED}")
    );
    assert!(text.contains("a request handler panicked"), "{text}");
}
