//! Unit tests of the redacting writer and the panic hook.

use std::io::Write;
use std::sync::{Arc, Mutex};

use keyward_core::key::{Prefix, generate_key};
use keyward_core::redact::REDACTED;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// Collects everything written, for inspection.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
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

fn key(prefix: &str) -> String {
    let prefix = Prefix::new(prefix).unwrap();
    generate_key(&prefix, &mut rand::rngs::SysRng)
        .unwrap()
        .expose()
        .to_owned()
}

/// Logs through the real subscriber in `format` (and with or without ANSI) and returns what
/// reached the destination.
fn log(format: Format, ansi: bool, emit: impl FnOnce()) -> String {
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
