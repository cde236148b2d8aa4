//! What a guest gets: its store, its host state, and the linkers that offer it WASI.
//!
//! This layer sits right above the engine. It builds a store for one instance from a plain
//! [`GuestConfig`] (name, environment, grants, outbound allow-list, limits, hit counters),
//! never from the object that also deploys or routes, so the request path and the warm pool
//! take only what a guest needs, and a test can build a store without a function registry.
//!
//! - [`host`]: the store data per kind (`wasi:http` component, CGI module) and the outbound
//!   policy of `wasi:http`;
//! - [`limiter`]: the resource limiter, which fails a `memory.grow` past the limit with a
//!   typed error ([`limiter::MemoryLimitHit`]) the request path classifies by type;
//! - [`limit`]: the names of limits and their per-function counters;
//! - [`log`] and [`stdout`]: where a guest's output goes (log lines; a CGI module's response);
//! - [`config`]: `wasi:config` values, with secrets resolved from the host;
//! - [`keyvalue`]: `wasi:keyvalue` over the host's store, scoped to the function;
//! - [`sqlite`]: `spin:sqlite` over the host's SQL databases, scoped to the function;
//! - [`spin`]: Spin's `variables` (over `config`) and `key-value` (over the store);
//! - [`postgres`]: `spin:postgres` over the host's pools;
//! - [`redis`]: `spin:redis` over the host's shared connections.
//!
//! One store per request (or per warm instance): a store is cheap to build (a few
//! allocations: the WASI and HTTP contexts and a resource table), and dropping it frees every
//! byte the guest had.

pub mod config;
pub mod host;
pub mod keyvalue;
pub mod limit;
pub mod limiter;
pub mod log;
pub mod postgres;
pub mod redis;
pub mod spin;
pub mod sqlite;
pub mod stdout;

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::outbound::AllowList;
use crate::spec::{DirGrant, Limits};
use host::{CgiHost, ProxyHost};
use limit::LimitHits;
use log::GuestLog;
use stdout::CgiStdout;

/// Everything a guest's store is built from, borrowed from whoever owns it (a deployed
/// function, a test, a benchmark).
#[derive(Clone, Copy)]
pub struct GuestConfig<'a> {
    /// The function's name: the guest's `argv[0]` and its log lines' tag.
    pub name: &'a Arc<str>,
    /// Environment variables, as WASI takes them.
    pub env: &'a [(String, String)],
    /// Granted host directories.
    pub dirs: &'a [DirGrant],
    /// Where outbound `wasi:http` requests may go.
    pub outbound: &'a Arc<AllowList>,
    /// The resolved limits.
    pub limits: &'a Limits,
    /// Epoch ticks for the timeout ([`crate::engine::ThawEngine::ticks_for`]).
    pub deadline_ticks: u64,
    /// Where the guest's own limit hits (outbound) are counted.
    pub hits: &'a Arc<LimitHits>,
    /// Where the outbound requests the guest sends are counted.
    pub outbound_sent: &'a Arc<std::sync::atomic::AtomicU64>,
    /// The function's log buffer (shared by its versions).
    pub log: &'a Arc<log::FunctionLog>,
    /// The function's version, for its log lines.
    pub version: u64,
    /// What `wasi:config/store` answers (see [`config`]).
    pub config: &'a Arc<config::Resolved>,
    /// The function's `wasi:keyvalue` access; `None`: every `open` is refused.
    pub keyvalue: Option<&'a keyvalue::GuestKeyValue>,
    /// The function's `spin:sqlite` access; `None`: every `open` is refused.
    pub sql: Option<&'a sqlite::GuestSql>,
    /// The function's `spin:postgres` access; `None`: every `open` is refused.
    pub postgres: Option<&'a postgres::GuestPostgres>,
    /// The function's `spin:redis` access; `None`: every `open` is refused.
    pub redis: Option<&'a redis::GuestRedis>,
    /// Requests one instance may run at once (`reuse.max_concurrent` of a WASIp3 function;
    /// 1 otherwise): the host resource cap is per request.
    pub max_concurrent: u32,
}

