//! Per-function limits: what each one bounds, where it is enforced, and what a hit costs.
//!
//! A function's limits come from its spec, with the host's defaults for what it leaves out
//! ([`crate::spec::LimitsSpec`]). Each is enforced at the cheapest point that still bounds the
//! resource, and a hit costs that one request, never the host or another function:
//!
//! | limit | enforced | the client gets |
//! |---|---|---|
//! | header bytes and count | before routing allocates anything for the guest | 431 |
//! | request body | `Content-Length` before admission; a chunked body while the guest reads it | 413 (or a cut connection once the guest has answered) |
//! | request body time (CGI) | read whole before admission, within the timeout and at a minimum rate ([`crate::body::read_bounded`]) | 408 |
//! | concurrency | a per-function semaphore before admission, with a bounded wait queue | 503 + `Retry-After` |
//! | instance slots | the host-wide admission semaphore in front of the pooling allocator | 503 + `Retry-After` |
//! | memory | the store's limiter: a `memory.grow` past it traps | 500 |
//! | wall-clock timeout | epoch deadlines (the guest yields every tick, traps at the deadline) | 504 |
//! | CPU fuel | wasmtime fuel, only on hosts started with `--fuel-metering` | 504 |
//! | response body | counted as hyper sends it (CGI: as the module writes stdout, [`crate::cgi_output`]); past the limit the guest is stopped | 502, or a cut connection once streaming |
//! | outbound hosts and requests | the `wasi:http` outgoing handler hook ([`crate::host`]) | an error inside the guest |
//! | slow headers | hyper's header read timeout, before any instance exists | closed connection |
//! | unread responses | the listener's send timeout ([`crate::server::SendTimeout`]) | closed connection |
//!
//! Every hit is logged with the function's name and the limit's name, and counted per
//! function ([`LimitHits`], in `thaw list` and the admin API).
//!
//! # Trade-offs
//! - Fuel is off by default. Counting it makes Cranelift insert a decrement and a check on
//!   every loop back-edge and call, which CPU-bound guests pay for on every request; the
//!   wall-clock timeout already stops runaway guests. Fuel is for hosts that want a
//!   deterministic CPU budget (the same request always gets the same amount of work), not a
//!   safety net.
//! - The concurrency gate queues rather than refusing at once, because short bursts are
//!   normal; the queue is bounded so a burst cannot pile up unbounded waiters (each is a
//!   parked task and a held connection), and waiting is bounded by the host's queue timeout.
//! - The response limit stops the guest instead of letting it run to its timeout: a guest
//!   writing an endless body would otherwise hold its slot (and burn CPU) for the full
//!   timeout. Once the head is sent the status cannot change, so the connection is cut; a
//!   client sees an incomplete body, not a truncated one that looks whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::InvokeError;
use crate::spec::Limits;

/// A limit a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The wall-clock timeout.
    Timeout,
    /// CPU fuel.
    Fuel,
    /// Linear memory.
    Memory,
    /// The function's concurrency limit and its queue, or the host's instance slots.
    Concurrency,
    /// Request body size.
    RequestBody,
    /// A buffered request body that arrived too slowly (CGI).
    SlowRequestBody,
    /// Request header size or count.
    Headers,
    /// Response body size.
    ResponseBody,
    /// An outbound request to a host the allow-list does not name.
    OutboundHost,
    /// More outbound requests than one invocation may send.
    OutboundRequests,
}

impl Limit {
    /// Every limit, in reporting order.
    pub const ALL: [Limit; 10] = [
        Limit::Timeout,
        Limit::Fuel,
        Limit::Memory,
        Limit::Concurrency,
        Limit::RequestBody,
        Limit::SlowRequestBody,
        Limit::Headers,
        Limit::ResponseBody,
        Limit::OutboundHost,
        Limit::OutboundRequests,
    ];

    /// The name in logs and in the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Fuel => "fuel",
            Limit::Memory => "memory",
            Limit::Concurrency => "concurrency",
            Limit::RequestBody => "request_body",
            Limit::SlowRequestBody => "slow_request_body",
            Limit::Headers => "headers",
            Limit::ResponseBody => "response_body",
            Limit::OutboundHost => "outbound_host",
            Limit::OutboundRequests => "outbound_requests",
        }
    }
}

/// How often each limit was hit, for one function.
#[derive(Debug, Default)]
pub struct LimitHits([AtomicU64; Limit::ALL.len()]);

impl LimitHits {
    /// Counts a hit of `limit` by `function` and logs it with `detail`.
    pub fn hit(&self, function: &str, limit: Limit, detail: &dyn std::fmt::Display) {
        self.count(limit);
        tracing::info!(function, limit = limit.name(), "limit hit: {detail}");
    }

    /// Counts a hit the caller logs itself.
    pub fn count(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits of `limit` so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit as usize].load(Ordering::Relaxed)
    }

    /// `{"timeout": n, ...}` for the admin API.
    pub fn describe(&self) -> serde_json::Value {
        Limit::ALL
            .iter()
            .map(|&l| (l.name().to_owned(), self.get(l).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// A function's concurrency limit: `max_concurrency` places and a queue of `max_queue`
/// waiters in front of them.
#[derive(Debug)]
pub struct ConcurrencyGate {
    places: Arc<Semaphore>,
    max: u32,
    waiting: AtomicU32,
    max_queue: u32,
}

impl ConcurrencyGate {
    /// The gate for `limits`, if they set a concurrency limit.
    pub fn new(limits: &Limits) -> Option<Self> {
        limits.max_concurrency.map(|n| Self {
            places: Arc::new(Semaphore::new(n as usize)),
            max: n,
            waiting: AtomicU32::new(0),
            max_queue: limits.max_queue,
        })
    }

    /// Takes a place, waiting in the queue for at most `queue_timeout` if there is room in
    /// it. The place is held until the permit is dropped (when the guest is done).
    pub async fn enter(
        &self,
        queue_timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, InvokeError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Reserve a queue position first, so the bound holds under concurrent arrivals.
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.waiting);
        if queued >= self.max_queue {
            return Err(InvokeError::ConcurrencyLimit("its wait queue is full"));
        }
        match tokio::time::timeout(queue_timeout, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(InvokeError::Internal("concurrency gate closed".into())),
            Err(_) => Err(InvokeError::ConcurrencyLimit(
                "no place freed up within the queue timeout",
            )),
        }
    }

    /// Requests running now.
    pub fn running(&self) -> u32 {
        self.max
            .saturating_sub(self.places.available_permits() as u32)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

struct LeaveQueue<'a>(&'a AtomicU32);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checks a request's header section against the function's limits: the field count and
/// the bytes as they were on the wire (`name: value\r\n` each).
pub fn check_headers(headers: &http::HeaderMap, limits: &Limits) -> Result<(), InvokeError> {
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
