//! The one place thaw configures wasmtime.
//!
//! Everything else in the host goes through [`ThawEngine`]: it owns the [`Engine`] and the
//! epoch ticker thread. The linkers, which are about what a guest is offered, live with the
//! guest's host state ([`crate::guest::Linkers`]), built once per engine.
//!
//! Submodules: [`artifact`] (compile once, load from disk afterwards) and [`snapshot`]
//! (pre-initialisation at deploy), both pure functions of an engine and bytes.
//!
//! # What thaw turns on, and why
//! - **Component model + async**: `wasi:http` is async in wasmtime-wasi-http; a linker must be
//!   all-async, so the CGI linker is async too (one calling convention on the request path).
//! - **Two engines, one per calling convention** ([`HostEngines`], [`concurrency`]): the
//!   component model's concurrency (WASIp3: async exports, streams, futures, concurrent host
//!   functions) only on the engine of the components that use it. With it on, wasmtime runs
//!   every export call through its task scheduler and records a host task for every call
//!   from the guest into the host, whether the component uses any of it or not; that cost a
//!   WASIp2 hello a third of its throughput at 32 connections (see [`concurrency`]).
//! - **Pooling allocator with copy-on-write memory images**: instantiation becomes a few
//!   `madvise`/`mmap` calls into pre-reserved slots instead of fresh mappings, and each call's
//!   fiber stack comes from the pool rather than a new `mmap` (measured in
//!   `benches/micro/benches/invoke.rs`, `instantiate-hello`; the README has the numbers). The pool
//!   is sized from one number, the instance slots; see [`EngineOptions::instance_slots`].
//! - **Address-space probe and fallback**: the pool reserves its virtual address space when the
//!   engine is created (terabytes of it, none resident). Under `ulimit -v` or in a small address
//!   space that fails, so thaw checks `RLIMIT_AS` first, then tries, and falls back to on-demand
//!   allocation with a logged reason instead of refusing to start.
//! - **Epoch interruption** with one ticker thread per engine (holding only a weak reference)
//!   is how a CPU-bound guest is stopped: each store gets a deadline in ticks. A tokio timeout
//!   alone cannot preempt a guest that never yields.
//!
//! - **Fuel**, only with `--fuel-metering` ([`EngineOptions::fuel_metering`]): it changes the
//!   compiled code (a check on every loop back-edge and call), so it is off by default.
//!
//! - **Cranelift's incremental compilation cache** ([`compile_cache`]), when the caller gives
//!   one: a second function built on the same language runtime compiles mostly from it.
//!
//! # What thaw leaves off
//! The compilation cache of the wasmtime CLI (thaw has its own content-addressed artifact
//! cache, see [`artifact`]). Winch, the baseline compiler, is only the optional fast tier of
//! `--fast-deploy` ([`ThawEngine::new_fast_tier`]); everything that is persisted and served
//! for long is Cranelift's code.

pub mod artifact;
pub mod compile_cache;
pub mod concurrency;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

/// How often the epoch ticker advances the engine's epoch. Timeouts are rounded up to it.
/// 10 ms keeps the ticker's own cost invisible (100 wake-ups a second) while a timeout of a
/// few seconds is accurate to 1%.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances a component may use, per slot. A Rust `wasm32-wasip2` component holds its
/// own module plus the WASI adapter and a few shim modules (4 to 6 core instances); 8 leaves
/// room for components from other toolchains without letting one slot take over the pool.
const CORE_INSTANCES_PER_SLOT: u32 = 8;
/// Linear memories per slot: the main module's and, for adapted components, the adapter's.
const MEMORIES_PER_SLOT: u32 = 2;
/// Tables per slot: components carry a few shim tables beside the main one.
const TABLES_PER_SLOT: u32 = 8;

