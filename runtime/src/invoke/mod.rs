//! One request to one function: admission, store, instantiate, call, response.
//!
//! This is the request path. It takes an [`InvokeContext`] (the few host-wide things a
//! request needs: admission, the queue timeout, pool settings, `Server-Timing`, the loader),
//! never the object that also deploys, so it can be driven in-process by tests and benchmarks
//! with no data directory, registry or listener. One executor per kind of function:
//! [`proxy`] (`wasi:http` components), [`service`] (WASIp3 `wasi:http` components) and
//! [`cgi`] (WASI preview1 modules).
//!
//! Everything it uses was prepared at load time (the `ProxyPre` or `InstancePre`, the
//! resolved limits, the environment list, the deadline in epoch ticks); it compiles and links
//! nothing, except that the first request to a function that is not loaded yet loads it
//! (deserialize and link, once, shared by every request that arrives meanwhile; counted as a
//! `disk` or `compile` start). Per request it builds a store and its WASI contexts (a few
//! allocations), takes an instance from the pool, and calls the guest.
//!
//! Every guest failure is contained here and costs exactly this request: a trap, a timeout
//! or a memory limit becomes an [`InvokeError`] (classified by type, [`error::classify`]) and
//! a status code, and the store, with all the guest's memory, is dropped.

pub mod body;
pub mod cgi;
pub mod error;
pub mod proxy;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::function::pool::PoolOptions;
use crate::function::timing::{StartKind, server_timing};
use crate::function::{Code, Function, LoadFor, Loader};
use crate::spec::{Kind, Limits};
use crate::telemetry::{RequestTrace, Tracing};
use body::ResponseBody;
pub use error::InvokeError;

/// The host-wide things a request needs, and nothing else.
pub struct InvokeContext {
    /// Admission control: one permit per instance slot. A request holds a permit from before
    /// instantiation until its store is dropped, so the pool is never asked for more
    /// instances than it has; excess requests queue here (bounded by `queue_timeout`) instead
    /// of failing inside wasmtime.
    pub admission: Arc<Semaphore>,
    /// How long a request waits for a slot or a concurrency place before a 503.
    pub queue_timeout: Duration,
    /// Warm pool settings.
    pub pool: PoolOptions,
    /// Add a `Server-Timing` header to every function response.
    pub server_timing: bool,
    /// Loads a function's code on its first request; `None` where functions are built
    /// loaded (tests and embedders without a data directory).
    pub loader: Option<Arc<Loader>>,
    /// Requests that found every slot taken and waited (counted, for `/metrics`).
    pub queue_waits: Arc<AtomicU64>,
    /// Traces, when they are exported (`None`: the request path does nothing for them).
    pub traces: Option<Arc<Tracing>>,
    /// Proxies whose forwarding headers name the client (see [`crate::forwarded`]).
    pub trusted_proxies: crate::forwarded::TrustedProxies,
}

/// Where a request came from and arrived on (CGI passes both to the guest).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client.
    pub remote: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// Whether the connection is TLS (the request's scheme is `https`).
    pub tls: bool,
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
    cx: &InvokeContext,
    function: Arc<Function>,
    req: Request<B>,
    peer: Peer,
) -> Response<ResponseBody> {
    let arrived = Instant::now();
    function.stats.requests.fetch_add(1, Ordering::Relaxed);
    let trace = cx.traces.as_ref().map(|t| {
        t.begin(
            req.headers(),
            req.method(),
            &function.name,
            function.record.generation,
        )
    });
    let response = respond(cx, &function, req, peer, trace.as_ref()).await;
    function
        .stats
        .record_response(response.status(), arrived.elapsed());
    if let Some(trace) = trace {
        trace.finish(response.status());
    }
    response
}

/// A client request's rate limits ([`crate::rate`]), checked at the edge before it is
/// dispatched: `Some` is the 429 to send, counted as a request and a limit hit; the guest never
/// starts. Events (schedules, queue messages, asynchronous retries) are not rate limited:
/// they have their own bounds, and no client to slow down. The client's address is found
/// only when a client rate applies.
pub fn check_rate(
    cx: &InvokeContext,
    function: &Function,
    headers: &http::HeaderMap,
    peer: Peer,
) -> Option<Response<ResponseBody>> {
    let wait = function
        .rate
        .check(|| crate::forwarded::client_address(peer.remote.ip(), headers, &cx.trusted_proxies))
        .err()?;
    let error = InvokeError::RateLimited(wait);
    let stats = &function.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    stats.failures.fetch_add(1, Ordering::Relaxed);
    stats.limit_hits.count(crate::guest::limit::Limit::Rate);
    stats.record_response(error.status(), Duration::ZERO);
    // Hit by the thousand under a flood: counted, and logged at debug only.
    tracing::debug!(function = %function.name, limit = "rate", "limit hit: {error}");
    Some(error.into_response())
}

