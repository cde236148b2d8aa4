//! A deployed function: its record on disk and its loaded, linked, ready-to-instantiate form,
//! with what belongs to it at run time: its warm pool ([`pool`]), its concurrency gate and
//! limit documentation ([`limits`]), and its start statistics ([`timing`]).
//!
//! This layer knows nothing of the data directory, the registry or HTTP: a [`Function`] is
//! built from a record and code, and [`Loader`] turns a record into code through the
//! artifact cache. The request path ([`crate::invoke`]) and the control plane
//! ([`crate::control`]) both sit above it.

pub mod cost;
pub mod limits;
pub mod pool;
pub mod service;
pub mod timing;
pub mod trim;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use wasmtime::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::api::{FunctionInfo, Percentiles};
use crate::engine::artifact::{ArtifactCache, Compiled, Kind, Origin};
use crate::engine::{HostEngines, ThawEngine};
use crate::guest::host::{CgiHost, ProxyHost};
use crate::guest::limit::LimitHits;
use crate::guest::log::FunctionLog;
use crate::guest::{GuestConfig, Linkers};
use crate::outbound::AllowList;
use crate::source::{Engines, LanguageEngine, SourceCode};
use crate::spec::{FunctionSpec, LimitDefaults, Limits, Reuse, ReuseSpec};
use crate::traffic::TrafficSplit;
use limits::ConcurrencyGate;
use pool::WarmPool;
use timing::{Histogram, StartKind, StartStats};

/// What the data directory keeps about a function (`functions/<name>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// sha256 of the wasm, hex; names the stored wasm and the artifact.
    pub digest: String,
    /// Component or CGI module.
    pub kind: Kind,
    /// Size of the wasm in bytes.
    pub wasm_bytes: u64,
    /// sha256 of the code actually compiled, when it differs from the upload (a
    /// pre-initialisation snapshot); names its stored wasm and its artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_digest: Option<String>,
    /// A source function's engine: the sha256 of the language engine's wasm it was deployed
    /// with (see [`crate::source`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// What the user asked for.
    pub spec: FunctionSpec,
    /// 1 for the first deploy of this name, +1 for every redeploy.
    pub generation: u64,
    /// Unix time of the deploy, milliseconds.
    pub deployed_at_ms: u64,
}

impl FunctionRecord {
    /// The digest of the code that is compiled and cached.
    pub fn code_digest(&self) -> &str {
        self.code_digest.as_deref().unwrap_or(&self.digest)
    }

    /// A source version's snapshot key ([`crate::source::snapshot::key`]); `None` for any
    /// other kind.
    pub fn snapshot_key(&self) -> Option<String> {
        let engine = self
            .engine
            .as_deref()
            .filter(|_| self.kind == Kind::Source)?;
        Some(crate::source::snapshot::key(
            engine,
            self.code_digest(),
            &self.spec.env,
            self.spec.limits.memory_mib,
        ))
    }
}

/// The pre-instantiated form of a function's code: everything but the store.
///
/// A function's code passes three stages, each its own two-way type on purpose: [`Kind`]
/// says what the bytes are (decided from their header, persisted in the record, no wasmtime
/// needed), [`Compiled`] is what the artifact cache holds (a `Component` or a `Module`,
/// engine-specific), and `Code` is that linked against thaw's WASI (a `ProxyPre` or an
/// `InstancePre`, typed on each kind's host state). Folding them together would make the
/// record depend on wasmtime, or the cache on the linkers.
pub enum Code {
    /// A `wasi:http` component, type-checked against the proxy world.
    Proxy(ProxyPre<ProxyHost>),
    /// A function deployed as source: its language's engine (a `wasi:http` proxy shared by
    /// every function on it) and the program each instance loads before its first request.
    Source(SourceCode),
    /// A WASIp3 `wasi:http` component: exports the async `wasi:http/handler@0.3.0`.
    Service(ServicePre<ProxyHost>),
    /// A WASI preview1 command, run CGI-style.
    Cgi(InstancePre<CgiHost>),
}

