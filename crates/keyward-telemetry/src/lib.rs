//! keyward's logging and traces: the `tracing` subscriber every keyward process installs, and
//! the last line of defence that keeps a plaintext key out of the log and out of exported spans.
//!
//! Code is expected to log a key's `key_id`, never the key. Because a mistake there, or a key
//! quoted in user input, an error message or a panic, would otherwise be written in clear, every
//! formatted event passes through [`RedactingMakeWriter`] before it reaches its destination:
//! the whole line (message, every field, text or JSON) is run through
//! [`keyward_core::redact::redact`]. [`install_panic_hook`] sends panic messages through the
//! same path instead of the default hook's raw write to standard error.
//!
//! Events are for the log and spans are for traces: the log layer formats events only, and
//! spans are seen only by the OpenTelemetry layer that [`subscriber_with_traces`] adds when
//! traces are configured ([`traces`]). Without it no layer wants a span, so creating one costs
//! a cached callsite check and nothing else.
//!
//! ```
//! use keyward_telemetry::{Format, subscriber};
//! use tracing_subscriber::EnvFilter;
//!
//! let log = subscriber(Format::Json, EnvFilter::new("info"), std::io::sink, false);
//! tracing::subscriber::with_default(log, || tracing::info!(key_id = "key_123", "key created"));
//! ```

pub mod traces;

use std::io::{self, Write};

use keyward_core::redact::redact;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::{EnvFilter, Registry, filter};

use crate::traces::Traces;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A [`MakeWriter`] that redacts key-shaped text from each event before passing it on.
///
/// The `fmt` layer asks for one writer per event and writes the formatted event into it; the
/// writer made here holds every byte until it is dropped, then redacts the event whole and
/// writes it in one call. However the event is chunked on the way in, a key cannot straddle two
/// redaction calls.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    /// Wraps `inner`, the destination of the redacted lines.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer_for(meta))
    }
}

/// One event's writer: buffers, then redacts and writes on drop (or on [`Write::flush`]).
#[derive(Debug)]
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        // Events are formatted into a String, so this is UTF-8; a lossy conversion still
        // redacts every ASCII key in anything else.
        let text = String::from_utf8_lossy(&pending);
        self.inner.write_all(redact(&text).as_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // A flush mid-event would cut the line where a key may be; only whole lines are written
        // (on drop), so a flush has nothing to do yet.
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write; the line is lost, as with a plain writer.
        let _ = self.write_pending();
    }
}

/// The subscriber keyward installs without traces: `filter`, `format`, every line redacted on
/// its way to `writer`. Tests pass a capturing writer; the server passes standard error.
pub fn subscriber<W>(
    format: Format,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    subscriber_with_traces(format, filter, writer, ansi, None)
}

/// [`subscriber`], plus, when `traces` is given, an OpenTelemetry layer that records keyward's
/// spans (and the warnings and errors inside them) into its tracer; see [`traces::exported`].
/// The log output is the same either way: spans never appear in log lines.
pub fn subscriber_with_traces<W>(
    format: Format,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    traces: Option<&Traces>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(RedactingMakeWriter::new(writer));
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        Format::Text => fmt.boxed(),
        Format::Json => fmt.json().boxed(),
    };
    // Events (and `enabled!` hints) only: a span in the log layer would put its fields into every line inside it,
    // and, with nothing else interested, would be created for nothing on every request.
    let log = fmt.with_filter(filter::FilterExt::and(
        filter,
        filter::filter_fn(|metadata: &Metadata<'_>| !metadata.is_span()),
    ));
    let logged = Registry::default().with(log);
    match traces {
        // No OpenTelemetry layer at all, not a disabled one: nothing wants a span.
        None => Box::new(logged),
        Some(traces) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(traces.tracer())
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(filter::filter_fn(traces::exported));
            Box::new(logged.with(otel))
        }
    }
}

/// Installs the process-wide subscriber writing to standard error (`KEYWARD_LOG` sets the
/// filter, `info` by default), with an OpenTelemetry layer when `traces` is given, and the
/// redacting panic hook. Later calls change nothing.
pub fn init(format: Format, traces: Option<&Traces>) {
    let filter = EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing::subscriber::set_global_default(subscriber_with_traces(
        format,
        filter,
        io::stderr,
        ansi,
        traces,
    ));
    install_panic_hook();
}

/// Replaces the default panic hook, which writes the panic message to standard error as is,
/// with one that logs it as an `error` event (so through the redacting writer) and, where no
/// subscriber is listening, prints it redacted. A panic message can quote request data, and
/// request data can be a key.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic payload that is not a string)");
        let message = redact(message);
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let listening = tracing::dispatcher::get_default(|dispatch| {
            !dispatch.is::<tracing::subscriber::NoSubscriber>()
        });
        if listening {
            tracing::error!(panic = %message, %location, thread, "a thread panicked");
        } else {
            eprintln!("thread '{thread}' panicked at {location}:\n{message}");
        }
    }));
}

#[cfg(test)]
mod tests;
