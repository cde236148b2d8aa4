//! What a user says about a function: its route, environment and limits.
//!
//! A [`FunctionSpec`] arrives with a deploy (as JSON over the admin API, or as a `[[function]]`
//! table in a `thaw.toml` manifest) and is validated here, before anything is compiled. Limits
//! left out fall back to the host's defaults ([`LimitDefaults`]) when the function is loaded, so
//! changing a default applies to every function that did not choose its own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default request timeout: long enough for real work, short enough that a stuck guest does not
/// hold a slot for long.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default linear memory per instance.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Default maximum request body.
pub const DEFAULT_MAX_REQUEST_BODY_KIB: u64 = 16 * 1024;
/// Default maximum response body (a CGI module's whole stdout is buffered).
pub const DEFAULT_MAX_RESPONSE_BODY_KIB: u64 = 64 * 1024;
/// Default bound of a function's wait queue (when it has a concurrency limit).
pub const DEFAULT_MAX_QUEUE: u32 = 128;
/// Default request header section limit: what browsers and proxies send fits many times.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// Default header field count limit.
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// Default outbound requests per invocation.
pub const DEFAULT_MAX_OUTBOUND_REQUESTS: u32 = 16;
/// Default outbound request timeout.
pub const DEFAULT_OUTBOUND_TIMEOUT_MS: u64 = 10_000;
/// Default largest value a function may store in its key-value store.
pub const DEFAULT_KV_MAX_VALUE_KIB: u64 = 1024;
/// Default most keys in a function's key-value store (all its buckets).
pub const DEFAULT_KV_MAX_KEYS: u64 = 100_000;
/// Default most bytes (keys and values) in a function's key-value store.
pub const DEFAULT_KV_MAX_MIB: u64 = 256;
/// Default largest SQL database of a function (each of its databases).
pub const DEFAULT_SQL_MAX_MIB: u64 = 256;
/// Default longest one SQL statement may run.
pub const DEFAULT_SQL_STATEMENT_MS: u64 = 1_000;
/// Default most rows in one SQL result.
pub const DEFAULT_SQL_MAX_ROWS: u64 = 10_000;
/// Default most bytes in one SQL result.
pub const DEFAULT_SQL_MAX_RESULT_KIB: u64 = 16 * 1024;
/// Default most Postgres connections a function holds to one database.
pub const DEFAULT_PG_MAX_CONNECTIONS: u32 = 4;
/// Default longest a statement waits for a Postgres connection (or to make one).
pub const DEFAULT_PG_ACQUIRE_MS: u64 = 2_000;
/// Default most host resources (WASI and `wasi:http` handles: fields, requests, responses,
/// bodies, streams, pollables) one request may hold at once. Each costs the host at most
/// about [`HOST_RESOURCE_BYTES`], so this bounds the host memory a guest can pin outside its
/// `memory_mib`: 512 × 256 KiB = 128 MiB per request, as much as the default `memory_mib`.
pub const DEFAULT_MAX_HOST_RESOURCES: u32 = 512;
/// Fewest host resources a function may be given: its stdio, its request and response with
/// their bodies and streams, and room for real work.
pub const MIN_HOST_RESOURCES: u32 = 64;
/// The most host memory one host resource of a guest can hold: an outgoing request or
/// response with its headers (32 KiB), its method, authority and path (9.25 KiB), its body's
/// two buffered 64 KiB chunks and its trailers (32 KiB), and the maps' overhead. The host
/// enforces each part (`thaw_runtime::guest::host`); this is their documented sum.
pub const HOST_RESOURCE_BYTES: u64 = 256 << 10;
/// Longest timeout a spec may ask for.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Most environment variables a function may have. The list is copied into every
/// instance's WASI context, per request, and shown by the admin API: it must stay small.
/// (AWS Lambda allows 4 KiB in all; a few hundred variables is already a configuration
/// store, which is what files and, later, `wasi:config` are for.)
pub const MAX_ENV_VARS: usize = 256;
/// Most bytes of environment (names and values) a function may have; see [`MAX_ENV_VARS`].
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Most entries in `sqlite_databases`.
pub const MAX_DATABASES: usize = 64;
/// Longest SQL database name.
pub const MAX_DATABASE_NAME_BYTES: usize = 64;
/// Most entries in `postgres_databases`: each is a connection pool the host keeps, so the
/// same bound as the addresses a guest may open itself (thaw-runtime's `postgres` module).
pub const MAX_POSTGRES_DATABASES: usize = 8;

/// Most entries in `allowed_outbound_hosts`: each outbound request checks them in turn.
pub const MAX_OUTBOUND_PATTERNS: usize = 256;
/// Most directory grants: each is a preopen (an `open` call) per request.
pub const MAX_DIRS: usize = 64;

