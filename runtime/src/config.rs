//! Host configuration: flags, environment variables and a TOML file, resolved once into
//! [`ServeConfig`] before anything binds a socket.
//!
//! Precedence, highest first: command-line flag, environment variable (clap reads both), the
//! config file (`--config` / `THAW_CONFIG`), the defaults below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::engine::EngineOptions;
use crate::platform::{LoadMode, PlatformConfig};
use crate::pool::PoolOptions;
use crate::spec::LimitDefaults;

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
/// Default time a client gets to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time a client may leave response bytes unread: nginx's `send_timeout` is 60 s;
/// half that, because a function's buffered response is memory the host holds meanwhile.
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
/// Default largest upload on the admin API.
pub const DEFAULT_MAX_UPLOAD_MIB: u64 = 256;

/// `thaw serve` flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Address for function traffic [default: 127.0.0.1:8080; port 0 picks a free port]
    #[arg(long, env = "THAW_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address for the admin API [default: 127.0.0.1:8081]; every request needs the admin
    /// token
    #[arg(long, env = "THAW_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
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
    /// TOML file with any of these settings (flags and env vars override it)
    #[arg(long, env = "THAW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instances that may run at once across all functions; sizes the pooling allocator
    /// [default: 256]
    #[arg(long, env = "THAW_INSTANCE_SLOTS", value_name = "N")]
    pub instance_slots: Option<u32>,
    /// Ceiling for any function's linear memory, in MiB [default: 1024]
    #[arg(long, env = "THAW_MAX_MEMORY_MIB", value_name = "MIB")]
    pub max_memory_mib: Option<u64>,
    /// Use on-demand instance allocation instead of the pool (slower; for small address spaces)
    #[arg(long, env = "THAW_ON_DEMAND_ALLOCATION")]
    pub on_demand_allocation: bool,
    /// How long a request waits for a free instance slot before a 503, in ms [default: 1000]
    #[arg(long, env = "THAW_QUEUE_TIMEOUT_MS", value_name = "MS")]
    pub queue_timeout_ms: Option<u64>,
    /// How long in-flight requests get to finish on SIGINT/SIGTERM, in seconds [default: 30]
    #[arg(long, env = "THAW_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Largest wasm upload the admin API accepts, in MiB [default: 256]
    #[arg(long, env = "THAW_MAX_UPLOAD_MIB", value_name = "MIB")]
    pub max_upload_mib: Option<u64>,
    /// Request timeout for functions that set none, in ms [default: 10000]
    #[arg(long, env = "THAW_DEFAULT_TIMEOUT_MS", value_name = "MS")]
    pub default_timeout_ms: Option<u64>,
    /// Linear memory for functions that set none, in MiB [default: 128]
    #[arg(long, env = "THAW_DEFAULT_MEMORY_MIB", value_name = "MIB")]
    pub default_memory_mib: Option<u64>,
    /// Largest request body for functions that set none, in KiB [default: 16384]
    #[arg(long, env = "THAW_DEFAULT_MAX_REQUEST_BODY_KIB", value_name = "KIB")]
    pub default_max_request_body_kib: Option<u64>,
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
    /// Answer deploys with code from Winch, the baseline compiler (compiles several times
    /// faster, runs slower), and switch to Cranelift's code when it is ready in the background
    #[arg(long, env = "THAW_FAST_DEPLOY")]
    pub fast_deploy: bool,
    /// Leave out the Server-Timing header on function responses
    #[arg(long, env = "THAW_NO_SERVER_TIMING")]
    pub no_server_timing: bool,
    /// Count CPU fuel in every guest, so functions can set a `fuel` limit (costs some speed
    /// in CPU-bound guests; changes the compiled code, so artifacts are rebuilt once)
    #[arg(long, env = "THAW_FUEL_METERING")]
    pub fuel_metering: bool,
    /// How long a client may take to send a request's headers before its connection is
    /// closed (slow-client protection), in ms [default: 10000]
    #[arg(long, env = "THAW_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// How long a client may leave response bytes unread (no progress at all while some wait
    /// to be sent) before its connection is closed (nginx's `send_timeout`), in ms
    /// [default: 30000]
    #[arg(long, env = "THAW_SEND_TIMEOUT_MS", value_name = "MS")]
    pub send_timeout_ms: Option<u64>,
    /// Deploy the functions of this manifest (thaw.toml) at start-up; repeatable
    #[arg(long, value_name = "MANIFEST")]
    pub deploy: Vec<PathBuf>,
    /// Run the manifests' build commands before deploying them
    #[arg(long, requires = "deploy")]
    pub build: bool,
}

