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
//! | host resources | the store's resource table and handle cap ([`crate::guest::host`]): a push past `max_host_resources` traps | 500 |
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::guest::limit::{Limit, LimitHits};
use crate::spec::Limits;

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
    ) -> Result<OwnedSemaphorePermit, GateRefused> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Reserve a queue position first, so the bound holds under concurrent arrivals.
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.waiting);
        if queued >= self.max_queue {
            return Err(GateRefused("its wait queue is full"));
        }
        match tokio::time::timeout(queue_timeout, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a full queue if it were.
            Ok(Err(_)) => Err(GateRefused("the gate is closed")),
            Err(_) => Err(GateRefused("no place freed up within the queue timeout")),
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

/// Why the gate refused a request (the reason is for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateRefused(pub &'static str);

struct LeaveQueue<'a>(&'a AtomicU32);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
