//! Deploy, rollback, traffic splits, promotion, tier-up and removal: the operations that
//! change what is served, and the garbage collection of code that no longer is.
//!
//! A deploy validates, pre-initialises (a Wizer snapshot, if the component asks for one),
//! compiles (or finds the artifact), links and checks the code before anything changes; then,
//! under the write lock, it persists the wasm and the record (the commit point, see
//! [`crate::datadir`]) and swaps the registry entry. Any error before the commit leaves the
//! previous version serving. A rollback or a split change is a commit of the same versions
//! with another split (see [`super::versions`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::error::DeployError;
use super::versions::VersionSet;
use super::{Platform, garbage};
use crate::datadir::remove_durable;
use crate::engine::artifact::{CompileError, Compiled, Kind, Origin, detect_kind, sha256_hex};
use crate::engine::snapshot;
use crate::function::{Function, FunctionRecord};
use crate::spec::FunctionSpec;
use crate::traffic::TrafficSplit;

/// Time a function's init function may run at deploy: generous, because it replaces start-up
/// work that would otherwise run per request, but bounded, because a deploy must end.
const INIT_BUDGET: Duration = Duration::from_secs(60);

/// What a deploy made.
pub struct Deployed {
    /// The new version.
    pub version: Arc<Function>,
    /// The function's versions and split with it.
    pub set: Arc<VersionSet>,
    /// Whether the function existed before.
    pub replaced: bool,
}

/// How a deploy's new version takes traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeployOptions {
    /// `Some(p)`: the new version takes `p`% beside the versions already serving (which
    /// share the rest as before; `0` makes it reachable only by pinning it); `None`: all
    /// traffic at once. A function's first version always takes all.
    pub canary: Option<u8>,
}

