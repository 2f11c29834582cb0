//! Unit tests of the redacting writer and the panic hook.

use std::io::Write;

use keyward_core::redact::REDACTED;
use keyward_testkit::keys::stranger as key;
use keyward_testkit::logs::Capture;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// Serialises the tests that install a subscriber. tracing caches each callsite's interest
/// process-wide, computed over every live subscriber; a process runs one, but parallel tests
/// would each see the others' interest (one with traces makes another's spans enabled).
fn one_subscriber_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// Logs through the real subscriber in `format` (and with or without ANSI) and returns what
/// reached the destination.
fn log(format: Format, ansi: bool, emit: impl FnOnce()) -> String {
    let _one = one_subscriber_at_a_time();
    let capture = Capture::default();
    let subscriber = subscriber(format, EnvFilter::new("trace"), capture.clone(), ansi);
    tracing::subscriber::with_default(subscriber, emit);
    capture.text()
}

#[derive(Debug)]
#[allow(dead_code)] // Read only through Debug.
struct Request {
    key: String,
    note: &'static str,
}

#[test]
fn keys_are_redacted_in_messages_fields_debug_and_json_strings() {
    let live = key("kw_live");
    let root = key("kwroot");
    let custom = key("acme_prod_v2");
    for format in [Format::Text, Format::Json] {
        for ansi in [false, true] {
            let out = log(format, ansi, || {
                tracing::info!("verify failed for {live}");
                tracing::warn!(presented = %root, "root key refused");
                tracing::debug!(body = %format!("{{\"key\":\"{custom}\",\"n\":\"é\\n\"}}"), "bad body");
                let request = Request {
                    key: live.clone(),
                    note: "ü",
                };
                tracing::error!(?request, "debug-formatted");
                tracing::info!("({live})[{root}]<{custom}>,;:'{live}'");
                tracing::info!("ünï{live}ü\n{root}\t{custom}");
                tracing::info!(message = %format!("{live}{root}"), "glued");
            });
            for secret in [&live, &root, &custom] {
                let body = &secret[secret.len() - 38..];
                assert!(!out.contains(body), "{format:?} ansi={ansi}: {out}");
            }
            assert!(out.contains(REDACTED), "{out}");
            if format == Format::Json {
                for line in out.lines() {
                    let parsed: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not JSON after redaction ({e}): {line}"));
                    assert!(parsed.is_object());
                }
            }
        }
    }
}

#[test]
fn key_ids_and_ordinary_fields_pass_unchanged() {
    let out = log(Format::Json, false, || {
        tracing::info!(
            key_id = "key_AbCdEfGhIjKlMnOpQrSt",
            kind = "api",
            "key created"
        );
    });
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["fields"]["key_id"], "key_AbCdEfGhIjKlMnOpQrSt");
    assert_eq!(line["fields"]["message"], "key created");
    assert!(!out.contains(REDACTED));
}

#[test]
fn a_key_written_in_pieces_is_redacted_whole() {
    let secret = key("kw_test");
    let capture = Capture::default();
    let make = RedactingMakeWriter::new(capture.clone());
    {
        let mut writer = make.make_writer();
        let (a, b) = secret.split_at(20);
        writer.write_all(b"presented ").unwrap();
        writer.write_all(a.as_bytes()).unwrap();
        writer.flush().unwrap();
        writer.write_all(b.as_bytes()).unwrap();
        writer.write_all(b"\n").unwrap();
        // Nothing reaches the destination before the event is complete.
        assert_eq!(capture.text(), "");
    }
    assert_eq!(capture.text(), format!("presented {REDACTED}\n"));
}