/// The default of [`EngineOptions::keep_resident_bytes`]: 8 MiB where the kernel has
/// PAGEMAP_SCAN (Linux 6.7+), 64 KiB elsewhere.
///
/// With PAGEMAP_SCAN a freed slot resets only the pages its instance dirtied (by `memset`
/// from the image) and keeps them resident, so the size is a ceiling, not a cost: a small
/// guest that dirties 100 KiB keeps 100 KiB, and a JavaScript or Python guest keeps the
/// few MiB its requests touch and takes no page fault (and, in a VM, no TLB-shootdown IPI)
/// for them on the next instance. That is the per-function sizing the kernel does for us.
/// (It needs the vendored wasmtime's fix, vendor/README.md: upstream 48 kept only the first
/// 32 runs of dirty pages, where these engines' heaps have hundreds.)
/// Measured side by side (benches/results/2026-12-03-issue-25-keep-resident, two rounds for
/// JS and Python, five for the hello): 8 MiB against 64 KiB made the JS template's component
/// 1.5-1.9x and the Python one 1.1-1.2x faster at 32 connections; the Rust hello within the
/// noise. The cost is resident memory: the size applies per linear memory (a slot has up to
/// two), and what a slot keeps is the high-water mark of the pages its instances dirtied,
/// given back only when the slot is re-imaged for another module. At the default 256 slots
/// the worst case is 256 × 2 × 8 MiB = 4 GiB; after a burst of 32 JS requests it measured
/// 40-60 MiB. Without PAGEMAP_SCAN every reset would `memset` the whole kept size, which for
/// 8 MiB costs a small guest far more than the faults it saves: hence 64 KiB there.
pub fn default_keep_resident_bytes() -> u64 {
    if pagemap_scan_available() {
        8 << 20
    } else {
        64 << 10
    }
}

/// How much of a freed slot's tables is kept resident and reset with `memset`: 1 MiB where
/// the kernel has PAGEMAP_SCAN, 16 KiB elsewhere.
///
/// A JavaScript or Python engine's function table has tens of thousands of entries,
/// initialised lazily: each request's instance writes entries spread over the table, a page
/// fault (and a TLB-shootdown IPI when the slot's reset gave the page back) per page it
/// touches. With PAGEMAP_SCAN the reset `memset`s only the pages the instance dirtied and
/// keeps them, so the size is a ceiling, not a cost per slot: 1 MiB is above any whole table
/// (the pool's limit is 20,000 pointer-sized entries, 160 KiB), so the worst case at 256 slots
/// of 8 tables is 320 MiB, and a JS instance keeps about ten pages. Measured side by side
/// (benches/results/2026-12-04-issue-25-table-keep-resident, two rounds each, 32
/// connections): the JS template's component went from 10 page faults and 17 TLB flushes
/// per request to 0.3 and 0.4, and from 1,398-1,420 to 1,710-1,749 requests/s; Python from
/// 8-9 faults to 1; the Rust hello, which has no such table, did not move. Without
/// PAGEMAP_SCAN every reset would `memset` the whole kept size: hence 16 KiB there.
fn table_keep_resident_bytes() -> usize {
    if pagemap_scan_available() {
        1 << 20
    } else {
        16 << 10
    }
}

/// Whether this kernel has the PAGEMAP_SCAN ioctl (Linux 6.7+), which the pool uses to reset
/// only the pages an instance dirtied.
pub fn pagemap_scan_available() -> bool {
    PoolingAllocationConfig::is_pagemap_scan_available()
}

/// Engine options, read from flags, environment and the config file by the CLI.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Instances that may exist at the same time across all functions. Sizes the pooling
    /// allocator and the admission semaphore in front of it.
    pub instance_slots: u32,
    /// Upper bound for any function's linear memory, in bytes. A function's own limit must be
    /// at most this.
    pub max_memory_bytes: u64,
    /// Force on-demand allocation (no pool), e.g. for hosts with a small address space.
    pub on_demand: bool,
    /// Bytes of each linear memory slot kept resident between instances (see the pooling
    /// configuration below): more is faster for guests with large heaps (JavaScript,
    /// Python), at the cost of resident memory per slot used.
    pub keep_resident_bytes: u64,
    /// Count fuel in guests, so that functions may set a fuel limit. Off by default: the
    /// counting costs every guest some speed, and only hosts that sell CPU budgets need it.
    pub fuel_metering: bool,
}

