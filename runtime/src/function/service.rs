//! The workers of a WASIp3 function: how its instances are made, how many requests each
//! takes, and when each ends.
//!
//! A WASIp3 component exports the async `wasi:http/handler@0.3.0`: one instance can have
//! several requests in flight, each an async task of the component, interleaved by the
//! store's event loop. wasmtime-wasi-http's [`handler`] module runs that loop (it is what
//! `wasmtime serve -Sp3` uses): a *worker* owns one store and instance, accepts requests
//! from a queue while its [`handler::WorkerState`] says it may, and ends when its
//! [`WorkerExpiration`] says so. This module is thaw's policy for it.
//!
//! # Isolation, reuse and the warm pool
//! - **By default, one request per instance**, exactly as for a WASIp2 function: a worker
//!   accepts one request and then never another, so nothing a request leaves in memory is
//!   seen by the next. `wasmtime serve` instead reuses a p3 instance for up to 128 requests,
//!   16 at a time; thaw does not make that trade for the user.
//! - **With `reuse`** (a trusted function's opt-in), a worker accepts up to
//!   `reuse.max_requests` requests in all and `reuse.max_concurrent` (16 unless set) at once,
//!   and ends after `reuse.idle_timeout` without one, or as soon as it is idle once its
//!   function is dropped (replaced or removed, its last request answered). Requests in one
//!   instance share its memory and its fate: a trap ends the instance and fails every
//!   request in flight in it (each gets the classified error: trap, timeout, memory limit),
//!   and no other; a response body it was still writing ends in an error
//!   ([`InstanceFailure`]), never as if complete.
//! - **The warm pool** holds pre-instantiated instances as for p2; a new worker takes one
//!   if one is ready (the request's start is a `pool-hit`), else a free instance slot (one
//!   the request path parked for it, or any) and instantiates (`fresh`). With no slot free it
//!   does not wait: it hands the request back ([`NoSlot`]), and the request path queues it
//!   for a slot in admission's fair queue while offering it to workers that get room
//!   (`crate::invoke::service`), up to the queue timeout, then 503. A request accepted by a worker that already served one also
//!   starts as a `pool-hit`: an instance was ready and nothing was instantiated for it. The
//!   worker holds its slot until its store is dropped.
//!
//! # Time limits
//! Each request gets the function's timeout from the moment its worker accepts it: past
//! it the request is answered 504, and the worker stops accepting requests and ends once the
//! others are done or expired. Because a guest that spins without yielding keeps the
//! store's event loop from running, the expiry is enforced twice, as the handler module
//! asks: by the per-request timer, and from outside the loop by [`Expiration`], which ends
//! the whole worker when its most recent request (or the work after the last response,
//! such as a body still being written) has run past the timeout. The epoch deadline is the
//! last line: armed for the full timeout at every request start
//! ([`crate::guest::arm_shared_deadline`]), it interrupts a guest that never yields.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::handler::{
    self, HandlerState, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerStatus,
};

use super::timing::StartKind;
use super::{Code, Function};
use crate::guest::host::ProxyHost;
use crate::telemetry::OutboundTrace;

/// A WASIp3 function's request queue and workers.
pub type ServiceHandler = ProxyHandler<ServiceWorkers>;

/// What the request path hands a worker with each request, and how it hears back.
pub struct ServiceRequest {
    /// The request's id, for the guest's log lines.
    pub id: u64,
    /// The request's trace, for the guest's outbound requests.
    pub trace: Option<OutboundTrace>,
    /// Told when a worker accepts the request: how its instance was obtained, what
    /// instantiation took, and when the request started running.
    pub started: oneshot::Sender<Started>,
    /// Told why, if the instance fails while the request is in flight (a trap ends every
    /// request in the instance; the handler module itself only reports "trapped").
    pub fault: oneshot::Sender<Arc<wasmtime::Error>>,
    /// Told, before the instance's store is dropped, that the instance failed: the
    /// request's response body (which may still be streaming) must then end in an error,
    /// not in what looks like a complete body. Held weakly: it lives as long as that body.
    pub call: Weak<dyn InstanceFailure>,
}

/// What a request's response must learn when its instance fails after the head was sent
/// (implemented by the request path's per-call state).
pub trait InstanceFailure: Send + Sync {
    /// The instance failed; called before its store is dropped.
    fn instance_failed(&self);
}

