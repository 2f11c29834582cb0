//! The no-leak tests (issue 5): sessions of creating, verifying, rotating and revoking keys,
//! with every kind of mistake a client makes with a key (in the URL path and query, in
//! unknown JSON fields, in metadata, as a root key, in a broken body), and a panicking handler.
//! Each session is one focused test; at its end every key it created or presented is looked
//! for in every output channel ([`Session::finish`]): the server's JSON log at debug level,
//! every response body and header, the audit log (through the API and in the bytes of the
//! SQLite files), `GET /metrics` when the server has it, and the usage report (`GET /v1/usage`
//! and its CSV export).

use axum::Router;
use axum::routing::post;
use keyward_core::redact::REDACTED;
use keyward_testkit::http::{Http, Response};
use keyward_testkit::keys::{assert_no_key, contains, stranger};
use keyward_testkit::logs::Capture;
use keyward_testkit::process::Process;
use keyward_testkit::server::Server;
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;

use crate::KEYWARD;

/// A `keyward serve` with a JSON log at debug level, and a session of calls to it that keeps
/// every response (headers and body) and every key it created or presented, for the final
/// check.
struct Session {
    server: Process,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    http: Http,
    root: String,
    keys: Vec<String>,
    /// The key_ids of the keys the session created: the audit log must name them.
    key_ids: Vec<String>,
    responses: Vec<u8>,
}

/// What [`Session::finish`] read from the channels that name key_ids, for a test's own checks.
struct Channels {
    /// The server's log, one JSON value per line.
    log: Vec<Value>,
    /// `GET /v1/usage?granularity=day` after a clean restart.
    usage: Vec<u8>,
    /// `keyward usage export --granularity day`.
    csv: Vec<u8>,
}

impl Channels {
    /// Whether the log has a line with `message` naming `key_id`.
    fn logged(&self, message: &str, key_id: &str) -> bool {
        self.log
            .iter()
            .any(|l| l["fields"]["message"] == message && l["fields"]["key_id"] == key_id)
    }
}

impl Session {
    fn serve_args(data: &tempfile::TempDir) -> [&str; 4] {
        [
            "--data-dir",
            data.path().to_str().unwrap(),
            "--log-format",
            "json",
        ]
    }

    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let server = KEYWARD.serve_with(&Self::serve_args(&data), logs.path());
        let root = server.root_key.clone().unwrap();
        Self {
            http: Http::new(server.addr),
            server,
            data,
            logs,
            root: root.clone(),
            keys: vec![root],
            key_ids: Vec::new(),
            responses: Vec::new(),
        }
    }

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

    /// A key no server has seen, remembered so the final check looks for it.
    fn stranger(&mut self, prefix: &str) -> String {
        let key = stranger(prefix);
        self.keys.push(key.clone());
        key
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
        let key_id = json["record"]["key_id"].as_str().unwrap().to_owned();
        self.keys.push(key.clone());
        self.key_ids.push(key_id.clone());
        (key, key_id)
    }

    /// The API key most sessions start from: (key, key_id).
    async fn create_live(&mut self) -> (String, String) {
        self.create(
            "/v1/keys",
            json!({"owner": "billing", "permissions": ["orders.read"], "meta": {"plan": "pro"}}),
        )
        .await
    }

    /// An API key with a custom prefix: (key, key_id).
    async fn create_other(&mut self) -> (String, String) {
        self.create("/v1/keys", json!({"owner": "ops", "prefix": "acme_prod"}))
            .await
    }

    /// A narrow root key: (key, key_id).
    async fn create_reader(&mut self) -> (String, String) {
        self.create(
            "/v1/root-keys",
            json!({"owner": "support", "permissions": ["keys.read"]}),
        )
        .await
    }

    async fn verify(&mut self, body: Value) -> Value {
        let r = self.admin("POST", "/v1/keys/verify", Some(body)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Looks for every key of the session in every output channel: the audit log through the
    /// API (every page; it must name every key_id created, and its chain verify), `GET
    /// /metrics`, then after a clean stop (which writes the usage counts) and a second start
    /// the usage report and its CSV export, and last the server's log (JSON lines), every
    /// response, and the bytes of every file in the data directory.
    async fn finish(mut self) -> Channels {
        let mut audit = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/audit?limit=100&cursor={c}"),
                None => "/v1/audit?limit=100".to_owned(),
            };
            let page = self.admin("GET", &path, None).await;
            assert_eq!(page.status, 200);
            audit.extend_from_slice(&page.body);
            match page.json()["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        for key_id in &self.key_ids {
            assert!(contains(&audit, key_id), "the audit log names key_ids");
        }
        assert_eq!(
            self.admin("POST", "/v1/audit/verify", None).await.status,
            200
        );

        // Metrics, where this build has them.
        let metrics = self.admin("GET", "/metrics", None).await;
        let scraped_metrics = metrics.status == 200;
        if scraped_metrics {
            assert_no_key("GET /metrics", &metrics.body, &self.keys);
        }

        let keys = self.keys.clone();
        assert!(keys.len() > 1, "the session created or presented keys");
        // A clean stop writes the usage counts; a second start serves them (the usage report
        // and its CSV export are output channels too).
        self.server.terminate();
        self.server = KEYWARD.serve_with(&Self::serve_args(&self.data), self.logs.path());
        self.http = Http::new(self.server.addr);
        let usage = self.admin("GET", "/v1/usage?granularity=day", None).await;
        assert_eq!(usage.status, 200);
        let csv = self
            .server
            .cli(&self.root, &["usage", "export", "--granularity", "day"]);
        assert!(
            csv.status.success(),
            "{}",
            String::from_utf8_lossy(&csv.stderr)
        );
        assert_no_key("keyward usage export", &csv.stdout, &keys);
        let log_path = self.server.log_path.clone();
        self.server.kill();

        // The log: JSON lines, never a key.
        let log = std::fs::read(log_path).unwrap();
        assert_no_key("the server log", &log, &keys);
        let lines: Vec<Value> = String::from_utf8(log)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
            })
            .collect();

        assert_no_key("HTTP responses", &self.responses, &keys);
        assert_no_key("the audit log (API)", &audit, &keys);
        for entry in std::fs::read_dir(self.data.path()).unwrap() {
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
        Channels {
            log: lines,
            usage: usage.body,
            csv: csv.stdout,
        }
    }
}