impl EngineOptions {
    /// The fast tier's engine options: on-demand allocation (its instances live only until
    /// the Cranelift code replaces them, so they get no pool of their own), the same limits.
    pub fn fast_tier(&self) -> Self {
        Self {
            on_demand: true,
            ..self.clone()
        }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots with copy-on-write memory images.
    Pooling,
    /// Fresh mappings per instance; the string says why the pool is not in use.
    OnDemand(String),
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocator::Pooling => f.write_str("pooling"),
            Allocator::OnDemand(_) => f.write_str("on-demand"),
        }
    }
}

impl Allocator {
    /// The host's allocator from its two engines' (see [`HostEngines::allocator`]).
    fn of_host(main: &Allocator, concurrent: &Allocator) -> Allocator {
        match (main, concurrent) {
            (Allocator::Pooling, Allocator::Pooling) => Allocator::Pooling,
            (Allocator::OnDemand(reason), _) => Allocator::OnDemand(reason.clone()),
            (Allocator::Pooling, Allocator::OnDemand(reason)) => Allocator::OnDemand(format!(
                "the WASIp3 engine's pool: {reason} (WASIp2 components and CGI modules keep theirs)"
            )),
        }
    }
}

/// Whether an engine runs the component model's concurrency (see [`concurrency`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// WASIp2 components and core modules: no task scheduler, no host tasks.
    Off,
    /// WASIp3 components and those importing concurrent host functions.
    On,
}

impl Concurrency {
    /// The other engine's.
    pub fn other(self) -> Self {
        match self {
            Concurrency::Off => Concurrency::On,
            Concurrency::On => Concurrency::Off,
        }
    }
}

/// The wasmtime engine with thaw's configuration, its linkers and its epoch ticker.
pub struct ThawEngine {
    engine: Engine,
    allocator: Allocator,
    options: EngineOptions,
    compile_cache: Option<Arc<compile_cache::CompileCache>>,
}

impl ThawEngine {
    /// Builds the engine for WASIp2 components and core modules ([`Concurrency::Off`]),
    /// preferring the pooling allocator, and starts the epoch ticker.
    pub fn new(options: EngineOptions) -> anyhow::Result<Self> {
        Self::build(options, Strategy::Cranelift, Concurrency::Off, None)
    }

    /// Builds an engine with `concurrency`, with Cranelift's incremental compilation cache
    /// in `cache` if given.
    pub fn with(
        options: EngineOptions,
        concurrency: Concurrency,
        cache: Option<Arc<compile_cache::CompileCache>>,
    ) -> anyhow::Result<Self> {
        Self::build(options, Strategy::Cranelift, concurrency, cache)
    }

    /// [`ThawEngine::new`] with Cranelift's incremental compilation cache in `cache`.
    pub fn with_compile_cache(
        options: EngineOptions,
        cache: Arc<compile_cache::CompileCache>,
    ) -> anyhow::Result<Self> {
        Self::with(options, Concurrency::Off, Some(cache))
    }

    /// The fast tier: Winch, the baseline compiler, which compiles in a fraction of
    /// Cranelift's time and runs slower. Used by `--fast-deploy` until Cranelift's code is
    /// ready. One engine for every kind of code, so with concurrency on: its code serves
    /// only until Cranelift's replaces it.
    pub fn new_fast_tier(options: &EngineOptions) -> anyhow::Result<Self> {
        Self::build(options.fast_tier(), Strategy::Winch, Concurrency::On, None)
    }