/// How a request's instance came to be (see [`ServiceRequest::started`]).
#[derive(Clone, Copy, Debug)]
pub struct Started {
    /// `fresh` or `pool-hit`.
    pub kind: StartKind,
    /// Time spent instantiating for this request (zero unless `fresh`).
    pub instantiate: Duration,
    /// When the worker accepted the request.
    pub at: Instant,
}

/// A new worker found no free instance slot. It does not wait for one: the request goes
/// back to the request path (in the handler module's `InstantiationError`), which offers it
/// again, so that it can also be taken by a worker that gets room meanwhile, instead of
/// being tied to a worker that waits.
#[derive(Debug, thiserror::Error)]
#[error("all instance slots are busy")]
pub struct NoSlot;

/// The host-wide things a worker needs to make an instance.
pub struct ServiceWorkers {
    function: Weak<Function>,
    admission: Arc<Semaphore>,
    /// Instance slots the request path waited for (in admission's fair queue, beside the
    /// other functions' requests) after a worker found none: the next new worker takes one.
    parked: Mutex<Vec<OwnedSemaphorePermit>>,
}

impl ServiceWorkers {
    /// Keeps a slot for the next new worker.
    pub fn park(&self, slot: OwnedSemaphorePermit) {
        lock(&self.parked).push(slot);
    }

    /// Gives back a parked slot no worker took (its request went to a worker with room).
    pub fn unpark_one(&self) {
        let slot = lock(&self.parked).pop();
        drop(slot);
    }
}

impl Function {
    /// This (WASIp3) function's workers, made on first use.
    pub fn service_handler(self: &Arc<Self>, admission: &Arc<Semaphore>) -> &ServiceHandler {
        self.service.get_or_init(|| {
            ProxyHandler::new(ServiceWorkers {
                function: Arc::downgrade(self),
                admission: admission.clone(),
                parked: Mutex::new(Vec::new()),
            })
        })
    }
}

impl HandlerState for ServiceWorkers {
    type StoreData = ProxyHost;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(
        &self,
    ) -> wasmtime::Result<handler::Instance<ProxyHost, Expiration, Worker>> {
        let function = self
            .function
            .upgrade()
            .ok_or_else(|| wasmtime::format_err!("the function was removed"))?;
        let Some(Code::Service(pre)) = function.code() else {
            wasmtime::bail!("the function's code is not a WASIp3 component");
        };
        let warm = function
            .pool
            .take()
            .filter(|w| matches!(w.proxy, Proxy::P3(_)));
        let (mut store, proxy, permit, kind, instantiate) = match warm {
            Some(warm) => (
                warm.store,
                warm.proxy,
                warm.permit,
                StartKind::PoolHit,
                Duration::ZERO,
            ),
            None => {
                let parked = lock(&self.parked).pop();
                let permit = match parked {
                    Some(permit) => permit,
                    None => self
                        .admission
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| NoSlot)?,
                };
                let started = Instant::now();
                let mut store = crate::guest::proxy_store(pre.engine(), &function.service_guest());
                let proxy = Proxy::P3(pre.instantiate_async(&mut store).await?);
                (store, proxy, permit, StartKind::Fresh, started.elapsed())
            }
        };
        let deadline = Arc::new(AtomicU64::new(crate::guest::deadline_after(
            function.limits.timeout,
        )));
        let expired = Arc::new(AtomicBool::new(false));
        crate::guest::arm_shared_deadline(&mut store, deadline.clone());
        let (max_requests, max_concurrent, idle) = match &function.reuse {
            Some(reuse) => (
                reuse.max_requests as usize,
                reuse.max_concurrent as usize,
                reuse.idle_timeout,
            ),
            None => (1, 1, function.limits.timeout),
        };
        let timeout = function.limits.timeout;
        Ok(handler::Instance {
            store,
            proxy,
            view: ProxyHost::http,
            expiration: Expiration {
                timeout,
                idle,
                timer: Box::pin(tokio::time::sleep(timeout)),
                expired: expired.clone(),
                retired: Box::pin(function.retired.clone().cancelled_owned()),
            },
            state: Worker {
                name: function.name.clone(),
                max_requests,
                max_concurrent,
                timeout,
                fuel: function.limits.fuel,
                deadline,
                first: Mutex::new(Some((kind, instantiate))),
                in_flight: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
                expired,
                cost: function.cost.clone(),
                _permit: permit,
            },
        })
    }
}