impl GuestConfig<'_> {
    /// The store's resource table cap: `max_host_resources` per request it may run at once.
    pub fn host_resources(&self) -> usize {
        self.limits.max_host_resources as usize * self.max_concurrent.max(1) as usize
    }
}

/// A store for one `wasi:http` instance: limiter installed, fuel given (on a metering
/// engine), deadline armed for instantiation (which may run guest code).
pub fn proxy_store(engine: &Engine, config: &GuestConfig<'_>) -> Store<ProxyHost> {
    let mut store = Store::new(engine, ProxyHost::new(config));
    store.limiter(|host| &mut host.limiter);
    // See [`host`]'s "Host memory a guest can hold": twice the table's cap, so that the
    // table's typed error is what a guest hoarding host resources runs into.
    store.set_max_component_handles(2 * config.host_resources());
    arm_fuel(&mut store, config.limits);
    arm_deadline(&mut store, config.deadline_ticks);
    store
}

/// A store for one run of a CGI module: the request's meta-variables (`env`, already
/// including the function's own), its body on stdin, `stdout` collecting the response, and
/// the request's id for its log lines.
pub fn cgi_store(
    engine: &Engine,
    config: &GuestConfig<'_>,
    env: &[(String, String)],
    stdin: Bytes,
    stdout: CgiStdout,
    request: u64,
) -> Store<CgiHost> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(env)
        .args(&[&**config.name])
        .stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout)
        .stderr(GuestLog::new(
            config.name.clone(),
            "stderr",
            config.log.clone(),
            config.version,
            Arc::new(std::sync::atomic::AtomicU64::new(request)),
        ));
    grant_dirs(&mut wasi, config);
    let mut wasi = wasi.build_p1();
    // A CGI module's WASI resources (open files in granted directories, pollables) are host
    // objects too: the same cap as a component's table.
    wasmtime_wasi::WasiView::ctx(&mut wasi)
        .table
        .set_max_capacity(config.host_resources());
    let mut store = Store::new(engine, CgiHost::new(wasi, config.limits));
    store.limiter(|host| &mut host.limiter);
    arm_fuel(&mut store, config.limits);
    arm_deadline(&mut store, config.deadline_ticks);
    store
}

/// Preopens the granted directories (read-only unless the grant says writable).
///
/// This opens each directory per store, a syscall per grant on the request path; only
/// functions with grants pay it, and a grant is the exception. A directory that vanished
/// since the deploy is logged and left out: the guest sees no such directory.
fn grant_dirs(wasi: &mut WasiCtxBuilder, config: &GuestConfig<'_>) {
    for dir in config.dirs {
        let perms = if dir.writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
            tracing::warn!(function = %config.name, host = %dir.host.display(), "granted directory cannot be opened: {e:#}");
        }
    }
}

/// Makes a running guest yield to the executor at every epoch tick and traps it once
/// `ticks` have passed.
///
/// Yielding matters as much as the trap: a guest spinning in a loop would otherwise hold a
/// tokio worker thread until its deadline, and on a small host that stalls every other
/// request (including the admin API) queued behind it on that worker. With a yield every
/// tick a CPU-bound guest shares the worker like any other task.
pub fn arm_deadline<T: 'static>(store: &mut Store<T>, ticks: u64) {
    let mut remaining = ticks;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if remaining == 0 {
            return Ok(UpdateDeadline::Interrupt);
        }
        remaining -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
}

/// Like [`arm_deadline`], for a store whose requests overlap (a WASIp3 instance): the
/// store is interrupted once the instant in `deadline` ([`deadline_after`]) has passed,
/// which each request's start moves to its own timeout, so the store runs until its most
/// recent request has run past its timeout. A backstop: each request's own timeout is
/// enforced outside the store (see [`crate::function::service`]); this catches a guest that
/// spins without yielding to it.
///
/// The deadline is a clock reading, not a count of ticks: a tick is only counted when it
/// finds the guest in wasm code, and a p3 guest can spend most of its time in the host
/// (spawning and switching between tens of thousands of tasks), where a tick count would
/// fall behind the clock by seconds. The clock is read once per tick.
pub fn arm_shared_deadline<T: 'static>(
    store: &mut Store<T>,
    deadline: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if clock_nanos() >= deadline.load(Ordering::Relaxed) {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Yield(1))
    });
}