impl Platform {
    /// What only this host can check about a spec: that it meters fuel if a fuel limit is
    /// asked for, and that granted directories exist.
    fn check_host_support(&self, spec: &FunctionSpec) -> Result<(), String> {
        if spec.limits.fuel.is_some() && !self.engine().options().fuel_metering {
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

    /// Deploys `wasm` as function `name`'s next version, which takes all its traffic at once
    /// (see [`Platform::deploy_with`] for a canary). Returns the new version and whether the
    /// function existed. On any error nothing changes.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
    ) -> Result<(Arc<Function>, bool), DeployError> {
        let deployed = self
            .deploy_with(name, spec, wasm, DeployOptions::default())
            .await?;
        Ok((deployed.version, deployed.replaced))
    }

    /// [`Platform::deploy`] with options (a canary share).
    pub async fn deploy_with(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        let result = self.try_deploy(name, spec, wasm, options).await;
        let outcome = usize::from(result.is_err());
        self.deploys[outcome].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_deploy(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        if options.canary.is_some_and(|p| p > 100) {
            return Err(DeployError::BadRequest(
                "a canary share is a percent, 0 to 100".into(),
            ));
        }
        spec.validate(name, self.engine().options().max_memory_bytes)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        self.check_host_support(&spec)
            .map_err(DeployError::BadRequest)?;
        // Before any work: a secret the host cannot resolve is the deployer's to fix.
        let config = Arc::new(
            self.secrets
                .resolve(&spec.config)
                .map_err(DeployError::BadRequest)?,
        );
        let kind = detect_kind(&wasm).map_err(|e| DeployError::InvalidModule(e.into()))?;
        self.registry
            .check_route(name, &spec.route_or_default(name))?;

        let digest = sha256_hex(&wasm);
        let mut claim = self.garbage.claims.claim();
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
        let linking = match (&self.fast, origin) {
            (Some(fast), Origin::FastTier) => fast,
            _ => self.loader.linking(),
        };
        let code = linking
            .link(compiled)
            .map_err(|e| DeployError::InvalidModule(e.to_string()))?;
        let mut function = Function::loaded_with(record, &self.defaults, code, origin);
        function.config = config;
        function.attach_keyvalue(self.keyvalue.as_ref());

        let _guard = self.write_lock.lock().await;
        let previous = self.registry.get(name);
        let version = previous
            .as_ref()
            .map_or(1, |p| p.newest().record.generation + 1);
        function.set_generation(version);
        let traffic = match (&previous, options.canary) {
            (Some(previous), Some(percent)) => previous
                .traffic()
                .with_canary(version, percent)
                .map_err(|e| DeployError::BadRequest(e.to_string()))?,
            _ => TrafficSplit::single(version),
        };
        if let Some(previous) = &previous {
            // One log per name: `thaw logs` follows a function across its versions.
            function.log = previous.primary().log.clone();
        }
        let function = Arc::new(function);
        let (set, dropped) = match &previous {
            Some(previous) => previous.with_version(function.clone(), traffic, self.keep_versions),
            None => VersionSet::new(vec![function.clone()], traffic).map(|s| (s, Vec::new())),
        }
        .map_err(DeployError::from)?;
        self.registry.check_route(name, &set.route)?;
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
        let replaced = previous.is_some();
        drop(previous);
        let set = self.commit(set, dropped).await?;
        if origin == Origin::FastTier {
            self.tier_ups_pending.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().tier_up(function.clone(), code_wasm));
        }
        tracing::info!(
            function = name,
            route = %function.route,
            kind = %kind,
            digest = %&digest[..12],
            version = version,
            canary = options.canary,
            "deployed"
        );
        Ok(Deployed {
            version: function,
            set,
            replaced,
        })
    }

    /// Persists `set` as its function's record (the commit point), swaps it into the
    /// registry, and collects the code of the `dropped` versions once no request holds them.
    /// The caller holds the write lock.
    async fn commit(
        &self,
        set: VersionSet,
        dropped: Vec<Arc<Function>>,
    ) -> Result<Arc<VersionSet>, DeployError> {
        self.registry.check_route(&set.name, &set.route)?;
        let json = serde_json::to_vec_pretty(&set.record())
            .map_err(|e| DeployError::Internal(e.into()))?;
        self.data
            .write_atomic(&self.data.function_record(&set.name), &json)
            .map_err(DeployError::Internal)?;
        let set = Arc::new(set.unload_unreachable(&self.defaults));
        self.registry.insert(set.clone())?;
        if !dropped.is_empty() {
            for version in &dropped {
                self.garbage.retire(version);
            }
            // Our own references must not count as requests still holding the old code.
            drop(dropped);
            self.collect_garbage().await;
        }
        Ok(set)
    }

    /// The versions of function `name`.
    pub fn versions(&self, name: &str) -> Result<Arc<VersionSet>, DeployError> {
        self.registry
            .get(name)
            .ok_or_else(|| DeployError::NotFound(format!("no function named {name:?}")))
    }

    /// Serves function `name` by `traffic`. Versions that take a share and whose code is not
    /// loaded are loaded first (from their artifacts: nothing is compiled unless an artifact
    /// is missing), so the first request to them does not pay for it and a version that
    /// cannot load is refused before it gets traffic.
    pub async fn set_traffic(
        &self,
        name: &str,
        traffic: TrafficSplit,
    ) -> Result<Arc<VersionSet>, DeployError> {
        self.change_traffic(name, |_| Ok(traffic)).await
    }

    /// Serves all of function `name`'s traffic from `version`, or, for `None`, from the
    /// version it served before the newest change (see [`VersionSet::previous`]).
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<VersionSet>, DeployError> {
        self.change_traffic(name, |current| {
            let version = match version {
                Some(version) => version,
                None => current.previous().ok_or_else(|| {
                    DeployError::NotFound(format!(
                        "function {name} has no older version serving or kept to roll back to"
                    ))
                })?,
            };
            Ok(TrafficSplit::single(version))
        })
        .await
    }

    /// Serves all of function `name`'s traffic from its newest version.
    pub async fn promote(&self, name: &str) -> Result<Arc<VersionSet>, DeployError> {
        self.change_traffic(name, |current| {
            Ok(TrafficSplit::single(current.newest().record.generation))
        })
        .await
    }

    /// A new split for function `name`, chosen by `choose` from the current versions under
    /// the write lock (so a deploy committed meanwhile is seen, not overwritten).
    async fn change_traffic(
        &self,
        name: &str,
        choose: impl FnOnce(&VersionSet) -> Result<TrafficSplit, DeployError>,
    ) -> Result<Arc<VersionSet>, DeployError> {
        let _guard = self.write_lock.lock().await;
        let current = self.versions(name)?;
        let set = current.with_traffic(choose(&current)?)?;
        for share in set.traffic().shares().iter().filter(|s| s.percent > 0) {
            let version = set.version(share.version).expect("checked by the set");
            self.loader.ensure_loaded(version).await.map_err(|e| {
                DeployError::Internal(e.context(format!("loading v{}", share.version)))
            })?;
        }
        let set = self.commit(set, Vec::new()).await?;
        tracing::info!(function = name, traffic = %set.traffic(), "traffic split changed");
        Ok(set)
    }

    /// Pre-initialises a component (see [`crate::snapshot`]) on a blocking thread: Wizer
    /// compiles an instrumented copy of the component, which takes as long as a deploy's
    /// compile and must not stall the reactor.
    async fn snapshot(&self, spec: &FunctionSpec, wasm: Bytes) -> Result<Bytes, DeployError> {
        let limits = spec.limits.resolve(&self.defaults);
        let engine = self.engine().engine().clone();
        // The init function runs in an instance like any other: it takes a slot through
        // admission, or the pooling allocator would refuse an admitted request (or this
        // deploy) for want of one.
        let permit = tokio::time::timeout(
            self.invoke.queue_timeout,
            self.invoke.admission.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            DeployError::Busy(format!(
                "every instance slot stayed busy for {} ms; pre-initialising the function needs \
                 one: retry when the host is less loaded, or raise --instance-slots",
                self.invoke.queue_timeout.as_millis()
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
        let cache = self.loader.cache().clone();
        let digest = digest.to_owned();
        let fast_engine = self
            .fast
            .as_ref()
            .filter(|_| fast)
            .map(|f| f.engine().engine().clone());
        tokio::task::spawn_blocking(move || {
            if let Ok((compiled, Origin::Artifact)) = cache.load_existing(kind, &digest) {
                return Ok((compiled, Origin::Artifact));
            }
            if let Some(engine) = fast_engine {
                return crate::engine::artifact::compile(&engine, kind, &wasm)
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

    /// Compiles a fast-tier version with Cranelift, stores the artifact, and swaps the
    /// version to the new code, unless it was removed or stopped serving in the meantime. If the
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
            let code = self.loader.linking().link(compiled)?;
            let _guard = self.write_lock.lock().await;
            let upgraded = Function::loaded_with(record.clone(), &self.defaults, code, origin)
                .with_state_of(&fast);
            // The record does not change (same version, same code digest): nothing to persist.
            match self
                .registry
                .get(&fast.name)
                .and_then(|current| current.with_replaced(&fast, Arc::new(upgraded)))
            {
                Some(set) => {
                    self.registry.insert(Arc::new(set))?;
                    Ok(true)
                }
                None => Ok::<_, anyhow::Error>(false),
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
        if let Some(removed) = self.registry.remove(name) {
            for version in removed.versions() {
                self.garbage.retire(version);
            }
        }
        // Its state goes with it: a later function of the same name starts empty.
        if let Some(store) = &self.keyvalue
            && let Err(e) = store.remove_function(name).await
        {
            tracing::error!(
                function = name,
                "its key-value data could not be removed: {e}"
            );
        }
        self.collect_garbage().await;
        tracing::info!(function = name, "removed");
        Ok(true)
    }

    /// Collects unreferenced code on a blocking thread (unlinks and fsyncs must not stall
    /// the reactor). The caller waits, so a deploy or removal is answered with its garbage
    /// gone, and no collection overlaps another (callers hold the write lock).
    async fn collect_garbage(&self) {
        let collector = self.garbage.clone();
        let result = tokio::task::spawn_blocking(move || collector.run())
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the collection task failed: {e}")));
        garbage::report(result);
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
