//! Warm pools: instances of a function instantiated before the request that needs them.
//!
//! # What a warm instance is
//! A [`WarmInstance`] is a store (with its WASI and HTTP contexts and limiter), the
//! instantiated `wasi:http` proxy inside it, and the admission permit (one instance slot) it
//! occupies. A request that finds one in its function's pool skips instantiation entirely: it
//! pushes its request into the store and calls the handler. A background task per active
//! function refills the pool, so instantiation (and dropping used instances) happens off the
//! request path.
//!
//! # Sizing, and scale to zero
//! The target size follows the function's recent concurrency: every [`SIZING_INTERVAL`] the
//! refill task reads the peak number of requests in flight since the last look and keeps that
//! many instances ready: at least one while the function is active, at most
//! [`PoolOptions::max_per_function`]. The instance a request took (or lacked) is replaced
//! right after its response, not at the next look and not beside it: an instantiation that
//! overlaps the request competes with it for the cores (on a two-core host, with the client on
//! one of them, it slows the very request whose instance it replaces), and a source
//! function's instance runs its program's top level when it is made, a millisecond where a
//! component's instantiation takes tens of microseconds. Under sustained load the same work
//! happens, one response later. A WASIp2 request's own task does it, after yielding once so
//! that its response is written first ([`WarmPool::top_up`]); a WASIp3 request wakes the
//! refill task when its response is ready. Warm instances hold real slots of the pooling
//! allocator, so they may only take slots while more than [`PoolOptions::reserve_slots`] are
//! free: a burst for another function still finds fresh capacity. A function that sees no
//! request for [`PoolOptions::idle_timeout`] drops all its warm instances (their memory and
//! slots go back) and its refill task sleeps until the next request.
//!
//! # Isolation, and opt-in reuse
//! By default an instance serves exactly one request and is discarded: nothing a request
//! leaves in memory can be seen by the next one, the property people expect from a FaaS.
//! A function may opt in to reuse ([`crate::spec::ReuseSpec`]): after a request that ended
//! cleanly, its instance goes back to the pool and serves up to `max_requests` requests,
//! keeping warm state (caches, parsed configuration, connection-free globals) at the cost of
//! that isolation: one request can observe what an earlier one left behind, and a slow leak
//! in the guest accumulates until the instance retires. An instance that trapped, timed out
//! or hit a limit is never reused. Reuse is for trusted functions that want the speed.
//!
//! # What it deliberately does not do
//! CGI modules are not pooled: their stdin and stdout are per-request pipes fixed at
//! instantiation, and a preview1 module, with no component glue, is cheap to instantiate from
//! the pool allocator anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime_wasi_http::handler::Proxy;

use super::{Code, Function};
use crate::guest::host::ProxyHost;

/// How often an active function's pool is resized.
pub const SIZING_INTERVAL: Duration = Duration::from_millis(100);

/// Host-wide pool settings.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Most warm instances one function keeps (0 turns warm pools off).
    pub max_per_function: usize,
    /// Warm instances never take slots while this many or fewer are free.
    pub reserve_slots: usize,
    /// A function idle this long drains its pool to zero.
    pub idle_timeout: Duration,
    /// A function idle this long has its code unloaded (see `control`'s idle task); `None`
    /// keeps loaded code for good.
    pub unload_after: Option<Duration>,
}

/// A ready-to-call instance.
pub struct WarmInstance {
    /// The instance's store.
    pub store: Store<ProxyHost>,
    /// The instantiated proxy.
    pub proxy: Proxy,
    /// The instance slot it occupies.
    pub permit: OwnedSemaphorePermit,
    /// Requests it has served (reuse only).
    pub uses: u32,
    /// When it last became idle.
    pub idle_since: Instant,
}

/// One function's warm instances and the numbers that size them.
pub struct WarmPool {
    ready: Mutex<Vec<WarmInstance>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    last_request: AtomicU64,
    refill_started: AtomicBool,
    wake: Arc<Notify>,
    /// The refill task sleeps until a request comes (scaled to zero): only then does a
    /// request mark the pool `wanted`, and its end wake the task. Otherwise the task wakes on
    /// its own every [`SIZING_INTERVAL`] and when a WASIp3 request that looked for an
    /// instance ends (a WASIp2 request replaces its instance itself: [`WarmPool::top_up`]);
    /// a request that did not look (a WASIp3 instance serving several) wakes nothing.
    asleep: Arc<AtomicBool>,
    /// A request looked for an instance since the last wake-up: the next request to end
    /// wakes the refill task.
    wanted: AtomicBool,
    /// The size the refill task last chose ([`WarmPool::top_up`] fills to it).
    target: AtomicUsize,
    epoch: Instant,
}

