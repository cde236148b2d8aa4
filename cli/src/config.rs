//! Host configuration: flags, environment variables and a TOML file, resolved once into
//! [`ServeConfig`] before anything binds a socket.
//!
//! Every setting is declared once, in [`HostSettings`]: its doc comment is the `--help` text,
//! its `#[arg]` the flag and environment variable, its field name the config file's key.
//! Precedence, highest first: command-line flag, environment variable (clap reads both), the
//! config file (`--config` / `THAW_CONFIG`), the defaults below. The merge is generic (the
//! flags' settings laid over the file's, key by key), so a setting cannot be forgotten in it,
//! and a boolean set in the file can be turned off by a flag (`--fast-deploy=false`); a
//! boolean flag given alone means `true`.
//! Function limit defaults are the file's `[limits]` table, or `--default-limit KEY=VALUE`
//! with the same keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use thaw_runtime::control::{LoadMode, PlatformConfig};
use thaw_runtime::engine::EngineOptions;
use thaw_runtime::function::pool::PoolOptions;
use thaw_runtime::spec::LimitDefaults;

/// Default data-plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// Default instance slots: 256 concurrent instances. Each slot reserves (not commits) about
/// 8 GiB of address space for its memories, 2 TiB in all, of the 128 TiB a 64-bit process has.
pub const DEFAULT_INSTANCE_SLOTS: u32 = 256;
/// Default ceiling on any function's memory.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 1024;
/// Default time a request may wait for a free slot.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 1000;
/// Default time in-flight requests get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// Default most warm instances per function: enough to absorb a small burst without
/// instantiating, few enough that a thousand functions do not fill the pool with idle ones.
pub const DEFAULT_WARM_MAX: usize = 4;
/// Default idle time after which a function's warm pool drains to zero.
pub const DEFAULT_WARM_IDLE_SECS: u64 = 30;
/// Default idle time after which a function's code is unloaded (`--unload-idle-secs`): ten
/// minutes. The trade: a loaded idle function costs about three times what an unloaded one
/// does (wasmtime's metadata of its code), and an unloaded one's next request pays a load
/// from its artifact (a `disk` start, about a millisecond for a small function, a few for a
/// language runtime). Ten minutes keeps a function with traffic every few minutes loaded,
/// as a container platform keeps its instance warm for about as long after a request.
pub const DEFAULT_UNLOAD_IDLE_SECS: u64 = 600;
/// Default time a client gets to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time a client may leave response bytes unread: nginx's `send_timeout` is 60 s;
/// half that, because a function's buffered response is memory the host holds meanwhile.
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
/// Default largest upload on the admin API.
pub const DEFAULT_MAX_UPLOAD_MIB: u64 = 256;
/// Default time a dead cluster node stays in the member list (its etcd lease's TTL).
pub const DEFAULT_CLUSTER_TTL_SECS: u64 = 10;
/// Default prefix of thaw's keys in etcd.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/thaw/";

/// `thaw serve` flags: the settings, and what only the command line says.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and env vars override it)
    #[arg(long, env = "THAW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub settings: HostSettings,
    /// Function limit defaults, `KEY=VALUE` with the keys of a function's `limits` (e.g.
    /// `timeout_ms=5000`); repeatable; the config file's `[limits]` table
    #[arg(
        long = "default-limit",
        env = "THAW_DEFAULT_LIMITS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub default_limits: Vec<String>,
    /// Request timeout for functions that set none, in ms [default: 10000]; short for
    /// `--default-limit timeout_ms=MS`
    #[arg(long, env = "THAW_DEFAULT_TIMEOUT_MS", value_name = "MS")]
    pub default_timeout_ms: Option<u64>,
    /// Linear memory for functions that set none, in MiB [default: 128]; short for
    /// `--default-limit memory_mib=MIB`
    #[arg(long, env = "THAW_DEFAULT_MEMORY_MIB", value_name = "MIB")]
    pub default_memory_mib: Option<u64>,
    /// Largest request body for functions that set none, in KiB [default: 16384]; short for
    /// `--default-limit max_request_body_kib=KIB`
    #[arg(long, env = "THAW_DEFAULT_MAX_REQUEST_BODY_KIB", value_name = "KIB")]
    pub default_max_request_body_kib: Option<u64>,
    /// Deploy the functions of this manifest (thaw.toml) at start-up; repeatable
    #[arg(long, value_name = "MANIFEST")]
    pub deploy: Vec<PathBuf>,
    /// Run the manifests' build commands before deploying them
    #[arg(long, requires = "deploy")]
    pub build: bool,
}