    fn build(
        options: EngineOptions,
        strategy: Strategy,
        concurrency: Concurrency,
        compile_cache: Option<Arc<compile_cache::CompileCache>>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            options.instance_slots > 0,
            "instance slots must be at least 1"
        );
        let base_config = || -> anyhow::Result<Config> {
            let mut config = base_config(concurrency);
            config.strategy(strategy);
            config.consume_fuel(options.fuel_metering);
            if let Some(cache) = &compile_cache {
                config.enable_incremental_compilation(cache.clone())?;
            }
            Ok(config)
        };
        let (engine, allocator) = if options.on_demand {
            let engine = Engine::new(&base_config()?)?;
            (
                engine,
                Allocator::OnDemand("disabled by configuration".into()),
            )
        } else {
            match pooling_engine(&options, base_config()?) {
                Ok(engine) => (engine, Allocator::Pooling),
                Err(reason) => {
                    let engine = Engine::new(&base_config()?)?;
                    (engine, Allocator::OnDemand(format!("{reason:#}")))
                }
            }
        };

        spawn_epoch_ticker(engine.weak());
        Ok(Self {
            engine,
            allocator,
            options,
            compile_cache,
        })
    }

    /// The incremental compilation cache, if this engine has one.
    pub fn compile_cache(&self) -> Option<&compile_cache::CompileCache> {
        self.compile_cache.as_deref()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator in use, with the reason when it is not the pool.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// A stable digest of everything that makes a serialized artifact loadable by this engine
    /// (wasmtime version, target, compiler flags, memory layout). Part of the artifact cache key.
    pub fn compatibility_key(&self) -> String {
        use sha2::Digest as _;
        use std::hash::Hash as _;
        struct Sha(sha2::Sha256);
        impl std::hash::Hasher for Sha {
            fn finish(&self) -> u64 {
                unreachable!("only `write` is used")
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut hasher = Sha(sha2::Sha256::new());
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hex::encode(&hasher.0.finalize()[..16])
    }

    /// Epoch ticks for a timeout, rounded up, plus one because the deadline counts from the
    /// current (already partly elapsed) tick.
    pub fn ticks_for(timeout: Duration) -> u64 {
        (timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).saturating_add(1)
    }
}

/// The host's two engines ([`Concurrency::Off`] and [`Concurrency::On`]), built with the
/// same options, and which one a piece of code compiles on (see [`concurrency`]).
///
/// Both have a pool of `instance_slots`: the admission semaphore in front of them bounds the
/// instances of both together, so a host with only WASIp2 functions may use all its slots
/// for them, and one with only WASIp3 functions as well. The price is address space (each
/// pool reserves its own), a second epoch ticker, and, on a host serving both kinds, each
/// pool's kept-resident pages ([`EngineOptions::keep_resident_bytes`]) for the slots its
/// instances used.
pub struct HostEngines {
    off: Arc<ThawEngine>,
    on: Arc<ThawEngine>,
}

impl HostEngines {
    /// Builds both engines, sharing `cache` (Cranelift's incremental cache keys its entries
    /// by the compiler's settings, so the two engines' entries do not mix).
    pub fn new(
        options: EngineOptions,
        cache: Option<Arc<compile_cache::CompileCache>>,
    ) -> anyhow::Result<Self> {
        let off = ThawEngine::with(options.clone(), Concurrency::Off, cache.clone())?;
        let on = ThawEngine::with(options, Concurrency::On, cache)?;
        Ok(Self {
            off: Arc::new(off),
            on: Arc::new(on),
        })
    }

    /// The engine with `concurrency`.
    pub fn get(&self, concurrency: Concurrency) -> &Arc<ThawEngine> {
        match concurrency {
            Concurrency::Off => &self.off,
            Concurrency::On => &self.on,
        }
    }

    /// The engine of WASIp2 components and core modules, whose options are the host's (its
    /// allocator too, unless only the other's fell back: see [`HostEngines::allocator`]).
    pub fn main(&self) -> &Arc<ThawEngine> {
        &self.off
    }

    /// The host's allocator: the pool only if both engines have theirs. The concurrent
    /// engine reserves its own pool after the main one, so on a host short of address space
    /// it alone may fall back to on-demand; the reason then says which engine.
    pub fn allocator(&self) -> Allocator {
        Allocator::of_host(self.off.allocator(), self.on.allocator())
    }

    /// Both engines.
    pub fn all(&self) -> [&Arc<ThawEngine>; 2] {
        [&self.off, &self.on]
    }

    /// The two engines' compatibility keys in one: what names the artifact directory and
    /// what a cluster's nodes compare.
    pub fn compatibility_key(&self) -> String {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for engine in self.all() {
            hasher.update(engine.compatibility_key().as_bytes());
        }
        hex::encode(&hasher.finalize()[..16])
    }
}

fn base_config(concurrency: Concurrency) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // WASIp3 components (async exports, streams, futures) on the concurrent engine only:
    // see [`concurrency`] for what it costs the others.
    let concurrent = concurrency == Concurrency::On;
    config.concurrency_support(concurrent);
    config.wasm_component_model_async(concurrent);
    config.epoch_interruption(true);
    // Copy-on-write images of each module's initial memory: instantiating maps the image
    // instead of copying data segments, which matters most for large pre-initialised heaps.
    config.memory_init_cow(true);
    config
}

fn pooling_engine(options: &EngineOptions, mut config: Config) -> anyhow::Result<Engine> {
    let slots = options.instance_slots;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
        .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
        .total_stacks(slots)
        .max_memory_size(options.max_memory_bytes as usize)
        // Keep up to this much of a freed slot's memory resident and reset it with memset
        // from the image: the next instance in that slot takes no page fault for it (and, in
        // a VM, no TLB-shootdown IPI for a copy-on-write fault). The cost is resident memory
        // that is not given back while the slot is idle: up to this much per slot used.
        .linear_memory_keep_resident(options.keep_resident_bytes as usize)
        // Reset only the pages an instance actually dirtied, found with the PAGEMAP_SCAN
        // ioctl (Linux 6.7 and later; `Auto` leaves it off elsewhere) instead of all of the
        // kept region: what makes a large keep-resident size cheap for small guests.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .table_keep_resident(table_keep_resident_bytes());

    // Probe: each memory slot reserves `memory_reservation` plus a guard. Refuse early, with
    // a readable reason, if an address-space rlimit would make the reservation fail.
    // wasmtime's defaults on 64-bit hosts: a 4 GiB reservation per linear memory (so
    // Cranelift can elide bounds checks) plus a 32 MiB guard region.
    // The host has two such pools, one per engine ([`HostEngines`]), so the check is for both.
    let per_memory: u64 = (4u64 << 30) + (32u64 << 20);
    let needed = per_memory
        .saturating_mul(u64::from(slots.saturating_mul(MEMORIES_PER_SLOT)))
        .saturating_mul(2);
    if let Some(limit) = address_space_limit()
        && needed > limit
    {
        anyhow::bail!(
            "the pool needs {} GiB of address space but RLIMIT_AS allows {} GiB; lower \
             --instance-slots or raise `ulimit -v`",
            needed >> 30,
            limit >> 30
        );
    }

    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("reserving the instance pool")
}

/// The soft `RLIMIT_AS`, or `None` when the address space is unlimited.
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// One thread for the whole process advances the epoch every [`EPOCH_TICK`]. It holds a weak
/// reference so that dropping the last engine ends it.
fn spawn_epoch_ticker(engine: wasmtime::EngineWeak) {
    std::thread::Builder::new()
        .name("thaw-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::Allocator;

    #[test]
    fn the_host_reports_a_pool_only_if_both_engines_have_one() {
        let pool = Allocator::Pooling;
        let none = |why: &str| Allocator::OnDemand(why.into());
        assert_eq!(Allocator::of_host(&pool, &pool), pool);
        assert_eq!(
            Allocator::of_host(&none("disabled"), &none("disabled")),
            none("disabled")
        );
        let Allocator::OnDemand(reason) = Allocator::of_host(&pool, &none("no address space"))
        else {
            panic!("a host whose WASIp3 engine has no pool reported the pool");
        };
        assert!(
            reason.contains("WASIp3") && reason.contains("no address space"),
            "{reason}"
        );
    }
}
