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
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The longest time between two looks for idle functions to trim.
pub const MAX_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Trims per idle stretch: the first when the function is found idle, one more at the next
/// look for pages faulted in afterwards (an instance dropped outside the pool's lock reads
/// the image), then none until a request comes.
const TRIMS_PER_IDLE: u8 = 2;

/// How long a function has been idle, as the idle task sees it at its looks: idle since the
/// first look at which its request count had stopped moving and nothing was in flight or
/// warm. Counting requests covers every kind of function, CGI modules included, which keep
/// no pool.
#[derive(Debug)]
pub struct IdleWatch(Mutex<Option<(u64, Instant)>>);

impl Default for IdleWatch {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl IdleWatch {
    /// One look: `requests` is the function's request count, `busy` whether it has requests
    /// in flight or warm instances. Returns how long it has been idle (zero when it was not).
    pub fn look(&self, requests: u64, busy: bool) -> Duration {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *seen {
            Some((count, since)) if !busy && count == requests => now.duration_since(since),
            _ => {
                *seen = Some((requests, now));
                Duration::ZERO
            }
        }
    }
}

/// A loaded function's artifact image: where it is mapped, and the trims left in the
/// current idle stretch.
#[derive(Debug)]
pub struct Image {
    range: Range<usize>,
    trims_left: AtomicU8,
}

impl Image {
    /// The image mapped at `range`, from an artifact file (see the module docs: never a
    /// range of anonymous memory).
    pub fn from_artifact(range: Range<*const u8>) -> Self {
        Self {
            range: range.start as usize..range.end as usize,
            trims_left: AtomicU8::new(TRIMS_PER_IDLE),
        }
    }

    /// A request came: the next idle stretch may trim again.
    pub fn rearm(&self) {
        self.trims_left.store(TRIMS_PER_IDLE, Ordering::Relaxed);
    }

    /// Trims unless this idle stretch has had its trims; returns whether it did.
    pub fn trim_once(&self) -> bool {
        let left = self.trims_left.load(Ordering::Relaxed);
        if left == 0 {
            return false;
        }
        self.trims_left.store(left - 1, Ordering::Relaxed);
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