/// A function's deploy-time description, without the code.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Path prefix the function serves; `/<name>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Environment variables the function sees (and nothing else of the host's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Per-function limits; unset fields use the host's defaults.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Opt-in instance reuse (see thaw-runtime's `pool` module); absent means one instance
    /// per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<ReuseSpec>,
    /// Pre-initialise a component that exports `wizer-initialize` (see thaw-runtime's
    /// `snapshot` module);
    /// `false` turns it off. Absent means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// Hosts the function may send HTTP requests to, as `scheme://host[:port]` patterns (see
    /// [`crate::outbound`]); empty (the default) denies all outbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Host directories the function may read (or, when `writable`, write); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// SQL databases the function may open besides `default` (always its own), by name
    /// (see thaw-runtime's `sql` module); Spin's `sqlite_databases`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sqlite_databases: Vec<String>,
    /// Postgres databases given to the function, by the name its code opens them with, each
    /// with the secret that holds its URL (`postgres://user:password@host/db`): the URL and
    /// its credentials live in the host's secrets, never in the spec. Naming one grants it;
    /// no `allowed_outbound_hosts` entry is needed (see thaw-runtime's `postgres` module).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub postgres_databases: BTreeMap<String, PostgresDatabase>,
    /// What `wasi:config/store` answers: values, and references to secrets the host
    /// resolves (see [`crate::config`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, crate::config::ConfigValue>,
    /// When the host runs the function on its own, besides HTTP (see [`crate::events`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<crate::events::ScheduleSpec>,
    /// How asynchronous invocations (`Prefer: respond-async`) are retried and bounded;
    /// absent means the defaults (see [`crate::events::AsyncSpec`]).
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub async_policy: Option<crate::events::AsyncSpec>,
    /// A queue whose messages start the function (see [`crate::events::TriggerSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::events::TriggerSpec>,
    /// Static files the host serves for the function without starting it (see
    /// [`crate::assets`]); uploaded with the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<crate::assets::AssetsSpec>,
    /// Where the code came from, when not from the deployer's disk: the registry reference
    /// pinned to its manifest's digest (`oci://HOST/REPO@sha256:…`), recorded by the CLI
    /// that pulled it and shown with the version. Informational: the host keeps the code
    /// by its own digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A Postgres database given to a function.
///
/// ```toml
/// [function.postgres_databases]
/// orders = { secret = "env:ORDERS_DB" }   # the host's THAW_SECRET_ORDERS_DB holds the URL
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDatabase {
    /// Where the host reads the database's URL (`env:NAME` or `file:NAME`, as for a
    /// configuration secret).
    pub secret: crate::config::SecretRef,
}

/// A host directory made visible to a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Absolute path on the host.
    pub host: std::path::PathBuf,
    /// Absolute path the guest sees it at.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it [default: false].
    #[serde(default)]
    pub writable: bool,
}

/// Instance reuse for a trusted function: an instance serves up to `max_requests` requests
/// and keeps its memory between them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseSpec {
    /// Requests one instance serves before it is retired.
    pub max_requests: u32,
    /// An idle reused instance is dropped after this long, in ms [default: 60000].
    #[serde(default = "default_reuse_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Requests one instance serves at the same time [default: 16, as `wasmtime serve`].
    /// Only a WASIp3 (`wasi:http/handler@0.3.0`) component can take more than one: its
    /// handler is async. A WASIp2 instance serves its requests one after the other.
    #[serde(default = "default_reuse_concurrent")]
    pub max_concurrent: u32,
}

fn default_reuse_idle_ms() -> u64 {
    60_000
}

fn default_reuse_concurrent() -> u32 {
    16
}

/// Reuse resolved for the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// Requests per instance.
    pub max_requests: u32,
    /// Idle lifetime of a reused instance.
    pub idle_timeout: Duration,
    /// Requests one (WASIp3) instance serves at once.
    pub max_concurrent: u32,
}

impl ReuseSpec {
    /// The request path's form.
    pub fn resolve(&self) -> Reuse {
        Reuse {
            max_requests: self.max_requests,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_concurrent: self.max_concurrent,
        }
    }
}

