//! Deploy, rollback, traffic splits, promotion, tier-up and removal: the operations that
//! change what is served, and the garbage collection of code that no longer is.
//!
//! A deploy validates, pre-initialises (a Wizer snapshot, if the component asks for one),
//! compiles (or finds the artifact), links and checks the code before anything changes. Then
//! it writes the wasm, has the coordinator commit the function's next record (the commit
//! point, see [`super::coordinator`]) and applies it here: the registry entry is swapped
//! under the write lock. Any error before the commit leaves the previous version serving; a
//! change a host cannot serve (a split over missing versions, a canary on another route) is
//! refused before it. A rollback or a split change is a commit of the same versions with
//! another split (see [`super::versions`]). This host's own changes run one at a time, commit
//! and apply together (`Platform::changes`), so a single host's records and registry move in
//! step; a cluster node also applies changes other nodes committed (its mirror).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::coordinator::Change;
use super::error::DeployError;
use super::versions::{VersionSet, VersionsRecord};
use super::{Platform, garbage};
use crate::datadir::remove_durable;
use crate::engine::artifact::{CompileError, Compiled, Kind, Origin, detect_kind, sha256_hex};
use crate::engine::{ThawEngine, snapshot};
use crate::function::{Code, Function, FunctionRecord, LoadFor, Loaded};
use crate::source::{Bundle, PrepareError, SourceCode};
use crate::spec::FunctionSpec;
use crate::traffic::TrafficSplit;

/// Time a function's init function may run at deploy: generous, because it replaces start-up
/// work that would otherwise run per request, but bounded, because a deploy must end.
const INIT_BUDGET: Duration = Duration::from_secs(60);