async fn respond<B: RequestBody>(
    cx: &InvokeContext,
    function: &Arc<Function>,
    req: Request<B>,
    peer: Peer,
    trace: Option<&RequestTrace>,
) -> Response<ResponseBody> {
    match try_invoke(cx, function, req, peer, trace).await {
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

/// What every executor gets for one request that has its place: the host's context, the
/// function, and how the request got this far. One value instead of a list of arguments:
/// the executors differ in what else they take (their code, the body, the peer).
pub(super) struct Call<'a> {
    cx: &'a InvokeContext,
    function: &'a Arc<Function>,
    /// The function's concurrency place (with a `max_concurrency`), held until the response
    /// body is done.
    place: Option<OwnedSemaphorePermit>,
    /// How this request's wait for the function's code went, if it waited.
    load: Option<(StartKind, Duration)>,
    /// When the request had its place.
    admitted: Instant,
    trace: Option<&'a RequestTrace>,
    /// Whether the request came over TLS (its scheme is `https`).
    tls: bool,
}

impl Call<'_> {
    /// The request's start: `kind` of instance (unless a load says otherwise), what
    /// instantiating took, and the time from admission to a ready instance.
    fn start(&self, kind: StartKind, instantiate: Duration, total: Duration) -> Start {
        Start {
            kind: self.load.map_or(kind, |(kind, _)| kind),
            admitted: self.admitted,
            load: self.load.map(|(_, d)| d),
            instantiate,
            total,
        }
    }

    /// Records `start`, the handler's time and its CPU time until the response head, where
    /// it was metered (statistics, trace, `Server-Timing`).
    fn record(
        &self,
        start: &Start,
        handler: Duration,
        cpu: Option<Duration>,
        headers: &mut http::HeaderMap,
    ) {
        start.record(self.cx, self.function, (handler, cpu), headers, self.trace);
    }
}

/// The phases of one request's start, for `Server-Timing`, the per-function statistics and
/// the request's trace.
struct Start {
    kind: StartKind,
    /// When the request was admitted (had its concurrency place).
    admitted: Instant,
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
        cx: &InvokeContext,
        function: &Function,
        (handler, cpu): (Duration, Option<Duration>),
        headers: &mut http::HeaderMap,
        trace: Option<&RequestTrace>,
    ) {
        function.starts.record(self.kind, self.total, handler);
        if let Some(trace) = trace {
            let ready = self.admitted + self.total;
            trace.phases(self.admitted, ready, ready + handler, self.kind.as_str());
        }
        if cx.server_timing
            && let Ok(value) = http::HeaderValue::try_from(server_timing(
                self.kind,
                self.load,
                self.instantiate,
                handler,
                cpu,
            ))
        {
            headers.insert(SERVER_TIMING, value);
        }
    }
}

/// A new request id: unique within this process, from 1 (0 means "no request" in a log
/// line). A process-wide counter rather than a field of [`InvokeContext`]: ids must not
/// repeat across the contexts of one process, and one `fetch_add` is all it costs.
pub fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

async fn try_invoke<B: RequestBody>(
    cx: &InvokeContext,
    function: &Arc<Function>,
    req: Request<B>,
    peer: Peer,
    trace: Option<&RequestTrace>,
) -> Result<Response<ResponseBody>, InvokeError> {
    check_headers(req.headers(), &function.limits)?;
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
        let body = body::read_bounded(body, limit, function.limits.timeout).await?;
        Err(body)
    } else {
        Ok(body)
    };
    // The function's own concurrency limit, before it competes for a host slot.
    let place = match &function.gate {
        Some(gate) => Some(
            gate.enter(cx.queue_timeout)
                .await
                .map_err(|refused| InvokeError::ConcurrencyLimit(refused.0))?,
        ),
        None => None,
    };
    let admitted = Instant::now();
    let (loaded, load) = match &cx.loader {
        Some(loader) => loader
            .ensure_loaded(function, LoadFor::Request)
            .await
            .map_err(|e| InvokeError::Internal(format!("the function cannot be loaded: {e:#}")))?,
        None => match function.loaded() {
            Some(loaded) => (loaded, None),
            None => return Err(InvokeError::Internal("the function is not loaded".into())),
        },
    };
    let call = Call {
        cx,
        function,
        place,
        load,
        admitted,
        trace,
        tls: peer.tls,
    };
    match (&loaded.code, cgi_body) {
        (code @ (Code::Proxy(_) | Code::Source(_)), Ok(body)) => {
            let code = code.p2().expect("a p2 kind");
            proxy::call(call, code, Request::from_parts(parts, body)).await
        }
        (Code::Service(_), Ok(body)) => service::call(call, Request::from_parts(parts, body)).await,
        (Code::Cgi(pre), Err(body)) => cgi::call(call, pre, parts, body, peer).await,
        _ => Err(InvokeError::Internal(
            "the function's code is not of its recorded kind".into(),
        )),
    }
}

async fn admit(cx: &InvokeContext) -> Result<OwnedSemaphorePermit, InvokeError> {
    if let Ok(permit) = cx.admission.clone().try_acquire_owned() {
        return Ok(permit);
    }
    cx.queue_waits.fetch_add(1, Ordering::Relaxed);
    tokio::time::timeout(cx.queue_timeout, cx.admission.clone().acquire_owned())
        .await
        .map_err(|_| InvokeError::Overloaded)?
        .map_err(|_| InvokeError::Internal("admission semaphore closed".into()))
}

/// wasi:http needs an authority; HTTP/1.0 clients may send no Host header.
fn ensure_authority(parts: &mut http::request::Parts) {
    if !parts.headers.contains_key(http::header::HOST) && parts.uri.authority().is_none() {
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Checks a request's header section against the function's limits: the field count and
/// the bytes as they were on the wire (`name: value\r\n` each).
fn check_headers(headers: &http::HeaderMap, limits: &Limits) -> Result<(), InvokeError> {
    if headers.len() > limits.max_headers as usize {
        return Err(InvokeError::HeadersTooLarge(format!(
            "{} header fields, the limit is {}",
            headers.len(),
            limits.max_headers
        )));
    }
    let bytes: u64 = headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(InvokeError::HeadersTooLarge(format!(
            "{bytes} bytes of headers, the limit is {}",
            limits.max_header_bytes
        )));
    }
    Ok(())
}