/// Code served as a `wasi:http` p2 proxy: a component, or a source function on its engine.
#[derive(Clone, Copy)]
pub enum P2Code<'a> {
    /// A component's own code.
    Component(&'a ProxyPre<ProxyHost>),
    /// A source function: its engine, instantiated, then its program loaded.
    Source(&'a SourceCode),
}

impl P2Code<'_> {
    /// The engine the code was compiled with (a store for it must be of that engine).
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            P2Code::Component(pre) => pre.engine(),
            P2Code::Source(source) => source.engine.pre.engine(),
        }
    }

    /// A fresh instance, ready for a request.
    pub async fn instantiate(
        self,
        store: &mut wasmtime::Store<ProxyHost>,
    ) -> wasmtime::Result<wasmtime_wasi_http::p2::bindings::Proxy> {
        match self {
            P2Code::Component(pre) => pre.instantiate_async(store).await,
            P2Code::Source(source) => source.instantiate(store).await,
        }
    }
}

impl Code {
    /// This code as a p2 proxy, if it is served as one.
    pub fn p2(&self) -> Option<P2Code<'_>> {
        match self {
            Code::Proxy(pre) => Some(P2Code::Component(pre)),
            Code::Source(source) => Some(P2Code::Source(source)),
            Code::Service(_) | Code::Cgi(_) => None,
        }
    }
}

/// Why a compiled function could not be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// An import thaw does not provide (the message names it).
    #[error("{0}")]
    Imports(String),
    /// The component is not a `wasi:http` proxy.
    #[error(
        "the component exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3 (is it built for the wasi:http proxy or service world?): {0}"
    )]
    NotAProxy(String),
    /// The module is not a WASI command.
    #[error(
        "a preview1 module must be a WASI command exporting `_start` (a `bin` built for wasm32-wasip1)"
    )]
    NotACommand,
}

/// Request counters of one function (since it was loaded).
#[derive(Debug, Default)]
pub struct FunctionStats {
    /// Requests that reached the function.
    pub requests: AtomicU64,
    /// Requests answered with an error produced by thaw (trap, timeout, limit, bad output).
    pub failures: AtomicU64,
    /// Limit hits, by limit; shared with the function's stores (the outbound hook counts its
    /// own), hence its own `Arc`.
    pub limit_hits: Arc<LimitHits>,
    /// Responses by status class: `responses[0]` counts 1xx, ..., `responses[4]` 5xx.
    pub responses: [AtomicU64; 5],
    /// From the request's arrival at the function to its response head.
    pub duration: Histogram,
    /// Outbound requests the guest sent (allowed ones; denied ones are limit hits). Shared
    /// with the stores' outbound hook.
    pub outbound_requests: Arc<AtomicU64>,
    /// Requests its static assets answered (no guest started; not in `requests`).
    pub asset_responses: AtomicU64,
}

impl FunctionStats {
    /// Counts a response with `status`, `elapsed` after the request arrived.
    pub fn record_response(&self, status: http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.duration.record(elapsed);
    }
}

/// What the idle task did or asks for, for one function (see [`Function::look_idle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Nothing: in use, not idle long enough, or done already.
    No,
    /// Its code pages were given back.
    Trimmed,
    /// Idle past the unload time: its code should be unloaded.
    Unload,
}

/// Loaded code: linked and ready to instantiate.
pub struct Loaded {
    /// The pre-instantiated code.
    pub code: Code,
    /// Whether it came from an artifact or a compilation.
    pub origin: Origin,
    /// The artifact's mapping, when the code runs from one: trimmed while the function is
    /// idle (see [`trim`]).
    pub image: Option<trim::Image>,
}