/// Every host setting, as flag, environment variable and config file key. `None` is "not
/// given here"; [`ServeArgs::resolve`] applies the defaults.
#[derive(clap::Args, Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// Address for function traffic [default: 127.0.0.1:8080; port 0 picks a free port]
    #[arg(long, env = "THAW_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve function traffic over TLS with this certificate (PEM, its chain after it),
    /// with --tls-key; reloaded when the files change [default: plain HTTP]
    #[arg(long, env = "THAW_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "THAW_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve function traffic over TLS with the certificates in DIR (each NAME.crt with its
    /// NAME.key), chosen by SNI among the names each certificate holds; reloaded when the
    /// files change [default: plain HTTP]
    #[arg(
        long,
        env = "THAW_TLS_DIR",
        value_name = "DIR",
        conflicts_with = "tls_cert"
    )]
    pub tls_dir: Option<PathBuf>,
    /// Proxies whose X-Forwarded-For / Forwarded headers name the client (for functions'
    /// client_rate_per_s): addresses or CIDR blocks, comma-separated, e.g. the HAProxy in
    /// front of a cluster [default: none; the socket's peer is the client]
    #[arg(long, env = "THAW_TRUSTED_PROXIES", value_name = "ADDRS")]
    pub trusted_proxies: Option<String>,
    /// The header --trusted-proxies write the client's address in: x-forwarded-for or
    /// forwarded (RFC 7239); the other is never read, since a client can write it
    /// [default: x-forwarded-for]
    #[arg(long, env = "THAW_FORWARDED_HEADER", value_name = "HEADER")]
    pub forwarded_header: Option<String>,
    /// Address for the admin API [default: 127.0.0.1:8081]; every request needs the admin
    /// token
    #[arg(long, env = "THAW_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Also serve `GET /metrics` (Prometheus) on this address, without authentication
    /// [default: only on the admin listener, with the admin token]
    #[arg(long, env = "THAW_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires [default: the data directory's admin.token,
    /// created with owner-only permissions on first start]
    #[arg(
        long,
        env = "THAW_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Directory holding deployed functions, wasm and compiled artifacts
    /// [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
    #[arg(long, env = "THAW_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Instances that may run at once across all functions; sizes the pooling allocator
    /// [default: 256]
    #[arg(long, env = "THAW_INSTANCE_SLOTS", value_name = "N")]
    pub instance_slots: Option<u32>,
    /// Ceiling for any function's linear memory, in MiB [default: 1024]
    #[arg(long, env = "THAW_MAX_MEMORY_MIB", value_name = "MIB")]
    pub max_memory_mib: Option<u64>,
    /// Use on-demand instance allocation instead of the pool (slower; for small address
    /// spaces) [default: false]
    #[arg(long, env = "THAW_ON_DEMAND_ALLOCATION", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub on_demand_allocation: Option<bool>,
    /// Memory kept resident per pooled memory slot between instances, in KiB (reset with
    /// memset, only the pages dirtied where the kernel has PAGEMAP_SCAN): larger is faster
    /// for JavaScript and Python guests, and keeps up to this much resident per slot used
    /// [default: 8192; 64 where the kernel has no PAGEMAP_SCAN (before Linux 6.7)]
    #[arg(long, env = "THAW_KEEP_RESIDENT_KIB", value_name = "KIB")]
    pub keep_resident_kib: Option<u64>,
    /// How long a request waits for a free instance slot before a 503, in ms [default: 1000]
    #[arg(long, env = "THAW_QUEUE_TIMEOUT_MS", value_name = "MS")]
    pub queue_timeout_ms: Option<u64>,
    /// How long in-flight requests get to finish on SIGINT/SIGTERM, in seconds [default: 30]
    #[arg(long, env = "THAW_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Largest wasm upload the admin API accepts, in MiB [default: 256]
    #[arg(long, env = "THAW_MAX_UPLOAD_MIB", value_name = "MIB")]
    pub max_upload_mib: Option<u64>,
    /// When functions found in the data directory are loaded: on first request (lazy), in
    /// the background after start-up, or before serving (eager) [default: background]
    #[arg(long, env = "THAW_LOAD", value_name = "MODE")]
    pub load: Option<LoadMode>,
    /// Most pre-instantiated (warm) instances per function; 0 turns warm pools off
    /// [default: 4]
    #[arg(long, env = "THAW_WARM_MAX", value_name = "N")]
    pub warm_max: Option<usize>,
    /// A function idle this long drops its warm instances (scale to zero), in seconds
    /// [default: 30]
    #[arg(long, env = "THAW_WARM_IDLE_SECS", value_name = "SECS")]
    pub warm_idle_secs: Option<u64>,
    /// A function idle this long has its code unloaded: its next request loads it from its
    /// artifact (a cold start from disk); 0 keeps code loaded for good, in seconds
    /// [default: 600]
    #[arg(long, env = "THAW_UNLOAD_IDLE_SECS", value_name = "SECS")]
    pub unload_idle_secs: Option<u64>,
    /// Answer deploys with code from Winch, the baseline compiler (compiles several times
    /// faster, runs slower), and switch to Cranelift's code when it is ready in the
    /// background [default: false]
    #[arg(long, env = "THAW_FAST_DEPLOY", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub fast_deploy: Option<bool>,
    /// Move a source function that serves 5 requests a second or more onto its snapshot
    /// (its engine with its program loaded, compiled in the background; seconds of CPU and
    /// tens of MB of disk per function), so that its instances start without loading it
    /// [default: true]
    #[arg(long, env = "THAW_SOURCE_SNAPSHOTS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub source_snapshots: Option<bool>,
    /// Keep Cranelift's incremental compilation cache in the data directory
    /// (compile-cache.redb): a function that shares most of its code with one compiled
    /// before (the same JS or Python runtime) compiles mostly from it [default: true]
    #[arg(long, env = "THAW_COMPILE_CACHE", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub compile_cache: Option<bool>,
    /// Versions kept per function for `thaw rollback` (those in a traffic split are kept
    /// whatever this says) [default: 10]
    #[arg(long, env = "THAW_KEEP_VERSIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub keep_versions: Option<u32>,
    /// Keep functions' wasi:keyvalue state on this Redis server (redis://HOST:PORT[/DB]),
    /// shared by every host pointed at it [default: embedded, keyvalue.redb in the data
    /// directory]
    #[arg(
        long,
        env = "THAW_KEYVALUE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub keyvalue: Option<String>,
    /// The NATS server whose JetStream streams functions' `trigger.nats` consume
    /// (nats://HOST:PORT) [default: none; such a trigger is refused at deploy]
    #[arg(
        long,
        env = "THAW_EVENTS_NATS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub events_nats: Option<String>,
    /// Where asynchronous invocations are queued: `nats://HOST:PORT` keeps them on that NATS
    /// server's JetStream, shared by a cluster's nodes (any node accepts, runs and answers
    /// them) [default: the data directory, this node alone]
    #[arg(long, env = "THAW_QUEUE", value_name = "URL", hide_env_values = true)]
    pub queue: Option<String>,
    /// The Redis server whose streams functions' `trigger.redis` consume
    /// (redis://HOST:PORT[/DB]) [default: none; such a trigger is refused at deploy]
    #[arg(
        long,
        env = "THAW_EVENTS_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub events_redis: Option<String>,
    /// Directory of the files `file:NAME` secrets of functions' `config` are read from
    /// [default: none; only `env:NAME` secrets, from THAW_SECRET_NAME]
    #[arg(long, env = "THAW_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Directory of the language engines source functions run on (`js.wasm`, `python.wasm`,
    /// built by scripts/build-engines into target/engines) [default: none; source deploys
    /// are refused]
    #[arg(long, env = "THAW_ENGINES", value_name = "DIR")]
    pub engines: Option<PathBuf>,
    /// Lines per second each function's output may add to the host's own log (stderr);
    /// the rest are counted and summed up in one line. 0: none (`thaw logs` still has
    /// them) [default: 100]
    #[arg(long, env = "THAW_GUEST_LOG_TO_HOST", value_name = "LINES_PER_SEC")]
    pub guest_log_to_host: Option<u32>,
    /// Export traces (OpenTelemetry, OTLP over HTTP) to the collector at this base URL,
    /// e.g. http://127.0.0.1:4318 (spans go to <URL>/v1/traces) [default: no traces]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Add a Server-Timing header (how the instance was obtained, and what it cost) to
    /// function responses [default: true]
    #[arg(long, env = "THAW_SERVER_TIMING", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub server_timing: Option<bool>,
    /// Count CPU fuel in every guest, so functions can set a `fuel` limit (costs some speed
    /// in CPU-bound guests; changes the compiled code, so artifacts are rebuilt once)
    /// [default: false]
    #[arg(long, env = "THAW_FUEL_METERING", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub fuel_metering: Option<bool>,
    /// How long a client may take to send a request's headers before its connection is
    /// closed (slow-client protection), in ms [default: 10000]
    #[arg(long, env = "THAW_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// How long a client may leave response bytes unread (no progress at all while some wait
    /// to be sent) before its connection is closed (nginx's `send_timeout`), in ms
    /// [default: 30000]
    #[arg(long, env = "THAW_SEND_TIMEOUT_MS", value_name = "MS")]
    pub send_timeout_ms: Option<u64>,
    /// Join a cluster coordinated by etcd, `etcd=URL[,URL...]` (http:// or https://): the
    /// registry lives in etcd and every node serves every function [default: a single host
    /// on its data directory]
    #[arg(long, env = "THAW_CLUSTER", value_name = "etcd=URLS")]
    pub cluster: Option<String>,
    /// The secret cluster nodes present to fetch code from each other, 16 characters or
    /// more, the same on every node (required with --cluster)
    #[arg(
        long,
        env = "THAW_CLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub cluster_token: Option<String>,
    /// This node's name in the cluster [default: the host name and the functions port]
    #[arg(long, env = "THAW_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Seconds a node that died stays in the cluster's member list (its etcd lease's TTL)
    /// [default: 10]
    #[arg(long, env = "THAW_CLUSTER_TTL_SECS", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cluster_ttl_secs: Option<u64>,
    /// Prefix of thaw's keys in etcd (clusters sharing one etcd need distinct ones)
    /// [default: /thaw/]
    #[arg(long, env = "THAW_CLUSTER_PREFIX", value_name = "PREFIX")]
    pub cluster_prefix: Option<String>,
    /// Host name or address peers reach this node at [default: the listeners' address, or
    /// the host name when they listen on every address]
    #[arg(long, env = "THAW_ADVERTISE_HOST", value_name = "HOST")]
    pub advertise_host: Option<String>,
    /// Fetch a peer's compiled artifact of a version instead of compiling it (nodes with
    /// the same engine compatibility key only) [default: true]
    #[arg(long, env = "THAW_ARTIFACT_SHARING", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub artifact_sharing: Option<bool>,
    /// etcd user, if etcd has authentication on (the password from --etcd-password)
    #[arg(long, env = "THAW_ETCD_USER", value_name = "USER")]
    pub etcd_user: Option<String>,
    /// etcd password
    #[arg(
        long,
        env = "THAW_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) of etcd's TLS server certificate
    #[arg(long, env = "THAW_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's TLS client authentication (with --etcd-key)
    #[arg(
        long,
        env = "THAW_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for --etcd-cert
    #[arg(
        long,
        env = "THAW_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// Function limit defaults (the file's `[limits]` table; on the command line,
    /// `--default-limit`).
    #[arg(skip)]
    pub limits: Option<toml::Table>,
}

