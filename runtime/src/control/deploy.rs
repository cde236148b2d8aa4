//! Deploy, tier-up and removal: the operations that change what is served, and the garbage
//! collection of code that no longer is.
//!
//! A deploy validates, pre-initialises (a Wizer snapshot, if the component asks for one),
//! compiles (or finds the artifact), links and checks the code before anything changes; then,
//! under the write lock, it persists the wasm and the record (the commit point, see
//! [`crate::datadir`]) and swaps the registry entry. Any error before the commit leaves the
//! previous version serving.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::error::DeployError;
use super::{Platform, garbage};
use crate::datadir::remove_durable;
use crate::engine::artifact::{CompileError, Compiled, Kind, Origin, detect_kind, sha256_hex};
use crate::engine::snapshot;
use crate::function::{Function, FunctionRecord};
use crate::spec::FunctionSpec;

/// Time a function's init function may run at deploy: generous, because it replaces start-up
/// work that would otherwise run per request, but bounded, because a deploy must end.
const INIT_BUDGET: Duration = Duration::from_secs(60);

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

    /// Deploys `wasm` as function `name`, replacing any previous version atomically.
    /// Returns the new function and whether it replaced one. On any error nothing changes.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
    ) -> Result<(Arc<Function>, bool), DeployError> {
        let result = self.try_deploy(name, spec, wasm).await;
        let outcome = usize::from(result.is_err());
        self.deploys[outcome].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_deploy(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
    ) -> Result<(Arc<Function>, bool), DeployError> {
        spec.validate(name, self.engine().options().max_memory_bytes)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        self.check_host_support(&spec)
            .map_err(DeployError::BadRequest)?;
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

        let _guard = self.write_lock.lock().await;
        self.registry.check_route(name, &function.route)?;
        let previous = self.registry.get(name);
        let generation = previous.as_ref().map_or(1, |p| p.record.generation + 1);
        function.set_generation(generation);
        if let Some(previous) = &previous {
            // One log per name: `thaw logs` follows a function across its versions.
            function.log = previous.log.clone();
        }
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
        let replaced = previous.is_some();
        if let Some(previous) = previous {
            self.garbage.retire(&previous);
            // Our own reference must not count as a request still holding the old code.
            drop(previous);
            self.collect_garbage().await;
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
        Ok((function, replaced))
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
            let code = self.loader.linking().link(compiled)?;
            let _guard = self.write_lock.lock().await;
            match self.registry.get(&fast.name) {
                Some(current) if Arc::ptr_eq(&current, &fast) => {
                    let mut upgraded =
                        Function::loaded_with(record.clone(), &self.defaults, code, origin);
                    upgraded.log = current.log.clone();
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
        if let Some(removed) = self.registry.remove(name) {
            self.garbage.retire(&removed);
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