/// The value for [`arm_shared_deadline`]'s `deadline` that passes `timeout` from now.
pub fn deadline_after(timeout: std::time::Duration) -> u64 {
    clock_nanos().saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX))
}

/// Monotonic nanoseconds since the first call in this process.
fn clock_nanos() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Gives a store its CPU fuel for one request, on a host that meters fuel.
pub fn arm_fuel<T: 'static>(store: &mut Store<T>, limits: &Limits) {
    if let Some(fuel) = limits.fuel {
        // Fails only on an engine without fuel metering, which `limits.fuel` rules out.
        let _ = store.set_fuel(fuel);
    }
}

/// The two linkers, built once per engine: one for `wasi:http` components, one for WASI
/// preview1 (CGI) modules. What needs the component model's concurrency (WASIp3, the
/// `spin:` interfaces) is linked only on the engine that has it (see
/// [`crate::engine::concurrency`]); a component that imports it compiles on that engine.
pub struct Linkers {
    /// For components: the interfaces `wasmtime serve -Scli` offers.
    pub proxy: wasmtime::component::Linker<ProxyHost>,
    /// For preview1 command modules.
    pub cgi: wasmtime::Linker<CgiHost>,
}

impl Linkers {
    /// Builds both linkers for `engine`.
    pub fn new(engine: &Engine) -> anyhow::Result<Self> {
        let concurrent = engine.get_concurrency_support();
        let mut proxy = wasmtime::component::Linker::new(engine);
        // The interfaces `wasmtime serve -Scli -Sconfig -Skeyvalue` offers: all of WASI p2
        // (cli, clocks, filesystem, random, io, sockets) plus wasi:http, wasi:config and
        // wasi:keyvalue. What a guest may actually reach
        // through them is decided per store by its `WasiCtx` (no preopens, no sockets).
        wasmtime_wasi::p2::add_to_linker_async(&mut proxy)
            .map_err(anyhow::Error::from)
            .context("linking WASI p2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut proxy)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        // And what `-Sp3` adds: WASIp3's interfaces (wasi:*@0.3.0), for components that
        // export `wasi:http/handler@0.3.0`. The same store data serves both: a component
        // imports one version or the other, and a p2 component never touches the p3 ones.
        if concurrent {
            wasmtime_wasi::p3::add_to_linker(&mut proxy)
                .map_err(anyhow::Error::from)
                .context("linking WASI p3")?;
            wasmtime_wasi_http::p3::add_to_linker(&mut proxy)
                .map_err(anyhow::Error::from)
                .context("linking wasi:http p3")?;
        }
        // What `wasmtime serve -Sconfig` adds. A function without configuration gets an
        // empty store: every `get` is `none`, as for a key that is not set.
        wasmtime_wasi_config::add_to_linker(&mut proxy, ProxyHost::config)
            .map_err(anyhow::Error::from)
            .context("linking wasi:config")?;
        keyvalue::add_to_linker(&mut proxy, ProxyHost::keyvalue)
            .map_err(anyhow::Error::from)
            .context("linking wasi:keyvalue")?;
        // Spin's interfaces are async in their WIT: concurrent host functions.
        if concurrent {
            sqlite::add_to_linker(&mut proxy, ProxyHost::sqlite)
                .map_err(anyhow::Error::from)
                .context("linking spin:sqlite")?;
            spin::add_to_linker(&mut proxy, ProxyHost::spin)
                .map_err(anyhow::Error::from)
                .context("linking spin:variables and spin:key-value")?;
            postgres::add_to_linker(&mut proxy, ProxyHost::postgres)
                .map_err(anyhow::Error::from)
                .context("linking spin:postgres")?;
            redis::add_to_linker(&mut proxy, ProxyHost::redis)
                .map_err(anyhow::Error::from)
                .context("linking spin:redis")?;
        }
        host::cap_request_strings(&mut proxy, concurrent)
            .map_err(anyhow::Error::from)
            .context("capping wasi:http's request strings")?;
        let mut cgi = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut cgi, |host: &mut CgiHost| &mut host.wasi)
            .map_err(anyhow::Error::from)
            .context("linking WASI p1")?;
        Ok(Self { proxy, cgi })
    }
}