impl Default for WarmPool {
    fn default() -> Self {
        Self {
            ready: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            last_request: AtomicU64::new(0),
            refill_started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            asleep: Arc::new(AtomicBool::new(false)),
            wanted: AtomicBool::new(false),
            target: AtomicUsize::new(1),
            epoch: Instant::now(),
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // Wake a sleeping refill task so it sees the function is gone and ends.
        self.wake.notify_one();
    }
}

/// Marks a request in flight for sizing; dropping it ends the request (its response is
/// ready), which wakes the refill task if a request wanted an instance.
pub struct InFlight<'a>(&'a WarmPool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.0.wanted.load(Ordering::Relaxed) && self.0.wanted.swap(false, Ordering::AcqRel) {
            // `Notify` keeps the permit if the task is busy: no lost wake-up.
            self.0.wake.notify_one();
        }
    }
}

impl WarmPool {
    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<WarmInstance>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request for sizing (and for waking a refill task that sleeps: see `take`).
    pub fn begin_request(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.last_request
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Pairs with the fence in `refill`: either it sees this request's time, or this
        // sees it asleep.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            // Scaled to zero: the request's end wakes the task to fill the pool again.
            self.wanted.store(true, Ordering::Release);
        }
        InFlight(self)
    }

    /// A warm instance, if one is waiting. Either way the refill task is woken when a request
    /// of the function ends (see the module docs): to replace the one taken, or to have one
    /// ready for the next request.
    pub fn take(&self) -> Option<WarmInstance> {
        // Taken first: a request ending in between must not spend the wake-up on a pool
        // that still looks full.
        let taken = self.ready().pop();
        self.wanted.store(true, Ordering::Release);
        taken
    }

    /// A warm instance, if one is waiting, for a request whose own task replaces it after
    /// the response ([`WarmPool::top_up`]): the refill task is not woken.
    pub fn take_to_replace(&self) -> Option<WarmInstance> {
        self.ready().pop()
    }

    /// Adds one instance to `function`'s pool if it is below the refill task's target and a
    /// slot is free beyond the reserve: what the refill task does on a request's wake-up,
    /// done by the request's own task (see [`WarmPool::take_to_replace`]). Under load that
    /// saves a wake-up of another task per request, and its futex and context switch. Two
    /// requests (or one and the refill task) may both see room and both add: the surplus
    /// goes at the next sizing.
    ///
    /// The replacement comes when the guest's call ends: for most functions right after the
    /// response head, for one that streams its body after the body.
    pub async fn top_up(function: &Function, admission: &Arc<Semaphore>, options: &PoolOptions) {
        let pool = &function.pool;
        if options.max_per_function == 0
            || pool.len() >= pool.target.load(Ordering::Relaxed)
            || admission.available_permits() <= options.reserve_slots
        {
            return;
        }
        let Ok(permit) = admission.clone().try_acquire_owned() else {
            return;
        };
        match instantiate(function, permit).await {
            Ok(Some(instance)) => pool.ready().push(instance),
            Ok(None) => {}
            Err(e) => tracing::warn!(function = %function.name, "warm instantiation failed: {e:#}"),
        }
    }

    /// Wakes the refill task to top the pool up, for a request that took an instance to
    /// replace but cannot (its guest failed before answering, see `invoke::proxy`).
    pub fn want_refill(&self) {
        self.wake.notify_one();
    }

    /// Returns a reused instance to the pool (see the module docs on reuse).
    pub fn put_back(&self, mut instance: WarmInstance) {
        instance.idle_since = Instant::now();
        self.ready().push(instance);
    }

    /// Instances waiting now.
    pub fn len(&self) -> usize {
        self.ready().len()
    }

    /// Requests of this function running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True when no instance is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Starts the refill task of `function` unless it runs already.
    pub fn ensure_refill(
        function: &Arc<Function>,
        admission: &Arc<Semaphore>,
        options: &PoolOptions,
    ) {
        if options.max_per_function == 0
            || function.pool.refill_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        tokio::spawn(refill(
            Arc::downgrade(function),
            admission.clone(),
            options.clone(),
        ));
    }
}

/// Instantiates up to `count` instances of `function` into its pool now, taking free slots
/// only (no waiting). Returns how many were added. The refill task does this on its own; this
/// is for callers that know demand is coming (and for benchmarks of the pool-hit path).
pub async fn warm_up(function: &Function, admission: &Arc<Semaphore>, count: usize) -> usize {
    let mut added = 0;
    while added < count {
        let Ok(permit) = admission.clone().try_acquire_owned() else {
            break;
        };
        match instantiate(function, permit).await {
            Ok(Some(instance)) => function.pool.ready().push(instance),
            _ => break,
        }
        added += 1;
    }
    added
}

