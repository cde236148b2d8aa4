//! Source functions with traffic tier up to their snapshot.
//!
//! A source function deploys in milliseconds because nothing is compiled: its instances are
//! the language's shared engine, each loading the function's program before its first
//! request (about a millisecond of evaluation per instance, and more in a busy host). A
//! component built from the same source pays that once, at build time, in its Wizer
//! snapshot, and pays for it with seconds of compile per deploy and code of its own.
//!
//! This module makes the trade per function, from its traffic: once a source function
//! serves [`HOT_REQUESTS_PER_SEC`] requests a second or more (judged by the idle task between
//! two of its looks), the host takes its snapshot ([`crate::source::snapshot`]) in the
//! background, compiles it into the artifact cache under [`crate::source::snapshot::key`],
//! and swaps the function's code for it (same version, same counters, as a tier-up from the
//! fast tier). Later loads, after a restart or an idle unload, find the artifact and start
//! from it. A function with little traffic never costs the compile or the disk; one whose
//! program cannot be snapshotted (its top level calls the host) stays on the engine, and
//! the host remembers not to try again.
//!
//! One snapshot at a time per host. Each is seconds of CPU (see the benchmark's source
//! breakdown), and wasmtime compiles in parallel, so for those seconds it competes for every
//! core with the requests it is meant to speed up: the price of a tier-up, paid once per busy
//! function, which is why the rate that triggers it is a sustained one. A failure (a program
//! whose load calls the host, a snapshot too large, a full disk) is remembered for the
//! snapshot's key until the process restarts. Loading a snapshot that is on disk takes no
//! turn, and a snapshot on disk that cannot be loaded (a damaged file) is taken again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use anyhow::Context as _;

use super::Platform;
use crate::engine::ThawEngine;
use crate::engine::artifact::Kind;
use crate::function::{Code, Function, Loaded, SnapshotLater};
use crate::source::Language;
pub use crate::source::snapshot::HOT_REQUESTS_PER_SEC;

/// Failed snapshots of an engine, none succeeding, after which its functions stay on it.
const ENGINE_ATTEMPTS: u32 = 3;

/// What the snapshots of one engine came to.
#[derive(Default)]
struct EngineRecord {
    failures: u32,
    succeeded: bool,
}

/// The host's tier-up of source functions.
pub struct SourceTier {
    /// Off with `--source-snapshots false`.
    enabled: bool,
    /// The baseline compiler's engine the snapshots run on (made on first use): Wizer's
    /// instrumented engine is compiled once per snapshot and run once, so Winch's quick
    /// compile beats Cranelift's quick code.
    winch: OnceLock<ThawEngine>,
    /// One snapshot at a time.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Snapshot keys that failed: not tried again while this process runs.
    failed: Mutex<HashSet<String>>,
    /// Per engine, snapshots that failed while none succeeded: an engine whose own start
    /// cannot be snapshotted fails for every program, and after [`ENGINE_ATTEMPTS`] it is
    /// not tried again (engines of earlier upgrades, built before their start could be).
    engines: Mutex<HashMap<String, EngineRecord>>,
    /// Functions that tiered up, and tier-ups that failed, since start-up.
    pub done: AtomicU64,
    /// See `done`.
    pub failures: AtomicU64,
}

impl Platform {
    /// One look of the idle task at a serving function: a source function on its engine
    /// that has become hot starts its tier-up.
    pub(super) fn consider_source_tier_up(self: &Arc<Self>, function: &Arc<Function>) {
        if !self.source_tier.enabled {
            return;
        }
        let Some(Code::Source(_)) = function.code() else {
            return;
        };
        let requests = function.stats.requests.load(Ordering::Relaxed);
        if !function.heat.hot(requests, Instant::now()) {
            return;
        }
        let Some(key) = function.record.snapshot_key() else {
            return;
        };
        if !self.worth_a_snapshot(function, &key) {
            return;
        }
        // Held weakly while it waits its turn: a function replaced or removed meanwhile is
        // not kept alive (nor its code loaded) by its place in the queue.
        tokio::spawn(self.clone().tier_up_source(Arc::downgrade(function), key));
    }