/// The config file; every field optional, names as the long flags with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    instance_slots: Option<u32>,
    max_memory_mib: Option<u64>,
    on_demand_allocation: Option<bool>,
    queue_timeout_ms: Option<u64>,
    drain_timeout_secs: Option<u64>,
    max_upload_mib: Option<u64>,
    load: Option<LoadMode>,
    warm_max: Option<usize>,
    warm_idle_secs: Option<u64>,
    server_timing: Option<bool>,
    fast_deploy: Option<bool>,
    fuel_metering: Option<bool>,
    header_read_timeout_ms: Option<u64>,
    send_timeout_ms: Option<u64>,
    /// Default limits, as in a function's `limits` table.
    #[serde(default)]
    limits: Option<LimitDefaults>,
}

/// Everything `thaw serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data-plane address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// The platform's settings.
    pub platform: PlatformConfig,
    /// Drain time at shutdown.
    pub drain_timeout: Duration,
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
}

impl ServeArgs {
    /// Merges flags, environment, file and defaults.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let mut defaults = file.limits.unwrap_or_default();
        if let Some(v) = self.default_timeout_ms {
            defaults.timeout_ms = v;
        }
        if let Some(v) = self.default_memory_mib {
            defaults.memory_mib = v;
        }
        if let Some(v) = self.default_max_request_body_kib {
            defaults.max_request_body_kib = v;
        }
        let fuel_metering = self.fuel_metering || file.fuel_metering.unwrap_or(false);
        anyhow::ensure!(
            defaults.fuel.is_none() || fuel_metering,
            "a default fuel limit needs fuel metering (--fuel-metering)"
        );
        let max_memory_mib = self
            .max_memory_mib
            .or(file.max_memory_mib)
            .unwrap_or(DEFAULT_MAX_MEMORY_MIB);
        anyhow::ensure!(
            defaults.memory_mib <= max_memory_mib,
            "the default memory limit ({} MiB) is above --max-memory-mib ({max_memory_mib} MiB)",
            defaults.memory_mib
        );
        anyhow::ensure!(
            defaults.timeout_ms > 0,
            "the default timeout must be positive"
        );
        let instance_slots = self
            .instance_slots
            .or(file.instance_slots)
            .unwrap_or(DEFAULT_INSTANCE_SLOTS);
        anyhow::ensure!(instance_slots > 0, "--instance-slots must be at least 1");
        Ok(ServeConfig {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
            platform: PlatformConfig {
                data_dir,
                engine: EngineOptions {
                    instance_slots,
                    max_memory_bytes: max_memory_mib << 20,
                    on_demand: self.on_demand_allocation
                        || file.on_demand_allocation.unwrap_or(false),
                    fuel_metering,
                },
                defaults,
                load: self.load.or(file.load).unwrap_or(LoadMode::Background),
                pool: PoolOptions {
                    max_per_function: self.warm_max.or(file.warm_max).unwrap_or(DEFAULT_WARM_MAX),
                    // Warm instances never take the last quarter of the slots: cold requests
                    // for other functions always find room.
                    reserve_slots: (instance_slots as usize).div_ceil(4),
                    idle_timeout: Duration::from_secs(
                        self.warm_idle_secs
                            .or(file.warm_idle_secs)
                            .unwrap_or(DEFAULT_WARM_IDLE_SECS),
                    ),
                },
                server_timing: !self.no_server_timing && file.server_timing.unwrap_or(true),
                fast_deploy: self.fast_deploy || file.fast_deploy.unwrap_or(false),
                queue_timeout: Duration::from_millis(
                    self.queue_timeout_ms
                        .or(file.queue_timeout_ms)
                        .unwrap_or(DEFAULT_QUEUE_TIMEOUT_MS),
                ),
            },
            header_read_timeout: Duration::from_millis(
                self.header_read_timeout_ms
                    .or(file.header_read_timeout_ms)
                    .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS)
                    .max(1),
            ),
            send_timeout: Duration::from_millis(
                self.send_timeout_ms
                    .or(file.send_timeout_ms)
                    .unwrap_or(DEFAULT_SEND_TIMEOUT_MS)
                    .max(1),
            ),
            drain_timeout: Duration::from_secs(
                self.drain_timeout_secs
                    .or(file.drain_timeout_secs)
                    .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
            ),
            max_upload_bytes: self
                .max_upload_mib
                .or(file.max_upload_mib)
                .unwrap_or(DEFAULT_MAX_UPLOAD_MIB)
                << 20,
            deploy: self.deploy.clone(),
            build: self.build,
            admin_token: self.admin_token.clone(),
        })
    }
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

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("thaw.toml");
        std::fs::write(
            &file,
            "instance_slots = 7\nqueue_timeout_ms = 5\n[limits]\ntimeout_ms = 42\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            queue_timeout_ms: Some(9),
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.platform.engine.instance_slots, 7);
        assert_eq!(config.platform.queue_timeout, Duration::from_millis(9));
        assert_eq!(config.platform.defaults.timeout_ms, 42);
        assert_eq!(
            config.platform.defaults.memory_mib,
            crate::spec::DEFAULT_MEMORY_MIB
        );
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("thaw.toml");
        std::fs::write(&file, "instance_slot = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
    }
}