/// Limits as written by the user; `None` means "the host default". Also the limit flags of
/// `thaw deploy`, so the doc comments are the `--help` text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Wall-clock time for one request, in ms; CPU-bound guests are interrupted
    /// [default: the host's, 10000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MS"))]
    pub timeout_ms: Option<u64>,
    /// Linear memory per instance, in MiB [default: the host's, 128]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MIB"))]
    pub memory_mib: Option<u64>,
    /// Largest accepted request body, in KiB [default: the host's, 16384]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "KIB"))]
    pub max_request_body_kib: Option<u64>,
    /// Largest response body, in KiB; a guest that writes more is stopped [default: the
    /// host's, 65536]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "KIB"))]
    pub max_response_body_kib: Option<u64>,
    /// CPU fuel for one request (about one unit per wasm instruction); needs a host started
    /// with --fuel-metering [default: the host's, unlimited]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "UNITS"))]
    pub fuel: Option<u64>,
    /// Requests of this function running at once [default: the host's, unlimited: only the
    /// instance slots bound it]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for one of those places; more are refused with 503 at once
    /// [default: the host's, 128]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_queue: Option<u32>,
    /// Largest request header section (names, values, separators), in bytes [default: the
    /// host's, 16384]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "BYTES"))]
    pub max_header_bytes: Option<u64>,
    /// Most request header fields [default: the host's, 100]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_headers: Option<u32>,
    /// Outbound HTTP requests one invocation may send [default: the host's, 16]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_outbound_requests: Option<u32>,
    /// Timeout of each outbound request (connect, first byte, between bytes), in ms
    /// [default: the host's, 10000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MS"))]
    pub outbound_timeout_ms: Option<u64>,
    /// Largest value the function may store in its key-value store, in KiB [default: the
    /// host's, 1024]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "KIB"))]
    pub kv_max_value_kib: Option<u64>,
    /// Most keys in the function's key-value store, all buckets [default: the host's, 100000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub kv_max_keys: Option<u64>,
    /// Most bytes (keys and values) in the function's key-value store, in MiB [default: the
    /// host's, 256]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MIB"))]
    pub kv_max_mib: Option<u64>,
    /// Largest SQL database (each of the function's), in MiB; past it writes fail and reads
    /// work [default: the host's, 256]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MIB"))]
    pub sql_max_mib: Option<u64>,
    /// Longest one SQL statement may run, in ms [default: the host's, 1000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MS"))]
    pub sql_statement_ms: Option<u64>,
    /// Most rows in one SQL result [default: the host's, 10000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub sql_max_rows: Option<u64>,
    /// Most bytes in one SQL result, in KiB [default: the host's, 16384]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "KIB"))]
    pub sql_max_result_kib: Option<u64>,
    /// Most connections the host holds for the function to one Postgres database (its
    /// pool) [default: the host's, 4]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub pg_max_connections: Option<u32>,
    /// Longest a Postgres statement waits for a pooled connection (or for a new one), in ms
    /// [default: the host's, 2000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "MS"))]
    pub pg_acquire_ms: Option<u64>,
    /// Most host resources (handles to fields, requests, bodies, streams, pollables) one
    /// request may hold at once; each costs the host at most 256 KiB, so this bounds the host
    /// memory a guest pins outside `memory_mib` (64..=65536) [default: the host's, 512]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub max_host_resources: Option<u32>,
    /// Requests per second the function takes on this host; more are 429 with Retry-After,
    /// before any instance starts [default: the host's, unlimited]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub rate_per_s: Option<u32>,
    /// Requests the function takes at once above `rate_per_s` after a quiet spell (the
    /// bucket's size) [default: the host's, rate_per_s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub burst: Option<u32>,
    /// Requests per second one client address may send the function on this host (an IPv6
    /// client counts by its /64) [default: the host's, unlimited]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub client_rate_per_s: Option<u32>,
    /// The bucket of `client_rate_per_s` [default: the host's, client_rate_per_s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub client_burst: Option<u32>,
}

/// The host-wide defaults for [`LimitsSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitDefaults {
    /// See [`LimitsSpec::timeout_ms`].
    pub timeout_ms: u64,
    /// See [`LimitsSpec::memory_mib`].
    pub memory_mib: u64,
    /// See [`LimitsSpec::max_request_body_kib`].
    pub max_request_body_kib: u64,
    /// See [`LimitsSpec::max_response_body_kib`].
    pub max_response_body_kib: u64,
    /// See [`LimitsSpec::fuel`]; `None` is unlimited.
    pub fuel: Option<u64>,
    /// See [`LimitsSpec::max_concurrency`]; `None` is unlimited.
    pub max_concurrency: Option<u32>,
    /// See [`LimitsSpec::max_queue`].
    pub max_queue: u32,
    /// See [`LimitsSpec::max_header_bytes`].
    pub max_header_bytes: u64,
    /// See [`LimitsSpec::max_headers`].
    pub max_headers: u32,
    /// See [`LimitsSpec::max_outbound_requests`].
    pub max_outbound_requests: u32,
    /// See [`LimitsSpec::outbound_timeout_ms`].
    pub outbound_timeout_ms: u64,
    /// See [`LimitsSpec::kv_max_value_kib`].
    pub kv_max_value_kib: u64,
    /// See [`LimitsSpec::kv_max_keys`].
    pub kv_max_keys: u64,
    /// See [`LimitsSpec::kv_max_mib`].
    pub kv_max_mib: u64,
    /// See [`LimitsSpec::sql_max_mib`].
    pub sql_max_mib: u64,
    /// See [`LimitsSpec::sql_statement_ms`].
    pub sql_statement_ms: u64,
    /// See [`LimitsSpec::sql_max_rows`].
    pub sql_max_rows: u64,
    /// See [`LimitsSpec::sql_max_result_kib`].
    pub sql_max_result_kib: u64,
    /// See [`LimitsSpec::pg_max_connections`].
    pub pg_max_connections: u32,
    /// See [`LimitsSpec::pg_acquire_ms`].
    pub pg_acquire_ms: u64,
    /// See [`LimitsSpec::max_host_resources`].
    pub max_host_resources: u32,
    /// See [`LimitsSpec::rate_per_s`]; `None` is unlimited.
    pub rate_per_s: Option<u32>,
    /// See [`LimitsSpec::burst`].
    pub burst: Option<u32>,
    /// See [`LimitsSpec::client_rate_per_s`]; `None` is unlimited.
    pub client_rate_per_s: Option<u32>,
    /// See [`LimitsSpec::client_burst`].
    pub client_burst: Option<u32>,
    /// Whether the host counts fuel at all (`--fuel-metering`); the platform sets it from its
    /// engine, it is not a key of the config file's `[limits]`.
    #[serde(skip)]
    pub fuel_metering: bool,
}

