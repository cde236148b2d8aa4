//! Pre-initialisation snapshots: a function's start-up work, done once at deploy.
//!
//! A component that exports `wizer-initialize` (the SDK's `#[init]` generates it) is
//! instantiated once at deploy, its init function runs, and [Wizer] rewrites the component so
//! that its memories and globals start out as the init function left them. The snapshot, not
//! the upload, is what gets compiled and cached, so every instance (and every copy-on-write
//! memory image the pool maps) begins with the work already done: the `primes` example sieves
//! at start-up, and with its snapshot a fresh instance skips all of it
//! (`benches/micro/benches/invoke.rs`, `invoke-primes`; the README has the numbers).
//!
//! # What init may not do
//! A snapshot captures memory, not the outside world. During init every import traps: a
//! clock read, a random seed, an environment variable or any I/O would be frozen into the
//! snapshot and silently wrong for every later request, so thaw refuses such a deploy and says
//! which import was called. (`std::collections::HashMap` draws a random seed: use `BTreeMap`
//! or a fixed hasher in init.)
//!
//! # Trade-offs
//! The snapshot's memory image is larger than the original binary (the built data is now a
//! data segment), which costs disk and a little load time, never per-request time: the pool
//! maps images copy-on-write. Deploy takes longer by one instantiation, the init work and one
//! extra compile of Wizer's instrumented component. A function may opt out with
//! `snapshot = false` in its spec (for example to measure the difference).
//!
//! [Wizer]: https://github.com/bytecodealliance/wasmtime/tree/main/crates/wizer

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

use crate::engine::{Concurrency, HostEngines, ThawEngine};
use crate::spec::Kind;

/// The export a component offers to be pre-initialised (Wizer's default name).
pub const INIT_EXPORT: &str = "wizer-initialize";

/// Whether the component's top level exports [`INIT_EXPORT`]. Reads the export sections of
/// the outermost component only; nested components and modules are skipped.
pub fn exports_init(wasm: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name == INIT_EXPORT {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// A store for the run a snapshot is taken of: its memory bounded by `memory_bytes` and its
/// time by `budget` (epoch deadline), as for a request. Shared with a source function's
/// snapshot ([`crate::source::snapshot`]).
pub fn snapshot_store(engine: &Engine, budget: Duration, memory_bytes: u64) -> Store<StoreLimits> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(memory_bytes as usize)
        .trap_on_grow_failure(true)
        .build();
    let mut store: Store<StoreLimits> = Store::new(engine, limits);
    store.limiter(|limits| limits);
    store.set_epoch_deadline(ThawEngine::ticks_for(budget));
    // On a fuel-metering engine the run needs fuel; its bound is the deadline.
    let _ = store.set_fuel(u64::MAX);
    store
}

/// Why no snapshot was taken.
#[derive(Debug)]
pub enum SnapshotError {
    /// The engine refused the (instrumented) component before anything ran: another engine
    /// (the one with concurrency, see [`crate::engine::concurrency`]) may take it.
    Refused(anyhow::Error),
    /// The component was instantiated and its init failed (or the rewrite did).
    Failed(anyhow::Error),
}

impl SnapshotError {
    /// The error, whichever it is.
    pub fn into_inner(self) -> anyhow::Error {
        match self {
            SnapshotError::Refused(e) | SnapshotError::Failed(e) => e,
        }
    }
}

/// Runs the component's init function and returns the pre-initialised component.
///
/// `budget` bounds the init function's run time (epoch deadline) and `memory_bytes` its
/// memory, as for a request.
pub async fn snapshot(
    engine: &Engine,
    wasm: &[u8],
    budget: Duration,
    memory_bytes: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let mut store = snapshot_store(engine, budget, memory_bytes);
    let mut wizer = wasmtime_wizer::Wizer::new();
    // Keep the init export: Wizer 48's component rewrite otherwise removes it from the core
    // module while the component still exports it, and the result does not validate. Calling
    // it again later would only redo (idempotent, `OnceLock`-guarded) work.
    wizer.keep_init_func(true);
    // Wizer calls this once the engine has compiled the instrumented component: a failure
    // before it is the engine's refusal, not the init's.
    let mut compiled = false;
    let result = wizer
        .run_component(&mut store, wasm, async |store, component| {
            compiled = true;
            // Nothing of the host is reachable during init: every import traps, with its
            // name in the error.
            let mut linker = Linker::new(store.engine());
            linker.define_unknown_imports_as_traps(component)?;
            linker.instantiate_async(store, component).await
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context(
            "pre-initialisation (the `wizer-initialize` export, #[thaw_sdk::init]) failed; init may not \
             call the host (clocks, random numbers, environment variables, I/O cannot be captured \
             in a snapshot)",
        );
    match result {
        Ok((snapshot, _)) => Ok(snapshot),
        Err(e) if compiled => Err(SnapshotError::Failed(e)),
        Err(e) => Err(SnapshotError::Refused(e)),
    }
}

/// [`snapshot`] on the engine the component compiles on ([`crate::engine::concurrency`]);
/// if the engine without concurrency refuses it before its init runs (a component the scan
/// misjudges), on the concurrent one, as its compile would
/// ([`crate::engine::artifact::ArtifactCache::compile_and_store`]). An init that ran and
/// failed is not run again.
pub async fn snapshot_for(
    engines: &HostEngines,
    wasm: &[u8],
    budget: Duration,
    memory_bytes: u64,
) -> anyhow::Result<Vec<u8>> {
    let concurrency = crate::engine::concurrency::needed(Kind::Component, wasm);
    let on = |concurrency| {
        snapshot(
            engines.get(concurrency).engine(),
            wasm,
            budget,
            memory_bytes,
        )
    };
    match on(concurrency).await {
        Ok(snapshot) => Ok(snapshot),
        // The concurrent engine takes everything the other does: if it refuses too, its
        // reason is the one that is left to fix.
        Err(SnapshotError::Refused(_)) if concurrency == Concurrency::Off => {
            on(Concurrency::On).await.map_err(SnapshotError::into_inner)
        }
        Err(failed) => Err(failed.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_top_level_init_exports() {
        let with = wat::parse_str(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (export "wizer-initialize" (func $f)))"#,
        )
        .unwrap();
        assert!(exports_init(&with));
        let nested = wat::parse_str(
            r#"(component
                (component
                    (core module $m (func (export "f")))
                    (core instance $i (instantiate $m))
                    (func $f (canon lift (core func $i "f")))
                    (export "wizer-initialize" (func $f))))"#,
        )
        .unwrap();
        assert!(!exports_init(&nested));
        assert!(!exports_init(b"garbage"));
    }
}
