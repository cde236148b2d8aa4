//! The `wasi:http` executor: a component's `incoming-handler.handle`, with the response
//! streamed back while the guest may still be writing it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::body::{CallState, GuestBody, LimitedBody, ResponseBody};
use super::error::{InvokeError, classify};
use super::{
    Call, InvokeContext, RequestBody, admit, content_length, ensure_authority, next_request_id,
};
use crate::function::pool::{WarmInstance, WarmPool};
use crate::function::timing::StartKind;
use crate::function::{Function, P2Code};
use crate::guest::{arm_deadline, arm_fuel, proxy_store};
use crate::telemetry::{OutboundTrace, RequestTrace};

/// The request as the guest's store holds it.
type GuestRequest = Resource<HostIncomingRequest>;
/// Where the guest puts its answer.
type Outparam = Resource<HostResponseOutparam>;
/// The guest's answer, once it has one.
type Answer = tokio::sync::oneshot::Receiver<Result<Response<HyperOutgoingBody>, ErrorCode>>;

/// A `wasi:http` component: the request goes to `incoming-handler.handle`, the response comes
/// back through the `response-outparam` while the guest may still be writing the body.
pub(super) async fn call<B: RequestBody>(
    mut call: Call<'_>,
    code: P2Code<'_>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, InvokeError> {
    let Call { cx, function, .. } = call;
    let in_flight = function.pool.begin_request();
    WarmPool::ensure_refill(function, &cx.admission, &cx.pool);
    let outbound = call.trace.map(RequestTrace::outbound);
    let (mut instance, kind, instantiate) =
        acquire(cx, function, code, next_request_id(), outbound).await?;
    // (The call's task replaces what it took: see `run`.)
    let start = call.start(kind, instantiate, call.admitted.elapsed());

    let state = Arc::new(CallState::default());
    let (req, out, responded) = match hand_over(&mut instance, function, req, call.tls, &state) {
        Ok(handed) => handed,
        Err(e) => {
            // No call's task to replace the instance: the refill task does.
            function.pool.want_refill();
            return Err(e);
        }
    };
    let call_started = Instant::now();
    let task = tokio::spawn(run(
        function.clone(),
        instance,
        req,
        out,
        state.clone(),
        call.place.take(),
        Replace {
            admission: cx.admission.clone(),
            options: cx.pool.clone(),
        },
    ));
    let response = match responded.await {
        Ok(Ok(response)) => match check_head(response, function, &state) {
            Ok(response) => Ok(response),
            // Refused: the answer is final (the guest was told to stop; a limit the task
            // counted already is not counted again), with no start recorded.
            Err(refused) => return refused,
        },
        Ok(Err(code)) => Err(InvokeError::GuestError(format!("{code:?}"))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(InvokeError::NoResponse),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(InvokeError::Internal(format!("guest task failed: {join}"))),
        },
    };
    drop(in_flight);
    if state.body_exceeded.load(Ordering::Acquire) {
        // The guest read past the limit before its response reached us: answer 413 instead.
        let limit = function.limits.max_request_body_bytes;
        return refuse(&state, function, InvokeError::BodyTooLarge(limit));
    }
    let mut response = response?;
    // The CPU first: read after the wall clock, it could include time past that reading.
    let cpu = state.cpu.at_head();
    call.record(
        &start,
        call_started.elapsed(),
        Some(cpu),
        response.headers_mut(),
    );
    Ok(response)
}

/// The guest's side of the exchange, in `instance`'s store: the request (its body limited),
/// and the outparam its answer comes back through (on the returned receiver).
fn hand_over<B: RequestBody>(
    instance: &mut WarmInstance,
    function: &Function,
    req: Request<B>,
    tls: bool,
    state: &Arc<CallState>,
) -> Result<(GuestRequest, Outparam, Answer), InvokeError> {
    let (mut parts, body) = req.into_parts();
    ensure_authority(&mut parts);
    let limit = function.limits.max_request_body_bytes;
    let body = LimitedBody::new(body, limit, state.clone());
    let req = Request::from_parts(parts, body);

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let http = instance.store.data_mut();
    let req = http
        .http()
        .new_incoming_request(if tls { Scheme::Https } else { Scheme::Http }, req)
        .map_err(|e| InvokeError::BadRequest(format!("{e:#}")))?;
    // Remember whether the guest answered: a failure after that (while it streams the body)
    // reaches the client only as a cut-off body, so the task must log it itself.
    let out = http
        .http()
        .new_response_outparam_from_callback({
            let state = state.clone();
            move |result| {
                state.responded.store(true, Ordering::Release);
                let _ = sender.send(result);
            }
        })
        .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
    Ok((req, out, receiver))
}

