//! The platform: engine, artifact cache, registry and data directory, and the two operations
//! that change them (deploy and remove). The servers in [`crate::server`] and
//! [`crate::admin`] are thin layers over this type, and tests and benchmarks drive it directly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::artifact::{
    ArtifactCache, CompileError, Compiled, Kind, Origin, detect_kind, sha256_hex,
};
use crate::datadir::{DataDir, remove_durable};
use crate::engine::{EngineOptions, ThawEngine};
use crate::error::DeployError;
use crate::function::{Function, FunctionRecord, Loaded};
use crate::pool::PoolOptions;
use crate::registry::Registry;
use crate::snapshot;
use crate::spec::{FunctionSpec, LimitDefaults};
use crate::timing::StartKind;

/// Time a function's init function may run at deploy: generous, because it replaces start-up
/// work that would otherwise run per request, but bounded, because a deploy must end.
const INIT_BUDGET: Duration = Duration::from_secs(60);

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
    /// When deployed functions are loaded at start-up.
    pub load: LoadMode,
    /// Warm pool settings.
    pub pool: PoolOptions,
    /// Add a `Server-Timing` header to every function response.
    pub server_timing: bool,
    /// Answer deploys with code from the fast tier (Winch) and swap in Cranelift's code in
    /// the background.
    pub fast_deploy: bool,
}

/// When the functions found in the data directory are loaded (their artifacts deserialized and
/// linked). Registering them (routes, specs) always happens at start-up and is fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
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

/// The running platform.
pub struct Platform {
    engine: Arc<ThawEngine>,
    /// The fast tier's engine, with `--fast-deploy`.
    fast: Option<Arc<ThawEngine>>,
    /// Fast-tier functions whose Cranelift code is still being compiled.
    tier_ups_pending: AtomicUsize,
    cache: Arc<ArtifactCache>,
    registry: Registry,
    data: DataDir,
    defaults: LimitDefaults,
    /// Admission control: one permit per instance slot. A request holds a permit from before
    /// instantiation until its store is dropped, so the pool is never asked for more instances
    /// than it has; excess requests queue here (bounded by `queue_timeout`) instead of failing
    /// inside wasmtime.
    admission: Arc<Semaphore>,
    queue_timeout: Duration,
    pool: PoolOptions,
    server_timing: bool,
    load_mode: LoadMode,
    /// Serialises deploys and removals: route checks, persistence and the registry swap
    /// happen as one step. Compilation runs outside it.
    write_lock: tokio::sync::Mutex<()>,
    /// Connections closed for sending their headers too slowly (counted by the listeners).
    slow_clients: Arc<std::sync::atomic::AtomicU64>,
    /// Connections closed because their client stopped reading (counted by the listeners).
    stalled_readers: Arc<std::sync::atomic::AtomicU64>,
    /// Digests that deploys in progress will refer to: garbage collection keeps them. Held
    /// for the whole of a collection, so a deploy that starts meanwhile waits for it to end
    /// before it looks for (or writes) its files.
    in_progress: std::sync::Mutex<HashMap<String, usize>>,
}

/// A deploy's claim on digests it will refer to (see `Platform::in_progress`).
struct Claim<'p> {
    platform: &'p Platform,
    digests: Vec<String>,
}

impl Claim<'_> {
    fn add(&mut self, digest: &str) {
        let mut claims = self.platform.claims();
        *claims.entry(digest.to_owned()).or_default() += 1;
        self.digests.push(digest.to_owned());
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = self.platform.claims();
        for digest in &self.digests {
            if let Some(count) = claims.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    claims.remove(digest);
                }
            }
        }
    }
}

