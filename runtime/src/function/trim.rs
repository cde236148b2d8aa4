//! Giving an idle function's code pages back: what a loaded function costs while nobody
//! calls it.
//!
//! A function loaded from its artifact runs from wasmtime's `mmap` of that file (private,
//! read-only once published; wasmtime 48 refuses artifacts that would need relocations, so
//! nothing ever writes to it). The pages a load and its requests touched stay mapped in this
//! process, counted in its resident set, for as long as the function stays loaded: with the
//! kernel's fault-around, a few touches map most of a small artifact (measured: 384 KB of a
//! 419 KB Rust hello). A host with thousands of loaded functions, most of them idle, holds
//! all of that.
//!
//! So once a function has had no request for the warm pools' idle timeout (`--warm-idle-secs`)
//! and its pool has drained, its image is dropped from this process's page tables with
//! `MADV_DONTNEED`. For a private file mapping that was never
//! written, that loses nothing: the next access maps the same bytes again from the page cache
//! (a minor fault per fault-around window; a major one only if the kernel has evicted the
//! file meanwhile). The pages stay in the page cache, which the kernel reclaims under memory
//! pressure as it does any file's. The next request pays those faults once (measured on a
//! Rust hello: no difference to a first request's time that stands out of the noise); a
//! function called at least once per idle timeout never does.
//!
//! Only images mapped from an artifact file are trimmed. Code compiled in this process (a
//! deploy, a tier-up, a rebuilt artifact) lives in anonymous memory, where `MADV_DONTNEED`
//! would zero it: those [`Loaded`](super::Loaded) carry no range. A source function's code
//! is its language's engine, shared by every function on it, and is not trimmed either.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest time between two looks for idle functions to trim.
pub const MAX_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Trims per idle stretch: the first when the function is found idle, one more at the next
/// look for pages faulted in afterwards (an instance dropped outside the pool's lock reads
/// the image), then none until a request comes.
const TRIMS_PER_IDLE: u8 = 2;

/// A loaded function's artifact image: where it is mapped, and what the trim task has seen
/// of the function's requests.
#[derive(Debug)]
pub struct Image {
    range: Range<usize>,
    watch: Mutex<Watch>,
}

/// Idleness as the trim task sees it at its looks: a function is idle once its request
/// count has not moved (and nothing was in flight) for the idle time. Counting requests
/// covers every kind of function, CGI modules included, which keep no pool.
#[derive(Debug)]
struct Watch {
    requests: Option<u64>,
    since: Instant,
    trims_left: u8,
}

impl Image {
    /// The image mapped at `range`, from an artifact file (see the module docs: never a
    /// range of anonymous memory).
    pub fn from_artifact(range: Range<*const u8>) -> Self {
        Self {
            range: range.start as usize..range.end as usize,
            watch: Mutex::new(Watch {
                requests: None,
                since: Instant::now(),
                trims_left: TRIMS_PER_IDLE,
            }),
        }
    }

    /// One look of the trim task: `requests` is the function's request count, `busy` whether
    /// it has requests in flight or warm instances. Trims if the function has been idle for
    /// `idle`; returns whether it did.
    pub fn look(&self, requests: u64, busy: bool, idle: Duration) -> bool {
        {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if busy || watch.requests != Some(requests) {
                *watch = Watch {
                    requests: Some(requests),
                    since: now,
                    trims_left: TRIMS_PER_IDLE,
                };
                return false;
            }
            if now.duration_since(watch.since) < idle || watch.trims_left == 0 {
                return false;
            }
            watch.trims_left -= 1;
        }
        self.trim()
    }

    /// Drops the image's pages from this process.
    fn trim(&self) -> bool {
        let page = page_size();
        // An mmap starts page-aligned; the end is rounded down, leaving a partial last page
        // (of this same mapping) resident.
        let start = self.range.start.next_multiple_of(page);
        let end = self.range.end - self.range.end % page;
        if end <= start {
            return false;
        }
        // SAFETY: the range lies within a private, read-only mapping of an artifact file
        // that no code writes to (see the module docs); MADV_DONTNEED keeps the mapping and
        // only drops its pages, which the next access maps again with the same bytes.
        let result =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if result != 0 {
            tracing::debug!(
                "madvise(MADV_DONTNEED) of a function's image failed: {}",
                std::io::Error::last_os_error()
            );
            return false;
        }
        true
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}