/// The guest's response head, checked before anything is sent: a final status, and a
/// length within the function's limit. `Err` holds the refusal, which is the request's final
/// answer (the guest is stopped).
#[allow(clippy::result_large_err)] // Once per request, returned straight on.
fn check_head(
    response: Response<HyperOutgoingBody>,
    function: &Function,
    state: &Arc<CallState>,
) -> Result<Response<ResponseBody>, Result<Response<ResponseBody>, InvokeError>> {
    if !(200..=599).contains(&response.status().as_u16()) {
        // A 1xx as the final answer would make hyper switch protocols (101) or send an
        // interim response on a connection the host owns: a guest only gets 200..=599, as
        // CGI modules do.
        return Err(refuse(
            state,
            function,
            InvokeError::BadResponse(format!(
                "status {} is not a final status (200..=599)",
                response.status().as_u16()
            )),
        ));
    }
    let response_limit = function.limits.max_response_body_bytes;
    if content_length(response.headers()).is_some_and(|len| len > response_limit) {
        // Announced too large: refuse before anything is sent, and stop the guest.
        return Err(refuse(
            state,
            function,
            InvokeError::ResponseTooLarge(response_limit),
        ));
    }
    let state = state.clone();
    Ok(response.map(|body| GuestBody::new(body, state, response_limit).boxed_unsync()))
}

/// A warm instance if one waits, else a slot (through admission) and a fresh instance.
/// Returns it with how it was obtained and what instantiation took.
async fn acquire(
    cx: &InvokeContext,
    function: &Function,
    code: P2Code<'_>,
    request: u64,
    trace: Option<OutboundTrace>,
) -> Result<(WarmInstance, StartKind, Duration), InvokeError> {
    // The code's own engine: Cranelift's, or the fast tier's right after a fast deploy.
    let engine = code.engine();
    Ok(match function.pool.take_to_replace() {
        Some(mut warm) => {
            warm.uses += 1;
            // Its budgets were spent (or partly spent) on instantiation or earlier requests.
            arm_deadline(&mut warm.store, function.deadline_ticks);
            arm_fuel(&mut warm.store, &function.limits);
            warm.store.data_mut().begin_request(request, trace);
            (warm, StartKind::PoolHit, Duration::ZERO)
        }
        None => {
            let permit = admit(cx).await?;
            let started = Instant::now();
            // One budget for instantiation (which may run guest start functions) and the call.
            let mut store = proxy_store(engine, &function.guest());
            store.data_mut().begin_request(request, trace);
            let proxy = code.instantiate(&mut store).await.map_err(classify)?;
            let proxy = wasmtime_wasi_http::handler::Proxy::P2(proxy);
            let warm = WarmInstance {
                store,
                proxy,
                permit,
                uses: 1,
                idle_since: Instant::now(),
            };
            (warm, StartKind::Fresh, started.elapsed())
        }
    })
}

/// What the call's task needs to replace the warm instance the request took.
struct Replace {
    admission: Arc<tokio::sync::Semaphore>,
    options: crate::function::pool::PoolOptions,
}

/// The guest's side of a call, in its own task: after the guest sets the response it may
/// keep writing the body, which the client reads while this runs. The task owns the instance
/// and its slot; both are released (or, with reuse, returned to the pool) when the guest is
/// done or stopped. Then, its response on its way, the task tops the function's warm pool up
/// ([`WarmPool::top_up`]): the request replaces the instance it took (or the one it lacked)
/// where it already runs, rather than waking the pool's refill task to do it.
async fn run(
    function: Arc<Function>,
    instance: WarmInstance,
    req: GuestRequest,
    out: Outparam,
    state: Arc<CallState>,
    place: Option<OwnedSemaphorePermit>,
    replace: Replace,
) -> Result<(), InvokeError> {
    let result = run_guest(&function, instance, req, out, &state, place).await;
    if !state.responded.load(Ordering::Acquire) {
        // The request path waits for this result (there is no response): it must not wait
        // for an instantiation too. The refill task replaces the instance.
        function.pool.want_refill();
        return result;
    }
    // Let the connection's task (woken by the response) write it first: a replacement made
    // now would hold up the response on this thread.
    tokio::task::yield_now().await;
    WarmPool::top_up(&function, &replace.admission, &replace.options).await;
    result
}

