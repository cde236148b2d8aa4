//! One request to one function: admission, store, instantiate, call, response.
//!
//! This is the request path. Everything it uses was prepared at load time (the `ProxyPre` or
//! `InstancePre`, the resolved limits, the environment list, the deadline in epoch ticks); it
//! compiles nothing and links nothing. Per request it builds a store and its WASI contexts
//! (a few allocations), takes an instance from the pool, and calls the guest.
//!
//! Every guest failure is contained here and costs exactly this request: a trap, a timeout
//! or a memory limit becomes an [`InvokeError`] and a status code, and the store, with all
//! the guest's memory, is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{InstancePre, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::artifact::Kind;
use crate::body::{CallState, GuestBody, LimitedBody, ReadBodyError, ResponseBody, full};
use crate::cgi::{self, CgiRequest};
use crate::cgi_output::{CgiStdout, StdoutOverLimit};
use crate::error::InvokeError;
use crate::function::{Code, Function};
use crate::guest_log::GuestLog;
use crate::host::{CgiHost, ProxyHost, grant_dirs};
use crate::platform::Platform;
use crate::pool::{WarmInstance, WarmPool, new_store};
use crate::spec::Limits;
use crate::timing::{StartKind, server_timing};

/// Where a request came from and arrived on (CGI passes both to the guest).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client.
    pub remote: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
}

