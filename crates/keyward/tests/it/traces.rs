//! OpenTelemetry traces end to end: the real `keyward serve` (and `keyward gateway`) exporting
//! over OTLP/gRPC to a test collector in this process. Checks the spans that arrive (a verify
//! span carrying the key_id, request spans named by route), that no plaintext key is anywhere
//! in what was exported, that a graceful shutdown delivers what was queued, and that without
//! an endpoint nothing is exported at all.

use std::net::SocketAddr;

use keyward_testkit::http::Http;
use keyward_testkit::keys::{secret_part, stranger};
use keyward_testkit::process::PATIENCE;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use tokio::sync::mpsc;

use crate::KEYWARD;

/// An OTLP/gRPC trace collector on 127.0.0.1:0 that passes every export request on.
struct Collector {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    /// Everything received so far (what `wait_for` and `drain` have taken off the channel).
    requests: Vec<ExportTraceServiceRequest>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Forward(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Forward {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Forward(tx)))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            addr,
            received,
            requests: Vec::new(),
            _stop: stop,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<&Span> {
        self.requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect()
    }

    /// Receives export requests until `done` holds for the spans received, failing after
    /// [`PATIENCE`].
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[&Span]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.spans()) {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(request)) => self.requests.push(request),
                Ok(None) => panic!("the collector stopped before {what}"),
                Err(_) => panic!("no {what} within {PATIENCE:?}; spans: {:#?}", self.spans()),
            }
        }
    }

    /// Takes whatever else has arrived (after the server exited, that is all it sent).
    fn drain(&mut self) {
        while let Ok(request) = self.received.try_recv() {
            self.requests.push(request);
        }
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(any_value::Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_verify_and_request_spans_with_no_key_in_them() {
    let mut collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let mut server = KEYWARD.serve_with(
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--otlp-endpoint",
            &endpoint,
            "--otlp-service-name",
            "keyward-it",
        ],
        data.path(),
    );
    let root = server.root_key.clone().unwrap();
    let http = Http::new(server.addr);

    let (key, key_id) = http
        .create(&root, json!({"owner": "billing", "tenant": "acme"}))
        .await;
    let verified = http.verify(&root, json!({"key": key})).await;
    assert_eq!(verified.json()["code"], "VALID");

    // The key where a request could carry it into a span: an unknown field of a bad body, the
    // path, the query string, an unmatched route, and as the admin credential.
    let unknown = stranger("kw_live");
    let r = http
        .verify(&root, json!({"key": key, "api_key": key}))
        .await;
    assert_eq!(r.status, 400);
    for path in [
        format!("/v1/keys/{key}"),
        format!("/v1/keys?owner={key}"),
        format!("/no/such/route/{key}?key={key}"),
    ] {
        http.call("GET", &path, Some(&root), None).await;
    }
    let r = http.call("GET", "/v1/keys", Some(&key), None).await;
    assert_eq!(r.status, 401);
    let r = http.verify(&root, json!({"key": unknown})).await;
    assert_eq!(r.json()["code"], "NOT_FOUND");

    // Spans are exported in batches (every 5 s): a graceful shutdown sends the rest.
    server.terminate();
    collector
        .wait_for("verify span of the created key", |spans| {
            spans
                .iter()
                .any(|s| s.name == "verify" && text(s, "key_id") == Some(&key_id))
        })
        .await;
    collector.drain();
    let spans = collector.spans();

    // The verify span: the key_id, the outcome and the tenant, as a child of its request.
    let verify = spans
        .iter()
        .find(|s| {
            s.name == "verify"
                && text(s, "key_id") == Some(&key_id)
                && text(s, "code") == Some("VALID")
        })
        .unwrap_or_else(|| panic!("no VALID verify span: {spans:#?}"));
    assert_eq!(text(verify, "tenant"), Some("acme"));
    assert_eq!(text(verify, "key_kind"), Some("api"));
    let request = spans
        .iter()
        .find(|s| s.span_id == verify.parent_span_id)
        .unwrap_or_else(|| panic!("the verify span has no exported parent: {spans:#?}"));
    assert_eq!(request.name, "POST /v1/keys/verify");
    assert_eq!(request.trace_id, verify.trace_id);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(text(request, "http.route"), Some("/v1/keys/verify"));
    assert_eq!(text(request, "http.request.method"), Some("POST"));
    assert_eq!(int(request, "http.response.status_code"), Some(200));
    assert_eq!(text(request, "keyward.server"), Some("admin"));

    // The other requests are there, named by route template, with their statuses.
    let by_route = |route: &str, status: i64| {
        spans.iter().any(|s| {
            text(s, "http.route") == Some(route)
                && int(s, "http.response.status_code") == Some(status)
        })
    };
    assert!(by_route("/v1/keys", 201), "{spans:#?}");
    assert!(by_route("/v1/keys/verify", 400), "{spans:#?}");
    assert!(by_route("/v1/keys", 401), "{spans:#?}");
    assert!(
        spans.iter().any(|s| s.name == "GET"
            && text(s, "http.route").is_none()
            && int(s, "http.response.status_code") == Some(404)),
        "the unmatched request has a span with no route: {spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "verify" && text(s, "code") == Some("NOT_FOUND")),
        "{spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "verify" && text(s, "key_kind") == Some("root")),
        "admin authentication is traced too: {spans:#?}"
    );
    let service = collector
        .requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref());
    assert_eq!(
        service,
        Some(&any_value::Value::StringValue("keyward-it".into()))
    );

    // No key anywhere in what was exported.
    let exported = format!("{:?}", collector.requests);
    for secret in [&key, &root, &unknown] {
        assert!(
            !exported.contains(secret_part(secret)),
            "the export contains the key {secret}:\n{exported}"
        );
    }
    // Nor did the exporter have to redact one: no span recorded a key in the first place.
    assert!(
        !exported.contains("[REDACTED]"),
        "a span recorded a key (redacted on export):\n{exported}"
    );
    assert!(server.log().contains("exporting traces over OTLP/gRPC"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let mut collector = Collector::start().await;
    let data = tempfile::tempdir().unwrap();
    // The standard OpenTelemetry variables alone do not turn export on: only keyward's flag
    // (or KEYWARD_OTLP_ENDPOINT) does.
    let endpoint = collector.endpoint();
    let data_dir = data.path().to_str().unwrap();
    let mut server = KEYWARD.start(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
        ],
        data.path(),
        "listening on",
    );
    let root = server.root_key.clone().unwrap();
    let http = Http::new(server.addr);
    let (key, _) = http.create(&root, json!({"owner": "o"})).await;
    let verified = http.verify(&root, json!({"key": key})).await;
    assert_eq!(verified.json()["code"], "VALID");
    server.terminate();
    // The server has exited, so anything it exported has arrived.
    collector.drain();
    assert!(
        collector.requests.is_empty(),
        "exported without an endpoint: {:?}",
        collector.requests
    );
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("OTLP"), "{log}");
}

