//! The control plane: what is deployed and how it changes. [`Platform`] composes the engine,
//! the artifact cache, the [`registry`], the data directory and the request path's
//! [`InvokeContext`]; [`deploy`] changes what is served (deploy, rollback, traffic splits,
//! promotion, tier-up, removal, garbage collection); [`source_tier`] moves source functions
//! with traffic onto their snapshots; [`versions`] is what a function is: its kept versions
//! and the split between them. The listeners in [`crate::http`] are thin layers over this
//! type, and tests and benchmarks drive it directly.

pub mod coordinator;
pub mod deploy;
pub mod error;
pub mod garbage;
pub mod local;
pub mod registry;
pub mod source_tier;
pub mod versions;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::api::HostStatus;
use crate::datadir::DataDir;
use crate::engine::artifact::{ArtifactCache, Kind};
use crate::engine::compile_cache::CompileCache;
use crate::engine::{Allocator, EngineOptions, HostEngines, ThawEngine};
use crate::function::pool::PoolOptions;
use crate::function::{Function, Linking, LoadFor, Loader};
use crate::guest::config::SecretSources;
use crate::invoke::InvokeContext;
use crate::keyvalue::KeyValue;
use crate::spec::LimitDefaults;
use crate::telemetry::Tracing;
use coordinator::Coordinator;
pub use error::DeployError;
use local::LocalCoordinator;
use registry::Registry;
use versions::{VersionSet, VersionsRecord};

/// Everything the platform needs to start.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where deployed functions live.
    pub data_dir: std::path::PathBuf,
    /// Engine and pool settings.
    pub engine: EngineOptions,
    /// Limits for functions that do not set their own.
    pub defaults: LimitDefaults,
    /// How long a request may wait for a free instance slot before it gets 503.
    pub queue_timeout: Duration,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client (for client rate limits).
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// When deployed functions are loaded at start-up.
    pub load: LoadMode,
    /// Warm pool settings.
    pub pool: PoolOptions,
    /// Add a `Server-Timing` header to every function response.
    pub server_timing: bool,
    /// Answer deploys with code from the fast tier (Winch) and swap in Cranelift's code in
    /// the background.
    pub fast_deploy: bool,
    /// Move source functions with traffic onto their snapshots (see [`source_tier`]).
    pub source_snapshots: bool,
    /// Keep Cranelift's incremental compilation cache in the data directory (see
    /// [`crate::engine::compile_cache`]).
    pub compile_cache: bool,
    /// Export traces (see [`crate::telemetry`]); `None`: the request path does nothing for
    /// them.
    pub traces: Option<Arc<Tracing>>,
    /// Versions kept per function (see [`versions`]); versions in the traffic split are
    /// kept whatever this says.
    pub keep_versions: usize,
    /// Where `wasi:config` secrets come from.
    pub secrets: SecretSources,
    /// Where `wasi:keyvalue` keeps functions' state.
    pub keyvalue: KeyValueBackend,
    /// Where the language engines of source functions are (`js.wasm`, `python.wasm`); `None`:
    /// this host deploys no source functions (see [`crate::source`]).
    pub engines: Option<std::path::PathBuf>,
}

/// Where functions' `wasi:keyvalue` state lives (see [`crate::keyvalue`]).
#[derive(Clone, Default)]
pub enum KeyValueBackend {
    /// `keyvalue.redb` in the data directory.
    #[default]
    Embedded,
    /// A Redis server, connected (connecting is async; opening the platform is not).
    Redis(crate::keyvalue::redis::RedisStore),
    /// None: guests' `open` is refused (in-process tests and benchmarks).
    Off,
}

impl std::fmt::Debug for KeyValueBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Redis(store) => write!(f, "Redis({})", store.address()),
            Self::Off => f.write_str("Off"),
        }
    }
}

/// [`PlatformConfig::keep_versions`] when nothing says otherwise.
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

