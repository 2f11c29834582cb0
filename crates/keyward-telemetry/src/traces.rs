//! OpenTelemetry traces: keyward's `tracing` spans exported over OTLP/gRPC when an endpoint is
//! configured, and nothing at all when it is not.
//!
//! [`Traces::otlp`] builds a tracer provider whose batch processor hands every finished span to
//! a [`RedactingExporter`] in front of the OTLP exporter. The redacting exporter is the traces'
//! last line of defence, as the redacting writer is the log's: every string that leaves (span
//! and event names, attribute keys and values, the status description, the resource) is run
//! through [`keyward_core::redact::redact`] first, so a key recorded in a span by mistake is
//! exported as `[REDACTED]`. Code still records `key_id`s, never keys.
//!
//! ```
//! use keyward_telemetry::traces::{RedactingExporter, Traces};
//! # #[derive(Debug)]
//! # struct Stdout;
//! # impl opentelemetry_sdk::trace::SpanExporter for Stdout {
//! #     async fn export(&self, _: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult { Ok(()) }
//! # }
//! // Any exporter is wrapped the same way; `Traces::otlp` wraps the OTLP one.
//! let traces = Traces::with_exporter(Stdout, "keyward");
//! let _ = traces.shutdown();
//! ```

use std::borrow::Cow;
use std::time::Duration;

use keyward_core::redact::redact;
use opentelemetry::trace::{SpanContext, Status, TraceState, TracerProvider as _};
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tracing::{Level, Metadata};

/// The service name spans are exported under unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "keyward";

/// How long shutting down may take to export the spans still queued.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one export may wait for the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as what traces are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port` (checked by the caller).
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// Building the exporter failed (for example the endpoint is not a usable URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {source}")]
pub struct TraceError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The process's tracer provider: hands out the tracer for the subscriber's OpenTelemetry
/// layer, and must be [shut down](Traces::shutdown) before the process exits, or the spans
/// still queued are lost.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports to an OTLP/gRPC collector, in batches, through a [`RedactingExporter`].
    ///
    /// Must be called inside a Tokio runtime, which must outlive the provider: the gRPC channel
    /// runs its connection there. Connects lazily, so a collector that is down at start only
    /// means failed exports (logged by the SDK), not a failed start.
    pub fn otlp(config: &OtlpConfig) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TraceError {
                endpoint: config.endpoint.clone(),
                source,
            })?;
        Ok(Self::batched(
            RedactingExporter::new(exporter),
            &config.service_name,
        ))
    }

    /// Exports through `exporter`, wrapped in a [`RedactingExporter`], one span at a time as
    /// it ends (tests and examples; a server wants [`Traces::otlp`]'s batches).
    pub fn with_exporter<E: SpanExporter + 'static>(exporter: E, service_name: &str) -> Self {
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(service_name))
            .with_simple_exporter(RedactingExporter::new(exporter))
            .build();
        Self { provider }
    }

    fn batched<E: SpanExporter + 'static>(exporter: E, service_name: &str) -> Self {
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(service_name))
            .with_batch_exporter(exporter)
            .build();
        Self { provider }
    }

    /// The tracer the subscriber's OpenTelemetry layer records into.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("keyward")
    }

    /// Exports every span still queued, then stops exporting. Blocks for up to
    /// [`SHUTDOWN_TIMEOUT`]; in async code, call it from `spawn_blocking` so the runtime's
    /// threads stay free for the gRPC channel that does the export.
    pub fn shutdown(&self) -> OTelSdkResult {
        self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
    }
}

