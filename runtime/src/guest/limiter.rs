//! The store's resource limiter: a guest's memory, bounded, with a typed error past it.
//!
//! wasmtime's `StoreLimits` with `trap_on_grow_failure` does the same job but fails with an
//! untyped message ("forcing trap when growing memory to N bytes"), which a host can only
//! recognise by its text, and the next wasmtime release may reword it. This limiter fails a
//! `memory.grow` past the function's `memory_mib` with [`MemoryLimitHit`], which the request
//! path finds with `downcast_ref`, whatever wasmtime wraps around it.
//!
//! Failing the grow with an error, rather than returning `false` (a `-1` from
//! `memory.grow`), makes it a trap with a clear cause: a guest's allocator would otherwise
//! turn the `-1` into an abort somewhere else, reported as an unrelated trap.

use wasmtime::ResourceLimiter;

use crate::spec::Limits;

/// A guest asked for more linear memory than its limit.
#[derive(Debug, thiserror::Error)]
#[error("growing memory to {desired} bytes, over the limit of {limit} bytes")]
pub struct MemoryLimitHit {
    /// The size the guest asked for, in bytes.
    pub desired: usize,
    /// The function's memory limit, in bytes.
    pub limit: usize,
}

/// The limiter of one store. It also keeps the store's linear memory (the sum over its
/// memories, as the guest asked for them) and the largest that sum has been: the instance's
/// peak, which [`crate::function::cost`] reports.
#[derive(Debug)]
pub struct GuestLimiter {
    memory_bytes: usize,
    in_use: usize,
    peak: usize,
}

impl GuestLimiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            in_use: 0,
            peak: 0,
        }
    }

    /// The largest the store's linear memories have been together, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the function's limit, or past the memory's own declared maximum (as
        // wasmtime's `StoreLimits` with `trap_on_grow_failure` did, a trap either way).
        let limit = maximum.map_or(self.memory_bytes, |max| max.min(self.memory_bytes));
        if desired > limit {
            return Err(MemoryLimitHit { desired, limit }.into());
        }
        // A memory's creation comes here too, from `current` 0. (A grow that then fails
        // counts as if it had happened: the trap ends the instance anyway.)
        self.in_use = self.in_use.saturating_add(desired.saturating_sub(current));
        self.peak = self.peak.max(self.in_use);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not provide memory it allowed (an mmap failure): a trap with the
        // cause, not a -1 the guest's allocator turns into an unrelated abort.
        Err(error.context("growing linear memory failed"))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("growing a table failed"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the pooling allocator's per-slot tables; within that, the
        // table's own maximum. Past it: a trap, as with `trap_on_grow_failure`.
        if maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("growing a table to {desired} elements, past its maximum");
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grow_past_the_limit_is_a_typed_error() {
        let limits = crate::spec::LimitsSpec {
            memory_mib: Some(1),
            ..Default::default()
        }
        .resolve(&crate::spec::LimitDefaults::default());
        let mut limiter = GuestLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        // Past the memory's own maximum: the same typed error, with that maximum.
        let own = limiter
            .memory_growing(0, 1 << 19, Some(1 << 18))
            .unwrap_err();
        assert_eq!(
            own.downcast_ref::<MemoryLimitHit>().expect("typed").limit,
            1 << 18
        );
        let error = limiter.memory_growing(0, (1 << 20) + 1, None).unwrap_err();
        let hit = error.downcast_ref::<MemoryLimitHit>().expect("typed");
        assert_eq!(hit.limit, 1 << 20);
        // Only the allowed growth counts toward the peak.
        assert_eq!(limiter.peak_memory_bytes(), 1 << 20);
    }

    #[test]
    fn the_peak_sums_an_instances_memories() {
        let limits =
            crate::spec::LimitsSpec::default().resolve(&crate::spec::LimitDefaults::default());
        let mut limiter = GuestLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 3 << 16, None).unwrap()); // one memory created
        assert!(limiter.memory_growing(0, 1 << 16, None).unwrap()); // another
        assert!(limiter.memory_growing(3 << 16, 5 << 16, None).unwrap()); // the first grows
        assert_eq!(limiter.peak_memory_bytes(), 6 << 16);
    }
}