#[test]
fn a_panic_message_is_logged_redacted() {
    let secret = key("kw_live");
    let _one = one_subscriber_at_a_time();
    install_panic_hook();
    let capture = Capture::default();
    let subscriber = subscriber(Format::Json, EnvFilter::new("info"), capture.clone(), false);
    let result = tracing::subscriber::with_default(subscriber, || {
        std::panic::catch_unwind(|| {
            std::panic::panic_any(format!("handler blew up on {secret}"));
        })
    });
    assert!(result.is_err());
    let out = capture.text();
    assert!(!out.contains(&secret[8..]), "{out}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["fields"]["message"], "a thread panicked");
    assert_eq!(
        line["fields"]["panic"],
        format!("handler blew up on {REDACTED}")
    );
}

mod traces {
    //! The OpenTelemetry side: what the OpenTelemetry layer records, and that every span is
    //! redacted before an exporter sees it.

    use std::borrow::Cow;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
    use tracing_subscriber::EnvFilter;

    use keyward_testkit::keys::secret_part;

    use super::{Capture, key};
    use crate::traces::{RedactingExporter, Traces};
    use crate::{Format, subscriber, subscriber_with_traces};
    use keyward_core::redact::REDACTED as REDACTED_MARK;

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl Collect {
        fn spans(&self) -> Vec<SpanData> {
            self.0.lock().unwrap().clone()
        }
    }

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `emit` under the real subscriber with traces going to a collecting exporter;
    /// returns the exported spans and the log output.
    fn trace(emit: impl FnOnce()) -> (Vec<SpanData>, String) {
        let _one = super::one_subscriber_at_a_time();
        let collect = Collect::default();
        let traces = Traces::with_exporter(collect.clone(), "keyward-test");
        let log = Capture::default();
        let subscriber = subscriber_with_traces(
            Format::Json,
            EnvFilter::new("debug"),
            log.clone(),
            false,
            Some(&traces),
        );
        tracing::subscriber::with_default(subscriber, emit);
        traces.shutdown().unwrap();
        (collect.spans(), log.text())
    }

    fn attribute<'a>(span: &'a SpanData, name: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == name)
            .map(|kv| &kv.value)
    }

    /// A key recorded into a span by mistake, in every place a span carries text, leaves
    /// redacted; the key_id next to it leaves as it is. (If `RedactingExporter` passed spans
    /// through unchanged, the key would be in the export and this test would fail.)
    #[test]
    fn a_key_recorded_in_a_span_is_exported_redacted() {
        let secret = key("kw_live");
        let (spans, _) = trace(|| {
            let span = tracing::info_span!(
                "verify",
                key_id = "key_AbCdEfGhIjKlMnOpQrSt",
                presented = %secret,
                otel.name = %format!("verify {secret}"),
                later = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("later", format!("again: {secret}"));
            tracing::warn!(key = %secret, "refused {secret}");
            tracing::error!("failed for {secret}");
            span.record("otel.status_description", format!("failed for {secret}"));
        });
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        let exported = format!("{spans:?}");
        assert!(!exported.contains(secret_part(&secret)), "{exported}");
        assert_eq!(span.name, format!("verify {REDACTED_MARK}"));
        assert_eq!(
            attribute(span, "key_id"),
            Some(&Value::from("key_AbCdEfGhIjKlMnOpQrSt"))
        );
        assert_eq!(
            attribute(span, "presented"),
            Some(&Value::from(REDACTED_MARK))
        );
        assert_eq!(
            attribute(span, "later"),
            Some(&Value::from(format!("again: {REDACTED_MARK}")))
        );
        assert_eq!(span.events.events.len(), 2, "{:?}", span.events);
        assert!(
            matches!(&span.status, Status::Error { description } if description.contains(REDACTED_MARK))
        );
    }

    /// `RedactingExporter` on its own, with every string a span can carry holding a key.
    #[test]
    fn the_redacting_exporter_covers_every_string_of_a_span() {
        let secret = key("acme_prod_v2");
        let text = |s: &str| format!("{s}:{secret}");
        let state = TraceState::from_key_value([("vendor", secret.as_str())]).unwrap();
        let context = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        let attributes = vec![
            KeyValue::new("string", text("value")),
            KeyValue::new(text("key"), 1i64),
            KeyValue::new(
                "array",
                Value::Array(Array::String(vec![
                    StringValue::from(text("first")),
                    StringValue::from("plain"),
                ])),
            ),
            KeyValue::new("number", 42i64),
        ];
        let span = SpanData {
            span_context: context.clone(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Owned(text("name")),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: attributes.clone(),
            dropped_attributes_count: 0,
            events: {
                let mut events = SpanEvents::default();
                events.events.push(Event::new(
                    text("event"),
                    SystemTime::UNIX_EPOCH,
                    attributes.clone(),
                    0,
                ));
                events
            },
            links: {
                let mut links = SpanLinks::default();
                links.links.push(Link::new(context, attributes, 0));
                links
            },
            status: Status::error(text("status")),
            instrumentation_scope: InstrumentationScope::builder("keyward").build(),
        };
        let collect = Collect::default();
        let mut exporter = RedactingExporter::new(collect.clone());
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_attributes([KeyValue::new("service.instance.id", text("resource"))])
                .build(),
        );
        futures_executor_block_on(exporter.export(vec![span])).unwrap();
        let exported = collect.spans();
        let debug = format!("{exported:?}");
        assert!(!debug.contains(secret_part(&secret)), "{debug}");
        let span = &exported[0];
        assert_eq!(span.name, format!("name:{REDACTED_MARK}"));
        assert_eq!(
            attribute(span, "array"),
            Some(&Value::Array(Array::String(vec![
                StringValue::from(format!("first:{REDACTED_MARK}")),
                StringValue::from("plain"),
            ])))
        );
        assert_eq!(attribute(span, "number"), Some(&Value::I64(42)));
        assert_eq!(span.span_context.trace_state(), &TraceState::default());
        assert_eq!(span.span_context.trace_id(), TraceId::from(7u128));
        assert!(
            debug.matches(REDACTED_MARK).count() >= 12,
            "every string was redacted: {debug}"
        );
    }

    /// Without traces no layer wants a span: creating one is a cached "no".
    #[test]
    fn without_traces_spans_are_disabled() {
        let subscriber = subscriber(
            Format::Text,
            EnvFilter::new("trace"),
            Capture::default(),
            false,
        );
        let _one = super::one_subscriber_at_a_time();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("verify", key_id = "key_x");
            assert!(span.is_disabled());
            assert!(tracing::enabled!(tracing::Level::INFO));
        });
    }

    /// Only keyward's spans are exported (the exporter's own gRPC stack has spans too), and the
    /// log lines stay as they were: events only, no span context.
    #[test]
    fn only_keyward_spans_are_exported_and_logs_carry_no_spans() {
        let (spans, log) = trace(|| {
            let outer = tracing::info_span!("http_request", http.route = "/v1/keys/verify");
            let _outer = outer.enter();
            let inner = tracing::info_span!(target: "h2::proto", "poll");
            let _inner = inner.enter();
            let debug = tracing::debug_span!("detail");
            let _debug = debug.enter();
            tracing::info!(key_id = "key_AbCdEfGhIjKlMnOpQrSt", "key verified");
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["http_request"], "{spans:?}");
        // The info event is logged, but not exported: only warnings and errors are.
        assert!(spans[0].events.events.is_empty(), "{spans:?}");
        let line: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "key verified");
        assert!(
            line.get("span").is_none() && line.get("spans").is_none(),
            "{line}"
        );
    }

    fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
        // A tiny executor: the collecting exporter's future is ready at once.
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }
}
