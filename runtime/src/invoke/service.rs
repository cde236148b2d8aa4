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
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime_wasi_http::handler::{self, ExpirationError, InstantiationError, TrapOrPanicError};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use super::body::{CallState, GuestBody, LimitedBody, ResponseBody};
use super::error::{InvokeError, classify_ref};
use super::{Call, InvokeContext, RequestBody, content_length, ensure_authority, next_request_id};
use crate::function::pool::WarmPool;
use crate::function::service::{InstanceFailure, NoSlot, ServiceHandler, ServiceRequest, Started};
use crate::function::timing::StartKind;
use crate::function::{Function, FunctionStats};
use crate::guest::limit::Limit;
use crate::telemetry::RequestTrace;

impl InstanceFailure for CallState {
    fn instance_failed(&self) {
        // GuestBody turns the end of a body into an error when this is set.
        self.failed.store(true, Ordering::Release);
    }
}

/// Serves `req` with a WASIp3 function.
pub(super) async fn call<B: RequestBody>(
    mut call: Call<'_>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, InvokeError> {
    let Call { cx, function, .. } = call;
    let in_flight = function.pool.begin_request();
    WarmPool::ensure_refill(function, &cx.admission, &cx.pool);
    let workers = function.service_handler(&cx.admission);

    let (mut parts, body) = req.into_parts();
    ensure_authority(&mut parts);
    let state = Arc::new(CallState::default());
    let limit = function.limits.max_request_body_bytes;
    let body = LimitedBody::new(body, limit, state.clone()).boxed_unsync();

    let (started, mut started_rx) = oneshot::channel();
    let (fault, fault_rx) = oneshot::channel();
    let failure_call: Arc<dyn InstanceFailure> = state.clone();
    let request = ServiceRequest {
        id: next_request_id(),
        trace: call.trace.map(RequestTrace::outbound),
        started,
        fault,
        call: Arc::downgrade(&failure_call),
    };
    drop(failure_call);
    let result = offer(cx, workers, request, Request::from_parts(parts, body)).await;
    drop(in_flight);
    let response = match result {
        Ok(response) => response,
        Err(error) => return Err(failure(error, fault_rx).await),
    };
    if state.body_exceeded.load(Ordering::Acquire) {
        // The guest read past the limit: whatever it answered, the answer is 413.
        return Err(InvokeError::BodyTooLarge(limit));
    }
    check_head(&response, function)?;
    let started = started_rx.try_recv().unwrap_or(Started {
        kind: StartKind::Fresh,
        instantiate: Duration::ZERO,
        at: call.admitted,
    });
    let total = started.at.saturating_duration_since(call.admitted);
    let start = call.start(started.kind, started.instantiate, total);
    let response_limit = function.limits.max_response_body_bytes;
    let place = call.place.take();
    let mut response = response.map(|body| {
        ServiceBody {
            inner: GuestBody::new(body, state.clone(), response_limit),
            state,
            stats: function.stats.clone(),
            name: function.name.clone(),
            request_limit: limit,
            response_limit,
            // The function's concurrency place is held until its body is done, as for p2.
            _place: place,
        }
        .boxed_unsync()
    });
    call.record(&start, started.at.elapsed(), None, response.headers_mut());
    Ok(response)
}

/// Offers the request to the function's workers until one takes it. A new worker that finds
/// no free instance slot hands the request back (see `NoSlot`); the request then takes its
/// place in admission's queue for a slot (first come, first served, beside every other
/// function's requests) and, while it waits there, is offered again now and then (1 ms,
/// doubling to 20 ms), to a worker that got room. A slot that comes is parked for the next
/// new worker and the request offered again; parked slots no worker took are given back at
/// the end.
async fn offer(
    cx: &InvokeContext,
    workers: &ServiceHandler,
    mut request: ServiceRequest,
    mut req: handler::Request,
) -> wasmtime::Result<handler::Response> {
    let deadline = tokio::time::Instant::now() + cx.queue_timeout;
    let mut waiting = None;
    let mut backoff = Duration::from_millis(1);
    let mut parked = 0;
    let result = loop {
        match workers.handle(request, req).await {
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
        if parked == 0 && backoff == Duration::from_millis(1) {
            cx.queue_waits.fetch_add(1, Ordering::Relaxed);
        }
        let slot = waiting.get_or_insert_with(|| {
            Box::pin(tokio::time::timeout_at(
                deadline,
                cx.admission.clone().acquire_owned(),
            ))
        });
        tokio::select! {
            got = slot => {
                waiting = None;
                match got {
                    Ok(Ok(slot)) => {
                        workers.state().park(slot);
                        parked += 1;
                    }
                    _ => break Err(NoSlot.into()),
                }
            }
            () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
        }
    };
    for _ in 0..parked {
        // Slots parked for this request that no worker took go back.
        workers.state().unpark_one();
    }
    result
}

/// The guest's response head, checked before anything is sent: a final status, and a
/// length within the function's limit.
fn check_head<T>(response: &Response<T>, function: &Function) -> Result<(), InvokeError> {
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
    Ok(())
}

/// The longest wait between two offers of a request that waits for a slot.
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
        // The instance ended under the request: its worker says why once it has dropped
        // it. No timeout: the sender lives in the worker, which sends or drops it as it ends.
        return match fault.await {
            Ok(cause) => classify_ref(&cause),
            Err(_) => InvokeError::Trap("the instance failed".into()),
        };
    }
    classify_ref(&error)
}

/// A WASIp3 response body under the function's limit ([`GuestBody`]), which also reports
/// what went wrong after the head was sent: the body past its limit, the request body past
/// its limit while the guest was still answering (the response is then cut off, as for
/// p2), or the instance failing (GuestBody ends the body in an error). For p2 the call's task
/// does this when the guest ends; a p3 instance may serve others, so the body does it.
struct ServiceBody {
    inner: GuestBody,
    state: Arc<CallState>,
    stats: Arc<FunctionStats>,
    name: Arc<str>,
    request_limit: u64,
    response_limit: u64,
    _place: Option<OwnedSemaphorePermit>,
}

impl ServiceBody {
    /// Counts a limit hit of this call, once.
    fn report(&self, limit: Limit, error: InvokeError) {
        if !self.state.limit_reported.swap(true, Ordering::AcqRel) {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.stats.limit_hits.hit(
                &self.name,
                limit,
                &format_args!("after sending its response head: {error}"),
            );
        }
    }
}

impl http_body::Body for ServiceBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Err(_))) if this.inner.exceeded() => this.report(
                Limit::ResponseBody,
                InvokeError::ResponseTooLarge(this.response_limit),
            ),
            Poll::Ready(None) if this.state.body_exceeded.load(Ordering::Acquire) => {
                // The guest answered, then read past the request body's limit: what it sent
                // must not look complete.
                this.report(
                    Limit::RequestBody,
                    InvokeError::BodyTooLarge(this.request_limit),
                );
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(this.request_limit),
                ))));
            }
            _ => {}
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