/// Everything `thaw serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data-plane address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// Unauthenticated metrics address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Where traces go (an OTLP/HTTP collector's base URL), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// The Redis server of functions' key-value state, if not the embedded store.
    pub keyvalue: Option<String>,
    /// The NATS server of queue triggers, if any.
    pub events_nats: Option<String>,
    /// The Redis server of queue triggers, if any.
    pub events_redis: Option<String>,
    /// The NATS server of the asynchronous invocations' queue, if not the data directory.
    pub queue: Option<String>,
    /// The platform's settings.
    pub platform: PlatformConfig,
    /// Drain time at shutdown.
    pub drain_timeout: Duration,
    /// The data plane's TLS, if any.
    pub tls: Option<thaw_runtime::http::tls::TlsSource>,
    /// Time a client gets to send its request headers.
    pub header_read_timeout: Duration,
    /// Time a client may leave a response unread before its connection is closed.
    pub send_timeout: Duration,
    /// Largest admin upload, bytes.
    pub max_upload_bytes: u64,
    /// Manifests to deploy at start-up.
    pub deploy: Vec<PathBuf>,
    /// Build them first.
    pub build: bool,
    /// The admin token, if configured rather than read from the data directory.
    pub admin_token: Option<String>,
    /// The cluster to join, if any; an empty `node_id` is chosen once the listeners are
    /// bound (it includes the functions port).
    pub cluster: Option<thaw_runtime::cluster::ClusterOptions>,
    /// The host peers reach this node at, if not the listeners' address.
    pub advertise_host: Option<String>,
    /// Lines per second per function copied to the host's log.
    pub guest_log_to_host: u32,
}