/// Keeps one function's pool at its target size until the function is dropped (removed or
/// replaced by a redeploy, when its last request is done).
async fn refill(function: Weak<Function>, admission: Arc<Semaphore>, options: PoolOptions) {
    let mut target = 1;
    let mut sized = Instant::now();
    // Started by a function's first request: fill once that request has its response, or
    // after one sizing interval if it takes longer (a burst of slow first requests is then
    // sized like any other).
    let wake = match function.upgrade() {
        Some(f) => f.pool.wake.clone(),
        None => return,
    };
    tokio::select! {
        () = wake.notified() => {}
        () = tokio::time::sleep(SIZING_INTERVAL) => {}
    }
    // One timer for the loop, moved to the next sizing when one is done: under load the task
    // wakes once per request, and a fresh `sleep` each time would register and cancel a timer
    // (two trips to the runtime's timer wheel) per request.
    let next_sizing = tokio::time::sleep_until((sized + SIZING_INTERVAL).into());
    tokio::pin!(next_sizing);
    loop {
        let Some(f) = function.upgrade() else { return };
        let pool = &f.pool;
        if pool.idle_for() >= options.idle_timeout {
            // Scale to zero: give the slots and memory back, sleep until a request comes.
            let drained = std::mem::take(&mut *pool.ready());
            if !drained.is_empty() {
                tracing::debug!(function = %f.name, instances = drained.len(), "idle: warm pool drained");
            }
            drop(drained);
            // Hold only the notifier while asleep, so a removed function can be dropped; its
            // pool's `Drop` wakes us to notice.
            let wake = pool.wake.clone();
            pool.asleep.store(true, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            // A request that arrived since the idle check above would not have woken us.
            if pool.idle_for() < options.idle_timeout && pool.asleep.swap(false, Ordering::AcqRel) {
                continue;
            }
            let notified = wake.notified();
            drop(f);
            notified.await;
            continue;
        }
        let reuse_idle = f.reuse.as_ref().map(|r| r.idle_timeout);
        if let Some(idle) = reuse_idle {
            pool.ready().retain(|w| w.idle_since.elapsed() < idle);
        }
        // The target follows the peak concurrency of the last interval; in between, a wake-up
        // (a request took an instance) only tops the pool up to the current target.
        // (Also whenever the timer has fired, so that a fired timer is never awaited again.)
        if sized.elapsed() >= SIZING_INTERVAL || next_sizing.is_elapsed() {
            let in_flight = pool.in_flight.load(Ordering::Relaxed);
            // A reused WASIp3 instance takes several requests at once: fewer are needed.
            let per_instance = match (f.code(), &f.reuse) {
                (Some(Code::Service(_)), Some(reuse)) => reuse.max_concurrent as usize,
                _ => 1,
            };
            target = pool
                .peak
                .swap(in_flight, Ordering::Relaxed)
                .div_ceil(per_instance)
                .clamp(1, options.max_per_function);
            pool.target.store(target, Ordering::Relaxed);
            sized = Instant::now();
            next_sizing.as_mut().reset((sized + SIZING_INTERVAL).into());
        }
        while pool.len() < target {
            if admission.available_permits() <= options.reserve_slots {
                break;
            }
            let Ok(permit) = admission.clone().try_acquire_owned() else {
                break;
            };
            match instantiate(&f, permit).await {
                Ok(Some(instance)) => pool.ready().push(instance),
                Ok(None) => return, // not a component: nothing to pool
                Err(e) => {
                    tracing::warn!(function = %f.name, "warm instantiation failed: {e:#}");
                    break;
                }
            }
        }
        // Too many (the target shrank): drop the surplus here, off the request path.
        let surplus: Vec<_> = {
            let mut ready = pool.ready();
            let keep = target.min(ready.len());
            ready.drain(keep..).collect()
        };
        drop(surplus);
        // Until the next sizing, or until a request takes an instance.
        let wake = pool.wake.clone();
        drop(f);
        tokio::select! {
            () = &mut next_sizing => {}
            () = wake.notified() => {}
        }
    }
}

/// A fresh warm instance of `function`, or `None` if its code is not a loaded component.
async fn instantiate(
    function: &Function,
    permit: OwnedSemaphorePermit,
) -> wasmtime::Result<Option<WarmInstance>> {
    // Instantiation of a component may run guest start functions: the store comes with the
    // function's budget, re-armed for the request that takes the instance.
    let (store, proxy) = match function.code() {
        Some(code @ (Code::Proxy(_) | Code::Source(_))) => {
            let code = code.p2().expect("a p2 kind");
            let mut store = crate::guest::proxy_store(code.engine(), &function.guest());
            let proxy = code.instantiate(&mut store).await?;
            (store, Proxy::P2(proxy))
        }
        Some(Code::Service(pre)) => {
            let mut store = crate::guest::proxy_store(pre.engine(), &function.service_guest());
            let proxy = pre.instantiate_async(&mut store).await?;
            (store, Proxy::P3(proxy))
        }
        _ => return Ok(None),
    };
    Ok(Some(WarmInstance {
        store,
        proxy,
        permit,
        uses: 0,
        idle_since: Instant::now(),
    }))
}