impl Platform {
    /// Opens the data directory, builds the engine and loads every deployed function.
    /// Artifacts are loaded, not compiled; missing or damaged ones are rebuilt (and logged).
    /// A record that cannot be loaded is logged and skipped: the rest still serve.
    pub fn open(config: PlatformConfig) -> anyhow::Result<Self> {
        let data = DataDir::open(&config.data_dir)?;
        let engine = Arc::new(ThawEngine::new(config.engine.clone())?);
        let cache = Arc::new(ArtifactCache::new(data.clone(), engine.clone())?);
        let fast = if config.fast_deploy {
            Some(Arc::new(ThawEngine::new_fast_tier(&config.engine)?))
        } else {
            None
        };
        let platform = Self {
            fast,
            tier_ups_pending: AtomicUsize::new(0),
            slow_clients: Default::default(),
            stalled_readers: Default::default(),
            in_progress: Default::default(),
            admission: Arc::new(Semaphore::new(engine.options().instance_slots as usize)),
            engine,
            cache,
            registry: Registry::new(),
            data,
            // Whether stores get fuel follows the engine, whatever the caller's defaults say:
            // a metering engine with stores that start at zero fuel would trap every call.
            defaults: LimitDefaults {
                fuel_metering: config.engine.fuel_metering,
                ..config.defaults
            },
            queue_timeout: config.queue_timeout,
            pool: config.pool,
            server_timing: config.server_timing,
            load_mode: config.load,
            write_lock: tokio::sync::Mutex::new(()),
        };
        match platform.register_all()? {
            // Only when every record could be read: a damaged one's files cannot be told
            // from garbage.
            Some(referenced) => platform.collect_garbage(referenced),
            None => tracing::warn!(
                "not collecting unreferenced files at start-up: a function record is damaged"
            ),
        }
        if platform.load_mode == LoadMode::Eager {
            for function in platform.registry.all() {
                if let Err(e) = platform.load_blocking(&function) {
                    tracing::error!(function = %function.name, "cannot load: {e:#}");
                }
            }
        }
        Ok(platform)
    }