/// Lays `over` on `base` key by key (tables recursively); `null`s in `over` are "not given".
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => overlay(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl ServeArgs {
    /// The settings from the file, with the flags' (and environment's) laid over them.
    pub fn settings(&self) -> anyhow::Result<HostSettings> {
        let mut merged = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                // Parsed as settings first, for errors that name the file and the key.
                let file: HostSettings = toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?;
                toml::Table::try_from(file)?
            }
            None => toml::Table::new(),
        };
        // Options that are `None` are not serialised: only what the command line set.
        let mut flags = toml::Table::try_from(&self.settings)?;
        // The three most common defaults have flags of their own (they came first); they
        // are shorthands for `--default-limit` and go through the same table.
        let shorthands = [
            ("timeout_ms", self.default_timeout_ms),
            ("memory_mib", self.default_memory_mib),
            ("max_request_body_kib", self.default_max_request_body_kib),
        ];
        let given: Vec<String> = shorthands
            .iter()
            .filter_map(|(key, value)| value.map(|v| format!("{key}={v}")))
            .chain(self.default_limits.iter().cloned())
            .collect();
        if !given.is_empty() {
            let mut limits = toml::Table::new();
            for pair in &given {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--default-limit {pair:?} is not KEY=VALUE"))?;
                let value: toml::Value = value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .with_context(|| format!("--default-limit {key}: {value:?} is not a number"))?;
                limits.insert(key.trim().to_owned(), value);
            }
            flags.insert("limits".into(), toml::Value::Table(limits));
        }
        overlay(&mut merged, flags);
        Ok(merged.try_into()?)
    }

    /// Merges flags, environment, file and defaults, and validates the result.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        // Renamed, not to be ignored silently: a host that turned Server-Timing off keeps it off.
        anyhow::ensure!(
            std::env::var_os("THAW_NO_SERVER_TIMING").is_none(),
            "THAW_NO_SERVER_TIMING is no longer read: set THAW_SERVER_TIMING=false (or pass \
             --server-timing=false) instead"
        );
        let s = self.settings()?;
        let cluster = cluster_options(&s)?;
        let bytes = |value: u64, shift: u32, what: &str| {
            value
                .checked_mul(1 << shift)
                .with_context(|| format!("{what} = {value} is too large"))
        };
        let tls = tls_source(&s)?;
        let data_dir = s.data_dir.unwrap_or_else(default_data_dir);
        let fuel_metering = s.fuel_metering.unwrap_or(false);
        let max_memory_mib = s.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB);
        let defaults = limit_defaults(s.limits.clone(), fuel_metering, max_memory_mib)?;
        let instance_slots = s.instance_slots.unwrap_or(DEFAULT_INSTANCE_SLOTS);
        anyhow::ensure!(instance_slots > 0, "--instance-slots must be at least 1");
        let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default).max(1));
        Ok(ServeConfig {
            listen: s
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            admin_listen: s
                .admin_listen
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
            metrics_listen: s.metrics_listen,
            otlp_endpoint: s.otlp_endpoint.clone(),
            keyvalue: s.keyvalue.clone(),
            events_nats: s.events_nats.clone(),
            events_redis: s.events_redis.clone(),
            queue: s.queue.clone(),
            platform: PlatformConfig {
                data_dir,
                engine: EngineOptions {
                    instance_slots,
                    max_memory_bytes: bytes(max_memory_mib, 20, "max_memory_mib")?,
                    on_demand: s.on_demand_allocation.unwrap_or(false),
                    keep_resident_bytes: match s.keep_resident_kib {
                        Some(kib) => bytes(kib, 10, "keep_resident_kib")?,
                        None => thaw_runtime::engine::default_keep_resident_bytes(),
                    },
                    fuel_metering,
                },
                defaults,
                load: s.load.unwrap_or(LoadMode::Background),
                pool: PoolOptions {
                    max_per_function: s.warm_max.unwrap_or(DEFAULT_WARM_MAX),
                    // Warm instances never take the last quarter of the slots: cold requests
                    // for other functions always find room.
                    reserve_slots: (instance_slots as usize).div_ceil(4),
                    idle_timeout: Duration::from_secs(
                        s.warm_idle_secs.unwrap_or(DEFAULT_WARM_IDLE_SECS),
                    ),
                    unload_after: match s.unload_idle_secs.unwrap_or(DEFAULT_UNLOAD_IDLE_SECS) {
                        0 => None,
                        secs => Some(Duration::from_secs(secs)),
                    },
                },
                server_timing: s.server_timing.unwrap_or(true),
                fast_deploy: s.fast_deploy.unwrap_or(false),
                source_snapshots: s.source_snapshots.unwrap_or(true),
                compile_cache: s.compile_cache.unwrap_or(true),
                traces: None,
                keep_versions: s
                    .keep_versions
                    .map_or(thaw_runtime::control::DEFAULT_KEEP_VERSIONS, |n| n as usize),
                secrets: thaw_runtime::guest::config::SecretSources {
                    dir: s.secrets_dir.clone(),
                },
                // Connected in `serve` (async) when `keyvalue` names a Redis server.
                keyvalue: Default::default(),
                engines: s.engines.clone(),
                queue_timeout: Duration::from_millis(
                    s.queue_timeout_ms.unwrap_or(DEFAULT_QUEUE_TIMEOUT_MS),
                ),
                trusted_proxies: s
                    .trusted_proxies
                    .as_deref()
                    .unwrap_or("")
                    .parse::<thaw_runtime::forwarded::TrustedProxies>()
                    .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?
                    .with_header(
                        s.forwarded_header
                            .as_deref()
                            .unwrap_or("x-forwarded-for")
                            .parse()
                            .map_err(|e| anyhow::anyhow!("forwarded_header: {e}"))?,
                    ),
            },
            tls,
            header_read_timeout: ms(s.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS),
            send_timeout: ms(s.send_timeout_ms, DEFAULT_SEND_TIMEOUT_MS),
            drain_timeout: Duration::from_secs(
                s.drain_timeout_secs.unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
            ),
            max_upload_bytes: bytes(
                s.max_upload_mib.unwrap_or(DEFAULT_MAX_UPLOAD_MIB),
                20,
                "max_upload_mib",
            )?,
            deploy: self.deploy.clone(),
            build: self.build,
            cluster,
            advertise_host: s.advertise_host.clone(),
            guest_log_to_host: s
                .guest_log_to_host
                .unwrap_or(thaw_runtime::guest::log::DEFAULT_HOST_COPY_RATE),
            admin_token: s.admin_token,
        })
    }
}

