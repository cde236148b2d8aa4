//! Waiting for a condition, never for a time.

use std::time::Duration;

/// Polls `done` until it holds, at most `bound` (a bound for a hung test, not a speed
/// claim); then panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
