//! Waiting for something another task or process does on its own schedule (a node noticing a
//! lost connection, a webhook delivery being counted), bounded in time: the one polling loop
//! the tests share, so that none sleeps for a fixed time in the hope that a thing happened.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] asks again: short enough not to slow a test, long enough not to
/// spin a core that the awaited work needs (CI has two).
const POLL: Duration = Duration::from_millis(5);

/// Calls `attempt` until it returns `Some`, and returns that; panics naming `what` if none
/// came within `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tokio::time::timeout(within, async {
        loop {
            if let Some(found) = attempt().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not reached within {within:?}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_answer() {
        let mut calls = 0;
        let found = eventually(Duration::from_secs(5), "the third call", || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(found, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "not reached within 20ms: never")]
    async fn panics_naming_what_never_came() {
        eventually(Duration::from_millis(20), "never", || async { None::<()> }).await;
    }
}
