//! What the fixtures of outside services share: skipping a test that lacks one (or failing it
//! in CI), finding PostgreSQL or Redis from the environment, and names unique to one test.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

/// Says that `test` is skipped, and why (`SKIPPED test: why` on standard error), for a test
/// about to return early because something it needs is missing. With `CI=true` it fails the
/// test instead: CI must not pass by skipping.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}, and CI=true requires it"
    );
    // Straight to stderr, not eprintln!: the test harness would hide that.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The URL in `variable`, or `None` after [`skip`]ping `test` when it is not set.
pub(crate) fn url(variable: &str, example: &str, test: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(
                test,
                &format!("{variable} is not set (e.g. {variable}={example})"),
            );
            None
        }
    }
}

/// `prefix` and a suffix no other test of any process running now has: the process id, the
/// clock's nanoseconds and a counter.
pub(crate) fn unique(prefix: &str, separator: char) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{separator}{}{separator}{nanos:x}{separator}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
