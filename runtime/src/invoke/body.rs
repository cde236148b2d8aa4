//! Body types and their limits: the response body a guest streams ([`GuestBody`]), the
//! request body it reads ([`LimitedBody`]), both counted against one byte budget, and the
//! whole body a CGI module needs before it starts ([`read_bounded`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full};

/// The body of every response thaw sends: what wasmtime-wasi-http produces for a guest's
/// response, so a guest's streaming body is passed through without conversion.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a call's task and its request and response bodies tell each other, in one allocation.
#[derive(Debug, Default)]
pub struct CallState {
    /// The request body went past its limit (set by [`LimitedBody`]).
    pub body_exceeded: AtomicBool,
    /// The guest has sent its response head.
    pub responded: AtomicBool,
    /// The guest failed (trap, timeout) after the call started.
    pub failed: AtomicBool,
    /// The response went past its limit (set by [`GuestBody`]).
    pub response_exceeded: AtomicBool,
    /// A limit hit of this call has been counted and logged (by the task or the request
    /// path, whichever saw it first).
    pub limit_reported: AtomicBool,
    /// Tells the call's task to stop the guest (its response went past the limit).
    pub stop: tokio::sync::Notify,
    /// The guest's CPU time (see [`crate::function::cost`]).
    pub cpu: crate::function::cost::CpuMeter,
}

/// A byte allowance: what the two body wrappers below count against their limit.
#[derive(Clone, Copy, Debug)]
struct Budget {
    remaining: u64,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            remaining: limit,
            limit,
        }
    }

    /// Spends `frame`'s data bytes; `false` (and nothing left) if they do not fit.
    fn spend(&mut self, frame: &Frame<Bytes>) -> bool {
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        match self.remaining.checked_sub(len) {
            Some(left) => {
                self.remaining = left;
                true
            }
            None => {
                self.remaining = 0;
                false
            }
        }
    }
}

/// A guest's response body that does not end cleanly if the guest failed, and that stops
/// the guest when it goes past the response limit.
///
/// When a guest traps while writing its body, wasmtime-wasi-http ends the body stream as if
/// it were complete, and the client would take a truncated response for a whole one. The call
/// task marks the failure before it drops the store (which is what ends the stream), so at the
/// end of the stream this wrapper knows, and turns the end into an error: hyper then aborts the
/// connection instead of sending the final chunk.
///
/// It also counts the bytes: past `limit` it asks the call's task to stop the guest
/// (`CallState::stop`) and ends the stream with an error, which cuts the connection.
pub struct GuestBody {
    inner: ResponseBody,
    state: Arc<CallState>,
    budget: Budget,
}

impl GuestBody {
    /// Wraps a guest's response body, allowing at most `limit` bytes.
    pub fn new(inner: ResponseBody, state: Arc<CallState>, limit: u64) -> Self {
        Self {
            inner,
            state,
            budget: Budget::new(limit),
        }
    }
}