/// Verify: valid, unknown, bad checksum, truncated, in an unknown field, in the permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_good_and_bad_keys_leaks_no_key() {
    let mut s = Session::start();
    let (live, live_id) = s.create_live().await;
    let (other, other_id) = s.create_other().await;
    assert_eq!(
        s.verify(json!({"key": live, "permissions": "orders.read"}))
            .await["code"],
        "VALID"
    );
    let unknown = s.stranger("kw_live");
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

    let channels = s.finish().await;
    assert!(contains(&channels.usage, &live_id), "usage names key_ids");
    assert!(contains(&channels.csv, &live_id));
    assert!(
        channels.logged("key created", &live_id),
        "{:?}",
        channels.log
    );
    assert!(
        channels.logged("verification refused", &other_id),
        "refusals name the key_id"
    );
}

/// A key in the URL path (also with its separator percent-encoded) and in the query string,
/// and the edge-auth endpoint with the client key as a bearer token and in the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_url_leaks_nowhere() {
    let mut s = Session::start();
    let (live, _) = s.create_live().await;
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

    let root = s.root.clone();
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
    s.finish().await;
}

/// Keys as metadata, owner, name or tag are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_as_metadata_are_refused_and_leak_nowhere() {
    let mut s = Session::start();
    let (live, _) = s.create_live().await;
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
    s.finish().await;
}

/// Bad bodies quoting a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_quoting_a_key_leak_no_key() {
    let mut s = Session::start();
    let (live, _) = s.create_live().await;
    let (other, _) = s.create_other().await;
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
    s.finish().await;
}

/// Root-key failures: an API key, an unknown and a malformed root key, a narrow root key
/// beyond its permissions, the root key in the wrong header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_root_keys_leak_no_key() {
    let mut s = Session::start();
    let (live, _) = s.create_live().await;
    let (other, _) = s.create_other().await;
    let (reader, reader_id) = s.create_reader().await;
    let root = s.root.clone();
    let unknown_root = s.stranger("kwroot");
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

    let channels = s.finish().await;
    assert!(channels.logged("root key refused", &reader_id));
}

/// Rotate (the old key in grace), revoke, then use both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_and_revoking_leaks_no_key() {
    let mut s = Session::start();
    let (_, live_id) = s.create_live().await;
    let (other, other_id) = s.create_other().await;
    let (reader, reader_id) = s.create_reader().await;
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

    let channels = s.finish().await;
    assert!(contains(&channels.usage, &live_id), "usage names key_ids");
    assert!(contains(&channels.csv, &live_id));
    assert!(channels.logged("key rotated", &live_id));
    assert!(channels.logged("key revoked", &other_id));
    assert!(
        channels.logged("verification refused", &other_id),
        "refusals name the key_id"
    );
    assert!(channels.logged("root key refused", &reader_id));
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

    let extra = Router::new().route("/v1/test/panic", post(panic_with_key));
    let server = Server::start_with_routes(extra).await;
    let (http, root) = (&server.http, server.root_key.clone());

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
    let r2 = http.verify(&root, json!({"key": key})).await;
    assert_eq!(r2.json()["code"], "NOT_FOUND");

    let keys = vec![key, root];
    let out = capture.bytes();
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