impl Default for LimitDefaults {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_mib: DEFAULT_MEMORY_MIB,
            max_request_body_kib: DEFAULT_MAX_REQUEST_BODY_KIB,
            max_response_body_kib: DEFAULT_MAX_RESPONSE_BODY_KIB,
            fuel: None,
            max_concurrency: None,
            max_queue: DEFAULT_MAX_QUEUE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_outbound_requests: DEFAULT_MAX_OUTBOUND_REQUESTS,
            outbound_timeout_ms: DEFAULT_OUTBOUND_TIMEOUT_MS,
            kv_max_value_kib: DEFAULT_KV_MAX_VALUE_KIB,
            kv_max_keys: DEFAULT_KV_MAX_KEYS,
            kv_max_mib: DEFAULT_KV_MAX_MIB,
            sql_max_mib: DEFAULT_SQL_MAX_MIB,
            sql_statement_ms: DEFAULT_SQL_STATEMENT_MS,
            sql_max_rows: DEFAULT_SQL_MAX_ROWS,
            sql_max_result_kib: DEFAULT_SQL_MAX_RESULT_KIB,
            pg_max_connections: DEFAULT_PG_MAX_CONNECTIONS,
            pg_acquire_ms: DEFAULT_PG_ACQUIRE_MS,
            max_host_resources: DEFAULT_MAX_HOST_RESOURCES,
            rate_per_s: None,
            burst: None,
            client_rate_per_s: None,
            client_burst: None,
            fuel_metering: false,
        }
    }
}

/// Limits resolved against the defaults, in the units the request path uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock budget of one request.
    #[serde(serialize_with = "as_millis", deserialize_with = "from_millis")]
    pub timeout: Duration,
    /// Linear memory per instance, bytes.
    pub memory_bytes: u64,
    /// Largest request body, bytes.
    pub max_request_body_bytes: u64,
    /// Largest response body, bytes.
    pub max_response_body_bytes: u64,
    /// CPU fuel each request starts with, on a host that meters fuel (`u64::MAX` when the
    /// function sets no limit); `None` on a host that does not.
    pub fuel: Option<u64>,
    /// Requests running at once; `None` is unlimited.
    pub max_concurrency: Option<u32>,
    /// Requests waiting for a place when `max_concurrency` is reached.
    pub max_queue: u32,
    /// Largest request header section, bytes.
    pub max_header_bytes: u64,
    /// Most request header fields.
    pub max_headers: u32,
    /// Outbound requests per invocation.
    pub max_outbound_requests: u32,
    /// Timeout of each outbound request.
    #[serde(serialize_with = "as_millis", deserialize_with = "from_millis")]
    pub outbound_timeout: Duration,
    /// Largest key-value value, bytes.
    #[serde(default = "default_kv_value")]
    pub kv_max_value_bytes: u64,
    /// Most key-value keys.
    #[serde(default = "default_kv_keys")]
    pub kv_max_keys: u64,
    /// Most key-value bytes.
    #[serde(default = "default_kv_bytes")]
    pub kv_max_bytes: u64,
    /// Largest SQL database, bytes.
    #[serde(default = "default_sql_bytes")]
    pub sql_max_bytes: u64,
    /// Longest SQL statement.
    #[serde(
        default = "default_sql_statement",
        serialize_with = "as_millis",
        deserialize_with = "from_millis"
    )]
    pub sql_statement_timeout: Duration,
    /// Most rows in one SQL result.
    #[serde(default = "default_sql_rows")]
    pub sql_max_rows: u64,
    /// Most bytes in one SQL result.
    #[serde(default = "default_sql_result")]
    pub sql_max_result_bytes: u64,
    /// Most Postgres connections per database.
    #[serde(default = "default_pg_connections")]
    pub pg_max_connections: u32,
    /// Longest wait for a Postgres connection.
    #[serde(
        default = "default_pg_acquire",
        serialize_with = "as_millis",
        deserialize_with = "from_millis"
    )]
    pub pg_acquire_timeout: Duration,
    /// Most host resources one instance holds at once.
    #[serde(default = "default_host_resources")]
    pub max_host_resources: u32,
    /// The function's request rate on this host, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Each client address's request rate to the function on this host, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rate: Option<Rate>,
}

