//! Waiting for a condition, never for a time.

use std::time::Duration;

/// Polls `done` until it holds, at most `bound` (a bound for a hung test, not a speed
/// claim); then panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, bound, || {
        let done = done();
        async move { done.await.then_some(()) }
    })
    .await
}

/// [`eventually`] for a condition that yields a value once it holds: polls `attempt` until
/// it returns `Some`, and returns that.
pub async fn eventually_some<T, F, Fut>(what: &str, bound: Duration, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match within(bound, attempt).await {
        Some(value) => value,
        None => panic!("timed out waiting for {what}"),
    }
}

/// Polls `attempt` until it returns `Some`, at most `bound`; `None` if it never did (for a
/// caller that says more than [`eventually_some`] can when it fails).
pub async fn within<T, F, Fut>(bound: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