/// [`run`]'s guest call, up to the instance's release.
async fn run_guest(
    function: &Arc<Function>,
    mut instance: WarmInstance,
    req: GuestRequest,
    out: Outparam,
    state: &Arc<CallState>,
    place: Option<OwnedSemaphorePermit>,
) -> Result<(), InvokeError> {
    // The function's concurrency place is held for as long as the guest runs.
    let _place = place;
    let timeout = function.limits.timeout;
    let response_limit = function.limits.max_response_body_bytes;
    let wasmtime_wasi_http::handler::Proxy::P2(proxy) = &instance.proxy else {
        // The pool holds instances of the function's own code, and this code is p2.
        return Err(InvokeError::Internal(
            "a warm instance is not of its function's kind".into(),
        ));
    };
    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut instance.store, req, out);
    let call = crate::function::cost::metered(call, &state.cpu);
    let result = tokio::select! {
        biased;
        // The response body went past its limit (see GuestBody): stop the guest now
        // rather than let it write until its timeout.
        () = state.stop.notified() => Err(InvokeError::ResponseTooLarge(response_limit)),
        result = tokio::time::timeout(timeout, call) => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(InvokeError::Timeout),
        },
    };
    // The cut body may also have ended the guest's writes before the stop arrived; and a
    // request body past its limit is that limit's hit, whatever the guest made of the
    // error it got (a trap, or an answer that must not look complete).
    let result = if state.body_exceeded.load(Ordering::Acquire) {
        Err(InvokeError::BodyTooLarge(
            function.limits.max_request_body_bytes,
        ))
    } else if result.is_ok() && state.response_exceeded.load(Ordering::Acquire) {
        Err(InvokeError::ResponseTooLarge(response_limit))
    } else {
        result
    };
    let peak_memory = instance.store.data().limiter.peak_memory_bytes();
    function.cost.record(Some(state.cpu.total()), peak_memory);
    match &result {
        Err(e) if state.responded.load(Ordering::Acquire) => {
            // Before the store (and with it the body stream) is dropped: see GuestBody.
            state.failed.store(true, Ordering::Release);
            match e.limit() {
                // The client already has its status; the limit hit is counted here,
                // unless the request path already answered with it (see below).
                Some(_) if state.limit_reported.swap(true, Ordering::AcqRel) => {}
                Some(limit) => function.stats.limit_hits.hit(
                    &function.name,
                    limit,
                    &format_args!("after sending its response head: {e}"),
                ),
                None => {
                    tracing::warn!(function = %function.name, "failed after sending its response head: {e}")
                }
            }
        }
        Err(_) => {}
        // Only an instance that ended cleanly may serve again, and only if asked to.
        Ok(()) => {
            if let Some(reuse) = &function.reuse
                && instance.uses < reuse.max_requests
            {
                function.pool.put_back(instance);
            }
        }
    }
    result
}

/// Answers an error the request path saw after the guest set its response (which is then
/// never sent: a limit hit, or a status the host does not send), and stops the guest. The
/// call's task sees the stop as a failure when the guest ends; whichever of the two claims
/// `limit_reported` first counts and logs it, so it is counted once.
fn refuse(
    state: &CallState,
    function: &Function,
    error: InvokeError,
) -> Result<Response<ResponseBody>, InvokeError> {
    // Claimed before the guest is told to stop, so the task's view of the stop (a response
    // limit) is never the one that gets counted for what the request path saw.
    let counted_by_task = state.limit_reported.swap(true, Ordering::AcqRel);
    state.stop.notify_one();
    if counted_by_task {
        // Already counted by the task: answer without counting again.
        function.stats.failures.fetch_add(1, Ordering::Relaxed);
        return Ok(error.into_response());
    }
    Err(error)
}