/// A rate limit: a bucket of `burst` requests that refills at `per_s` a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_s: u32,
    /// Requests at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    fn of(per_s: Option<u32>, burst: Option<u32>) -> Option<Self> {
        per_s.map(|per_s| Rate {
            per_s,
            burst: burst.unwrap_or(per_s),
        })
    }
}

fn default_host_resources() -> u32 {
    DEFAULT_MAX_HOST_RESOURCES
}

fn default_pg_connections() -> u32 {
    DEFAULT_PG_MAX_CONNECTIONS
}

fn default_pg_acquire() -> Duration {
    Duration::from_millis(DEFAULT_PG_ACQUIRE_MS)
}

fn default_sql_bytes() -> u64 {
    DEFAULT_SQL_MAX_MIB << 20
}

fn default_sql_statement() -> Duration {
    Duration::from_millis(DEFAULT_SQL_STATEMENT_MS)
}

fn default_sql_rows() -> u64 {
    DEFAULT_SQL_MAX_ROWS
}

fn default_sql_result() -> u64 {
    DEFAULT_SQL_MAX_RESULT_KIB << 10
}

fn default_kv_value() -> u64 {
    DEFAULT_KV_MAX_VALUE_KIB << 10
}

fn default_kv_keys() -> u64 {
    DEFAULT_KV_MAX_KEYS
}

fn default_kv_bytes() -> u64 {
    DEFAULT_KV_MAX_MIB << 20
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

impl LimitsSpec {
    /// These limits with every unset field taken from `defaults`.
    pub fn resolve(&self, defaults: &LimitDefaults) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(defaults.timeout_ms)),
            memory_bytes: self.memory_mib.unwrap_or(defaults.memory_mib) << 20,
            max_request_body_bytes: self
                .max_request_body_kib
                .unwrap_or(defaults.max_request_body_kib)
                << 10,
            max_response_body_bytes: self
                .max_response_body_kib
                .unwrap_or(defaults.max_response_body_kib)
                << 10,
            fuel: defaults
                .fuel_metering
                .then(|| self.fuel.or(defaults.fuel).unwrap_or(u64::MAX)),
            max_concurrency: self.max_concurrency.or(defaults.max_concurrency),
            max_queue: self.max_queue.unwrap_or(defaults.max_queue),
            max_header_bytes: self.max_header_bytes.unwrap_or(defaults.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(defaults.max_headers),
            max_outbound_requests: self
                .max_outbound_requests
                .unwrap_or(defaults.max_outbound_requests),
            kv_max_value_bytes: self.kv_max_value_kib.unwrap_or(defaults.kv_max_value_kib) << 10,
            kv_max_keys: self.kv_max_keys.unwrap_or(defaults.kv_max_keys),
            kv_max_bytes: self.kv_max_mib.unwrap_or(defaults.kv_max_mib) << 20,
            sql_max_bytes: self.sql_max_mib.unwrap_or(defaults.sql_max_mib) << 20,
            sql_statement_timeout: Duration::from_millis(
                self.sql_statement_ms.unwrap_or(defaults.sql_statement_ms),
            ),
            sql_max_rows: self.sql_max_rows.unwrap_or(defaults.sql_max_rows),
            pg_max_connections: self
                .pg_max_connections
                .unwrap_or(defaults.pg_max_connections),
            pg_acquire_timeout: Duration::from_millis(
                self.pg_acquire_ms.unwrap_or(defaults.pg_acquire_ms),
            ),
            sql_max_result_bytes: self
                .sql_max_result_kib
                .unwrap_or(defaults.sql_max_result_kib)
                << 10,
            max_host_resources: self
                .max_host_resources
                .unwrap_or(defaults.max_host_resources),
            rate: Rate::of(
                self.rate_per_s.or(defaults.rate_per_s),
                self.burst.or(defaults.burst),
            ),
            client_rate: Rate::of(
                self.client_rate_per_s.or(defaults.client_rate_per_s),
                self.client_burst.or(defaults.client_burst),
            ),
            outbound_timeout: Duration::from_millis(
                self.outbound_timeout_ms
                    .unwrap_or(defaults.outbound_timeout_ms),
            ),
        }
    }
}

