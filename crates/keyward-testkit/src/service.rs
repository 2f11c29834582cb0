//! What the PostgreSQL and Redis fixtures share: finding the service from the environment
//! (or saying the test was skipped), and names unique to one test.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

/// The URL in `variable`, or `None` after printing that `test` was skipped. With `CI=true` a
/// missing URL fails the test instead: CI must not pass by skipping.
pub(crate) fn url(variable: &str, example: &str, test: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {variable} is not set, and CI=true requires it"
            );
            // Straight to stderr, not eprintln!: the test harness would hide that.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: set {variable} (e.g. {example}) to run it"
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