impl GuestBody {
    /// Whether the guest's body went past the limit.
    pub fn exceeded(&self) -> bool {
        self.state.response_exceeded.load(Ordering::Acquire)
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !this.budget.spend(&frame) {
                    this.state.response_exceeded.store(true, Ordering::Release);
                    this.state.stop.notify_one();
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                        format!(
                            "the function's response went past its limit of {} bytes",
                            this.budget.limit
                        ),
                    )))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if this.state.failed.swap(false, Ordering::AcqRel) => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the function failed while writing its response".into(),
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that stops at `limit` bytes.
///
/// A request with a `Content-Length` over the limit is refused before any instance exists;
/// this wrapper catches chunked bodies that grow past it while the guest reads. It hands the
/// guest an error (the guest cannot read past the limit) and raises a flag, so that the data
/// plane answers 413 whatever the guest does with the error.
pub struct LimitedBody<B> {
    inner: B,
    budget: Budget,
    state: Arc<CallState>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `state.body_exceeded` is set when the body goes past `limit`.
    pub fn new(inner: B, limit: u64, state: Arc<CallState>) -> Self {
        Self {
            inner,
            budget: Budget::new(limit),
            state,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !this.budget.spend(&frame) {
                    this.state.body_exceeded.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                        Some(this.budget.limit),
                    ))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The time a client gets before its request body must flow at [`MIN_BODY_RATE`]: Apache's
/// `mod_reqtimeout` grants a body 20 s and then demands 500 bytes/s; thaw's bound is shorter
/// because a function's own timeout caps the whole read anyway.
pub const BODY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The slowest average rate, in bytes per second, at which a buffered request body may
/// arrive after [`BODY_GRACE`] (Apache's `MinRate` default).
pub const MIN_BODY_RATE: u64 = 500;

/// Why a buffered request body could not be read.
#[derive(Debug)]
pub enum ReadBodyError {
    /// Over the limit of this many bytes.
    TooLarge(u64),
    /// The client sent too slowly: past `timeout`, or below [`MIN_BODY_RATE`] after the grace.
    TooSlow {
        /// Bytes received before the deadline.
        received: u64,
    },
    /// The connection failed.
    Failed(String),
}

/// Reads a whole request body, at most `limit` bytes, within `timeout` and at no less than
/// [`MIN_BODY_RATE`] on average after [`BODY_GRACE`].
///
/// This is for executors that need the body before the guest runs (CGI: it is the module's
/// stdin). The caller reads it before it takes any instance slot or concurrency place, so a
/// client that stalls holds its connection and what it has sent, never a place another
/// request could use; the deadline bounds how long it holds even that.
pub async fn read_bounded<B>(
    mut body: B,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, ReadBodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = tokio::time::Instant::now();
    let hard_deadline = started + timeout;
    let mut received = 0u64;
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    loop {
        let paced = started
            + BODY_GRACE
            + std::time::Duration::from_millis(received * 1000 / MIN_BODY_RATE);
        let deadline = hard_deadline.min(paced);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadBodyError::TooSlow { received }),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadBodyError::Failed(e.into().to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > limit {
            return Err(ReadBodyError::TooLarge(limit));
        }
        // One frame (the common case for small bodies) is handed on without a copy.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Frames = Result<Frame<Bytes>, std::convert::Infallible>;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> http_body_util::StreamBody<futures::stream::Iter<std::vec::IntoIter<Frames>>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    /// A body whose frames the test sends when it likes (a client that may stall).
    fn channel() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(data)), rx))
        });
        (tx, http_body_util::StreamBody::new(Box::pin(frames)))
    }

    #[tokio::test]
    async fn reads_whole_bodies_within_the_limit() {
        let body = read_bounded(chunks(&[b"ab", b"cd"]), 4, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&body[..], b"abcd");
        let body = read_bounded(chunks(&[b"abcd"]), 4, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&body[..], b"abcd");
        assert!(matches!(
            read_bounded(chunks(&[b"ab", b"cde"]), 4, Duration::from_secs(1)).await,
            Err(ReadBodyError::TooLarge(4))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_at_the_timeout_or_the_minimum_rate() {
        let (tx, body) = channel();
        let read = tokio::spawn(read_bounded(body, 1 << 20, Duration::from_secs(60)));
        tx.send(Bytes::from_static(b"a few bytes")).await.unwrap();
        // Paused time: the read gives up at the grace plus what 11 bytes buy, not at 60 s.
        match read.await.unwrap() {
            Err(ReadBodyError::TooSlow { received: 11 }) => {}
            other => panic!("expected TooSlow, got {other:?}"),
        }
        drop(tx);
        let (_tx, body) = channel();
        assert!(matches!(
            read_bounded(body, 1 << 20, Duration::from_secs(1)).await,
            Err(ReadBodyError::TooSlow { received: 0 })
        ));
    }
}
