//! The WASIp3 executor: a request to a component's async `wasi:http/handler@0.3.0`.
//!
//! The request goes to the function's workers ([`crate::function::service`]), which decide
//! which instance runs it; this side applies what holds per request whatever the instance:
//! the request body's limit (the guest's reads stop at it and the answer is 413), the
//! response's status and size, the timeout's 504, `Server-Timing` with the start kind the
//! worker reports, and the classification of a failure (trap, timeout, memory or fuel limit)
//! from the error the failed instance left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, TrapOrPanicError};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use super::body::{CallState, GuestBody, LimitedBody, ResponseBody};
use super::error::{InvokeError, classify_ref};
use super::{InvokeContext, RequestBody, Start, content_length, next_request_id};
use crate::function::Function;
use crate::function::pool::WarmPool;
use crate::function::service::{NoSlot, ServiceRequest, Started};
use crate::function::timing::StartKind;
use crate::telemetry::RequestTrace;

/// How long a request whose instance failed waits for the worker to say why (it does so
/// right after dropping the store; the wait only matters if it never does).
const FAULT_REPORT_WAIT: Duration = Duration::from_secs(1);

/// Serves `req` with a WASIp3 function.
pub(super) async fn call<B: RequestBody>(
    cx: &InvokeContext,
    function: &Arc<Function>,
    req: Request<B>,
    place: Option<OwnedSemaphorePermit>,
    load: Option<(StartKind, Duration)>,
    admitted: Instant,
    trace: Option<&RequestTrace>,
) -> Result<Response<ResponseBody>, InvokeError> {
    let in_flight = function.pool.begin_request();
    WarmPool::ensure_refill(function, &cx.admission, &cx.pool);
    let workers = function.service_handler(&cx.admission);

    let (mut parts, body) = req.into_parts();
    // wasi:http needs an authority; HTTP/1.0 clients may send no Host header.
    if !parts.headers.contains_key(http::header::HOST) && parts.uri.authority().is_none() {
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    let state = Arc::new(CallState::default());
    let limit = function.limits.max_request_body_bytes;
    let body = LimitedBody::new(body, limit, state.clone()).boxed_unsync();

    let (started, mut started_rx) = oneshot::channel();
    let (fault, fault_rx) = oneshot::channel();
    let mut request = ServiceRequest {
        id: next_request_id(),
        trace: trace.map(RequestTrace::outbound),
        started,
        fault,
    };
    let mut req = Request::from_parts(parts, body);
    // Offered until a worker takes it: a new worker that finds no free instance slot hands
    // the request back (see `NoSlot`), and it is offered again after a short wait, when an
    // existing worker may have room or a slot may be free, up to the queue timeout.
    let queued = Instant::now();
    let mut backoff = Duration::from_millis(1);
    let result = loop {
        let result = workers.handle(request, req).await;
        match result {
            Err(e) if no_slot(&e) => {
                let refused = e
                    .downcast::<InstantiationError<ServiceRequest>>()
                    .expect("checked by no_slot");
                request = refused.request_data;
                req = refused
                    .request
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner());
            }
            result => break result,
        }
        if queued.elapsed() >= cx.queue_timeout {
            break Err(NoSlot.into());
        }
        if backoff == Duration::from_millis(1) {
            cx.queue_waits.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    // The function's concurrency place is held until the response head: the instance's own
    // cap bounds what runs in it after that.
    drop(place);
    drop(in_flight);
    let response = match result {
        Ok(response) => response,
        Err(error) => return Err(failure(error, fault_rx).await),
    };
    if state.body_exceeded.load(Ordering::Acquire) {
        // The guest read past the limit: whatever it answered, the answer is 413.
        return Err(InvokeError::BodyTooLarge(limit));
    }
    if !(200..=599).contains(&response.status().as_u16()) {
        // As for p2: a 1xx as the final answer would make hyper switch protocols.
        return Err(InvokeError::BadResponse(format!(
            "status {} is not a final status (200..=599)",
            response.status().as_u16()
        )));
    }
    let response_limit = function.limits.max_response_body_bytes;
    if content_length(response.headers()).is_some_and(|len| len > response_limit) {
        return Err(InvokeError::ResponseTooLarge(response_limit));
    }
    let started = started_rx.try_recv().unwrap_or(Started {
        kind: StartKind::Fresh,
        instantiate: Duration::ZERO,
        at: admitted,
    });
    let start = Start {
        kind: load.map_or(started.kind, |(kind, _)| kind),
        admitted,
        load: load.map(|(_, d)| d),
        instantiate: started.instantiate,
        total: started.at.saturating_duration_since(admitted),
    };
    let mut response = response.map(|body| {
        ServiceBody {
            inner: GuestBody::new(body, state, response_limit),
            function: function.clone(),
            counted: false,
        }
        .boxed_unsync()
    });
    start.record(
        cx,
        function,
        started.at.elapsed(),
        response.headers_mut(),
        trace,
    );
    Ok(response)
}

/// The longest wait between two offers of a request no worker could take.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Whether the handler module gave the request back because no instance slot was free.
fn no_slot(error: &wasmtime::Error) -> bool {
    error
        .downcast_ref::<InstantiationError<ServiceRequest>>()
        .is_some_and(|refused| refused.error.downcast_ref::<NoSlot>().is_some())
}

/// The request's error from the handler module's.
async fn failure(
    error: wasmtime::Error,
    fault: oneshot::Receiver<Arc<wasmtime::Error>>,
) -> InvokeError {
    if error.downcast_ref::<NoSlot>().is_some() {
        return InvokeError::Overloaded;
    }
    if let Some(refused) = error.downcast_ref::<InstantiationError<ServiceRequest>>() {
        return classify_ref(&refused.error);
    }
    if error.downcast_ref::<ExpirationError>().is_some() {
        return InvokeError::Timeout;
    }
    if let Some(code) = error.downcast_ref::<ErrorCode>() {
        // The guest's own "I failed" (`wasmtime serve` answers 500 for it too).
        return InvokeError::GuestError(format!("{code:?}"));
    }
    if error.downcast_ref::<TrapOrPanicError>().is_some() {
        // The instance ended under the request: its worker says why once it has dropped it.
        return match tokio::time::timeout(FAULT_REPORT_WAIT, fault).await {
            Ok(Ok(cause)) => classify_ref(&cause),
            _ => InvokeError::Trap("the instance failed".into()),
        };
    }
    classify_ref(&error)
}

/// A WASIp3 response body under the function's limit ([`GuestBody`]), counting the limit's
/// hit when the guest goes past it. (For p2 the call's task counts it when the guest ends;
/// here the instance may serve others, so the body does.)
struct ServiceBody {
    inner: GuestBody,
    function: Arc<Function>,
    counted: bool,
}

impl http_body::Body for ServiceBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(Some(Err(_)))) && !this.counted {
            this.counted = true;
            if this.inner.exceeded() {
                let error =
                    InvokeError::ResponseTooLarge(this.function.limits.max_response_body_bytes);
                if let Some(limit) = error.limit() {
                    this.function.stats.failures.fetch_add(1, Ordering::Relaxed);
                    this.function.stats.limit_hits.hit(
                        &this.function.name,
                        limit,
                        &format_args!("after sending its response head: {error}"),
                    );
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