/// Why a spec or a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The function name is not usable.
    #[error(
        "invalid function name {0:?}: use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    Name(String),
    /// The route is not a clean absolute path.
    #[error("invalid route {0:?}: {1}")]
    Route(String, &'static str),
    /// An environment variable cannot be passed to WASI.
    #[error("invalid environment variable {0:?}: {1}")]
    Env(String, &'static str),
    /// A limit is out of range.
    #[error("limit {0} = {1} is out of range: {2}")]
    Limit(&'static str, u64, String),
    /// An outbound allow-list entry does not parse.
    #[error(transparent)]
    Outbound(#[from] crate::outbound::PatternError),
    /// A list in the spec is longer than the host allows.
    #[error("{what}: {count} is over the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many (or how many bytes) the spec has.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A directory grant is not usable.
    #[error("invalid directory grant {0:?}: {1}")]
    Dir(String, &'static str),
    /// The configuration table is not usable.
    #[error("{0}")]
    Config(String),
    /// A `sqlite_databases` or `postgres_databases` entry is not a usable name.
    #[error("invalid database name {0:?}: use 1 to 64 characters of a-z, A-Z, 0-9, '-' and '_'")]
    Database(String),
    /// A field is not usable: its path in the spec (`schedule[0].tz`) and why.
    #[error(transparent)]
    Field(#[from] crate::events::FieldError),
    /// `origin` is not a short printable reference.
    #[error("invalid origin {0:?}: at most 512 printable ASCII characters without spaces")]
    Origin(String),
}

/// Checks a function name.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.to_owned()))
    }
}

/// Paths the data plane answers itself, before routing: liveness and readiness probes,
/// and asynchronous invocations' results (`Location: /v1/invocations/<id>`).
pub const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/v1/invocations"];

/// A SQL database name: 1 to [`MAX_DATABASE_NAME_BYTES`] of `a-z A-Z 0-9 _ -` (it becomes a
/// file name).
pub fn validate_database_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_DATABASE_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::Database(name.to_owned()))
    }
}

/// Checks a route: an optional host name ([`crate::route::check_host`]) before a path that
/// is absolute, has no query or fragment, no empty, `.` or `..` segments, no trailing slash
/// (except the root route `/`).
pub fn validate_route(whole: &str) -> Result<(), SpecError> {
    let err = |why| Err(SpecError::Route(whole.to_owned(), why));
    if whole.len() > 1024 {
        return err("longer than 1024 bytes");
    }
    let (host, route) = crate::route::split(whole);
    if let Some(host) = host
        && let Err(why) = crate::route::check_host(host)
    {
        return err(why);
    }
    if !route.starts_with('/') {
        return err("must start with '/' or a host name");
    }
    // One spelling per route: routes are compared as written (who holds which, 409s).
    if host.is_some() && route == "/" && whole.ends_with('/') {
        return err("a host's root is written without '/' (example.com, not example.com/)");
    }
    if RESERVED_PATHS
        .iter()
        .any(|reserved| route == *reserved || route.starts_with(&format!("{reserved}/")))
    {
        return err(
            "is reserved for the host's health checks (/healthz, /readyz) and invocation results (/v1/invocations)",
        );
    }
    if route.len() > 1024 {
        return err("longer than 1024 bytes");
    }
    if route.contains(['?', '#', '%', ' ']) || route.chars().any(char::is_control) {
        return err("must not contain '?', '#', '%', spaces or control characters");
    }
    // A request path is ASCII on the wire (anything else arrives percent-encoded, and '%'
    // is refused above): a route with other characters could never match.
    if !route.is_ascii() {
        return err("must be ASCII (a request path arrives percent-encoded; it could never match)");
    }
    if route == "/" {
        return Ok(());
    }
    if route.ends_with('/') {
        return err("must not end with '/'");
    }
    if route[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return err("must not contain empty, '.' or '..' segments");
    }
    Ok(())
}

impl FunctionSpec {
    /// The route the function serves.
    pub fn route_or_default(&self, name: &str) -> String {
        self.route.clone().unwrap_or_else(|| format!("/{name}"))
    }

    /// Checks everything that can be checked without the code; `max_memory_bytes` is the
    /// host's ceiling for any function's memory.
    pub fn validate(&self, name: &str, max_memory_bytes: u64) -> Result<(), SpecError> {
        validate_name(name)?;
        validate_route(&self.route_or_default(name))?;
        self.validate_sizes_and_env()?;
        crate::config::validate(&self.config).map_err(SpecError::Config)?;
        self.validate_reuse()?;
        self.limits.validate(max_memory_bytes)?;
        crate::outbound::AllowList::parse(&self.allowed_outbound_hosts)?;
        crate::events::validate_schedules(&self.schedule)?;
        if let Some(policy) = &self.async_policy {
            policy.validate()?;
        }
        if let Some(trigger) = &self.trigger {
            trigger.validate()?;
        }
        if let Some(origin) = &self.origin
            && (origin.len() > 512 || !origin.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(SpecError::Origin(origin.clone()));
        }
        self.validate_dirs()
    }

