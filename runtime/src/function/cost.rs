//! What each request costs its host: the CPU time of the guest's call and the peak linear
//! memory of its instance, per request (`Server-Timing: cpu;dur=`) and per function (the
//! admin API, `thaw list`, `/metrics`, the dashboard).
//!
//! # CPU: the thread's own clock around every poll
//! A guest call is a future that tokio polls, maybe on several worker threads in turn, with
//! other tasks in between. Wall time would charge a function for its neighbours and for the
//! time it waited on I/O; so [`metered`] reads the polling thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`) before and after each poll and adds the difference. What the
//! host does for the guest inside a poll (a host call, a key-value write's encoding) is the
//! guest's cost too; what it does in other tasks (the response body's trip to the client) is
//! not (nor file I/O, which wasmtime-wasi runs on blocking threads). Two clock reads per
//! poll are the price: a system call each on Linux (the thread's clock has no vDSO path),
//! about 0.6 µs on a 2-vCPU VM (`benches/results/2026-12-03-issue-25-cost`), and more than
//! that in context switches: reading the running thread's clock updates the scheduler's
//! accounting, a point where it may preempt (`benches/results/2026-12-05-two-engines`).
//!
//! Only the call is metered: a component's instantiation (for a source function, its
//! program's top level) happens before the request, in the warm pool, and is not part of any
//! request's cost. A CGI module's is: it is instantiated for its request, so its `cpu` can
//! exceed its `handler` time.
//!
//! The `Server-Timing` value is the CPU the call has spent when the request path sends the
//! response head ([`CpuMeter::at_head`]), like `handler;dur=` its wall time. Usually the
//! guest's poll that set the response has ended by then (the request's task runs after it
//! on the same worker), and the figure is the sum of the ended polls, read without a clock.
//! If a poll still runs, on another worker, its part so far is read from that thread's CPU
//! clock (`pthread_getcpuclockid`). Either way the figure never exceeds the call's total:
//! it is never taken from a clock that counts time the thread was preempted (the monotonic
//! clock was tried for it, and the heads then added up to more than the function's total,
//! which `metrics::each_request_reports_the_cpu_and_memory_it_cost` checks). Reading in the
//! guest's response callback instead, as thaw first did, took a third system call on every
//! request. The per-function total counts the whole call, including a body the guest writes
//! after its head.
//!
//! # Memory: the limiter's view
//! Every linear memory an instance creates or grows passes through its limiter
//! ([`crate::guest::limiter`]), which keeps the sum of its memories' sizes and the largest
//! that sum has been. That is the memory the guest asked for (wasm pages), not what the
//! kernel made resident. (`memory_mib` bounds each memory on its own, so a component with
//! several memories can peak above it.)
//!
//! # What is not measured
//! WASIp3 functions serve several requests per instance at once inside wasmtime's own
//! handler loop, where thaw does not poll the guest's calls itself: they report no CPU, and
//! their instance's peak memory once, when the instance ends (one sample per request by
//! default, where each instance serves one; one per instance with reuse). CGI modules are metered like components, from instantiation on (a CGI
//! response is complete only when the module exits).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use crate::histogram::Histogram;