/// The function limit defaults (the file's `[limits]`, or `--default-limit`), checked
/// against what the host can give: fuel only with fuel metering, memory within
/// `--max-memory-mib`, a positive timeout, a host-resource count in range.
fn limit_defaults(
    table: Option<toml::Table>,
    fuel_metering: bool,
    max_memory_mib: u64,
) -> anyhow::Result<LimitDefaults> {
    let defaults: LimitDefaults = match table {
        Some(table) => table.try_into().context("the function limit defaults")?,
        None => LimitDefaults::default(),
    };
    anyhow::ensure!(
        defaults.fuel.is_none() || fuel_metering,
        "a default fuel limit needs fuel metering (--fuel-metering)"
    );
    anyhow::ensure!(
        defaults.memory_mib <= max_memory_mib,
        "the default memory limit ({} MiB) is above --max-memory-mib ({max_memory_mib} MiB)",
        defaults.memory_mib
    );
    anyhow::ensure!(
        defaults.timeout_ms > 0,
        "the default timeout must be positive"
    );
    let resources = thaw_runtime::spec::MIN_HOST_RESOURCES..=1 << 16;
    anyhow::ensure!(
        resources.contains(&defaults.max_host_resources),
        "the default max_host_resources ({}) must be {}..={}",
        defaults.max_host_resources,
        resources.start(),
        resources.end()
    );
    Ok(defaults)
}