/// A deployed function, shared as `Arc<Function>` by the registry and the requests running on
/// it, so a redeploy never pulls code out from under a request.
///
/// Its code is loaded lazily: a host with thousands of functions registers them all from
/// their records in milliseconds and deserializes each artifact when it is first needed (or
/// in the background after start-up). The `OnceCell` makes sure a function is never loaded
/// twice concurrently: requests that arrive during a load wait for it.
pub struct Function {
    /// The name, shared with every store's log stream.
    pub name: Arc<str>,
    /// The persisted record.
    pub record: FunctionRecord,
    /// The route prefix.
    pub route: String,
    /// Limits resolved against the host defaults.
    pub limits: Limits,
    /// Opt-in instance reuse.
    pub reuse: Option<Reuse>,
    /// Environment variables, in the form WASI takes them.
    pub env: Vec<(String, String)>,
    /// Epoch ticks for the timeout.
    pub deadline_ticks: u64,
    loaded: tokio::sync::OnceCell<Loaded>,
    /// How long it has been idle, as the idle task sees it (see [`trim::IdleWatch`]).
    idle: trim::IdleWatch,
    /// Warm instances (components only).
    pub pool: WarmPool,
    /// Request counters; shared by the copies of one version (a tier-up, an unload), so
    /// they count the version, not one loading of its code.
    pub stats: Arc<FunctionStats>,
    /// The concurrency limit, if the function has one; shared by the version's copies (a
    /// tier-up, an unload), so a response still streaming from the old copy holds its
    /// place against the new one's requests.
    pub gate: Option<Arc<ConcurrencyGate>>,
    /// Its rate limits (none unless its limits set a rate); shared by the version's copies
    /// (a tier-up, a reload), so they share buckets.
    pub rate: Arc<crate::rate::RateLimits>,
    /// Its static assets, if it has any (see [`crate::assets`]).
    pub assets: Option<crate::assets::FunctionAssets>,
    /// Parsed outbound allow-list.
    pub outbound: Arc<AllowList>,
    /// How requests got their instances, and how long that and the handler took; shared
    /// like `stats`.
    pub starts: Arc<StartStats>,
    /// What its requests cost (guest CPU, peak memory); shared like `stats`.
    pub cost: Arc<cost::CostStats>,
    /// What the guest printed, recent lines; shared with the function's earlier and later
    /// versions (a redeploy hands it on).
    pub log: Arc<FunctionLog>,
    /// `v<generation>`, ready for the `x-thaw-version` response header (cloning it is a
    /// reference count, not an allocation).
    pub version_header: http::HeaderValue,
    /// What `wasi:config/store` answers: the spec's plain values until the control plane
    /// resolves its secrets (see [`crate::guest::config`]).
    pub config: Arc<crate::guest::config::Resolved>,
    /// Its `wasi:keyvalue` access, given by the control plane (`None`: no store).
    pub keyvalue: Option<crate::guest::keyvalue::GuestKeyValue>,
    /// Its `spin:sqlite` access, given by the control plane (`None`: no SQL).
    pub sql: Option<crate::guest::sqlite::GuestSql>,
    /// Its `spin:postgres` access, given by the control plane (`None`: no Postgres).
    pub postgres: Option<crate::guest::postgres::GuestPostgres>,
    /// Its `spin:redis` access, given by the control plane (`None`: no Redis).
    pub redis: Option<crate::guest::redis::GuestRedis>,
    /// A WASIp3 function's workers, made by its first request (see [`service`]).
    pub service: std::sync::OnceLock<service::ServiceHandler>,
    /// How busy it has been, for a source function's tier-up to its snapshot.
    pub heat: crate::source::snapshot::Heat,
    /// Its code was loaded here and unloaded for idleness (see [`Function::look_idle`]): the
    /// host has shown it can load it, and its next request does so again.
    pub unloaded_when_idle: bool,
    /// Cancelled when this function is dropped (removed, replaced, unloaded, and its last
    /// request done): its idle WASIp3 workers end then, giving back their instance slots.
    pub retired: tokio_util::sync::CancellationToken,
}

impl Drop for Function {
    fn drop(&mut self) {
        self.retired.cancel();
    }
}

/// `v<generation>` as a header value.
fn version_header(generation: u64) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("v{generation}")).expect("digits are a valid header")
}