/// The calling thread's CPU time so far, ns.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU clock of the calling thread, which other threads of the process can read too;
/// `None` if glibc cannot name it.
fn this_thread_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self` is the calling thread, alive for the call; glibc computes the
    // id from the thread's kernel id without a system call, into `clock`, a valid place.
    let failed = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (failed == 0).then_some(clock)
}

/// `clock`'s time so far, ns.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec. A failure (the thread is gone) leaves
    // zeros, which only under-counts.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// [`CpuMeter::poll_clock`] when the polling thread's clock has no id: readers elsewhere
/// count only the ended polls.
const NO_CLOCK: i32 = i32::MIN;

/// One call's CPU time, shared between the task that polls the guest and the request path
/// that reads it at the response head.
///
/// The running poll's start and clock are published like a sequence lock's data: `polls`
/// is odd while a poll runs, and a reader on another thread that saw it odd keeps what it
/// read only if `polls` has not moved meanwhile (see [`CpuMeter::at_head`]).
#[derive(Debug, Default)]
pub struct CpuMeter {
    /// CPU time of the polls that have ended, ns.
    done_ns: AtomicU64,
    /// Twice the polls begun, plus one while one runs.
    polls: AtomicU64,
    /// The polling thread's CPU clock when the running poll began, ns.
    poll_began_ns: AtomicU64,
    /// The running poll's thread's CPU clock (a `clockid_t`), or [`NO_CLOCK`].
    poll_clock: AtomicI32,
}

impl CpuMeter {
    /// The CPU time of the whole call so far, for a caller on any thread: the ended polls,
    /// and the running poll's part so far, read from its thread's clock (a system call,
    /// only while a poll runs). Never more than [`CpuMeter::total`] will be: a poll is
    /// marked ended before its end is read from the clock, so a part read while it still
    /// runs is no more than the whole poll.
    pub fn at_head(&self) -> Duration {
        loop {
            let polls = self.polls.load(Ordering::SeqCst);
            if polls.is_multiple_of(2) {
                // Between polls (a poll ending just now may not be in `done` yet: under).
                return Duration::from_nanos(self.done_ns.load(Ordering::SeqCst));
            }
            // Acquire: a later poll stores its values (Release) after the end of this one
            // is marked, so reading one of them makes the check below see that mark.
            let began = self.poll_began_ns.load(Ordering::Acquire);
            let clock = self.poll_clock.load(Ordering::Acquire);
            let running = match clock {
                NO_CLOCK => 0,
                clock => clock_ns(clock).saturating_sub(began),
            };
            let done = self.done_ns.load(Ordering::SeqCst);
            // The clock read above happens before the check below.
            std::sync::atomic::fence(Ordering::SeqCst);
            // Still the same poll, still running: `done` cannot hold it yet (its sum is
            // added after its end is marked), and `running` is part of it.
            if self.polls.load(Ordering::SeqCst) == polls {
                return Duration::from_nanos(done + running);
            }
        }
    }

    /// The CPU time of the polls that have ended.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.done_ns.load(Ordering::SeqCst))
    }
}

/// One poll of a metered call, from its start to its end, which the drop records (also
/// when the poll panics).
struct Poll<'a> {
    meter: &'a CpuMeter,
    began: u64,
}

impl<'a> Poll<'a> {
    fn begin(meter: &'a CpuMeter) -> Self {
        let began = thread_cpu_ns();
        meter.poll_began_ns.store(began, Ordering::Release);
        meter
            .poll_clock
            .store(this_thread_clock().unwrap_or(NO_CLOCK), Ordering::Release);
        meter.polls.fetch_add(1, Ordering::SeqCst);
        Self { meter, began }
    }
}

impl Drop for Poll<'_> {
    fn drop(&mut self) {
        // Ended first, then read: see `CpuMeter::at_head`.
        self.meter.polls.fetch_add(1, Ordering::SeqCst);
        let spent = thread_cpu_ns().saturating_sub(self.began);
        self.meter.done_ns.fetch_add(spent, Ordering::SeqCst);
    }
}

/// `call`, with the CPU time of each of its polls added to `meter`.
pub async fn metered<F: Future>(call: F, meter: &CpuMeter) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        let _poll = Poll::begin(meter);
        call.as_mut().poll(cx)
    })
    .await
}

/// A function's costs, summed over its requests.
#[derive(Debug, Default)]
pub struct CostStats {
    /// Guest CPU time of all calls, ns.
    cpu_ns: AtomicU64,
    /// Guest CPU time per call, µs.
    pub cpu: Histogram,
    /// Peak linear memory of the instance that served each call (of each WASIp3 instance,
    /// once), in KiB less one: the
    /// histogram's buckets hold values below their bound, so a size of exactly 64 KiB (wasm
    /// memories grow by 64 KiB pages) falls under the 64 KiB bound. Its quantiles are then
    /// still bounds from above of the sizes.
    pub peak_memory_kib: Histogram,
}

impl CostStats {
    /// Records one call: its CPU time (`None` where it was not metered) and its instance's
    /// peak linear memory so far.
    pub fn record(&self, cpu: Option<Duration>, peak_memory_bytes: usize) {
        if let Some(cpu) = cpu {
            self.cpu_ns
                .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
            self.cpu.record(cpu);
        }
        let kib = peak_memory_bytes.div_ceil(1024) as u64;
        self.peak_memory_kib.record_value(kib.saturating_sub(1));
    }

    /// Guest CPU time of all calls so far.
    pub fn cpu_total(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_cpu() -> Duration {
        Duration::from_nanos(thread_cpu_ns())
    }

    #[test]
    fn a_busy_poll_is_counted_and_a_waiting_one_is_not() {
        let meter = CpuMeter::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(metered(
            async {
                // Busy for 20 ms of this thread's CPU, then asleep for 50 ms (pending polls).
                let start = thread_cpu();
                while thread_cpu() - start < Duration::from_millis(20) {
                    std::hint::black_box(0u64);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            &meter,
        ));
        let total = meter.total();
        assert!(total >= Duration::from_millis(20), "{total:?}");
        // The sleep is not CPU: far less than the 70 ms the call took on the wall clock.
        assert!(total < Duration::from_millis(45), "{total:?}");
        assert_eq!(meter.at_head(), total, "between polls, no running part");
    }

    #[test]
    fn a_running_poll_is_read_from_its_own_thread() {
        let meter = std::sync::Arc::new(CpuMeter::default());
        let (running, is_running) = std::sync::mpsc::channel();
        let (finish, may_finish) = std::sync::mpsc::channel::<()>();
        let poller = std::thread::spawn({
            let meter = meter.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(metered(
                    async move {
                        // One poll: 20 ms of this thread's CPU, then busy until told to end.
                        let start = thread_cpu();
                        while thread_cpu() - start < Duration::from_millis(20) {
                            std::hint::black_box(0u64);
                        }
                        running.send(()).unwrap();
                        while may_finish.try_recv().is_err() {
                            std::hint::black_box(0u64);
                        }
                    },
                    &meter,
                ));
            }
        });
        is_running.recv().unwrap();
        // Read from this thread while the poll runs on the other: its part so far, from
        // its thread's clock, not this thread's (which has spent almost nothing).
        let head = meter.at_head();
        assert_eq!(meter.total(), Duration::ZERO, "the poll has not ended");
        finish.send(()).unwrap();
        poller.join().unwrap();
        assert!(head >= Duration::from_millis(20), "{head:?}");
        assert!(head <= meter.total(), "{head:?} > {:?}", meter.total());
        assert_eq!(meter.at_head(), meter.total());
    }

    #[test]
    fn costs_add_up() {
        let stats = CostStats::default();
        stats.record(Some(Duration::from_micros(300)), 2 << 20);
        stats.record(None, 64 << 10);
        assert_eq!(stats.cpu_total(), Duration::from_micros(300));
        assert_eq!(stats.cpu.count(), 1);
        assert_eq!(stats.peak_memory_kib.count(), 2);
        assert!(stats.peak_memory_kib.quantile_us(1.0).unwrap() >= 2048);
    }
}