    /// How many variables, patterns and grants, and the variables' names and values.
    fn validate_sizes_and_env(&self) -> Result<(), SpecError> {
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        for (what, count, max) in [
            ("environment variables", self.env.len(), MAX_ENV_VARS),
            ("environment bytes", env_bytes, MAX_ENV_BYTES),
            (
                "allowed_outbound_hosts entries",
                self.allowed_outbound_hosts.len(),
                MAX_OUTBOUND_PATTERNS,
            ),
            ("directory grants", self.dirs.len(), MAX_DIRS),
            (
                "sqlite_databases entries",
                self.sqlite_databases.len(),
                MAX_DATABASES,
            ),
            (
                "postgres_databases entries",
                self.postgres_databases.len(),
                MAX_POSTGRES_DATABASES,
            ),
        ] {
            if count > max {
                return Err(SpecError::TooMany { what, count, max });
            }
        }
        for name in self
            .sqlite_databases
            .iter()
            .chain(self.postgres_databases.keys())
        {
            validate_database_name(name)?;
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(SpecError::Env(
                    key.clone(),
                    "names must be non-empty without '=' or NUL",
                ));
            }
        }
        if let Some((key, _)) = self.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(SpecError::Env(key.clone(), "values must not contain NUL"));
        }
        Ok(())
    }

    /// The reuse settings, if any, within their ranges.
    fn validate_reuse(&self) -> Result<(), SpecError> {
        if let Some(reuse) = &self.reuse {
            if !(1..=1_000_000).contains(&reuse.max_requests) {
                return Err(SpecError::Limit(
                    "reuse.max_requests",
                    u64::from(reuse.max_requests),
                    "must be 1..=1000000".into(),
                ));
            }
            if !(1..=24 * 3600 * 1000).contains(&reuse.idle_timeout_ms) {
                return Err(SpecError::Limit(
                    "reuse.idle_timeout_ms",
                    reuse.idle_timeout_ms,
                    "must be 1..=86400000 (a day)".into(),
                ));
            }
            if !(1..=1024).contains(&reuse.max_concurrent) {
                return Err(SpecError::Limit(
                    "reuse.max_concurrent",
                    u64::from(reuse.max_concurrent),
                    "must be 1..=1024".into(),
                ));
            }
        }
        Ok(())
    }

    /// Directory grants: absolute paths on both sides, one grant per guest path.
    fn validate_dirs(&self) -> Result<(), SpecError> {
        let mut guests = std::collections::HashSet::new();
        for dir in &self.dirs {
            let host = dir.host.display().to_string();
            if !dir.host.is_absolute() {
                return Err(SpecError::Dir(host, "the host path must be absolute"));
            }
            if !dir.guest.starts_with('/') || dir.guest.contains('\0') {
                return Err(SpecError::Dir(host, "the guest path must be absolute"));
            }
            if !guests.insert(dir.guest.as_str()) {
                return Err(SpecError::Dir(host, "two grants share a guest path"));
            }
        }
        Ok(())
    }
}