    /// Registers every function record of the data directory, without loading code. Returns
    /// the digests the records refer to, or `None` if a record could not be read.
    fn register_all(&self) -> anyhow::Result<Option<HashSet<String>>> {
        let dir = self.data.functions_dir();
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        let mut functions = Vec::with_capacity(paths.len());
        let mut referenced = Some(HashSet::new());
        for path in paths {
            match read_record(&path) {
                Ok(record) => {
                    if let Some(digests) = &mut referenced {
                        digests.insert(record.digest.clone());
                        digests.insert(record.code_digest().to_owned());
                    }
                    functions.push(Arc::new(Function::unloaded(record, &self.defaults)))
                }
                Err(e) => {
                    referenced = None;
                    tracing::error!(path = %path.display(), "skipping damaged function record: {e:#}")
                }
            }
        }
        for (function, taken) in self.registry.insert_all(functions) {
            tracing::error!(function = %function.name, "skipping function: {taken}");
        }
        Ok(referenced)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.in_progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes stored wasm and artifacts that neither `referenced` nor a deploy in progress
    /// refers to: the previous version after a redeploy, a removed function's code, an upload
    /// interrupted by a crash. Callers hold the write lock (or run before serving), so no
    /// record changes meanwhile; deploys in progress are kept by their claims. Failures are
    /// logged, never fatal: garbage costs disk, not correctness.
    fn collect_garbage(&self, mut referenced: HashSet<String>) {
        let claims = self.claims();
        referenced.extend(claims.keys().cloned());
        let result = crate::datadir::remove_unreferenced(&self.data.wasm_dir(), &referenced)
            .and_then(|mut collected| {
                collected += self.cache.remove_unreferenced(&referenced)?;
                Ok(collected)
            });
        drop(claims);
        match result {
            Ok(collected) if collected.files > 0 => tracing::info!(
                files = collected.files,
                bytes = collected.bytes,
                "removed code no function refers to"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("collecting unreferenced files failed: {e:#}"),
        }
    }

    /// The digests the registered functions refer to.
    fn referenced(&self) -> HashSet<String> {
        self.registry
            .all()
            .iter()
            .flat_map(|f| [f.record.digest.clone(), f.record.code_digest().to_owned()])
            .collect()
    }

    /// Loads a registered function's code: its artifact, or a rebuild from the stored wasm.
    /// Blocking (file reads, possibly a compile).
    fn load_code(&self, function: &Function) -> anyhow::Result<Loaded> {
        let record = &function.record;
        let (compiled, origin) = self.cache.load(record.kind, record.code_digest())?;
        let code = Function::link(&self.engine, compiled)?;
        tracing::info!(function = %function.name, from = ?origin, "loaded");
        Ok(Loaded { code, origin })
    }

    fn load_blocking(&self, function: &Function) -> anyhow::Result<()> {
        if function.loaded().is_none() {
            let loaded = self.load_code(function)?;
            // A concurrent load may have won; either result is the same code.
            function.set_loaded(loaded);
        }
        Ok(())
    }

    /// The function's code, loading it if needed. Returns how this request's start should be
    /// classified when it had to wait for a load (from disk, or a compile when the artifact
    /// had to be rebuilt) and how long that took.
    pub async fn ensure_loaded<'f>(
        self: &Arc<Self>,
        function: &'f Arc<Function>,
    ) -> anyhow::Result<(&'f Loaded, Option<(StartKind, Duration)>)> {
        if let Some(loaded) = function.loaded() {
            return Ok((loaded, None));
        }
        let started = Instant::now();
        let (loaded, waited) = function
            .load_once(|| {
                let platform = self.clone();
                let function = function.clone();
                async move {
                    tokio::task::spawn_blocking(move || platform.load_code(&function))
                        .await
                        .map_err(|e| anyhow::anyhow!("load task failed: {e}"))?
                }
            })
            .await?;
        let kind = match loaded.origin {
            Origin::Artifact => StartKind::Disk,
            Origin::Compiled | Origin::FastTier => StartKind::Compile,
        };
        Ok((loaded, waited.then(|| (kind, started.elapsed()))))
    }

    /// Loads every registered function in the background, one at a time, if the load mode
    /// asks for it.
    pub fn spawn_background_loading(self: &Arc<Self>) {
        self.spawn_background_loading_on(&tokio::runtime::Handle::current());
    }

    /// [`Platform::spawn_background_loading`] on a given runtime.
    pub fn spawn_background_loading_on(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if self.load_mode != LoadMode::Background {
            return;
        }
        let platform = self.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            let mut loaded = 0usize;
            for function in platform.registry.all() {
                if function.loaded().is_some() {
                    continue;
                }
                match platform.ensure_loaded(&function).await {
                    Ok(_) => loaded += 1,
                    Err(e) => tracing::error!(function = %function.name, "cannot load: {e:#}"),
                }
            }
            tracing::info!(
                loaded,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "background loading done"
            );
        });
    }

    /// Deploys `wasm` as function `name`, replacing any previous version atomically.
    /// Returns the new function and whether it replaced one. On any error nothing changes.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
    ) -> Result<(Arc<Function>, bool), DeployError> {
        spec.validate(name, self.engine.options().max_memory_bytes)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        self.check_host_support(&spec)
            .map_err(DeployError::BadRequest)?;
        let kind = detect_kind(&wasm).map_err(|e| DeployError::InvalidModule(e.into()))?;
        self.registry
            .check_route(name, &spec.route_or_default(name))?;

        let digest = sha256_hex(&wasm);
        let mut claim = Claim {
            platform: self,
            digests: Vec::new(),
        };
        claim.add(&digest);
        let snapshot = if kind == Kind::Component
            && spec.snapshot != Some(false)
            && snapshot::exports_init(&wasm)
        {
            Some(self.snapshot(&spec, wasm.clone()).await?)
        } else {
            None
        };
        let (code_wasm, code_digest) = match &snapshot {
            Some(snapshot) => (snapshot.clone(), sha256_hex(snapshot)),
            None => (wasm.clone(), digest.clone()),
        };
        claim.add(&code_digest);
        let (compiled, origin) = self
            .compile(kind, &code_digest, code_wasm.clone(), self.fast.is_some())
            .await?;
        let record = FunctionRecord {
            name: name.to_owned(),
            digest: digest.clone(),
            code_digest: snapshot.is_some().then(|| code_digest.clone()),
            kind,
            wasm_bytes: wasm.len() as u64,
            spec,
            generation: 0,
            deployed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        check_initial_memory(&compiled, &record.spec.limits.resolve(&self.defaults))?;
        let engine = match (&self.fast, origin) {
            (Some(fast), Origin::FastTier) => fast,
            _ => &self.engine,
        };
        let code = Function::link(engine, compiled)
            .map_err(|e| DeployError::InvalidModule(e.to_string()))?;
        let mut function = Function::loaded_with(record, &self.defaults, code, origin);

        let _guard = self.write_lock.lock().await;
        self.registry.check_route(name, &function.route)?;
        let previous = self.registry.get(name);
        let generation = previous.as_ref().map_or(1, |p| p.record.generation + 1);
        function.set_generation(generation);
        // The wasm first, the record last: the record is the commit point (see datadir).
        // The upload, and the snapshot (what an artifact rebuild compiles) if there is one.
        for (digest, bytes) in [(&digest, &wasm), (&code_digest, &code_wasm)] {
            let path = self.data.wasm(digest);
            if !path.exists() {
                self.data
                    .write_atomic(&path, bytes)
                    .map_err(DeployError::Internal)?;
            }
        }
        let json = serde_json::to_vec_pretty(&function.record)
            .map_err(|e| DeployError::Internal(e.into()))?;
        self.data
            .write_atomic(&self.data.function_record(name), &json)
            .map_err(DeployError::Internal)?;
        let function = Arc::new(function);
        self.registry.insert(function.clone())?;
        if previous.is_some() {
            self.collect_garbage(self.referenced());
        }
        if origin == Origin::FastTier {
            self.tier_ups_pending.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().tier_up(function.clone(), code_wasm));
        }
        tracing::info!(
            function = name,
            route = %function.route,
            kind = %kind,
            digest = %&digest[..12],
            generation = function.record.generation,
            "deployed"
        );
        Ok((function, previous.is_some()))
    }

    /// Pre-initialises a component (see [`crate::snapshot`]) on a blocking thread: Wizer
    /// compiles an instrumented copy of the component, which takes as long as a deploy's
    /// compile and must not stall the reactor.
    async fn snapshot(&self, spec: &FunctionSpec, wasm: Bytes) -> Result<Bytes, DeployError> {
        let limits = spec.limits.resolve(&self.defaults);
        let engine = self.engine.engine().clone();
        // The init function runs in an instance like any other: it takes a slot through
        // admission, or the pooling allocator would refuse an admitted request (or this
        // deploy) for want of one.
        let permit = tokio::time::timeout(
            self.queue_timeout,
            self.admission.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            DeployError::Busy(format!(
                "every instance slot stayed busy for {} ms; pre-initialising the function needs \
                 one: retry when the host is less loaded, or raise --instance-slots",
                self.queue_timeout.as_millis()
            ))
        })?
        .map_err(|_| DeployError::Internal(anyhow::anyhow!("admission semaphore closed")))?;
        let started = Instant::now();
        let snapshot = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(snapshot::snapshot(
                &engine,
                &wasm,
                INIT_BUDGET,
                limits.memory_bytes,
            ))
        })
        .await
        .map_err(|e| DeployError::Internal(anyhow::anyhow!("snapshot task failed: {e}")))?
        .map_err(|e| DeployError::InvalidModule(format!("{e:#}")))?;
        drop(permit);
        tracing::info!(
            bytes = snapshot.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pre-initialised snapshot taken"
        );
        Ok(snapshot.into())
    }

    /// Loads the artifact if this exact wasm was compiled before, otherwise compiles it, on a
    /// blocking thread (Cranelift takes tens of milliseconds and would stall the reactor).
    /// With `fast`, code that is not cached yet is compiled by the fast tier instead (and
    /// not stored).
    async fn compile(
        &self,
        kind: Kind,
        digest: &str,
        wasm: Bytes,
        fast: bool,
    ) -> Result<(Compiled, Origin), DeployError> {
        let cache = self.cache.clone();
        let digest = digest.to_owned();
        let fast_engine = self
            .fast
            .as_ref()
            .filter(|_| fast)
            .map(|f| f.engine().clone());
        tokio::task::spawn_blocking(move || {
            if let Ok((compiled, Origin::Artifact)) = cache.load_existing(kind, &digest) {
                return Ok((compiled, Origin::Artifact));
            }
            if let Some(engine) = fast_engine {
                return crate::artifact::compile(&engine, kind, &wasm)
                    .map(|c| (c, Origin::FastTier));
            }
            cache
                .compile_and_store(kind, &digest, &wasm)
                .map(|c| (c, Origin::Compiled))
        })
        .await
        .map_err(|e| DeployError::Internal(anyhow::anyhow!("compile task failed: {e}")))?
        .map_err(|e| match e {
            CompileError::Invalid(msg) => {
                DeployError::InvalidModule(format!("invalid WebAssembly: {msg}"))
            }
            CompileError::Host(e) => DeployError::Internal(e),
        })
    }

    /// Compiles a fast-tier function with Cranelift, stores the artifact, and swaps the
    /// function to the new code, unless it was redeployed or removed in the meantime. If the
    /// compile fails the function keeps running on the fast tier (and the next restart tries
    /// again, as for any missing artifact).
    async fn tier_up(self: Arc<Self>, fast: Arc<Function>, wasm: Bytes) {
        let record = &fast.record;
        let started = Instant::now();
        let result = async {
            let (compiled, origin) = self
                .compile(record.kind, record.code_digest(), wasm, false)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let code = Function::link(&self.engine, compiled)?;
            let _guard = self.write_lock.lock().await;
            match self.registry.get(&fast.name) {
                Some(current) if Arc::ptr_eq(&current, &fast) => {
                    let upgraded =
                        Function::loaded_with(record.clone(), &self.defaults, code, origin);
                    self.registry.insert(Arc::new(upgraded))?;
                    Ok(true)
                }
                _ => Ok::<_, anyhow::Error>(false),
            }
        }
        .await;
        match result {
            Ok(true) => tracing::info!(
                function = %fast.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tier-up: now serving Cranelift code"
            ),
            Ok(false) => {
                tracing::debug!(function = %fast.name, "tier-up skipped: replaced meanwhile")
            }
            Err(e) => tracing::error!(
                function = %fast.name,
                "tier-up failed; the function stays on the fast tier: {e:#}"
            ),
        }
        self.tier_ups_pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes function `name`; returns whether it existed. Requests already running on it
    /// finish (their code is mapped; removing the files does not touch it). Its wasm and
    /// artifact are removed unless another function shares them.
    pub async fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let _guard = self.write_lock.lock().await;
        if self.registry.get(name).is_none() {
            return Ok(false);
        }
        remove_durable(&self.data.function_record(name))?;
        self.registry.remove(name);
        self.collect_garbage(self.referenced());
        tracing::info!(function = name, "removed");
        Ok(true)
    }

    /// The registry of deployed functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The engine.
    pub fn engine(&self) -> &ThawEngine {
        &self.engine
    }

    /// The artifact cache.
    pub fn cache(&self) -> &ArtifactCache {
        &self.cache
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// Admission control in front of instantiation.
    pub fn admission(&self) -> &Arc<Semaphore> {
        &self.admission
    }

    /// How long a request waits for a slot.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Warm pool settings.
    pub fn pool_options(&self) -> &PoolOptions {
        &self.pool
    }

    /// What only this host can check about a spec: that it meters fuel if a fuel limit is
    /// asked for, and that granted directories exist.
    fn check_host_support(&self, spec: &FunctionSpec) -> Result<(), String> {
        if spec.limits.fuel.is_some() && !self.engine.options().fuel_metering {
            return Err(
                "limit fuel needs a host started with --fuel-metering; this one does not count fuel"
                    .into(),
            );
        }
        for dir in &spec.dirs {
            if !dir.host.is_dir() {
                return Err(format!(
                    "granted directory {} does not exist on the host (or is not a directory)",
                    dir.host.display()
                ));
            }
        }
        Ok(())
    }

    /// The listeners' count of connections closed for slow headers.
    pub fn slow_clients(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.slow_clients
    }

    /// The listeners' count of connections closed because their client stopped reading.
    pub fn stalled_readers(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.stalled_readers
    }

    /// Whether responses carry `Server-Timing`.
    pub fn server_timing(&self) -> bool {
        self.server_timing
    }

    /// A JSON summary of the host for `GET /v1/status`.
    pub fn status(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.cache.stats();
        let allocator = self.engine.allocator();
        let functions = self.registry.all();
        let warm: usize = functions.iter().map(|f| f.pool.len()).sum();
        let in_use =
            self.engine.options().instance_slots as usize - self.admission.available_permits();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "allocator": allocator.to_string(),
            "allocator_reason": match allocator {
                crate::engine::Allocator::OnDemand(reason) => Some(reason.as_str()),
                crate::engine::Allocator::Pooling => None,
            },
            "instance_slots": self.engine.options().instance_slots,
            "slots_in_use": in_use,
            "slots_running": in_use.saturating_sub(warm),
            "warm_instances": warm,
            "functions": functions.len(),
            "functions_loaded": functions.iter().filter(|f| f.loaded().is_some()).count(),
            "compilations": stats.compilations.load(Relaxed),
            "artifact_loads": stats.artifact_loads.load(Relaxed),
            "artifact_rebuilds": stats.rebuilds.load(Relaxed),
            "fast_deploy": self.fast.is_some(),
            "tier_ups_pending": self.tier_ups_pending.load(Relaxed),
            "fuel_metering": self.engine.options().fuel_metering,
            "slow_clients_closed": self.slow_clients.load(Relaxed),
            "stalled_readers_closed": self.stalled_readers.load(Relaxed),
            "data_dir": self.data.root(),
        })
    }
}