/// One worker's policy and bookkeeping; dropped (releasing its instance slot) after its
/// store.
pub struct Worker {
    name: Arc<str>,
    max_requests: usize,
    max_concurrent: usize,
    timeout: Duration,
    fuel: Option<u64>,
    /// When the store is interrupted (see [`crate::guest::arm_shared_deadline`]).
    deadline: Arc<AtomicU64>,
    /// How the instance was obtained, told to the first request.
    first: Mutex<Option<(StartKind, Duration)>>,
    /// Where to tell the requests accepted so far why the instance failed.
    in_flight: Mutex<Vec<oneshot::Sender<Arc<wasmtime::Error>>>>,
    /// The calls whose responses may still be streaming from this instance.
    calls: Mutex<Vec<Weak<dyn InstanceFailure>>>,
    /// Set by [`Expiration`] when it ended the worker while requests ran.
    expired: Arc<AtomicBool>,
    /// The function's cost statistics (its instance's peak memory goes there).
    cost: Arc<super::cost::CostStats>,
    _permit: OwnedSemaphorePermit,
}

impl handler::WorkerState for Worker {
    type StoreData = ProxyHost;
    type RequestData = ServiceRequest;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, ProxyHost>,
        data: ServiceRequest,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let (kind, instantiate) = lock(&self.first)
            .take()
            .unwrap_or((StartKind::PoolHit, Duration::ZERO));
        store.data_mut().begin_request(data.id, data.trace);
        self.deadline.store(
            crate::guest::deadline_after(self.timeout),
            Ordering::Relaxed,
        );
        if let Some(fuel) = self.fuel {
            // Fuel is the store's, not the request's: a request start refills it.
            let _ = store.set_fuel(fuel);
        }
        let _ = data.started.send(Started {
            kind,
            instantiate,
            at: Instant::now(),
        });
        let mut in_flight = lock(&self.in_flight);
        // Requests that are answered dropped their receivers: forget them.
        in_flight.retain(|fault| !fault.is_closed());
        in_flight.push(data.fault);
        drop(in_flight);
        let mut calls = lock(&self.calls);
        // And calls whose bodies are done dropped their state.
        calls.retain(|call| call.strong_count() > 0);
        calls.push(data.call);
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, store: Store<ProxyHost>, result: wasmtime::Result<()>) {
        if result.is_err() {
            // Before the store goes: dropping it ends the bodies it was still writing, and
            // those must end in an error, not look complete.
            for call in lock(&self.calls).drain(..) {
                if let Some(call) = call.upgrade() {
                    call.instance_failed();
                }
            }
        }
        // The instance's peak memory, once for all the requests it served (one, unless
        // reused): thaw does not poll a p3 guest's calls, so it has no per-call CPU.
        self.cost
            .record(None, store.data().limiter.peak_memory_bytes());
        // The guest's memory goes back before the slot does (the slot's permit is dropped
        // with `self`, after this).
        drop(store);
        if let Err(error) = result {
            // The handler module reports an expiry as a plain "guest timed out": say what it
            // is in the type the request path classifies (an epoch interrupt's, a timeout).
            let error = Arc::new(if self.expired.load(Ordering::Acquire) {
                wasmtime::Error::from(wasmtime::Trap::Interrupt)
            } else {
                error
            });
            let mut told = 0;
            for fault in lock(&self.in_flight).drain(..) {
                told += usize::from(fault.send(error.clone()).is_ok());
            }
            if told == 0 {
                // No request was waiting for a response: the failure hit work the guest
                // did after answering (a body it was still writing, a spawned task).
                tracing::warn!(function = %self.name, "instance failed after its responses: {error:?}");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// When a worker ends, judged from outside its event loop: the function's timeout after
/// its most recent request started (or after its last response, for the work the guest
/// does after answering), or, once it serves nothing, its idle timeout or the function's
/// retirement, whichever comes first.
pub struct Expiration {
    timeout: Duration,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
    /// The function's retirement: an idle worker of a function that is gone ends at once.
    retired: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        if status == WorkerStatus::Idle && this.retired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let limit = match status {
            WorkerStatus::Idle => this.idle,
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.timeout,
        };
        let deadline = tokio::time::Instant::from_std(since + limit);
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        let expired = this.timer.as_mut().poll(cx);
        if expired.is_ready() && status != WorkerStatus::Idle {
            this.expired.store(true, Ordering::Release);
        }
        expired
    }
}