/// `keyward gateway` with `otlp_endpoint` in its config file: one span per proxied request,
/// named by the gateway route's prefix (never the request's path or query, where a key may
/// be), with the verify span inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_exports_request_spans_named_by_route_prefix() {
    let mut collector = Collector::start().await;
    let up = crate::gateway::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 1\notlp_endpoint = \"{}\"\n\n[[route]]\nprefix = \"/orders\"\nupstream = \"http://{up}\"\nallow_query_key = true\n",
            dir.path().join("data").display(),
            collector.endpoint(),
        ),
    )
    .unwrap();
    let mut server = KEYWARD.gateway(&config, dir.path());
    let admin = Http::new(server.addr_after("admin API listening on"));
    let gw = Http::new(server.addr);
    let root = server.root_key.clone().unwrap();
    let (key, key_id) = admin.create(&root, json!({"owner": "o"})).await;
    let r = gw.raw("GET", "/orders/1", Some(&key), None).await;
    assert_eq!(r.status, 200);
    let r = gw
        .raw(
            "GET",
            &format!("/orders/2?api_key={key}&x={key}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let r = gw.raw("GET", "/orders/3", None, None).await;
    assert_eq!(r.status, 401);

    server.terminate();
    collector
        .wait_for("gateway spans", |spans| {
            spans
                .iter()
                .filter(|s| text(s, "keyward.server") == Some("gateway"))
                .count()
                >= 3
        })
        .await;
    collector.drain();
    let spans = collector.spans();
    let gateway: Vec<&&Span> = spans
        .iter()
        .filter(|s| text(s, "keyward.server") == Some("gateway"))
        .collect();
    for span in &gateway {
        assert_eq!(span.name, "GET /orders", "{span:#?}");
        assert_eq!(text(span, "http.route"), Some("/orders"));
    }
    let statuses: Vec<Option<i64>> = gateway
        .iter()
        .map(|s| int(s, "http.response.status_code"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(200)).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses.contains(&Some(401)), "{statuses:?}");
    let verifies: Vec<&&Span> = spans
        .iter()
        .filter(|s| s.name == "verify" && text(s, "key_id") == Some(&key_id))
        .collect();
    assert_eq!(verifies.len(), 2, "{spans:#?}");
    for verify in verifies {
        assert!(
            gateway.iter().any(|g| g.span_id == verify.parent_span_id),
            "a gateway verify span is inside its request span: {spans:#?}"
        );
    }
    let exported = format!("{:?}", collector.requests);
    for secret in [&key, &root] {
        assert!(
            !exported.contains(secret_part(secret)),
            "the export contains the key {secret}:\n{exported}"
        );
    }
    // Nor did the exporter have to redact one: no span recorded a key in the first place.
    assert!(
        !exported.contains("[REDACTED]"),
        "a span recorded a key (redacted on export):\n{exported}"
    );
}