impl Function {
    /// A function known from its record, code not loaded yet.
    pub fn unloaded(record: FunctionRecord, defaults: &LimitDefaults) -> Self {
        let limits = record.spec.limits.resolve(defaults);
        let config = Arc::new(crate::guest::config::Resolved::new(
            record
                .spec
                .config
                .iter()
                .filter_map(|(key, value)| match value {
                    crate::config::ConfigValue::Value(value) => Some((key.clone(), value.clone())),
                    crate::config::ConfigValue::Secret { .. } => None,
                })
                .collect(),
        ));
        Self {
            name: record.name.as_str().into(),
            route: record.spec.route_or_default(&record.name),
            env: record
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            deadline_ticks: ThawEngine::ticks_for(limits.timeout),
            reuse: record.spec.reuse.as_ref().map(ReuseSpec::resolve),
            gate: ConcurrencyGate::new(&limits).map(Arc::new),
            rate: Arc::new(crate::rate::RateLimits::new(&limits)),
            assets: None,
            // Validated at deploy; a record edited by hand to something invalid denies all.
            outbound: Arc::new(
                AllowList::parse(&record.spec.allowed_outbound_hosts).unwrap_or_default(),
            ),
            limits,
            loaded: tokio::sync::OnceCell::new(),
            idle: trim::IdleWatch::default(),
            pool: WarmPool::default(),
            version_header: version_header(record.generation),
            record,
            stats: Arc::default(),
            starts: Arc::default(),
            cost: Arc::default(),
            log: Arc::default(),
            config,
            keyvalue: None,
            sql: None,
            postgres: None,
            redis: None,
            service: std::sync::OnceLock::new(),
            heat: Default::default(),
            unloaded_when_idle: false,
            retired: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Gives the function its scope in the host's key-value store.
    pub fn attach_keyvalue(&mut self, store: Option<&crate::keyvalue::KeyValue>) {
        self.keyvalue = store.map(|store| crate::guest::keyvalue::GuestKeyValue {
            store: store.clone(),
            function: self.name.clone(),
            quota: crate::keyvalue::Quota::of(&self.limits),
            hits: self.stats.limit_hits.clone(),
        });
    }

    /// Gives the function its Redis connections on the host.
    pub fn attach_redis(&mut self, host: Option<&crate::outbound_redis::RedisHost>) {
        self.redis = host.map(|host| crate::guest::redis::GuestRedis {
            host: host.clone(),
            function: self.name.clone(),
            allowed: self.outbound.clone(),
            timeout: self.limits.outbound_timeout,
        });
    }

    /// Gives the function its Postgres pools on the host.
    pub fn attach_postgres(&mut self, host: Option<&crate::postgres::PgHost>) {
        self.postgres = host.map(|host| crate::guest::postgres::GuestPostgres {
            host: host.clone(),
            function: self.name.clone(),
            allowed: self.outbound.clone(),
            quota: crate::postgres::PgQuota::of(&self.limits),
            max_rows: self.limits.sql_max_rows,
            max_result_bytes: self.limits.sql_max_result_bytes,
        });
    }

    /// Gives the function its databases on the host's SQL.
    pub fn attach_sql(&mut self, host: Option<&crate::sql::SqlHost>) {
        self.sql = host.map(|host| crate::guest::sqlite::GuestSql {
            host: host.clone(),
            function: self.name.clone(),
            quota: crate::sql::SqlQuota::of(&self.limits),
            databases: self.record.spec.sqlite_databases.iter().cloned().collect(),
        });
    }

    /// This function with what belongs to the version rather than to its code taken from
    /// `other` (the same version, loaded differently): its log, its resolved configuration,
    /// its key-value access, its counters, its concurrency gate, its rate limiters' buckets
    /// and its assets.
    pub fn with_state_of(mut self, other: &Function) -> Self {
        self.log = other.log.clone();
        self.config = other.config.clone();
        self.stats = other.stats.clone();
        self.starts = other.starts.clone();
        self.cost = other.cost.clone();
        self.keyvalue = other.keyvalue.clone();
        self.sql = other.sql.clone();
        self.postgres = other.postgres.clone();
        self.redis = other.redis.clone();
        self.gate = other.gate.clone();
        self.rate = other.rate.clone();
        self.assets = other.assets.clone();
        self
    }

    /// A function with its code already loaded (a deploy compiles and links eagerly, so that
    /// a bad module is refused before it replaces anything).
    pub fn loaded_with(
        record: FunctionRecord,
        defaults: &LimitDefaults,
        code: Code,
        origin: Origin,
    ) -> Self {
        let function = Self::unloaded(record, defaults);
        // Compiled at deploy (anonymous memory), or an artifact a deploy found in the cache:
        // not marked as a file mapping, so not trimmed until a restart loads it (see `trim`).
        function.set_loaded(Loaded {
            code,
            origin,
            image: None,
        });
        function
    }

    /// What a store for this function is built from.
    pub fn guest(&self) -> GuestConfig<'_> {
        GuestConfig {
            name: &self.name,
            env: &self.env,
            dirs: &self.record.spec.dirs,
            outbound: &self.outbound,
            limits: &self.limits,
            deadline_ticks: self.deadline_ticks,
            hits: &self.stats.limit_hits,
            outbound_sent: &self.stats.outbound_requests,
            log: &self.log,
            version: self.record.generation,
            config: &self.config,
            keyvalue: self.keyvalue.as_ref(),
            sql: self.sql.as_ref(),
            postgres: self.postgres.as_ref(),
            redis: self.redis.as_ref(),
            // One request at a time; the WASIp3 executor raises it for its instances.
            max_concurrent: 1,
        }
    }

    /// [`Function::guest`] for a WASIp3 instance, whose requests overlap: the host resource
    /// cap is per request in flight (`reuse.max_concurrent` of them).
    pub fn service_guest(&self) -> GuestConfig<'_> {
        GuestConfig {
            max_concurrent: self.reuse.as_ref().map_or(1, |r| r.max_concurrent),
            ..self.guest()
        }
    }