/// What a request body must be: hyper's `Incoming` on the server, anything with the same shape
/// in benchmarks and embedders.
pub trait RequestBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<wasmtime_wasi_http::Error> + Into<BoxError>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<
            Data = bytes::Bytes,
            Error: Into<wasmtime_wasi_http::Error> + Into<BoxError>,
        > + Send
        + Unpin
        + 'static
{
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `req` with `function`. Never fails: errors become responses (and log lines).
pub async fn invoke<B: RequestBody>(
    platform: &Arc<Platform>,
    function: Arc<Function>,
    req: Request<B>,
    peer: Peer,
) -> Response<ResponseBody> {
    function.stats.requests.fetch_add(1, Ordering::Relaxed);
    match try_invoke(platform, &function, req, peer).await {
        Ok(response) => response,
        Err(error) => {
            function.stats.failures.fetch_add(1, Ordering::Relaxed);
            if let Some(limit) = error.limit() {
                function.stats.limit_hits.count(limit);
                tracing::info!(function = %function.name, limit = limit.name(), status = error.status().as_u16(), "limit hit: {error}");
                return error.into_response();
            }
            match &error {
                InvokeError::Trap(_) | InvokeError::Exit(_) | InvokeError::Internal(_) => {
                    tracing::warn!(function = %function.name, status = error.status().as_u16(), "{error}")
                }
                _ => {
                    tracing::info!(function = %function.name, status = error.status().as_u16(), "{error}")
                }
            }
            error.into_response()
        }
    }
}

/// The phases of one request's start, for `Server-Timing` and the per-function statistics.
struct Start {
    kind: StartKind,
    /// Time spent loading the function's code, if this request waited for that.
    load: Option<Duration>,
    /// Time spent instantiating (zero for a pool hit).
    instantiate: Duration,
    /// From admission to a ready instance.
    total: Duration,
}

impl Start {
    fn record(
        &self,
        platform: &Platform,
        function: &Function,
        handler: Duration,
        headers: &mut http::HeaderMap,
    ) {
        function.starts.record(self.kind, self.total, handler);
        if platform.server_timing()
            && let Ok(value) = http::HeaderValue::try_from(server_timing(
                self.kind,
                self.load,
                self.instantiate,
                handler,
            ))
        {
            headers.insert(SERVER_TIMING, value);
        }
    }
}

const SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

async fn try_invoke<B: RequestBody>(
    platform: &Arc<Platform>,
    function: &Arc<Function>,
    req: Request<B>,
    peer: Peer,
) -> Result<Response<ResponseBody>, InvokeError> {
    crate::limits::check_headers(req.headers(), &function.limits)?;
    let limit = function.limits.max_request_body_bytes;
    if let Some(len) = content_length(req.headers())
        && len > limit
    {
        return Err(InvokeError::BodyTooLarge(limit));
    }
    // A CGI module gets its body whole, on stdin: read it before anything is taken, so a
    // client that stalls holds its connection, never a concurrency place or an instance slot.
    let (parts, body) = req.into_parts();
    let cgi_body = if function.record.kind == Kind::Cgi {
        let body = crate::body::read_bounded(body, limit, function.limits.timeout)
            .await
            .map_err(|e| match e {
                ReadBodyError::TooLarge(limit) => InvokeError::BodyTooLarge(limit),
                ReadBodyError::TooSlow { received } => InvokeError::BodyTooSlow { received },
                ReadBodyError::Failed(e) => {
                    InvokeError::BadRequest(format!("reading the request body: {e}"))
                }
            })?;
        Err(body)
    } else {
        Ok(body)
    };
    // The function's own concurrency limit, before it competes for a host slot.
    let place = match &function.gate {
        Some(gate) => Some(gate.enter(platform.queue_timeout()).await?),
        None => None,
    };
    let admitted = Instant::now();
    let (loaded, load) = platform
        .ensure_loaded(function)
        .await
        .map_err(|e| InvokeError::Internal(format!("the function cannot be loaded: {e:#}")))?;
    match (&loaded.code, cgi_body) {
        (Code::Proxy(pre), Ok(body)) => {
            let req = Request::from_parts(parts, body);
            call_proxy(platform, function, pre, req, place, load, admitted).await
        }
        (Code::Cgi(pre), Err(body)) => {
            let result = call_cgi(platform, function, pre, parts, body, peer, load, admitted).await;
            drop(place);
            result
        }
        _ => Err(InvokeError::Internal(
            "the function's code is not of its recorded kind".into(),
        )),
    }
}

async fn admit(platform: &Platform) -> Result<OwnedSemaphorePermit, InvokeError> {
    tokio::time::timeout(
        platform.queue_timeout(),
        platform.admission().clone().acquire_owned(),
    )
    .await
    .map_err(|_| InvokeError::Overloaded)?
    .map_err(|_| InvokeError::Internal("admission semaphore closed".into()))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A `wasi:http` component: the request goes to `incoming-handler.handle`, the response comes
/// back through the `response-outparam` while the guest may still be writing the body.
async fn call_proxy<B: RequestBody>(
    platform: &Arc<Platform>,
    function: &Arc<Function>,
    pre: &ProxyPre<ProxyHost>,
    req: Request<B>,
    place: Option<OwnedSemaphorePermit>,
    load: Option<(StartKind, Duration)>,
    admitted: Instant,
) -> Result<Response<ResponseBody>, InvokeError> {
    // The code's own engine: Cranelift's, or the fast tier's right after a fast deploy.
    let engine = pre.engine();
    let in_flight = function.pool.begin_request();
    WarmPool::ensure_refill(function, platform.admission(), platform.pool_options());

    // A warm instance if one waits, else a slot and a fresh instance.
    let (mut instance, kind, instantiate) = match function.pool.take() {
        Some(mut warm) => {
            warm.uses += 1;
            // Its budgets were spent (or partly spent) on instantiation or earlier requests.
            arm_deadline(&mut warm.store, function.deadline_ticks);
            arm_fuel(&mut warm.store, &function.limits);
            warm.store.data_mut().begin_request();
            (warm, StartKind::PoolHit, Duration::ZERO)
        }
        None => {
            let permit = admit(platform).await?;
            let started = Instant::now();
            let mut store = new_store(function, engine);
            // One budget for instantiation (which may run guest start functions) and the call.
            arm_deadline(&mut store, function.deadline_ticks);
            let proxy = pre.instantiate_async(&mut store).await.map_err(classify)?;
            let warm = WarmInstance {
                store,
                proxy,
                permit,
                uses: 1,
                idle_since: Instant::now(),
            };
            (warm, StartKind::Fresh, started.elapsed())
        }
    };
    let start = Start {
        kind: load.map_or(kind, |(kind, _)| kind),
        load: load.map(|(_, d)| d),
        instantiate,
        total: admitted.elapsed(),
    };

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
    let body = LimitedBody::new(body, limit, state.clone());
    let req = Request::from_parts(parts, body);

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let http = instance.store.data_mut();
    let req = http
        .http()
        .new_incoming_request(Scheme::Http, req)
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

    // The call runs in its own task: after the guest sets the response it may keep writing
    // the body, which the client reads while the task runs. The task owns the instance and
    // its slot; both are released (or, with reuse, returned to the pool) when the guest is
    // done or stopped.
    let timeout = function.limits.timeout;
    let response_limit = function.limits.max_response_body_bytes;
    let request_limit = limit;
    let task_function = function.clone();
    let task_state = state.clone();
    let call_started = Instant::now();
    let task = tokio::spawn(async move {
        let function = task_function;
        // The function's concurrency place is held for as long as the guest runs.
        let _place = place;
        let call =
            instance
                .proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut instance.store, req, out);
        let result = tokio::select! {
            biased;
            // The response body went past its limit (see GuestBody): stop the guest now
            // rather than let it write until its timeout.
            () = task_state.stop.notified() => Err(InvokeError::ResponseTooLarge(response_limit)),
            result = tokio::time::timeout(timeout, call) => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(classify(e)),
                Err(_) => Err(InvokeError::Timeout),
            },
        };
        // The cut body may also have ended the guest's writes before the stop arrived; and a
        // request body past its limit is that limit's hit, whatever the guest made of the
        // error it got (a trap, or an answer that must not look complete).
        let result = if task_state.body_exceeded.load(Ordering::Acquire) {
            Err(InvokeError::BodyTooLarge(request_limit))
        } else if result.is_ok() && task_state.response_exceeded.load(Ordering::Acquire) {
            Err(InvokeError::ResponseTooLarge(response_limit))
        } else {
            result
        };
        match &result {
            Err(e) if task_state.responded.load(Ordering::Acquire) => {
                // Before the store (and with it the body stream) is dropped: see GuestBody.
                task_state.failed.store(true, Ordering::Release);
                match e.limit() {
                    // The client already has its status; the limit hit is counted here,
                    // unless the request path already answered with it (see below).
                    Some(_) if task_state.limit_reported.swap(true, Ordering::AcqRel) => {}
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
    });

    let response = match receiver.await {
        Ok(Ok(response)) => {
            if content_length(response.headers()).is_some_and(|len| len > response_limit) {
                // Announced too large: refuse before anything is sent, and stop the guest.
                state.stop.notify_one();
                Err(InvokeError::ResponseTooLarge(response_limit))
            } else {
                let state = state.clone();
                Ok(response.map(|body| GuestBody::new(body, state, response_limit).boxed_unsync()))
            }
        }
        Ok(Err(code)) => Err(InvokeError::GuestError(format!("{code:?}"))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(InvokeError::BadResponse(
                "the function returned without setting a response".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(InvokeError::Internal(format!("guest task failed: {join}"))),
        },
    };
    drop(in_flight);
    if state.body_exceeded.load(Ordering::Acquire) {
        // The guest read past the limit before its response reached us: answer 413 instead.
        // Its task may count the same hit if the guest fails afterwards; one of the two does.
        if state.limit_reported.swap(true, Ordering::AcqRel) {
            function.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Ok(InvokeError::BodyTooLarge(limit).into_response());
        }
        return Err(InvokeError::BodyTooLarge(limit));
    }
    let mut response = response?;
    start.record(
        platform,
        function,
        call_started.elapsed(),
        response.headers_mut(),
    );
    Ok(response)
}

/// A WASI preview1 command run CGI-style: metadata in the environment, the buffered body on
/// stdin, stdout parsed as a CGI response once `_start` returns.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the list.
async fn call_cgi(
    platform: &Platform,
    function: &Arc<Function>,
    pre: &InstancePre<CgiHost>,
    parts: http::request::Parts,
    body: bytes::Bytes,
    peer: Peer,
    load: Option<(StartKind, Duration)>,
    admitted: Instant,
) -> Result<Response<ResponseBody>, InvokeError> {
    let engine = pre.module().engine();
    let path = parts.uri.path();
    let path_info = if function.route == "/" {
        path
    } else {
        path.get(function.route.len()..).unwrap_or("")
    };
    let mut env = Vec::with_capacity(16 + parts.headers.len() + function.env.len());
    let underscored = cgi::request_env(
        &CgiRequest {
            method: &parts.method,
            script_name: if function.route == "/" {
                ""
            } else {
                &function.route
            },
            path_info,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            content_length: Some(body.len() as u64),
            remote_addr: peer.remote,
            server_addr: peer.local,
        },
        &mut env,
    );
    if underscored > 0 {
        tracing::debug!(function = %function.name, underscored, "dropped request headers with '_' in their names (CGI would merge them with their '-' twins)");
    }
    // The function's own variables, except where they would shadow a CGI meta-variable.
    for (key, value) in &function.env {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.clone(), value.clone()));
        }
    }

    let response_limit = function.limits.max_response_body_bytes;
    // The body's limit plus room for the header section; the body alone is checked after
    // parsing. A write past this traps the guest at once (see crate::cgi_output).
    let stdout = CgiStdout::new(response_limit as usize + cgi::MAX_HEADER_BYTES);
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&env)
        .args(&[&*function.name])
        .stdin(MemoryInputPipe::new(body))
        .stdout(stdout.clone())
        .stderr(GuestLog::new(function.name.clone(), "stderr"));
    grant_dirs(&mut wasi, function);
    let wasi = wasi.build_p1();
    let permit = admit(platform).await?;
    let mut store = Store::new(engine, CgiHost::new(wasi, &function.limits));
    store.limiter(|host| &mut host.limits);
    arm_deadline(&mut store, function.deadline_ticks);
    arm_fuel(&mut store, &function.limits);

    let mut timings = (Duration::ZERO, Duration::ZERO, Instant::now());
    let call = async {
        let instantiating = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        timings.0 = instantiating.elapsed();
        timings.1 = admitted.elapsed();
        timings.2 = Instant::now();
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    let result = tokio::time::timeout(function.limits.timeout, call).await;
    let (instantiate, total, call_started) = timings;
    let handler = call_started.elapsed();
    drop(store);
    drop(permit);
    match result {
        Err(_) => return Err(InvokeError::Timeout),
        Ok(Ok(())) => {}
        Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(wasmtime_wasi::I32Exit(0)) => {}
            Some(wasmtime_wasi::I32Exit(code)) => return Err(InvokeError::Exit(*code)),
            None if e.downcast_ref::<StdoutOverLimit>().is_some() => {
                return Err(InvokeError::ResponseTooLarge(response_limit));
            }
            None => return Err(classify(e)),
        },
    }

    let parsed = cgi::parse_response(stdout.into_bytes())
        .map_err(|e| InvokeError::BadResponse(e.to_string()))?;
    if parsed.body.len() as u64 > response_limit {
        return Err(InvokeError::ResponseTooLarge(response_limit));
    }
    let mut response = Response::new(full(parsed.body));
    *response.status_mut() = parsed.status;
    *response.headers_mut() = parsed.headers;
    let start = Start {
        kind: load.map_or(StartKind::Fresh, |(kind, _)| kind),
        load: load.map(|(_, d)| d),
        instantiate,
        total,
    };
    start.record(platform, function, handler, response.headers_mut());
    Ok(response)
}

/// Makes a running guest yield to the executor at every epoch tick and traps it once
/// `ticks` have passed.
///
/// Yielding matters as much as the trap: a guest spinning in a loop would otherwise hold a
/// tokio worker thread until its deadline, and on a 2-core host that stalls every other
/// request (including the admin API) queued behind it on that worker. With a yield every
/// tick (10 ms) a CPU-bound guest shares the worker like any other task.
pub(crate) fn arm_deadline<T: 'static>(store: &mut Store<T>, ticks: u64) {
    let mut remaining = ticks;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if remaining == 0 {
            return Ok(UpdateDeadline::Interrupt);
        }
        remaining -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
}

/// Gives a store its CPU fuel for one request, on a host that meters fuel.
pub(crate) fn arm_fuel<T: 'static>(store: &mut Store<T>, limits: &Limits) {
    if let Some(fuel) = limits.fuel {
        // Fails only on an engine without fuel metering, which `limits.fuel` rules out.
        let _ = store.set_fuel(fuel);
    }
}

/// Sorts a guest failure: an epoch interrupt is a timeout, running out of fuel or memory a
/// limit hit, everything else a trap with its message (which names the trap code and, with
/// `addr2line`, the guest's frames).
fn classify(error: wasmtime::Error) -> InvokeError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout,
        Some(Trap::OutOfFuel) => InvokeError::OutOfFuel,
        _ => {
            let detail = format!("{error:?}");
            // wasmtime's `StoreLimits` with `trap_on_grow_failure` (see crate::host) fails a
            // `memory.grow` past the limit with this message; there is no typed error.
            if detail.contains("forcing trap when growing memory") {
                InvokeError::MemoryLimit(detail)
            } else {
                InvokeError::Trap(detail)
            }
        }
    }
}