/// A deploy's new version before it is committed: loaded, its generation not chosen yet.
struct PreparedCode {
    function: Function,
    origin: Origin,
    /// The upload and the code compiled from it (a snapshot, or the upload again), each
    /// under its digest.
    code: [(String, Bytes); 2],
}

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
    /// With a canary: keep versions that were reachable only by pinning (0%) in the new
    /// split; by default the canary replaces them.
    pub keep_pinned: bool,
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
        self.deploy_with_assets(name, spec, wasm, None, options)
            .await
    }

    /// [`Platform::deploy_with`] with the function's static assets (a tar archive, see
    /// [`crate::assets`]), stored content-addressed beside the wasm.
    pub async fn deploy_with_assets(
        self: &Arc<Self>,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
        assets: Option<Bytes>,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        let result = self.try_deploy(name, spec, wasm, assets, options).await;
        let outcome = usize::from(result.is_err());
        self.deploys[outcome].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_deploy(
        self: &Arc<Self>,
        name: &str,
        mut spec: FunctionSpec,
        wasm: Bytes,
        assets: Option<Bytes>,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        let config = self.validate(name, &spec, &wasm, options).await?;
        // `claim` keeps the new code from the collector until the record that needs it is
        // committed (or this deploy fails).
        let mut claim = self.garbage.claims.claim();
        let only = *wasm == *thaw_spec::assets::ASSETS_ONLY_WASM;
        let assets = self
            .store_assets(&mut spec, assets, only, &mut claim)
            .await?;
        let prepared = self.prepare_code(name, spec, wasm, &mut claim).await?;
        let mut function = prepared.function;
        function.config = config;
        function.assets = assets;
        function.attach_keyvalue(self.keyvalue.as_ref());
        function.attach_sql(Some(&self.sql));
        function.attach_postgres(Some(&self.postgres));
        function.attach_redis(Some(&self.redis));
        let deployed = self
            .commit_deploy(function, options, &prepared.code)
            .await?;
        if prepared.origin == Origin::FastTier {
            self.tier_ups_pending.fetch_add(1, Ordering::Relaxed);
            let [_, (_, code_wasm)] = prepared.code;
            tokio::spawn(self.clone().tier_up(deployed.version.clone(), code_wasm));
        }
        Ok(deployed)
    }

    /// A deploy's static assets: the bundle checked (a 400 naming what is wrong), stored by
    /// its sha256 and claimed, its digest written into the spec, and its index built.
    async fn store_assets(
        &self,
        spec: &mut FunctionSpec,
        bundle: Option<Bytes>,
        only: bool,
        claim: &mut garbage::Claim,
    ) -> Result<Option<crate::assets::FunctionAssets>, DeployError> {
        let bundle = match (&spec.assets, bundle) {
            (None, None) => return Ok(None),
            (Some(assets), _) if assets.digest.is_some() => {
                return Err(DeployError::BadRequest(
                    "assets.digest is the host's to set: send the files as the `assets` part"
                        .into(),
                ));
            }
            (Some(_), None) => {
                return Err(DeployError::BadRequest(
                    "the spec has `assets` but the deploy carries no files (the `assets` part)"
                        .into(),
                ));
            }
            (_, Some(bundle)) => bundle,
        };
        let (digest, index) = {
            let bundle = bundle.clone();
            tokio::task::spawn_blocking(move || {
                let digest = sha256_hex(&bundle);
                let index = crate::assets::shared(&digest, || {
                    crate::assets::AssetIndex::from_bundle(bundle)
                })
                .map_err(|e| DeployError::BadRequest(format!("{e:#}")))?;
                Ok::<_, DeployError>((digest, index))
            })
            .await
            .map_err(|e| DeployError::Internal(anyhow::anyhow!("assets task: {e}")))??
        };
        claim.add(&digest);
        if !self.has_wasm(&digest) {
            let (data, path) = (self.data.clone(), self.data.wasm(&digest));
            tokio::task::spawn_blocking(move || data.write_atomic(&path, &bundle))
                .await
                .map_err(|e| DeployError::Internal(anyhow::anyhow!("assets task: {e}")))?
                .map_err(DeployError::Internal)?;
        }
        let settings = spec.assets.get_or_insert_with(Default::default);
        settings.digest = Some(digest);
        Ok(Some(crate::assets::FunctionAssets {
            index,
            spa: settings.spa,
            run_function_first: settings.run_function_first,
            only,
        }))
    }

    /// A deploy's first phase: everything that can be checked before any work, so that a
    /// refusal is immediate. Returns the function's resolved configuration.
    async fn validate(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: &[u8],
        options: DeployOptions,
    ) -> Result<Arc<crate::guest::config::Resolved>, DeployError> {
        if options.canary.is_some_and(|p| p > 100) {
            return Err(DeployError::BadRequest(
                "a canary share is a percent, 0 to 100".into(),
            ));
        }
        spec.validate(name, self.engine().options().max_memory_bytes)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        self.check_host_support(spec)
            .map_err(DeployError::BadRequest)?;
        // A secret the host cannot resolve is the deployer's to fix.
        let config = self
            .secrets
            .resolve_off_workers(spec)
            .await
            .map_err(DeployError::BadRequest)?;
        detect_kind(wasm).map_err(|e| DeployError::InvalidModule(e.into()))?;
        if *wasm == *thaw_spec::assets::ASSETS_ONLY_WASM {
            check_assets_only(spec).map_err(DeployError::BadRequest)?;
        }
        // Checked again when the record commits; here so that a taken route costs no compile.
        self.registry
            .check_route(name, &spec.route_or_default(name))?;
        Ok(Arc::new(config))
    }

    /// A deploy's second phase: the code, pre-initialised (a Wizer snapshot, if the
    /// component asks for one), compiled (or found in the artifact cache), linked and
    /// checked against the function's limits. Nothing is committed yet; the digests of the
    /// code are added to `claim`.
    async fn prepare_code(
        &self,
        name: &str,
        spec: FunctionSpec,
        wasm: Bytes,
        claim: &mut garbage::Claim,
    ) -> Result<PreparedCode, DeployError> {
        let kind = detect_kind(&wasm).map_err(|e| DeployError::InvalidModule(e.into()))?;
        if kind == Kind::Source {
            return self.prepare_source(name, spec, wasm, claim).await;
        }
        let digest = sha256_hex(&wasm);
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
            engine: None,
            wasm_bytes: wasm.len() as u64,
            spec,
            generation: 0,
            deployed_at_ms: now_ms(),
        };
        check_initial_memory(&compiled, &record.spec.limits.resolve(&self.defaults))?;
        let linking = match (&self.fast, origin) {
            (Some(fast), Origin::FastTier) => fast,
            _ => self.loader.linking(),
        };
        let code = linking
            .link(compiled)
            .map_err(|e| DeployError::InvalidModule(e.to_string()))?;
        Ok(PreparedCode {
            function: Function::loaded_with(record, &self.defaults, code, origin),
            origin,
            code: [(digest, wasm), (code_digest, code_wasm)],
        })
    }

    /// [`Platform::prepare_code`] for a function deployed as source: its bundle checked, its
    /// program prepared and loaded by the language's current engine in a validation instance
    /// (under the function's limits and timeout), so that bad source is refused here with the
    /// engine's message. Nothing is compiled: the engine is, once per host.
    async fn prepare_source(
        &self,
        name: &str,
        spec: FunctionSpec,
        bundle_bytes: Bytes,
        claim: &mut garbage::Claim,
    ) -> Result<PreparedCode, DeployError> {
        let bundle = Bundle::parse(&bundle_bytes).map_err(|e| {
            if bundle_bytes.len() > thaw_spec::source::MAX_BUNDLE_BYTES {
                DeployError::TooLarge(e)
            } else {
                DeployError::BadRequest(e)
            }
        })?;
        let engine_digest = self
            .loader
            .engines()
            .current(bundle.language)
            .map_err(DeployError::BadRequest)?
            .to_owned();
        let engine = {
            let (loader, digest) = (self.loader.clone(), engine_digest.clone());
            tokio::task::spawn_blocking(move || loader.engine(&digest))
                .await
                .map_err(|e| DeployError::Internal(anyhow::anyhow!("engine load task: {e}")))?
                .map_err(DeployError::Internal)?
        };
        let digest = sha256_hex(&bundle_bytes);
        claim.add(&digest);
        let mut record = FunctionRecord {
            name: name.to_owned(),
            digest: digest.clone(),
            code_digest: None,
            kind: Kind::Source,
            engine: Some(engine_digest),
            wasm_bytes: bundle_bytes.len() as u64,
            spec,
            generation: 0,
            deployed_at_ms: now_ms(),
        };
        let probe = Function::unloaded(record.clone(), &self.defaults);
        let slot = self.instance_slot("evaluating the source").await?;
        let mut store = crate::guest::proxy_store(engine.pre.engine(), &probe.guest());
        // Parsing gets the deploy's budget; the top level then gets the function's timeout.
        crate::guest::arm_deadline(&mut store, ThawEngine::ticks_for(INIT_BUDGET));
        let program = engine
            .prepare(&mut store, &bundle, probe.deadline_ticks)
            .await
            .map_err(|e| match e {
                PrepareError::Refused(message) => DeployError::BadRequest(message),
                PrepareError::Trap(trap)
                    if trap.downcast_ref::<wasmtime::Trap>()
                        == Some(&wasmtime::Trap::Interrupt) =>
                {
                    DeployError::BadRequest(format!(
                        "{}'s top-level code did not finish within the function's timeout ({} ms)",
                        bundle.entry,
                        probe.limits.timeout.as_millis()
                    ))
                }
                // The guest's fault (a trap, its memory limit): the deployer's to fix.
                PrepareError::Trap(trap)
                    if trap.downcast_ref::<wasmtime::Trap>().is_some()
                        || trap
                            .downcast_ref::<crate::guest::limiter::MemoryLimitHit>()
                            .is_some() =>
                {
                    DeployError::BadRequest(format!(
                        "the {} engine failed evaluating {}: {trap:#}",
                        bundle.language, bundle.entry
                    ))
                }
                // The host's (no slot in the pool, an engine fault): not the source's.
                PrepareError::Trap(trap) => DeployError::Internal(anyhow::anyhow!(
                    "evaluating {} on the {} engine: {trap:#}",
                    bundle.entry,
                    bundle.language
                )),
            })?;
        drop(store);
        drop(slot);
        let program_digest = sha256_hex(program.as_bytes());
        claim.add(&program_digest);
        record.code_digest = Some(program_digest.clone());
        let code = Code::Source(SourceCode {
            engine,
            program: program.as_str().into(),
        });
        Ok(PreparedCode {
            function: Function::loaded_with(record, &self.defaults, code, Origin::Artifact),
            origin: Origin::Artifact,
            code: [
                (digest, bundle_bytes),
                (program_digest, Bytes::from(program)),
            ],
        })
    }

    /// A deploy's last phase (see [`super::coordinator`]): the code on disk and published
    /// first, so that whoever sees the record can load it; then the record committed by the
    /// coordinator (the commit point); then applied here, as every cluster node applies it.
    async fn commit_deploy(
        self: &Arc<Self>,
        function: Function,
        options: DeployOptions,
        code: &[(String, Bytes); 2],
    ) -> Result<Deployed, DeployError> {
        for (digest, bytes) in code {
            self.write_wasm(digest, bytes)
                .map_err(DeployError::Internal)?;
        }
        self.coordinator().publish_code(&function.record).await?;
        let template = function.record.clone();
        let keep = self.keep_versions;
        let mut replaced = false;
        let defaults = &self.defaults;
        let mut change = |current: Option<&VersionsRecord>| {
            replaced = current.is_some();
            let next = next_record(current, template.clone(), options, keep)?;
            // Refused here, before anything is committed, if no host could serve it (a
            // canary on another route than the versions it shares traffic with).
            servable(&next, defaults)?;
            Ok(Some(next))
        };
        let (set, revision, version) = self
            .commit_and_apply(&template.name, &mut change, Some(function))
            .await?;
        let function = set.version(version).cloned().ok_or_else(|| {
            DeployError::Superseded(format!(
                "v{version} is committed, but a newer change replaced it before this host \
                 applied it; see the function's versions"
            ))
        })?;
        tracing::info!(
            function = %function.name,
            route = %function.route,
            kind = %function.record.kind,
            digest = %&function.record.digest[..12],
            version,
            revision,
            canary = options.canary,
            "deployed"
        );
        Ok(Deployed {
            version: function,
            set,
            replaced,
        })
    }

    /// Stores wasm under its digest, unless it is there already. The caller computed the
    /// digest from these bytes.
    fn write_wasm(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.data.wasm(digest);
        if !path.exists() {
            self.data.write_atomic(&path, bytes)?;
        }
        Ok(())
    }

    /// Stores wasm fetched from elsewhere (a cluster peer) under `digest`, after checking
    /// that its sha256 is that digest: bytes that do not match are refused, and nothing is
    /// written. Blocking (hashing and an fsync).
    pub fn store_wasm(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let actual = sha256_hex(bytes);
        anyhow::ensure!(
            actual == digest,
            "the bytes' sha256 is {actual}, not the digest asked for"
        );
        self.write_wasm(digest, bytes)
    }

    /// Whether the wasm of `digest` is on disk here.
    pub fn has_wasm(&self, digest: &str) -> bool {
        self.data.wasm(digest).is_file()
    }

    /// Makes this host serve `record`, the shared store's record of a function at
    /// `revision` (see [`super::coordinator`]): versions this host has are kept as they are
    /// (code, warm instances, counters), others are built from their records (their wasm
    /// must be on disk), and every version the split gives traffic is loaded before the
    /// swap, so a split moves here only to versions this host can serve. `fresh` is a
    /// deploy's new version, already compiled. A record older than the one applied already
    /// changes nothing. Returns what serves now.
    pub async fn apply_record(
        &self,
        record: VersionsRecord,
        revision: u64,
        fresh: Option<Function>,
    ) -> Result<Arc<VersionSet>, DeployError> {
        let name = record.name.clone();
        if self.applied_revision(&name) >= revision {
            return self.registry.get(&name).ok_or_else(|| {
                DeployError::NotFound(format!("{name} was removed by a later change"))
            });
        }
        let set = self.version_set_of(record, fresh)?;
        self.registry.check_route(&name, &set.route)?;
        self.load_serving(&set).await?;
        let _guard = self.write_lock.lock().await;
        let current = self.registry.get(&name);
        if self.applied_revision(&name) >= revision {
            return current.ok_or_else(|| {
                DeployError::NotFound(format!("{name} was removed by a later change"))
            });
        }
        let dropped = current.map_or_else(Vec::new, |current| {
            current
                .versions()
                .iter()
                .filter(|have| !set.versions().iter().any(|kept| Arc::ptr_eq(kept, have)))
                .cloned()
                .collect()
        });
        // `current` is consumed: the dropped versions are held by `dropped` alone, which
        // `commit` lets go before it collects.
        let set = self.commit(set, dropped).await?;
        self.set_applied_revision(&name, revision);
        tracing::debug!(function = %name, revision, traffic = %set.traffic(), "applied a committed record");
        Ok(set)
    }

    /// The versions of `record` as a set: the versions this host serves already are kept as
    /// they are (code, warm instances, counters), `fresh` (a deploy's new version) is used as
    /// it is, and the others are built from their records, code not loaded.
    fn version_set_of(
        &self,
        record: VersionsRecord,
        fresh: Option<Function>,
    ) -> Result<VersionSet, DeployError> {
        let current = self.registry.get(&record.name);
        let log = current
            .as_ref()
            .map_or_else(Arc::default, |c| c.primary().log.clone());
        let mut fresh = fresh.map(|mut f| {
            f.log = log.clone();
            f
        });
        let versions = record
            .versions
            .iter()
            .map(|wanted| {
                if let Some(f) = fresh.take_if(|f| f.record == *wanted) {
                    return Arc::new(f);
                }
                match current.as_ref().and_then(|c| c.version(wanted.generation)) {
                    Some(have) if have.record == *wanted => have.clone(),
                    _ => self.unloaded_version(wanted.clone(), &log),
                }
            })
            .collect();
        Ok(VersionSet::new(versions, record.traffic)?)
    }

    /// Loads every version `set`'s split gives traffic (from its artifact; a compile only
    /// if that is missing), so that no request pays for it and a version that cannot load
    /// is refused before it gets traffic.
    async fn load_serving(&self, set: &VersionSet) -> Result<(), DeployError> {
        for share in set.traffic().shares().iter().filter(|s| s.percent > 0) {
            let version = set.version(share.version).expect("checked by the set");
            self.loader
                .ensure_loaded(version, LoadFor::Serving)
                .await
                .map_err(|e| {
                    DeployError::Internal(
                        e.context(format!("loading {} v{}", set.name, share.version)),
                    )
                })?;
        }
        Ok(())
    }

    /// Removes function `name` here because the shared store removed it at `revision`
    /// (see [`Platform::apply_record`]). Returns whether it was here.
    pub async fn apply_removal(&self, name: &str, revision: u64) -> anyhow::Result<bool> {
        let _guard = self.write_lock.lock().await;
        if self.applied_revision(name) >= revision {
            return Ok(false);
        }
        let removed = self.remove_locked(name).await?;
        self.set_applied_revision(name, revision);
        Ok(removed)
    }

    /// Keeps the collector away from `digests` while the claim lives (code fetched for a
    /// record not committed here yet).
    pub fn claim_code<'a>(&self, digests: impl Iterator<Item = &'a str>) -> garbage::Claim {
        let mut claim = self.garbage.claims.claim();
        for digest in digests {
            claim.add(digest);
        }
        claim
    }

    /// The highest shared-store revision applied here (0: none).
    pub fn max_applied_revision(&self) -> u64 {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.values().copied().max().unwrap_or(0)
    }

    /// Forgets which revisions were applied: the next record of every function is applied
    /// whatever its revision (the shared store is a new or restored one, whose revisions
    /// started again).
    pub fn forget_applied_revisions(&self) {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn applied_revision(&self, name: &str) -> u64 {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.get(name).copied().unwrap_or(0)
    }

    fn set_applied_revision(&self, name: &str, revision: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let entry = applied.entry(name.to_owned()).or_default();
        *entry = (*entry).max(revision);
    }

    /// Writes `record` into the data directory, unless it holds that already: a single
    /// host's coordinator wrote it when it committed; a cluster node keeps a copy of etcd's
    /// records, so that it serves them across restarts, even with etcd down.
    fn mirror_record(&self, record: &VersionsRecord) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(record)?;
        let path = self.data.function_record(&record.name);
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == json) {
            return Ok(());
        }
        self.data.write_atomic(&path, &json)
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
        self.mirror_record(&set.record())
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
        self.change_traffic(name, |_| Ok(traffic.clone())).await
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
        choose: impl Fn(&VersionSet) -> Result<TrafficSplit, DeployError> + Send + Sync,
    ) -> Result<Arc<VersionSet>, DeployError> {
        // Checked here first: the versions the new split gives traffic must load on this
        // host before the change is committed (a version whose code no host has any more is
        // refused, not committed).
        let local = self.versions(name)?;
        let candidate = local.with_traffic(choose(&local)?)?;
        self.load_serving(&candidate).await?;
        drop(candidate);
        // Chosen again from the committed record, which may be ahead of this host's.
        let defaults = &self.defaults;
        let mut change = |current: Option<&VersionsRecord>| {
            let current = current
                .ok_or_else(|| DeployError::NotFound(format!("no function named {name:?}")))?;
            let set = unloaded_set(current, defaults)?;
            let set = set.with_traffic(choose(&set)?)?;
            Ok(Some(set.record()))
        };
        let (set, revision, _) = self.commit_and_apply(name, &mut change, None).await?;
        tracing::info!(function = name, revision, traffic = %set.traffic(), "traffic split changed");
        Ok(set)
    }

    /// Commits `change` to function `name`'s record through the coordinator, then applies
    /// the committed record here (see [`super::coordinator`]), one change of this host's at
    /// a time. `fresh` is a deploy's new version, which takes the committed record's newest
    /// generation. Returns what serves now, the commit's revision and that generation.
    async fn commit_and_apply(
        &self,
        name: &str,
        change: &mut Change<'_>,
        fresh: Option<Function>,
    ) -> Result<(Arc<VersionSet>, u64, u64), DeployError> {
        let coordinator = self.coordinator();
        let _change = self.changes.lock().await;
        let (record, revision) = coordinator.commit(name, change).await?;
        let record = record.ok_or_else(|| {
            DeployError::Internal(anyhow::anyhow!("the coordinator committed no record"))
        })?;
        let newest = record.versions.last().map_or(1, |v| v.generation);
        let fresh = fresh.map(|mut function| {
            function.set_generation(newest);
            function
        });
        // The record may keep versions this host has not fetched yet (a cluster node's
        // mirror lags).
        let _claim = self.claim_code(record.digests());
        if let Err(e) = coordinator.fetch_code(&record).await {
            tracing::warn!(function = name, "{e}");
        }
        let set = self
            .apply_record(record, revision, fresh)
            .await
            .map_err(|e| committed_but(name, e))?;
        Ok((set, revision, newest))
    }

    /// Pre-initialises a component (see [`crate::snapshot`]) on a blocking thread: Wizer
    /// compiles an instrumented copy of the component, which takes as long as a deploy's
    /// compile and must not stall the reactor.
    /// An instance slot for a deploy's own instance (a snapshot's init, a source function's
    /// validation): it runs in an instance like any other, so it takes a slot through
    /// admission, or the pooling allocator would refuse an admitted request (or this deploy)
    /// for want of one.
    async fn instance_slot(
        &self,
        needed_for: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, DeployError> {
        tokio::time::timeout(
            self.invoke.queue_timeout,
            self.invoke.admission.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            DeployError::Busy(format!(
                "every instance slot stayed busy for {} ms; {needed_for} needs one: retry when \
                 the host is less loaded, or raise --instance-slots",
                self.invoke.queue_timeout.as_millis()
            ))
        })?
        .map_err(|_| DeployError::Internal(anyhow::anyhow!("admission semaphore closed")))
    }

    async fn snapshot(&self, spec: &FunctionSpec, wasm: Bytes) -> Result<Bytes, DeployError> {
        let limits = spec.limits.resolve(&self.defaults);
        // On the engine the component compiles on, or the other if that one refuses it.
        let engines = self.cache().engines().clone();
        let permit = self.instance_slot("pre-initialising the function").await?;
        let started = Instant::now();
        let snapshot = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(snapshot::snapshot_for(
                &engines,
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
            let loaded = Loaded {
                code,
                origin,
                image: None,
            };
            Ok::<_, anyhow::Error>(self.swap_code(&fast, loaded).await)
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

    /// Serves `loaded` in place of `old`'s code, keeping everything of the version (a
    /// tier-up: from the fast tier to Cranelift, from a source function's engine to its
    /// snapshot). The record does not change, so nothing is persisted. Returns false if
    /// `old` is no longer in its set (replaced or removed meanwhile).
    pub(super) async fn swap_code(&self, old: &Arc<Function>, loaded: Loaded) -> bool {
        let _guard = self.write_lock.lock().await;
        let new = Function::unloaded(old.record.clone(), &self.defaults).with_state_of(old);
        new.set_loaded(loaded);
        let Some(set) = self
            .registry
            .get(&old.name)
            .and_then(|current| current.with_replaced(old, Arc::new(new)))
        else {
            return false;
        };
        self.registry.replace_all([Arc::new(set)]) == 1
    }

    /// Removes function `name`; returns whether it existed. Requests already running on it
    /// finish (their code is mapped; removing the files does not touch it). Its wasm and
    /// artifact are removed unless another function shares them.
    pub async fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let mut existed = false;
        let mut change = |current: Option<&VersionsRecord>| {
            existed = current.is_some();
            Ok(None)
        };
        let _change = self.changes.lock().await;
        let (_, revision) = self.coordinator().commit(name, &mut change).await?;
        if existed {
            self.apply_removal(name, revision)
                .await
                .map_err(|e| committed_but(name, DeployError::Internal(e)))?;
        }
        Ok(existed)
    }

    /// [`Platform::remove`] here only; the caller holds the write lock.
    async fn remove_locked(&self, name: &str) -> anyhow::Result<bool> {
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
        self.postgres.remove_function(name);
        self.redis.remove_function(name);
        let sql = self.sql.clone();
        let function = name.to_owned();
        let removed = tokio::task::spawn_blocking(move || sql.remove_function(&function)).await;
        if let Ok(Err(e)) = removed {
            tracing::error!(
                function = name,
                "its SQL databases could not be removed: {e}"
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

/// A failure to apply, here, a change of function `name` already committed: said so, so
/// that the deployer does not make it again (a cluster node retries and the other nodes
/// serve it; a single host serves it from its next start).
fn committed_but(name: &str, e: DeployError) -> DeployError {
    DeployError::Internal(anyhow::anyhow!(
        "the change of {name} is committed, but this host could not apply it yet ({e}); do \
         not make it again: see the function's versions"
    ))
}

/// `record`'s versions as a set, code not loaded: what checks a record the way a host that
/// serves it would (the split names kept versions, versions sharing traffic share a route).
fn unloaded_set(
    record: &VersionsRecord,
    defaults: &crate::spec::LimitDefaults,
) -> Result<VersionSet, DeployError> {
    let versions = record
        .versions
        .iter()
        .map(|v| Arc::new(Function::unloaded(v.clone(), defaults)))
        .collect();
    Ok(VersionSet::new(versions, record.traffic.clone())?)
}

/// Whether a host could serve `record` (see [`unloaded_set`]).
fn servable(
    record: &VersionsRecord,
    defaults: &crate::spec::LimitDefaults,
) -> Result<(), DeployError> {
    unloaded_set(record, defaults).map(drop)
}

/// A function's next record: `current` (`None`: a first deploy) with `version` added as the
/// newest version (its generation is chosen here), taking all traffic or `canary` percent,
/// and keeping at most `keep` versions (see [`VersionsRecord::with_version`]).
fn next_record(
    current: Option<&VersionsRecord>,
    version: FunctionRecord,
    options: DeployOptions,
    keep: usize,
) -> Result<VersionsRecord, DeployError> {
    let Some(current) = current else {
        return Ok(VersionsRecord::first(version));
    };
    let generation = current.next_generation();
    let traffic = match options.canary {
        Some(percent) => current
            .traffic
            .with_canary(generation, percent, options.keep_pinned)
            .map_err(|e| DeployError::BadRequest(e.to_string()))?,
        None => TrafficSplit::single(generation),
    };
    let mut version = version;
    version.generation = generation;
    Ok(current.with_version(version, traffic, keep))
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

/// Unix time now, milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a function of static assets only (deployed with no code) may not ask for: anything
/// that would run its code, which is a placeholder ([`thaw_spec::assets::ASSETS_ONLY_WASM`]).
fn check_assets_only(spec: &FunctionSpec) -> Result<(), String> {
    let Some(assets) = &spec.assets else {
        return Err("a deploy with no code must carry assets (the `assets` part)".into());
    };
    let refused = [
        (assets.run_function_first, "assets.run_function_first"),
        (!spec.schedule.is_empty(), "schedule"),
        (spec.trigger.is_some(), "trigger"),
        (spec.async_policy.is_some(), "async"),
        (spec.reuse.is_some(), "reuse"),
    ];
    match refused.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(format!(
            "{field}: a function of static assets only has no code to run; deploy a function \
             with them"
        )),
        None => Ok(()),
    }
}