    /// Sets the generation (a deploy learns it under the write lock, after linking).
    pub fn set_generation(&mut self, generation: u64) {
        self.record.generation = generation;
        self.version_header = version_header(generation);
    }

    /// Stores loaded code unless some is there already.
    pub fn set_loaded(&self, loaded: Loaded) {
        let _ = self.loaded.set(loaded);
    }

    /// The loaded code, if loaded.
    pub fn code(&self) -> Option<&Code> {
        self.loaded.get().map(|l| &l.code)
    }

    /// The loaded state, if loaded.
    pub fn loaded(&self) -> Option<&Loaded> {
        self.loaded.get()
    }

    /// Whether this host is ready to serve the function without first proving it can load
    /// its code: it is loaded, or it was and was unloaded only for idleness. What a cluster
    /// node announces as ready.
    pub fn ready(&self) -> bool {
        self.unloaded_when_idle || self.loaded().is_some()
    }

    /// One look of the idle task at a loaded function: after `trim_after` idle (its warm
    /// pool drained: an instance reads the image), its image is trimmed (see [`trim`]); after
    /// `unload_after`, the answer asks for its code to be unloaded.
    pub fn look_idle(&self, trim_after: Duration, unload_after: Option<Duration>) -> Idle {
        let Some(loaded) = self.loaded() else {
            return Idle::No;
        };
        let busy = self.pool.in_flight() > 0 || !self.pool.is_empty();
        let idle = self
            .idle
            .look(self.stats.requests.load(Ordering::Relaxed), busy);
        if idle.is_zero() {
            if let Some(image) = &loaded.image {
                image.rearm();
            }
            return Idle::No;
        }
        // Code from the fast tier has no artifact yet to load again.
        if loaded.origin != Origin::FastTier && unload_after.is_some_and(|after| idle >= after) {
            return Idle::Unload;
        }
        if idle >= trim_after
            && let Some(image) = &loaded.image
            && image.trim_once()
        {
            return Idle::Trimmed;
        }
        Idle::No
    }