    /// Whether `function`'s snapshot `key` is worth trying: not a key that failed, and not
    /// an older engine whose snapshots all failed. The host's current engines are never
    /// given up on: their own start is snapshotted (engines/), so their failures are their
    /// programs'.
    fn worth_a_snapshot(&self, function: &Function, key: &str) -> bool {
        let engine = function.record.engine.as_deref().unwrap_or_default();
        let current = [Language::Js, Language::Python]
            .into_iter()
            .any(|language| self.loader.engines().current(language).ok() == Some(engine));
        !self.source_tier.failed_before(key, engine, current)
    }

    /// Source functions that a request started on their engine while their snapshot waited
    /// on disk (see [`crate::function::Loader::ensure_loaded`]): each loads its snapshot in
    /// the background and serves it. Ends with the platform.
    pub(super) async fn load_snapshots_later(
        platform: Weak<Self>,
        mut functions: tokio::sync::mpsc::UnboundedReceiver<SnapshotLater>,
    ) {
        while let Some(SnapshotLater { function, key }) = functions.recv().await {
            let Some(platform) = platform.upgrade() else {
                return;
            };
            if platform.source_tier.enabled {
                tokio::spawn(platform.tier_up_source(function, key));
            }
        }
    }

    /// Serves `function`'s snapshot: loaded from its artifact when it is on disk (taken
    /// before a restart or an idle unload, or by another function of the same program), else
    /// taken, compiled into the artifact cache and loaded, one at a time per host.
    async fn tier_up_source(self: Arc<Self>, function: Weak<Function>, key: String) {
        let started = Instant::now();
        let Some(served) = self.still_served(&function) else {
            return;
        };
        // Loading a snapshot is what any load does: no turn to wait for, and a failure to load
        // one (a damaged file) is not a failure to take one. It is taken again.
        let platform = self.clone();
        let on_disk = key.clone();
        let existing = tokio::task::spawn_blocking(move || platform.existing_snapshot(&on_disk))
            .await
            .unwrap_or_else(|e| Some(Err(anyhow::anyhow!("the load task failed: {e}"))));
        drop(served);
        let (function, result, taken) = match existing {
            Some(Ok(loaded)) => {
                let Some(function) = self.still_served(&function) else {
                    return;
                };
                let swapped = self.swap_code(&function, loaded).await;
                (function, Ok(swapped), false)
            }
            existing => {
                if let Some(Err(e)) = existing {
                    tracing::warn!(snapshot = %key, "a snapshot on disk cannot serve ({e:#}); taking it again");
                }
                let _one = self.source_tier.one_at_a_time.lock().await;
                // Still served, and still worth it (an attempt queued before it may have
                // failed).
                let Some(function) = self
                    .still_served(&function)
                    .filter(|f| self.worth_a_snapshot(f, &key))
                else {
                    return;
                };
                let platform = self.clone();
                let source = function.clone();
                let snapshot_key = key.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    platform.snapshot_blocking(&source, &snapshot_key)
                })
                .await
                .map_err(|e| anyhow::anyhow!("the snapshot task failed: {e}"))
                .and_then(|r| r);
                let result = match loaded {
                    Ok(loaded) => Ok(self.swap_code(&function, loaded).await),
                    Err(e) => Err(e),
                };
                (function, result, true)
            }
        };
        let engine = function.record.engine.as_deref().unwrap_or_default();
        match result {
            Ok(true) => {
                self.source_tier.record(key, engine, true);
                self.source_tier.done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    function = %function.name,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "tier-up: now serving its snapshot"
                );
            }
            Ok(false) => {
                tracing::debug!(function = %function.name, "tier-up skipped: replaced meanwhile")
            }
            Err(e) => {
                self.source_tier.failures.fetch_add(1, Ordering::Relaxed);
                // Only a snapshot that could not be taken is not tried again.
                if taken {
                    self.source_tier.record(key, engine, false);
                }
                tracing::warn!(
                    function = %function.name,
                    "tier-up failed; the function stays on its engine: {e:#}"
                );
            }
        }
    }

    /// `function`, if it is still one of the versions its name serves.
    fn still_served(&self, function: &Weak<Function>) -> Option<Arc<Function>> {
        function.upgrade().filter(|f| {
            self.registry
                .get(&f.name)
                .is_some_and(|set| set.versions().iter().any(|v| Arc::ptr_eq(v, f)))
        })
    }

    /// The snapshot `key` loaded from its artifact, or `None` when there is none on disk.
    /// Blocking.
    fn existing_snapshot(&self, key: &str) -> Option<anyhow::Result<Loaded>> {
        let cache = self.cache();
        cache.has_artifact(key).then(|| {
            let (compiled, _) = cache.load_existing(Kind::Component, key)?;
            self.loader.link_snapshot(compiled)
        })
    }

    /// The snapshot of `function`'s program on its engine, compiled, stored under `key` and
    /// loaded back from its artifact (a file mapping, which an idle function gives back, not
    /// anonymous memory). Blocking: seconds of CPU.
    fn snapshot_blocking(&self, function: &Function, key: &str) -> anyhow::Result<Loaded> {
        let Some(Code::Source(source)) = function.code() else {
            anyhow::bail!("not a source function on its engine");
        };
        let cache = self.cache();
        // Taken by another function of the same program while this one waited its turn.
        if let Some(Ok(loaded)) = self.existing_snapshot(key) {
            return Ok(loaded);
        }
        let engine_wasm = std::fs::read(cache.data().wasm(&source.engine.digest))
            .context("reading the engine's wasm")?;
        let winch = self.source_tier.winch(self.loader.linking().engine())?;
        let snapshot =
            tokio::runtime::Handle::current().block_on(crate::source::snapshot::snapshot(
                winch.engine(),
                &engine_wasm,
                &source.program,
                &function.env,
                function.limits.timeout,
                function.limits.memory_bytes,
            ))?;
        drop(engine_wasm);
        cache
            .compile_and_store(Kind::Component, key, &snapshot)
            .map_err(|e| anyhow::anyhow!("compiling the snapshot: {e}"))?;
        drop(snapshot);
        let (compiled, _) = cache.load_existing(Kind::Component, key)?;
        self.loader.link_snapshot(compiled)
    }
}

impl SourceTier {
    /// The tier-up, `enabled` or not.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            winch: OnceLock::new(),
            one_at_a_time: Default::default(),
            failed: Default::default(),
            engines: Default::default(),
            done: Default::default(),
            failures: Default::default(),
        }
    }

    fn failed_before(&self, key: &str, engine: &str, never_give_up: bool) -> bool {
        let engine_gave_up = !never_give_up
            && lock(&self.engines)
                .get(engine)
                .is_some_and(|e| !e.succeeded && e.failures >= ENGINE_ATTEMPTS);
        engine_gave_up || lock(&self.failed).contains(key)
    }

    fn record(&self, key: String, engine: &str, succeeded: bool) {
        let mut engines = lock(&self.engines);
        let record = engines.entry(engine.to_owned()).or_default();
        if succeeded {
            record.succeeded = true;
        } else {
            record.failures += 1;
            drop(engines);
            lock(&self.failed).insert(key);
        }
    }

    fn winch(&self, main: &ThawEngine) -> anyhow::Result<&ThawEngine> {
        if let Some(engine) = self.winch.get() {
            return Ok(engine);
        }
        let engine = ThawEngine::new_fast_tier(main.options())?;
        Ok(self.winch.get_or_init(|| engine))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
