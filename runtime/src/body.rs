//! Body types and the request-body limit.

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
    /// Tells the call's task to stop the guest (its response went past the limit).
    pub stop: tokio::sync::Notify,
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
    remaining: u64,
    limit: u64,
}

impl GuestBody {
    /// Wraps a guest's response body, allowing at most `limit` bytes.
    pub fn new(inner: ResponseBody, state: Arc<CallState>, limit: u64) -> Self {
        Self {
            inner,
            state,
            remaining: limit,
            limit,
        }
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
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    this.remaining = 0;
                    this.state.response_exceeded.store(true, Ordering::Release);
                    this.state.stop.notify_one();
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                        format!(
                            "the function's response went past its limit of {} bytes",
                            this.limit
                        ),
                    )))));
                }
                this.remaining -= len;
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
    remaining: u64,
    limit: u64,
    state: Arc<CallState>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `state.body_exceeded` is set when the body goes past `limit`.
    pub fn new(inner: B, limit: u64, state: Arc<CallState>) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
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
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.state.body_exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.limit)),
                        )));
                    }
                    this.remaining -= len;
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
