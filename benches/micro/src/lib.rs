//! thaw's benchmarks. The criterion benchmarks live in `benches/micro/benches/`; each file opens
//! with what it measures and how to run it. Results and the machine they ran on are in the
//! top-level README. This library holds what they share: a platform in a temporary data
//! directory with the example functions deployed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thaw_runtime::control::{KeyValueBackend, LoadMode, Platform, PlatformConfig};
use thaw_runtime::engine::EngineOptions;
use thaw_runtime::function::pool::PoolOptions;
use thaw_runtime::spec::{FunctionSpec, LimitDefaults};

/// The engine every benchmark runs on: 64 instance slots of at most 256 MiB, the host's
/// default 64 KiB kept resident, no fuel; `on_demand` allocation instead of the pool.
pub fn engine_options(on_demand: bool) -> EngineOptions {
    EngineOptions {
        keep_resident_bytes: 64 << 10,
        instance_slots: 64,
        max_memory_bytes: 256 << 20,
        on_demand,
        fuel_metering: false,
    }
}

/// A platform for benchmarks, with its data directory (removed on drop).
pub struct BenchPlatform {
    /// The platform.
    pub platform: Arc<Platform>,
    _dir: tempfile::TempDir,
}

/// How a benchmark platform is set up.
#[derive(Clone, Copy)]
pub struct Setup {
    /// On-demand instead of pooling allocation.
    pub on_demand: bool,
    /// Warm instances per function (0: no warm pool, every request instantiates).
    pub warm: usize,
    /// Server-Timing on (to check which start kind a request got).
    pub server_timing: bool,
    /// `--fast-deploy`: deploys answer with Winch code first.
    pub fast_deploy: bool,
}

impl BenchPlatform {
    /// A fresh platform.
    pub fn new(setup: Setup) -> Self {
        Self::open(setup, tempfile::tempdir().expect("tempdir"), LoadMode::Lazy)
    }

    /// A fresh platform whose functions keep state in `keyvalue`.
    pub fn with_keyvalue(setup: Setup, keyvalue: KeyValueBackend) -> Self {
        Self::open_with(
            setup,
            tempfile::tempdir().expect("tempdir"),
            LoadMode::Lazy,
            keyvalue,
        )
    }

    /// A platform on an existing data directory.
    pub fn open(setup: Setup, dir: tempfile::TempDir, load: LoadMode) -> Self {
        Self::open_with(setup, dir, load, KeyValueBackend::Embedded)
    }

    fn open_with(
        setup: Setup,
        dir: tempfile::TempDir,
        load: LoadMode,
        keyvalue: KeyValueBackend,
    ) -> Self {
        let platform = Platform::open(PlatformConfig {
            data_dir: dir.path().to_path_buf(),
            engine: engine_options(setup.on_demand),
            defaults: LimitDefaults::default(),
            queue_timeout: Duration::from_secs(1),
            load,
            pool: PoolOptions {
                max_per_function: setup.warm,
                reserve_slots: 0,
                idle_timeout: Duration::from_secs(600),
                unload_after: None,
            },
            server_timing: setup.server_timing,
            fast_deploy: setup.fast_deploy,
            source_snapshots: false,
            compile_cache: false,
            traces: None,
            keep_versions: thaw_runtime::control::DEFAULT_KEEP_VERSIONS,
            secrets: Default::default(),
            keyvalue,
            engines: None,
            trusted_proxies: Default::default(),
        })
        .expect("opening the platform");
        Self {
            platform: Arc::new(platform),
            _dir: dir,
        }
    }

    /// Closes the platform and hands back its data directory.
    pub fn into_dir(self) -> tempfile::TempDir {
        self._dir
    }

    /// Deploys a function from `functions/` (blocking on `rt`).
    pub fn deploy(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        path: &str,
        spec: FunctionSpec,
    ) -> Arc<thaw_runtime::function::Function> {
        let wasm = thaw_test_functions::read(path);
        rt.block_on(self.platform.deploy(name, spec, wasm.into()))
            .unwrap_or_else(|e| panic!("deploying {name}: {e}"))
            .0
    }
}

/// Serves `platform`'s functions on a free loopback port (a task on the current runtime);
/// the address, and the sender that stops the listener.
pub async fn serve_on_loopback(
    platform: Arc<Platform>,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    serve_on_loopback_with(platform, None).await
}

/// [`serve_on_loopback`], over TLS when `tls` is given.
pub async fn serve_on_loopback_with(
    platform: Arc<Platform>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    use thaw_runtime::http::server::{ListenerOptions, Shutdown, serve_functions};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = Shutdown::new();
    let options = ListenerOptions {
        drain_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(10),
        slow_clients: platform.slow_clients().clone(),
        send_timeout: Duration::from_secs(30),
        stalled_readers: platform.stalled_readers().clone(),
        tls,
    };
    tokio::spawn(serve_functions(listener, platform, None, shutdown, options));
    (addr, stop)
}

/// Keeps the other core busy while alive (a spinning thread), for "with the second core
/// busy" rows: the noise a shared host has.
pub struct BusyCore(
    Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl BusyCore {
    /// Starts spinning.
    pub fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        Self(stop, Some(handle))
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(handle) = self.1.take() {
            let _ = handle.join();
        }
    }
}

/// Runs `call(i)` for `n / 10` warm-up rounds, then `n` timed ones, one after another: each
/// call's latency (the examples' one-at-a-time rows).
pub async fn timed<F, Fut>(n: usize, mut call: F) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..n / 10 {
        call(i).await;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        call(i).await;
        samples.push(started.elapsed());
    }
    samples
}

/// The `q` quantile (0 to 1) of `sorted` samples, in microseconds.
pub fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}