/// When the functions found in the data directory are loaded (their artifacts deserialized and
/// linked). Registering them (routes, specs) always happens at start-up and is fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// On the first request to each function.
    Lazy,
    /// In the background after start-up, one at a time; a request that comes first loads
    /// its function itself.
    Background,
    /// Before serving (start-up takes as long as loading everything).
    Eager,
}

impl std::str::FromStr for LoadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lazy" => Ok(Self::Lazy),
            "background" => Ok(Self::Background),
            "eager" => Ok(Self::Eager),
            other => Err(format!("{other:?} is not lazy, background or eager")),
        }
    }
}

/// The running platform.
pub struct Platform {
    /// Loads code with the main (Cranelift) engine; owns the artifact cache.
    loader: Arc<Loader>,
    /// The fast tier's engine and linkers, with `--fast-deploy`.
    fast: Option<Linking>,
    /// Fast-tier functions whose Cranelift code is still being compiled.
    tier_ups_pending: AtomicUsize,
    /// Source functions' tier-up to their snapshots.
    source_tier: source_tier::SourceTier,
    registry: Registry,
    data: DataDir,
    defaults: LimitDefaults,
    /// What the request path takes: admission, queue timeout, pool options, the loader.
    invoke: InvokeContext,
    load_mode: LoadMode,
    /// Serialises what changes the registry: applying a record (its route check, the
    /// data directory's copy and the registry swap), a removal, a tier-up's swap.
    write_lock: tokio::sync::Mutex<()>,
    /// This host's own changes, one at a time from commit to apply: a later change is
    /// committed only once the one before is served (or refused) here. Compilation runs
    /// before it; a cluster node's mirror does not take it.
    changes: tokio::sync::Mutex<()>,
    /// Connections closed for sending their headers too slowly (counted by the listeners).
    slow_clients: Arc<AtomicU64>,
    /// Connections closed because their client stopped reading (counted by the listeners).
    stalled_readers: Arc<AtomicU64>,
    /// Garbage collection of code, with the claims of deploys in progress.
    garbage: garbage::Collector,
    /// Deploys that succeeded (`[0]`) and were refused (`[1]`).
    deploys: [AtomicU64; 2],
    /// Versions kept per function.
    keep_versions: usize,
    /// Where `wasi:config` secrets come from.
    secrets: SecretSources,
    /// Functions' state.
    keyvalue: Option<KeyValue>,
    /// Functions' SQL databases.
    sql: crate::sql::SqlHost,
    /// Functions' Postgres pools.
    postgres: crate::postgres::PgHost,
    /// Functions' Redis connections (`spin:redis`).
    redis: crate::outbound_redis::RedisHost,
    /// Start-up work done: artifacts checked and, with `--load background`, code loaded
    /// (see [`Platform::ready`]).
    started: std::sync::atomic::AtomicBool,
    /// Where changes commit (see [`coordinator`]): this host's own records ...
    local: Arc<LocalCoordinator>,
    /// ... unless another coordinator was given (a cluster's).
    attached: OnceLock<Arc<dyn Coordinator>>,
    /// Per function, the shared store's revision of the record applied last (see
    /// [`Platform::apply_record`]); guarded by the write lock in practice.
    applied: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("data_dir", &self.data.root())
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Opens the data directory, builds the engine and registers every deployed function
    /// (loading their code now only with [`LoadMode::Eager`]). Missing or damaged artifacts
    /// are rebuilt when loaded (and logged). A record that cannot be read is logged and
    /// skipped: the rest still serve.
    pub fn open(config: PlatformConfig) -> anyhow::Result<Self> {
        let data = DataDir::open(&config.data_dir)?;
        let compile_cache = if config.compile_cache {
            match CompileCache::open(&data.compile_cache()) {
                Ok(cache) => Some(Arc::new(cache)),
                Err(e) => {
                    tracing::warn!("compiling without the incremental cache: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let host_engines = Arc::new(HostEngines::new(config.engine.clone(), compile_cache)?);
        let engine = host_engines.main().clone();
        let cache = Arc::new(ArtifactCache::new(data.clone(), host_engines.clone())?);
        let engines = Arc::new(
            crate::source::Engines::open(config.engines.as_deref(), &data)
                .context("opening the language engines")?,
        );
        let loader = Arc::new(
            Loader::new(Linking::new(&host_engines)?, cache, engines.clone())
                .with_source_snapshots(config.source_snapshots),
        );
        let garbage = garbage::Collector {
            records: data.functions_dir(),
            wasm: data.wasm_dir(),
            artifacts: data.artifacts(&host_engines.compatibility_key()),
            claims: Default::default(),
            retired: Default::default(),
            engines: engines.current_all().map(|(_, d)| d.to_owned()).collect(),
        };
        let fast = if config.fast_deploy {
            Some(Linking::single(Arc::new(ThawEngine::new_fast_tier(
                &config.engine,
            )?))?)
        } else {
            None
        };
        let traces = config.traces.clone();
        let keyvalue = match &config.keyvalue {
            KeyValueBackend::Embedded => Some(KeyValue::Embedded(Arc::new(
                crate::keyvalue::embedded::Embedded::open(&data.keyvalue())
                    .context("opening the key-value store")?,
            ))),
            KeyValueBackend::Redis(store) => Some(KeyValue::Redis(store.clone())),
            KeyValueBackend::Off => None,
        };
        let sql = crate::sql::SqlHost::new(data.sql());
        let mut platform = Self {
            fast,
            tier_ups_pending: AtomicUsize::new(0),
            source_tier: source_tier::SourceTier::new(config.source_snapshots),
            slow_clients: Default::default(),
            stalled_readers: Default::default(),
            garbage,
            invoke: InvokeContext {
                admission: Arc::new(Semaphore::new(engine.options().instance_slots as usize)),
                queue_timeout: config.queue_timeout,
                pool: config.pool,
                server_timing: config.server_timing,
                loader: Some(loader.clone()),
                queue_waits: Default::default(),
                traces,
                trusted_proxies: config.trusted_proxies,
            },
            loader,
            registry: Registry::new(),
            data,
            // Whether stores get fuel follows the engine, whatever the caller's defaults say:
            // a metering engine with stores that start at zero fuel would trap every call.
            defaults: LimitDefaults {
                fuel_metering: config.engine.fuel_metering,
                ..config.defaults
            },
            load_mode: config.load,
            write_lock: tokio::sync::Mutex::new(()),
            changes: tokio::sync::Mutex::new(()),
            deploys: Default::default(),
            keep_versions: config.keep_versions.clamp(1, versions::MAX_VERSIONS / 2),
            secrets: config.secrets.clone(),
            keyvalue,
            sql,
            postgres: Default::default(),
            redis: Default::default(),
            started: std::sync::atomic::AtomicBool::new(false),
            local: Arc::new(LocalCoordinator::in_memory()),
            attached: OnceLock::new(),
            applied: Default::default(),
        };
        platform.register_all()?;
        platform.local = Arc::new(LocalCoordinator::in_data_dir(
            platform.data.clone(),
            platform.registry.all().iter().map(|set| set.record()),
        ));
        // Before serving: what a crash interrupted, and what earlier runs left behind.
        garbage::report(platform.garbage.run());
        if platform.load_mode == LoadMode::Eager {
            for function in platform.serving() {
                if let Err(e) = platform.load_blocking(&function) {
                    tracing::error!(function = %function.name, "cannot load: {e:#}");
                }
            }
        }
        Ok(platform)
    }

    /// Registers every function record of the data directory, without loading code.
    fn register_all(&self) -> anyhow::Result<()> {
        let dir = self.data.functions_dir();
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        let mut sets = Vec::with_capacity(paths.len());
        for path in paths {
            match read_record(&path).and_then(|record| self.version_set(record)) {
                Ok(set) => sets.push(Arc::new(set)),
                Err(e) => {
                    tracing::error!(path = %path.display(), "skipping damaged function record: {e:#}")
                }
            }
        }
        for (set, taken) in self.registry.insert_all(sets) {
            tracing::error!(function = %set.name, "skipping function: {taken}");
        }
        Ok(())
    }

    /// A function's versions from its record, code not loaded; one log for all of them.
    fn version_set(&self, record: VersionsRecord) -> anyhow::Result<VersionSet> {
        let log = Arc::default();
        let versions = record
            .versions
            .into_iter()
            .map(|version| self.unloaded_version(version, &log))
            .collect();
        VersionSet::new(versions, record.traffic).map_err(anyhow::Error::msg)
    }

    /// One version from its record, code not loaded, writing to `log`.
    fn unloaded_version(
        &self,
        version: crate::function::FunctionRecord,
        log: &Arc<crate::guest::log::FunctionLog>,
    ) -> Arc<Function> {
        let mut function = Function::unloaded(version, &self.defaults);
        function.log = Arc::clone(log);
        function.attach_keyvalue(self.keyvalue.as_ref());
        function.attach_sql(Some(&self.sql));
        function.attach_postgres(Some(&self.postgres));
        if let Some(spec) = &function.record.spec.assets {
            let read = |digest: &str| {
                let path = self.data.wasm(digest);
                std::fs::read(&path)
                    .map(bytes::Bytes::from)
                    .with_context(|| format!("reading {}", path.display()))
            };
            match crate::assets::FunctionAssets::load(spec, &function.record.digest, read) {
                Ok(assets) => function.assets = assets,
                // The bundle was checked at deploy: gone or damaged since (a cluster node
                // fetches it with the code, checked against its digest).
                Err(e) => tracing::error!(
                    function = %function.name,
                    version = function.record.generation,
                    "serving without its assets: {e:#}"
                ),
            }
        }
        function.attach_redis(Some(&self.redis));
        match self.secrets.resolve_spec(&function.record.spec) {
            Ok(config) => function.config = Arc::new(config),
            // It resolved at deploy: the operator removed or renamed a secret since.
            Err(e) => tracing::error!(
                function = %function.name,
                version = function.record.generation,
                "serving without its secrets: {e}"
            ),
        }
        Arc::new(function)
    }

    /// Gives the platform another source of truth (a cluster's, see [`coordinator`]): from
    /// now on changes commit there first. Once only, before any change; a second call is
    /// refused.
    pub fn attach_coordinator(&self, coordinator: Arc<dyn Coordinator>) -> anyhow::Result<()> {
        self.attached
            .set(coordinator)
            .map_err(|_| anyhow::anyhow!("the platform already has a coordinator"))?;
        // Revisions are the new coordinator's from now on.
        self.forget_applied_revisions();
        Ok(())
    }

    /// Where changes commit: the attached coordinator, or this host's own records.
    pub fn coordinator(&self) -> Arc<dyn Coordinator> {
        match self.attached.get() {
            Some(attached) => attached.clone(),
            None => self.local.clone(),
        }
    }

    /// `GET /healthz`: `Err(reason)` when the host serves but is degraded (a cluster node
    /// that cannot reach the shared registry: it serves what it knows, refuses changes).
    pub fn health(&self) -> Result<(), String> {
        self.coordinator().health()
    }

    /// Every version a request can reach, all functions.
    fn serving(&self) -> Vec<Arc<Function>> {
        self.registry
            .all()
            .iter()
            .flat_map(|set| set.reachable().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn load_blocking(&self, function: &Function) -> anyhow::Result<()> {
        if function.loaded().is_none() {
            let loaded = self.loader.load(function)?;
            // A concurrent load may have won; either result is the same code.
            function.set_loaded(loaded);
        }
        Ok(())
    }

    /// Starts the work that follows start-up in the background: the scrub of every deployed
    /// function's artifact (see [`crate::engine::artifact`]: after it, a load from disk does
    /// not read the whole file), then, if the load mode asks for it, loading every function,
    /// one at a time. A request that comes first loads its function itself.
    pub fn spawn_background_work(self: &Arc<Self>) {
        self.spawn_background_work_on(&tokio::runtime::Handle::current());
    }

    /// [`Platform::spawn_background_work`] on a given runtime.
    pub fn spawn_background_work_on(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        // Compiled code only: a source function's program is not compiled, its engine is.
        let engines: Vec<String> = self
            .loader
            .engines()
            .current_all()
            .map(|(_, digest)| digest.to_owned())
            .collect();
        let mut digests: Vec<String> = self
            .serving()
            .iter()
            .flat_map(|f| match f.record.kind {
                Kind::Source => f.record.engine.clone(),
                _ => Some(f.record.code_digest().to_owned()),
            })
            .chain(engines.iter().cloned())
            // Snapshots this host took (only those on disk: most source functions have none).
            .chain(
                self.serving()
                    .iter()
                    .filter_map(|f| f.record.snapshot_key())
                    .filter(|key| self.cache().has_artifact(key)),
            )
            .collect();
        digests.sort();
        digests.dedup();
        let count = digests.len();
        // Counted before the task runs, so that a status read right after start-up says
        // the scrub is still to come.
        self.cache()
            .stats()
            .unchecked
            .store(count, Ordering::Relaxed);
        runtime.spawn(Self::watch_idle(Arc::downgrade(self)));
        let (later, snapshots) = tokio::sync::mpsc::unbounded_channel();
        self.loader.send_snapshots_later(later);
        runtime.spawn(Self::load_snapshots_later(Arc::downgrade(self), snapshots));
        let platform = self.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            let scrubbing = platform.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || scrubbing.cache().scrub(&digests)).await
            {
                tracing::error!("the artifact scrub failed: {e}");
            }
            tracing::info!(
                artifacts = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "artifact checksums checked"
            );
            // The current engines, so that a language's first deploy does not wait for its
            // engine's compile (a host's first start) or its artifact's load. Not waited
            // for: readiness is about what serves now.
            let loader = platform.loader.clone();
            tokio::task::spawn_blocking(move || {
                for digest in engines {
                    if let Err(e) = loader.engine(&digest) {
                        tracing::error!("cannot load a language engine: {e:#}");
                    }
                }
            });
            if platform.load_mode != LoadMode::Background {
                platform.started.store(true, Ordering::Release);
                return;
            }
            let started = Instant::now();
            let mut loaded = 0usize;
            for function in platform.serving() {
                if function.loaded().is_some() {
                    continue;
                }
                match platform
                    .loader
                    .ensure_loaded(&function, LoadFor::Serving)
                    .await
                {
                    Ok(_) => loaded += 1,
                    Err(e) => tracing::error!(function = %function.name, "cannot load: {e:#}"),
                }
            }
            tracing::info!(
                loaded,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "background loading done"
            );
            platform.started.store(true, Ordering::Release);
        });
    }

    /// The idle task: looks at every serving version every half of the pools' idle timeout
    /// (at most every [`trim::MAX_TRIM_INTERVAL`]). A version idle for that timeout, its
    /// warm pool drained, gives its code pages back ([`crate::function::trim`]); one idle for
    /// `--unload-idle-secs` has its code unloaded (an unloaded copy, same record and state,
    /// takes its place, as for a version that leaves a split), so that it costs its record
    /// and counters, not wasmtime's metadata of its code; its next request loads it from
    /// its artifact. The same look starts the tier-up of a source function that has become
    /// busy ([`source_tier`]). Ends with the platform.
    async fn watch_idle(platform: std::sync::Weak<Self>) {
        use crate::function::{Idle, trim};
        // At least a second: a host with warm pools off (an idle timeout of 0) would otherwise
        // trim a busy function between two of its requests.
        let Some((idle, unload_after)) = platform.upgrade().map(|p| {
            let pool = &p.invoke.pool;
            (
                pool.idle_timeout.max(Duration::from_secs(1)),
                pool.unload_after,
            )
        }) else {
            return;
        };
        let mut tick = tokio::time::interval(
            (idle / 2).clamp(Duration::from_millis(100), trim::MAX_TRIM_INTERVAL),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(platform) = platform.upgrade() else {
                return;
            };
            let mut trimmed = 0;
            let mut unload = Vec::new();
            for function in platform.serving() {
                platform.consider_source_tier_up(&function);
                match function.look_idle(idle, unload_after) {
                    Idle::No => {}
                    Idle::Trimmed => trimmed += 1,
                    Idle::Unload => unload.push(function),
                }
            }
            if trimmed > 0 {
                tracing::debug!(trimmed, "idle functions' code pages given back");
            }
            if !unload.is_empty() {
                platform.unload_idle(unload).await;
            }
        }
    }

    /// Replaces each of `functions` by an unloaded copy, if it is still in the registry, in
    /// one change of the registry.
    async fn unload_idle(&self, mut functions: Vec<Arc<Function>>) {
        let guard = self.write_lock.lock().await;
        // Held only by the registry's set and this batch: no request is running on it now (a
        // request holds its version). One that starts before the swap keeps the loaded copy
        // it was given. Judged under the lock (a deploy may have held it a while) and before
        // any new set is built, since a set holds its versions.
        functions.retain(|function| Arc::strong_count(function) <= 2);
        // A function's new set, built on the last one for the same name: two idle versions of
        // one split are both replaced.
        let mut sets: HashMap<Arc<str>, VersionSet> = HashMap::new();
        for function in functions {
            let mut copy = Function::unloaded(function.record.clone(), &self.defaults)
                .with_state_of(&function);
            copy.unloaded_when_idle = true;
            let replaced = match sets.get(&function.name) {
                Some(set) => set.with_replaced(&function, Arc::new(copy)),
                None => self
                    .registry
                    .get(&function.name)
                    .and_then(|set| set.with_replaced(&function, Arc::new(copy))),
            };
            if let Some(set) = replaced {
                sets.insert(function.name.clone(), set);
            }
        }
        let unloaded = self.registry.replace_all(sets.into_values().map(Arc::new));
        drop(guard);
        if unloaded > 0 {
            tracing::info!(unloaded, "idle functions' code unloaded");
            // The metadata just freed is many small allocations that glibc's malloc keeps in
            // its arenas: without a trim the host's resident set does not go down at all
            // (measured with benches/density.sh). Returning the free pages walks the
            // arenas, a blocking call of a few milliseconds.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            if let Err(e) = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) }
            })
            .await
            {
                tracing::debug!("malloc_trim: {e}");
            }
        }
    }

    /// Whether the host is ready for traffic (`GET /readyz`): its registry is loaded (at
    /// open) and its start-up work is done: every artifact checked, and, with `--load
    /// background`, every serving version's code loaded. Before that it serves, but a first
    /// request may pay for a check or a load; a load balancer that waits for readiness
    /// sends it none of those.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.started.load(Ordering::Acquire) {
            return Err("start-up work in progress: checking artifacts and loading code");
        }
        self.coordinator().synced()
    }

    /// The loader of functions' code, with the host's language engines.
    pub fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    /// The registry of deployed functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The engine.
    pub fn engine(&self) -> &ThawEngine {
        self.loader.linking().engine()
    }

    /// The artifact cache.
    pub fn cache(&self) -> &ArtifactCache {
        self.loader.cache()
    }

    /// The host's key-value store, if it has one.
    pub fn keyvalue(&self) -> Option<&KeyValue> {
        self.keyvalue.as_ref()
    }

    /// The host's SQL databases.
    pub fn sql(&self) -> &crate::sql::SqlHost {
        &self.sql
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// What the request path needs ([`crate::invoke::invoke`] takes it).
    pub fn invoke_context(&self) -> &InvokeContext {
        &self.invoke
    }

    /// Exports the traces still pending (at shutdown); nothing without trace export.
    pub fn flush_traces(&self) {
        if let Some(traces) = &self.invoke.traces {
            traces.shutdown();
        }
    }

    /// Deploys since start-up: (succeeded, refused).
    pub fn deploys(&self) -> (u64, u64) {
        (
            self.deploys[0].load(Ordering::Relaxed),
            self.deploys[1].load(Ordering::Relaxed),
        )
    }

    /// The listeners' count of connections closed for slow headers.
    pub fn slow_clients(&self) -> &Arc<AtomicU64> {
        &self.slow_clients
    }

    /// The listeners' count of connections closed because their client stopped reading.
    pub fn stalled_readers(&self) -> &Arc<AtomicU64> {
        &self.stalled_readers
    }

    /// The host's summary for `GET /v1/status`.
    pub fn status(&self) -> HostStatus {
        let engine = self.engine();
        let stats = self.cache().stats();
        let sets = self.registry.all();
        let functions: Vec<&Arc<Function>> = sets.iter().flat_map(|s| s.versions()).collect();
        let warm: usize = functions.iter().map(|f| f.pool.len()).sum();
        let slots = engine.options().instance_slots;
        let in_use = slots as usize - self.invoke.admission.available_permits();
        let allocator = self.cache().engines().allocator();
        HostStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            allocator: allocator.to_string(),
            allocator_reason: match &allocator {
                Allocator::OnDemand(reason) => Some(reason.clone()),
                Allocator::Pooling => None,
            },
            instance_slots: slots,
            slots_in_use: in_use,
            slots_running: in_use.saturating_sub(warm),
            warm_instances: warm,
            functions: sets.len(),
            functions_loaded: sets
                .iter()
                .filter(|s| s.primary().loaded().is_some())
                .count(),
            compilations: stats.compilations.load(Ordering::Relaxed),
            artifact_loads: stats.artifact_loads.load(Ordering::Relaxed),
            artifact_rebuilds: stats.rebuilds.load(Ordering::Relaxed),
            artifact_checks: stats.checks.load(Ordering::Relaxed),
            artifacts_unchecked: stats.unchecked.load(Ordering::Relaxed),
            compile_cache_hits: engine
                .compile_cache()
                .map(|c| c.stats().hits.load(Ordering::Relaxed)),
            compile_cache_misses: engine
                .compile_cache()
                .map(|c| c.stats().misses.load(Ordering::Relaxed)),
            fast_deploy: self.fast.is_some(),
            tier_ups_pending: self.tier_ups_pending.load(Ordering::Relaxed),
            source_snapshots: self.source_tier.done.load(Ordering::Relaxed),
            source_snapshot_failures: self.source_tier.failures.load(Ordering::Relaxed),
            fuel_metering: engine.options().fuel_metering,
            slow_clients_closed: self.slow_clients.load(Ordering::Relaxed),
            stalled_readers_closed: self.stalled_readers.load(Ordering::Relaxed),
            data_dir: self.data.root().to_owned(),
        }
    }
}

fn read_record(path: &std::path::Path) -> anyhow::Result<VersionsRecord> {
    let text = std::fs::read(path)?;
    let record = VersionsRecord::from_json(&text).context("parsing the record")?;
    anyhow::ensure!(
        path.file_stem().is_some_and(|s| s == record.name.as_str()),
        "the record's name {:?} does not match its file name",
        record.name
    );
    Ok(record)
}