/// The cluster settings, checked, if `--cluster` is given.
/// The data plane's TLS from the settings: a pair, a directory, or none; a pair must be
/// whole, and both at once is a mistake (a config file can say both; the flags cannot).
fn tls_source(s: &HostSettings) -> anyhow::Result<Option<thaw_runtime::http::tls::TlsSource>> {
    use thaw_runtime::http::tls::TlsSource;
    match (&s.tls_cert, &s.tls_key, &s.tls_dir) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), None) => Ok(Some(TlsSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, None, Some(dir)) => Ok(Some(TlsSource::Dir(dir.clone()))),
        (_, _, Some(_)) => anyhow::bail!("tls_dir and tls_cert/tls_key are alternatives: give one"),
        _ => anyhow::bail!("tls_cert and tls_key go together: give both"),
    }
}

fn cluster_options(
    s: &HostSettings,
) -> anyhow::Result<Option<thaw_runtime::cluster::ClusterOptions>> {
    let Some(cluster) = &s.cluster else {
        anyhow::ensure!(
            s.cluster_token.is_none() && s.node_id.is_none(),
            "--cluster-token and --node-id need --cluster"
        );
        return Ok(None);
    };
    let urls = cluster
        .strip_prefix("etcd=")
        .with_context(|| format!("--cluster {cluster:?}: expected etcd=http://HOST:PORT[,...]"))?;
    let endpoints: Vec<String> = urls
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    anyhow::ensure!(!endpoints.is_empty(), "--cluster etcd=: no etcd URL");
    for url in &endpoints {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--cluster: {url:?} is not an http:// or https:// URL"
        );
    }
    let token = s.cluster_token.clone().context(
        "--cluster needs --cluster-token (or THAW_CLUSTER_TOKEN), the same on every node",
    )?;
    anyhow::ensure!(
        token.len() >= 16,
        "--cluster-token must be at least 16 characters"
    );
    if let Some(id) = &s.node_id {
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "--node-id {id:?}: letters, digits, '-', '_' and '.' only (it is part of etcd keys)"
        );
    }
    let prefix = s
        .cluster_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.into());
    anyhow::ensure!(prefix.ends_with('/'), "--cluster-prefix must end with '/'");
    anyhow::ensure!(
        s.etcd_user.is_some() == s.etcd_password.is_some(),
        "--etcd-user and --etcd-password go together"
    );
    Ok(Some(thaw_runtime::cluster::ClusterOptions {
        endpoints,
        user: s.etcd_user.clone().zip(s.etcd_password.clone()),
        ca_file: s.etcd_ca.clone(),
        client_cert: s.etcd_cert.clone().zip(s.etcd_key.clone()),
        prefix,
        node_id: s.node_id.clone().unwrap_or_default(),
        lease_ttl: Duration::from_secs(s.cluster_ttl_secs.unwrap_or(DEFAULT_CLUSTER_TTL_SECS)),
        token,
        share_artifacts: s.artifact_sharing.unwrap_or(true),
    }))
}