/// Refuses code whose initial linear memory is already over the function's memory limit:
/// every instantiation would fail, so every request would be a 500.
fn check_initial_memory(
    compiled: &Compiled,
    limits: &crate::spec::Limits,
) -> Result<(), DeployError> {
    let required = match compiled {
        Compiled::Component(c) => c.resources_required(),
        Compiled::Module(m) => Some(m.resources_required()),
    };
    // Pages of 64 KiB: thaw's engine does not enable custom page sizes.
    let Some(pages) = required.and_then(|r| r.max_initial_memory_size) else {
        return Ok(());
    };
    let bytes = pages.saturating_mul(64 * 1024);
    if bytes > limits.memory_bytes {
        return Err(DeployError::BadRequest(format!(
            "the module's initial memory is {} MiB ({pages} pages of 64 KiB), more than the \
             function's memory limit of {} MiB (memory_mib): raise the limit or shrink the \
             module's memory",
            bytes.div_ceil(1 << 20),
            limits.memory_bytes >> 20
        )));
    }
    Ok(())
}

fn read_record(path: &std::path::Path) -> anyhow::Result<FunctionRecord> {
    let text = std::fs::read(path)?;
    let record: FunctionRecord = serde_json::from_slice(&text).context("parsing the record")?;
    anyhow::ensure!(
        path.file_stem().is_some_and(|s| s == record.name.as_str()),
        "the record's name {:?} does not match its file name",
        record.name
    );
    Ok(record)
}