fn resource(service_name: &str) -> Resource {
    // `builder()` also reads OTEL_RESOURCE_ATTRIBUTES; the service name given here wins.
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

/// Which spans and events the OpenTelemetry layer sees: keyward's own spans at `INFO` and
/// above, and its warnings and errors (recorded as events of the span they happen in).
///
/// Only keyward's targets: the exporter's own stack (tonic, hyper, h2) has spans too, and
/// tracing those would export the export.
pub fn exported(metadata: &Metadata<'_>) -> bool {
    let ours = metadata.target().starts_with("keyward");
    let level = *metadata.level();
    ours && if metadata.is_span() {
        level <= Level::INFO
    } else {
        level <= Level::WARN
    }
}

/// A [`SpanExporter`] that redacts key-shaped text from every span before `inner` sees it.
///
/// Everything a span carries as text passes through [`redact`]: its name, every attribute key
/// and value (string arrays element by element, and any kind of value added to OpenTelemetry
/// later as its redacted text), every event's name and attributes, every link's attributes,
/// the status description, and the resource. A trace state is dropped if it held anything
/// key-shaped (keyward does not take trace context from requests, so it is empty).
#[derive(Debug)]
pub struct RedactingExporter<E> {
    inner: E,
}

impl<E> RedactingExporter<E> {
    /// Wraps `inner`, which receives only redacted spans.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

impl<E: SpanExporter> SpanExporter for RedactingExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // Redacted here, synchronously, so not even the inner exporter's future holds a key.
        let batch = batch.into_iter().map(redact_span).collect();
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(key, value)| KeyValue::new(redact_key(key.clone()), redact_value(value.clone())))
            .collect();
        let redacted = match resource.schema_url() {
            Some(url) => Resource::builder_empty()
                .with_schema_url(attributes, redact(url).into_owned())
                .build(),
            None => Resource::builder_empty()
                .with_attributes(attributes)
                .build(),
        };
        self.inner.set_resource(&redacted);
    }
}

/// Returns `span` with every string it carries redacted.
pub fn redact_span(mut span: SpanData) -> SpanData {
    span.name = redact_cow(std::mem::take(&mut span.name));
    redact_attributes(&mut span.attributes);
    for event in &mut span.events.events {
        event.name = redact_cow(std::mem::take(&mut event.name));
        redact_attributes(&mut event.attributes);
    }
    for link in &mut span.links.links {
        redact_attributes(&mut link.attributes);
        link.span_context = clean_trace_state(&link.span_context);
    }
    span.status = match std::mem::take(&mut span.status) {
        Status::Error { description } => Status::Error {
            description: redact_cow(description),
        },
        other => other,
    };
    span.span_context = clean_trace_state(&span.span_context);
    span
}

fn redact_cow(text: Cow<'static, str>) -> Cow<'static, str> {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(redacted) => Cow::Owned(redacted),
    }
}

fn redact_attributes(attributes: &mut [KeyValue]) {
    for attribute in attributes {
        let key = std::mem::replace(&mut attribute.key, Key::from_static_str(""));
        attribute.key = redact_key(key);
        let value = std::mem::replace(&mut attribute.value, Value::Bool(false));
        attribute.value = redact_value(value);
    }
}

fn redact_key(key: Key) -> Key {
    match redact(key.as_str()) {
        Cow::Borrowed(_) => key,
        Cow::Owned(redacted) => Key::from(redacted),
    }
}

fn redact_string(value: StringValue) -> StringValue {
    match redact(value.as_str()) {
        Cow::Borrowed(_) => value,
        Cow::Owned(redacted) => StringValue::from(redacted),
    }
}

fn redact_value(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(redact_string(text)),
        Value::Array(Array::String(items)) => Value::Array(Array::String(
            items.into_iter().map(redact_string).collect(),
        )),
        // Numbers and booleans cannot hold a key.
        Value::Bool(_) | Value::I64(_) | Value::F64(_) => value,
        Value::Array(Array::Bool(_) | Array::I64(_) | Array::F64(_)) => value,
        // A kind of value this code does not know (both enums are non-exhaustive): sent as its
        // redacted text rather than unchecked.
        other => Value::String(StringValue::from(redact(&other.as_str()).into_owned())),
    }
}

fn clean_trace_state(context: &SpanContext) -> SpanContext {
    let state = context.trace_state();
    if *state == TraceState::default() || matches!(redact(&state.header()), Cow::Borrowed(_)) {
        return context.clone();
    }
    SpanContext::new(
        context.trace_id(),
        context.span_id(),
        context.trace_flags(),
        context.is_remote(),
        TraceState::default(),
    )
}
