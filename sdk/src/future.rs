//! Waiting for several things at once: [`join`], [`try_join`], [`join_all`].
//!
//! Inside an `async fn` handler, outbound requests made one after another take the sum of
//! their times; joined, they are in flight together and take about the slowest one's.
//!
//! ```no_run
//! use thaw_sdk::{Request, handler, http};
//!
//! #[handler]
//! async fn handle(_req: Request) -> Result<String, thaw_sdk::Error> {
//!     let (a, b) = thaw_sdk::future::try_join(
//!         http::get("https://a.example.com/"),
//!         http::get("https://b.example.com/"),
//!     )
//!     .await?;
//!     Ok(format!("{} {}", a.status(), b.status()))
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Both outputs, once both futures are done.
///
/// ```no_run
/// # async fn f() {
/// let (a, b) = thaw_sdk::future::join(async { 1 }, async { "two" }).await;
/// # }
/// ```
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    futures_lite::future::zip(a, b).await
}

/// Both values, or the first error (the other future is dropped then).
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let (a, b) = thaw_sdk::future::try_join(
///     thaw_sdk::http::get("https://a.example.com/"),
///     thaw_sdk::http::get("https://b.example.com/"),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn try_join<T, U, E, A, B>(a: A, b: B) -> Result<(T, U), E>
where
    A: Future<Output = Result<T, E>>,
    B: Future<Output = Result<U, E>>,
{
    futures_lite::future::try_zip(a, b).await
}

/// Every output, in the order of the futures, once all are done.
///
/// ```no_run
/// # async fn f() {
/// let urls = ["https://a.example.com/", "https://b.example.com/", "https://c.example.com/"];
/// let responses = thaw_sdk::future::join_all(urls.iter().map(|u| thaw_sdk::http::get(u))).await;
/// # }
/// ```
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    JoinAll {
        slots: futures
            .into_iter()
            .map(|f| Slot::Running(Box::pin(f)))
            .collect(),
    }
    .await
}

enum Slot<F: Future> {
    Running(Pin<Box<F>>),
    Done(Option<F::Output>),
}

struct JoinAll<F: Future> {
    slots: Vec<Slot<F>>,
}

// The futures are boxed (pinned on the heap), so the vector itself may move.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = false;
        for slot in &mut self.slots {
            if let Slot::Running(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(output) => *slot = Slot::Done(Some(output)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(
            self.slots
                .iter_mut()
                .map(|slot| match slot {
                    Slot::Done(output) => output.take().expect("polled after completion"),
                    Slot::Running(_) => unreachable!("every slot is done"),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn join_all_keeps_the_order() {
        let out = futures_lite::future::block_on(super::join_all((0..5).map(|i| async move {
            futures_lite::future::yield_now().await;
            i * 10
        })));
        assert_eq!(out, [0, 10, 20, 30, 40]);
    }
}