    /// Loads the code with `load` unless it is loaded; concurrent callers share one load.
    /// Returns the code and whether this call waited for a load.
    pub async fn load_once<F, Fut>(&self, load: F) -> anyhow::Result<(&Loaded, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Loaded>>,
    {
        if let Some(loaded) = self.loaded.get() {
            return Ok((loaded, false));
        }
        Ok((self.loaded.get_or_try_init(load).await?, true))
    }

    /// The admin API's view of this function as the version speaking for it, serving by
    /// `traffic`.
    pub fn info(&self, traffic: TrafficSplit) -> FunctionInfo {
        let (start_us, handler_us) = self.starts.percentiles();
        FunctionInfo {
            name: self.name.to_string(),
            route: self.route.clone(),
            kind: self.record.kind,
            digest: self.record.digest.clone(),
            wasm_bytes: self.record.wasm_bytes,
            snapshot: self.record.code_digest.is_some(),
            generation: self.record.generation,
            deployed_at_ms: self.record.deployed_at_ms,
            traffic,
            spec: self.record.spec.clone(),
            limits: self.limits.clone(),
            loaded_from: self.loaded.get().map(|l| l.origin.as_str().to_owned()),
            warm_instances: self.pool.len(),
            requests: self.stats.requests.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            limit_hits: self.stats.limit_hits.by_name(),
            running: self.gate.as_deref().map(ConcurrencyGate::running),
            queued: self.gate.as_deref().map(ConcurrencyGate::waiting),
            starts: self.starts.by_kind(),
            start_us,
            handler_us,
            cpu_us_total: self.cost.cpu_total().as_micros() as u64,
            cpu_us: Percentiles {
                p50: self.cost.cpu.quantile_us(0.5),
                p99: self.cost.cpu.quantile_us(0.99),
            },
            peak_memory_kib: Percentiles {
                p50: self.cost.peak_memory_kib.quantile_us(0.5),
                p99: self.cost.peak_memory_kib.quantile_us(0.99),
            },
        }
    }
}

/// The host's engines and the linkers built for each: what turns compiled code into
/// [`Code`].
pub struct Linking {
    /// Each engine with its linkers; the first is the host's main engine.
    linked: Vec<(Arc<ThawEngine>, Linkers)>,
}

impl Linking {
    /// Builds the linkers for both of the host's engines.
    pub fn new(engines: &HostEngines) -> anyhow::Result<Self> {
        let linked = engines
            .all()
            .into_iter()
            .map(|engine| Ok((engine.clone(), Linkers::new(engine.engine())?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { linked })
    }

    /// Builds the linkers for one engine (the fast tier's, which compiles everything).
    pub fn single(engine: Arc<ThawEngine>) -> anyhow::Result<Self> {
        let linkers = Linkers::new(engine.engine())?;
        Ok(Self {
            linked: vec![(engine, linkers)],
        })
    }

    /// The main engine: its options and allocator are the host's.
    pub fn engine(&self) -> &Arc<ThawEngine> {
        &self.linked[0].0
    }

    /// The linkers of the engine that compiled `engine`'s code.
    fn linkers(&self, engine: &wasmtime::Engine) -> Result<&Linkers, LinkError> {
        self.linked
            .iter()
            .find(|(e, _)| wasmtime::Engine::same(e.engine(), engine))
            .map(|(_, linkers)| linkers)
            .ok_or_else(|| LinkError::Imports("code compiled by another engine".into()))
    }

    /// Links compiled code against thaw's WASI. Done once per load, never per request.
    pub fn link(&self, compiled: Compiled) -> Result<Code, LinkError> {
        Ok(match compiled {
            Compiled::Component(component) => {
                let pre = self
                    .linkers(component.engine())?
                    .proxy
                    .instantiate_pre(&component)
                    .map_err(|e| imports_error(format!("{e:#}")))?;
                // A p2 proxy first (what almost every component is today), then a p3
                // service; a component that exports both is served as p2.
                match ProxyPre::new(pre.clone()) {
                    Ok(proxy) => Code::Proxy(proxy),
                    Err(p2) => {
                        Code::Service(ServicePre::new(pre).map_err(|p3| {
                            LinkError::NotAProxy(format!("p2: {p2:#}; p3: {p3:#}"))
                        })?)
                    }
                }
            }
            Compiled::Module(module) => {
                if module.get_export("_start").is_none() {
                    return Err(LinkError::NotACommand);
                }
                Code::Cgi(
                    self.linkers(module.engine())?
                        .cgi
                        .instantiate_pre(&module)
                        .map_err(|e| LinkError::Imports(format!("{e:#}")))?,
                )
            }
        })
    }
}

/// A link failure as the deployer reads it: the linker's message, and, when the component
/// imports a WASI release candidate (`wasi:http/types@0.3.0-rc-2026-03-15`, which the
/// linker reports as a type mismatch), what that means.
fn imports_error(message: String) -> LinkError {
    if let Some(at) = message.find("@0.3.0-rc-") {
        let version: String = message[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        return LinkError::Imports(format!(
            "{message}; the component is built for a WASIp3 release candidate ({version}), which \
             this host's engine (wasmtime 48) does not serve: it serves WASIp2 (0.2.x) and \
             WASIp3 0.3.0. Rebuild it with a toolchain for one of those (PyPI spin-sdk 5.0.0 \
             targets the 2026-03-15 candidate; the Rust spin-sdk 7 targets 0.3.0)"
        ));
    }
    LinkError::Imports(message)
}

/// Loads functions' code: the artifact from the cache (or a rebuild from the stored wasm),
/// linked; for a source function, its engine (loaded once for all its functions) and its
/// program. Shared by the request path (a first request loads its function) and start-up.
pub struct Loader {
    linking: Linking,
    cache: Arc<ArtifactCache>,
    engines: Arc<Engines>,
    /// Whether source functions load their snapshots (`--source-snapshots`).
    source_snapshots: bool,
    /// Where a source function that a waiting request started on its engine is sent, its
    /// snapshot still on disk ([`Loader::ensure_loaded`]); unset, such a function loads its
    /// snapshot at once.
    snapshots_later: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<SnapshotLater>>,
}

/// A source function started on its engine while its snapshot waits on disk: the control
/// plane loads the snapshot in the background and swaps it in.
pub struct SnapshotLater {
    /// The function (held weakly: one replaced meanwhile is not kept alive).
    pub function: std::sync::Weak<Function>,
    /// Its snapshot's key in the artifact cache.
    pub key: String,
}

/// What a function's load is for; it decides where a source function whose snapshot is on
/// disk starts (see [`Loader::ensure_loaded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadFor {
    /// A request waits for it: the quickest start.
    Request,
    /// Start-up's background loading, or a deploy (whose version is not routed yet): the
    /// code the function will serve with.
    Serving,
}

impl Loader {
    /// A loader over `cache`, linking with `linking`'s engine (the cache's engine).
    pub fn new(linking: Linking, cache: Arc<ArtifactCache>, engines: Arc<Engines>) -> Self {
        Self {
            linking,
            cache,
            engines,
            source_snapshots: true,
            snapshots_later: std::sync::OnceLock::new(),
        }
    }

    /// Sends source functions that a request started on their engine, their snapshot
    /// waiting on disk, to `to` (the control plane, which swaps the snapshot in). Set once.
    pub fn send_snapshots_later(&self, to: tokio::sync::mpsc::UnboundedSender<SnapshotLater>) {
        let _ = self.snapshots_later.set(to);
    }

    /// This loader, loading source functions' snapshots or not.
    pub fn with_source_snapshots(mut self, on: bool) -> Self {
        self.source_snapshots = on;
        self
    }

    /// The host's language engines.
    pub fn engines(&self) -> &Arc<Engines> {
        &self.engines
    }

    /// The language engine of `digest`, loaded (from its artifact, or compiled from the
    /// stored wasm) and linked unless it is already. Blocking.
    pub fn engine(&self, digest: &str) -> anyhow::Result<Arc<LanguageEngine>> {
        self.engines.get_blocking(digest, || {
            let (compiled, origin) = self.cache.load(Kind::Component, digest)?;
            let Compiled::Component(component) = compiled else {
                anyhow::bail!("the engine {digest} is not a component");
            };
            // Linked as any component is (a `Component` clone is a reference count).
            let Code::Proxy(pre) = self.linking.link(Compiled::Component(component.clone()))?
            else {
                anyhow::bail!("the engine {digest} is not a wasi:http p2 proxy");
            };
            let engine = LanguageEngine::new(digest.to_owned(), &component, pre)?;
            tracing::info!(engine = %&digest[..12.min(digest.len())], from = ?origin, "engine loaded");
            Ok(engine)
        })
    }

    /// The linking this loader uses.
    pub fn linking(&self) -> &Linking {
        &self.linking
    }

    /// The artifact cache.
    pub fn cache(&self) -> &Arc<ArtifactCache> {
        &self.cache
    }

    /// Loads a function's code. Blocking (file reads, possibly a compile).
    pub fn load(&self, function: &Function) -> anyhow::Result<Loaded> {
        self.load_for(function, LoadFor::Serving)
            .map(|(loaded, _)| loaded)
    }

    /// [`Loader::load`], for `load_for`; also returns the key of a snapshot this load left on
    /// disk for later (see [`Loader::ensure_loaded`]).
    fn load_for(
        &self,
        function: &Function,
        load_for: LoadFor,
    ) -> anyhow::Result<(Loaded, Option<String>)> {
        let record = &function.record;
        if record.kind == Kind::Source {
            let engine = record
                .engine
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("a source function's record names no engine"))?;
            // The function's snapshot, if its traffic made this host take one: an instance
            // of it starts with the program loaded (see `crate::source::snapshot`).
            let snapshot = record.snapshot_key().filter(|_| self.source_snapshots);
            // Someone waits and the engine is in memory: starting there costs an instance
            // and the program's load, where the snapshot would first be deserialized from
            // its own artifact (tens of MB for Python, and its code pages faulted in). The
            // snapshot follows in the background.
            if load_for == LoadFor::Request
                && let Some(key) = &snapshot
                && self.snapshots_later.get().is_some()
                && let Some(on) = self.engines.loaded(engine)
                && self.cache.has_artifact(key)
            {
                let loaded = self.source_loaded(function, on)?;
                return Ok((loaded, snapshot));
            }
            let found =
                snapshot.and_then(|key| self.cache.load_existing(Kind::Component, &key).ok());
            if let Some((compiled, _)) = found {
                match self.link_snapshot(compiled) {
                    Ok(loaded) => {
                        tracing::info!(function = %function.name, "loaded its snapshot");
                        return Ok((loaded, None));
                    }
                    Err(e) => {
                        tracing::warn!(function = %function.name, "its snapshot cannot serve ({e:#}); loading the source")
                    }
                }
            }
            let engine = self.engine(engine)?;
            return Ok((self.source_loaded(function, engine)?, None));
        }
        let (compiled, origin) = self.cache.load(record.kind, record.code_digest())?;
        // Only an artifact deserialized from its file runs from a file mapping.
        let image = (origin == Origin::Artifact)
            .then(|| trim::Image::from_artifact(compiled.image_range()));
        let code = self.linking.link(compiled)?;
        tracing::info!(function = %function.name, from = ?origin, "loaded");
        Ok((
            Loaded {
                code,
                origin,
                image,
            },
            None,
        ))
    }

    /// A source function on `engine`: its program, read from the data directory.
    fn source_loaded(
        &self,
        function: &Function,
        engine: Arc<LanguageEngine>,
    ) -> anyhow::Result<Loaded> {
        let path = self.cache.data().wasm(function.record.code_digest());
        let program = std::fs::read_to_string(path).context("reading the function's program")?;
        tracing::info!(function = %function.name, "loaded");
        Ok(Loaded {
            code: Code::Source(SourceCode {
                engine,
                program: program.into(),
            }),
            origin: Origin::Artifact,
            // The engine's image is shared by every function on it.
            image: None,
        })
    }

    /// A source function's snapshot, from its artifact, linked as the `wasi:http` proxy it
    /// must be.
    pub fn link_snapshot(&self, compiled: Compiled) -> anyhow::Result<Loaded> {
        let image = trim::Image::from_artifact(compiled.image_range());
        let code = self.linking.link(compiled)?;
        anyhow::ensure!(
            matches!(code, Code::Proxy(_)),
            "the snapshot is not a wasi:http proxy"
        );
        Ok(Loaded {
            code,
            origin: Origin::Snapshot,
            image: Some(image),
        })
    }

    /// The function's code, loading it on a blocking thread if needed (concurrent callers
    /// share one load). Returns, when this call had to wait for a load, how the request's
    /// start is classified (from disk, or a compile when the artifact had to be rebuilt) and
    /// how long the wait took.
    ///
    /// A source function whose snapshot is on disk starts, for a request, on its engine when
    /// the engine is in memory (as it is once the host has started), and its snapshot is
    /// loaded in the background (see [`Loader::send_snapshots_later`]): the request does not
    /// wait for the snapshot's artifact. For [`LoadFor::Serving`] it loads the snapshot.
    pub async fn ensure_loaded<'f>(
        self: &Arc<Self>,
        function: &'f Arc<Function>,
        load_for: LoadFor,
    ) -> anyhow::Result<(&'f Loaded, Option<(StartKind, Duration)>)> {
        if let Some(loaded) = function.loaded() {
            return Ok((loaded, None));
        }
        let started = Instant::now();
        let mut later = None;
        let (loaded, waited) = function
            .load_once(|| {
                let loader = self.clone();
                let function = function.clone();
                let later = &mut later;
                async move {
                    let (loaded, key) =
                        tokio::task::spawn_blocking(move || loader.load_for(&function, load_for))
                            .await
                            .map_err(|e| anyhow::anyhow!("load task failed: {e}"))??;
                    *later = key;
                    Ok(loaded)
                }
            })
            .await?;
        if let Some((key, to)) = later.zip(self.snapshots_later.get()) {
            // Sent once the function is loaded: the swap replaces code that is there.
            let _ = to.send(SnapshotLater {
                function: Arc::downgrade(function),
                key,
            });
        }
        let kind = match loaded.origin {
            Origin::Artifact | Origin::Snapshot => StartKind::Disk,
            Origin::Compiled | Origin::FastTier => StartKind::Compile,
        };
        Ok((loaded, waited.then(|| (kind, started.elapsed()))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wasip3_release_candidate_import_is_explained() {
        let linker = "component imports instance `wasi:http/types@0.3.0-rc-2026-03-15`, but a \
                      matching implementation was not found in the linker: instance export \
                      `fields` has the wrong type: resource implementation is missing";
        let e = super::imports_error(linker.into()).to_string();
        assert!(e.starts_with(linker), "{e}");
        assert!(
            e.contains("a WASIp3 release candidate (0.3.0-rc-2026-03-15)"),
            "{e}"
        );
        let other = "component imports instance `spin:mqtt/mqtt@3.0.0`, but ...";
        assert_eq!(super::imports_error(other.into()).to_string(), other);
    }
}