/// `$XDG_DATA_HOME/thaw`, else `~/.local/share/thaw`, else `./.thaw`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("thaw");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Path::new(&home).join(".local/share/thaw");
    }
    PathBuf::from(".thaw")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("thaw").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thaw.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        (dir, path)
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let (_dir, path) = file(
            "instance_slots = 7\nqueue_timeout_ms = 5\ndata_dir = \"/tmp/x\"\n[limits]\ntimeout_ms = 42\n",
        );
        let config = parse(&["--config", &path, "--queue-timeout-ms", "9"])
            .resolve()
            .unwrap();
        assert_eq!(config.platform.engine.instance_slots, 7);
        assert_eq!(config.platform.queue_timeout, Duration::from_millis(9));
        assert_eq!(config.platform.defaults.timeout_ms, 42);
        assert_eq!(
            config.platform.defaults.memory_mib,
            thaw_runtime::spec::DEFAULT_MEMORY_MIB
        );
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn a_flag_overrides_the_file_both_ways() {
        let (_dir, path) = file("fast_deploy = true\nserver_timing = false\n");
        let from_file = parse(&["--config", &path]).resolve().unwrap();
        assert!(from_file.platform.fast_deploy);
        assert!(!from_file.platform.server_timing);
        let flipped = parse(&["--config", &path, "--fast-deploy=false", "--server-timing"])
            .resolve()
            .unwrap();
        assert!(!flipped.platform.fast_deploy);
        assert!(flipped.platform.server_timing);
    }

    #[test]
    fn default_limits_from_the_file_and_the_flag() {
        let (_dir, path) = file("[limits]\ntimeout_ms = 42\nmemory_mib = 64\n");
        let config = parse(&["--config", &path, "--default-limit", "memory_mib=32"])
            .resolve()
            .unwrap();
        assert_eq!(config.platform.defaults.timeout_ms, 42);
        assert_eq!(config.platform.defaults.memory_mib, 32);
        let bad = parse(&["--default-limit", "memry_mib=32"])
            .resolve()
            .unwrap_err();
        assert!(format!("{bad:#}").contains("unknown field"), "{bad:#}");
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let (_dir, path) = file("instance_slot = 7\n");
        let err = format!("{:#}", parse(&["--config", &path]).resolve().unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
    }

    /// Every `[default: ...]` that `thaw serve --help` shows is what `resolve` applies when
    /// nothing is given (the defaults live in the help text because a setting may also come
    /// from the config file, so clap's own defaults cannot be used).
    #[test]
    fn help_defaults_are_what_resolve_applies() {
        use clap::CommandFactory as _;
        let plain = parse(&[]).resolve().unwrap();
        let clustered = parse(&[
            "--cluster",
            "etcd=http://127.0.0.1:1",
            "--cluster-token",
            "0123456789abcdef",
        ])
        .resolve()
        .unwrap();
        let applied = applied_defaults(&plain, &clustered);
        let mut checked = 0;
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_long_help().or(arg.get_help());
            let help = help.map(|h| h.to_string()).unwrap_or_default();
            let Some(start) = help.find("[default: ") else {
                continue;
            };
            let text = &help[start + "[default: ".len()..];
            let text = &text[..text.find(']').expect("a closing bracket")];
            // The value, before any explanation (`127.0.0.1:8080; port 0 picks ...`).
            let documented = text.split([';', ',']).next().unwrap().trim();
            match applied.get(id) {
                Some(value) => {
                    assert_eq!(documented, value, "--{id}: --help says [default: {text}]");
                    checked += 1;
                }
                None => assert!(
                    documented.contains(' '),
                    "--{id}: [default: {documented}] looks like a value: add it to this test"
                ),
            }
        }
        assert_eq!(
            checked,
            applied.len(),
            "every default listed here is in --help"
        );
    }

    /// What `resolve` applied, by setting, as `--help` prints it.
    fn tls_default(config: &ServeConfig) -> String {
        match config.tls {
            None => "plain HTTP".into(),
            Some(_) => "TLS".into(),
        }
    }

    fn applied_defaults(
        plain: &ServeConfig,
        clustered: &ServeConfig,
    ) -> std::collections::HashMap<&'static str, String> {
        let cluster = clustered.cluster.clone().unwrap();
        let p = &plain.platform;
        let load = serde_json::to_value(p.load).unwrap();
        [
            ("listen", plain.listen.to_string()),
            ("admin_listen", plain.admin_listen.to_string()),
            ("instance_slots", p.engine.instance_slots.to_string()),
            (
                "max_memory_mib",
                (p.engine.max_memory_bytes >> 20).to_string(),
            ),
            ("on_demand_allocation", p.engine.on_demand.to_string()),
            // The help gives the value on a kernel with PAGEMAP_SCAN (and says what it is
            // without); on one without, the 64 KiB it says is what must apply.
            ("keep_resident_kib", {
                let kib = p.engine.keep_resident_bytes >> 10;
                if thaw_runtime::engine::pagemap_scan_available() {
                    kib.to_string()
                } else {
                    assert_eq!(kib, 64, "without PAGEMAP_SCAN the default is 64 KiB");
                    "8192".to_owned()
                }
            }),
            ("queue_timeout_ms", p.queue_timeout.as_millis().to_string()),
            (
                "drain_timeout_secs",
                plain.drain_timeout.as_secs().to_string(),
            ),
            ("max_upload_mib", (plain.max_upload_bytes >> 20).to_string()),
            ("load", load.as_str().unwrap().to_owned()),
            ("warm_max", p.pool.max_per_function.to_string()),
            ("warm_idle_secs", p.pool.idle_timeout.as_secs().to_string()),
            (
                "unload_idle_secs",
                p.pool.unload_after.map_or(0, |d| d.as_secs()).to_string(),
            ),
            ("fast_deploy", p.fast_deploy.to_string()),
            ("source_snapshots", p.source_snapshots.to_string()),
            ("compile_cache", p.compile_cache.to_string()),
            ("keep_versions", p.keep_versions.to_string()),
            (
                "keyvalue",
                plain.keyvalue.clone().unwrap_or("embedded".into()),
            ),
            (
                "events_nats",
                plain.events_nats.clone().unwrap_or("none".into()),
            ),
            (
                "events_redis",
                plain.events_redis.clone().unwrap_or("none".into()),
            ),
            (
                "secrets_dir",
                p.secrets
                    .dir
                    .as_ref()
                    .map_or("none".into(), |d| d.display().to_string()),
            ),
            (
                "engines",
                p.engines
                    .as_ref()
                    .map_or("none".into(), |d| d.display().to_string()),
            ),
            ("guest_log_to_host", plain.guest_log_to_host.to_string()),
            ("server_timing", p.server_timing.to_string()),
            ("fuel_metering", p.engine.fuel_metering.to_string()),
            ("forwarded_header", "x-forwarded-for".into()),
            (
                "trusted_proxies",
                if p.trusted_proxies.is_empty() {
                    "none"
                } else {
                    "some"
                }
                .into(),
            ),
            // Both documented as "plain HTTP": no TLS unless given.
            ("tls_cert", tls_default(plain)),
            ("tls_dir", tls_default(plain)),
            (
                "header_read_timeout_ms",
                plain.header_read_timeout.as_millis().to_string(),
            ),
            (
                "send_timeout_ms",
                plain.send_timeout.as_millis().to_string(),
            ),
            ("cluster_ttl_secs", cluster.lease_ttl.as_secs().to_string()),
            ("cluster_prefix", cluster.prefix.clone()),
            ("artifact_sharing", cluster.share_artifacts.to_string()),
            ("default_timeout_ms", p.defaults.timeout_ms.to_string()),
            ("default_memory_mib", p.defaults.memory_mib.to_string()),
            (
                "default_max_request_body_kib",
                p.defaults.max_request_body_kib.to_string(),
            ),
        ]
        .into_iter()
        .collect()
    }
}