impl LimitsSpec {
    /// Every limit given within its range; `max_memory_bytes` is the host's ceiling.
    fn validate(&self, max_memory_bytes: u64) -> Result<(), SpecError> {
        let l = self;
        if let Some(t) = l.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&t)
        {
            return Err(SpecError::Limit(
                "timeout_ms",
                t,
                format!("must be 1..={MAX_TIMEOUT_MS}"),
            ));
        }
        if let Some(m) = l.memory_mib {
            let max = max_memory_bytes >> 20;
            if !(1..=max).contains(&m) {
                return Err(SpecError::Limit(
                    "memory_mib",
                    m,
                    format!("must be 1..={max} (the host's --max-memory-mib)"),
                ));
            }
        }
        for (field, value) in [
            ("max_request_body_kib", l.max_request_body_kib),
            ("max_response_body_kib", l.max_response_body_kib),
        ] {
            if let Some(v) = value
                && !(1..=(4 << 20)).contains(&v)
            {
                return Err(SpecError::Limit(
                    field,
                    v,
                    "must be 1..=4194304 (4 GiB)".into(),
                ));
            }
        }
        for (field, value, max) in [
            ("fuel", l.fuel, u64::MAX),
            ("max_concurrency", l.max_concurrency.map(u64::from), 1 << 20),
            // hyper, in front of every function, reads at most ~400 KiB of headers and 100
            // fields (its stack-allocated parse); a function can only lower those.
            ("max_header_bytes", l.max_header_bytes, 256 << 10),
            ("max_headers", l.max_headers.map(u64::from), 100),
            ("outbound_timeout_ms", l.outbound_timeout_ms, MAX_TIMEOUT_MS),
            // A value is one allocation on the request path, in the guest and the host.
            ("kv_max_value_kib", l.kv_max_value_kib, 64 << 10),
            ("kv_max_keys", l.kv_max_keys, 1 << 32),
            ("kv_max_mib", l.kv_max_mib, 1 << 20),
            ("sql_max_mib", l.sql_max_mib, 1 << 20),
            ("sql_statement_ms", l.sql_statement_ms, MAX_TIMEOUT_MS),
            ("sql_max_rows", l.sql_max_rows, 1 << 32),
            // A result is held whole in host memory before it is copied to the guest.
            ("sql_max_result_kib", l.sql_max_result_kib, 1 << 20),
            // Each is a server process on the Postgres side.
            (
                "pg_max_connections",
                l.pg_max_connections.map(u64::from),
                100,
            ),
            ("pg_acquire_ms", l.pg_acquire_ms, MAX_TIMEOUT_MS),
            // A token bucket's numbers; beyond a million a second the limit is the host.
            ("rate_per_s", l.rate_per_s.map(u64::from), 1_000_000),
            ("burst", l.burst.map(u64::from), 1_000_000),
            (
                "client_rate_per_s",
                l.client_rate_per_s.map(u64::from),
                1_000_000,
            ),
            ("client_burst", l.client_burst.map(u64::from), 1_000_000),
        ] {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                return Err(SpecError::Limit(field, v, format!("must be 1..={max}")));
            }
        }
        for (burst, rate, value) in [
            ("burst", "rate_per_s", (l.burst, l.rate_per_s)),
            (
                "client_burst",
                "client_rate_per_s",
                (l.client_burst, l.client_rate_per_s),
            ),
        ] {
            if let (Some(b), None) = value {
                return Err(SpecError::Limit(
                    burst,
                    u64::from(b),
                    format!("needs {rate}: a bucket without a rate limits nothing"),
                ));
            }
        }
        // A guest needs a few dozen for one request (its stdio, the request, the response,
        // their bodies and streams, pollables); 65,536 pins at most 8 GiB.
        if let Some(n) = l.max_host_resources
            && !(MIN_HOST_RESOURCES..=1 << 16).contains(&n)
        {
            return Err(SpecError::Limit(
                "max_host_resources",
                u64::from(n),
                format!("must be {MIN_HOST_RESOURCES}..=65536"),
            ));
        }
        for (field, value) in [
            ("max_queue", l.max_queue),
            ("max_outbound_requests", l.max_outbound_requests),
        ] {
            if let Some(v) = value
                && v > 1 << 20
            {
                return Err(SpecError::Limit(
                    field,
                    u64::from(v),
                    "must be 0..=1048576".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The kinds of function thaw runs, told apart by the upload's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A component exporting `wasi:http/incoming-handler`.
    Component,
    /// A WASI preview1 command module, run CGI-style.
    Cgi,
    /// Source (JavaScript, Python) run by the language's engine ([`crate::source`]).
    Source,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Component => "component",
            Kind::Cgi => "cgi",
            Kind::Source => "source",
        })
    }
}

/// Tells a component from a core module by the 8-byte preamble: `\0asm`, then the version
/// (`1 0` for core modules) and layer (`0 0` core, `1 0` component). This is all
/// `wasmparser::Parser::is_component` looks at too; validation proper is the compiler's job.
pub fn detect_kind(bytes: &[u8]) -> Result<Kind, &'static str> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(Kind::Cgi),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(Kind::Component),
        Some([0, b'a', b's', b'm', ..]) => Err("unsupported WebAssembly version or layer"),
        _ if bytes.starts_with(crate::source::HEADER) => Ok(Kind::Source),
        Some([0x7f, b'E', b'L', b'F', ..]) => Err(
            "this is a native (precompiled) artifact; thaw only accepts WebAssembly and compiles it itself",
        ),
        _ => Err("not a WebAssembly binary (missing the \\0asm header)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["hello", "a", "json-echo", "v2_api", "0day"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Hello", "-x", "_x", "a/b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes() {
        for ok in [
            "/",
            "/hello",
            "/api/v1/users",
            "/a-b_c",
            "api.example.com/v1",
            "*.example.com",
            "example.com",
        ] {
            validate_route(ok).unwrap();
        }
        for bad in [
            "",
            "hello",
            "/hello/",
            "//x",
            "/a//b",
            "/a/../b",
            "/a?b",
            "/a b",
            "/%2e",
            "/café",
            "API.example.com/v1",
            "api.example.com:80/v1",
            "api.example.com/v1/",
            "*.com",
            "api.example.com/healthz",
            "example.com/",
            "*.example.com/",
            "127.0.0.1/x",
        ] {
            assert!(validate_route(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_resolve_to_defaults() {
        let spec = LimitsSpec {
            timeout_ms: Some(250),
            ..Default::default()
        };
        let limits = spec.resolve(&LimitDefaults::default());
        assert_eq!(limits.timeout, Duration::from_millis(250));
        assert_eq!(limits.memory_bytes, DEFAULT_MEMORY_MIB << 20);
    }

    #[test]
    fn memory_above_host_ceiling_is_refused() {
        let spec = FunctionSpec {
            limits: LimitsSpec {
                memory_mib: Some(512),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            spec.validate("f", 256 << 20),
            Err(SpecError::Limit("memory_mib", 512, _))
        ));
        spec.validate("f", 1 << 30).unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<FunctionSpec>(r#"{"rout": "/x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
