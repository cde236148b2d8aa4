//! The admin API's wire types, shared by the server, the CLI and the tests, and the one line
//! `thaw serve` prints when it is ready.
//!
//! The server builds these from its live state and serialises them; the client deserialises
//! the same types, so a field renamed on one side is a compile error on the other, not a
//! silent `null`. Counters keyed by a name (limit hits, start kinds) are maps, so a new limit
//! or start kind needs no change here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::spec::{FunctionSpec, Kind, Limits};
use crate::traffic::TrafficSplit;

/// An element of `GET /v1/engines`: a language engine of source functions on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `js` or `python` for the host's current engines; `None` for an engine the host no
    /// longer offers, kept for the functions deployed on it.
    pub language: Option<crate::source::Language>,
    /// sha256 of the engine's wasm, hex.
    pub digest: String,
    /// Whether new deploys of its language go to it.
    pub current: bool,
    /// Whether its code is loaded (compiled and linked).
    pub loaded: bool,
    /// The function versions deployed on it, as `name@vN`.
    pub functions: Vec<String>,
}

/// `GET /v1/functions/{name}`, an element of `GET /v1/functions`, and the answer to a deploy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The function's name.
    pub name: String,
    /// The route prefix it serves.
    pub route: String,
    /// Component or CGI module.
    pub kind: Kind,
    /// sha256 of the uploaded wasm, hex.
    pub digest: String,
    /// Size of the uploaded wasm.
    pub wasm_bytes: u64,
    /// Whether it runs from a pre-initialisation snapshot.
    pub snapshot: bool,
    /// The version described here (`v3` is 3): 1 for the first deploy of this name, +1 for
    /// every redeploy. A function with a traffic split is described by its primary version
    /// (the largest share); `traffic` has the split.
    pub generation: u64,
    /// Unix time of the deploy, milliseconds.
    pub deployed_at_ms: u64,
    /// How requests are shared between the function's versions.
    #[serde(default = "no_split")]
    pub traffic: TrafficSplit,
    /// What was asked for.
    pub spec: FunctionSpec,
    /// The limits in force (the spec's, else the host's defaults).
    pub limits: Limits,
    /// Where its code came from (`artifact`, `compiled`, `fast_tier`); `None` if not loaded.
    pub loaded_from: Option<String>,
    /// Warm instances waiting.
    pub warm_instances: usize,
    /// Requests that reached it.
    pub requests: u64,
    /// Requests answered with an error produced by thaw.
    pub failures: u64,
    /// Limit hits, by limit name (`timeout`, `memory`, ...).
    pub limit_hits: BTreeMap<String, u64>,
    /// Requests running now, with a concurrency limit.
    pub running: Option<u32>,
    /// Requests queued now, with a concurrency limit.
    pub queued: Option<u32>,
    /// Requests by how they got their instance (`pool-hit`, `fresh`, `disk`, `compile`).
    pub starts: BTreeMap<String, u64>,
    /// Time from admission to a ready instance, microseconds.
    pub start_us: Percentiles,
    /// Time in the guest's handler, microseconds.
    pub handler_us: Percentiles,
    /// Guest CPU time of all its requests, microseconds (WASIp3 functions are not metered).
    #[serde(default)]
    pub cpu_us_total: u64,
    /// Guest CPU time per request, microseconds.
    #[serde(default)]
    pub cpu_us: Percentiles,
    /// Peak linear memory of the instance that served each request, KiB.
    #[serde(default)]
    pub peak_memory_kib: Percentiles,
}

fn no_split() -> TrafficSplit {
    TrafficSplit::single(1)
}

/// `GET /v1/functions/{name}/versions`, and the answer to every change of versions or split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsInfo {
    /// The function's name.
    pub name: String,
    /// The kept versions, oldest first.
    pub versions: Vec<VersionInfo>,
    /// How requests are shared between them.
    pub traffic: TrafficSplit,
}

/// One kept version of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Its number (`v3` is 3).
    pub version: u64,
    /// sha256 of its uploaded wasm, hex.
    pub digest: String,
    /// Component or CGI module.
    pub kind: Kind,
    /// Size of its wasm.
    pub wasm_bytes: u64,
    /// Unix time of its deploy, milliseconds.
    pub deployed_at_ms: u64,
    /// Its share of requests: `None` if it is not in the split (not reachable), `Some(0)`
    /// if it is reachable only by pinning it.
    pub percent: Option<u8>,
    /// The route it serves when it is the primary version.
    pub route: String,
    /// Whether its code is loaded.
    pub loaded: bool,
    /// Requests it served since it was loaded (or deployed).
    pub requests: u64,
    /// Of them, answered with an error produced by thaw.
    #[serde(default)]
    pub failures: u64,
    /// Where its code came from, if not the deployer's disk (`oci://HOST/REPO@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `GET /v1/history`: the host's counters sampled at a fixed interval over the last
/// minutes, oldest first, for the dashboard's charts (rates are differences of samples).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Time between samples, milliseconds.
    pub interval_ms: u64,
    /// The samples, oldest first.
    pub samples: Vec<HistorySample>,
}

/// Counters since start-up at one moment (totals, not rates).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySample {
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// Requests per function (all its versions).
    pub requests: BTreeMap<String, u64>,
    /// Requests answered with an error produced by thaw, per function.
    pub failures: BTreeMap<String, u64>,
    /// Starts by kind (`pool-hit`, `fresh`, `disk`, `compile`), all functions.
    pub starts: BTreeMap<String, u64>,
    /// Limit hits by limit, all functions.
    pub limit_hits: BTreeMap<String, u64>,
}

/// `GET /v1/functions/{name}/kv?bucket=B` (no key): a page of a bucket's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKeys {
    /// The keys.
    pub keys: Vec<String>,
    /// Where the next page starts (`&cursor=`), `None` at the end.
    pub cursor: Option<u64>,
}

/// `POST /v1/functions/{name}/sql?db=D` (the body is one statement): what it returned.
/// Values are JSON numbers, strings and `null`; a blob is `{"hex": "..."}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlAnswer {
    /// The result's column names.
    pub columns: Vec<String>,
    /// Its rows.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Rows the statement inserted, updated or deleted.
    pub changes: u64,
    /// The rowid of its insert, or 0.
    pub last_insert_rowid: i64,
}

/// The query of `/v1/functions/{name}/sql` and `/v1/functions/{name}/sql/dump`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlQuery {
    /// The database: `default` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
}

/// `POST /v1/functions/{name}/rollback`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The version to serve all traffic; `None`: the one before the newest that serves.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Two percentiles of a latency histogram; `None` before any sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

/// `GET /v1/status`: the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// thaw's version.
    pub version: String,
    /// `pooling` or `on-demand`.
    pub allocator: String,
    /// Why the allocator is on-demand, if it is.
    pub allocator_reason: Option<String>,
    /// Instances that may run at once.
    pub instance_slots: u32,
    /// Slots taken (running or warm).
    pub slots_in_use: usize,
    /// Slots running a request.
    pub slots_running: usize,
    /// Warm instances, all functions.
    pub warm_instances: usize,
    /// Functions deployed.
    pub functions: usize,
    /// Of them, with code loaded.
    pub functions_loaded: usize,
    /// Cranelift compilations since start-up.
    pub compilations: u64,
    /// Artifacts loaded from disk since start-up.
    pub artifact_loads: u64,
    /// Artifacts found missing or damaged and rebuilt.
    pub artifact_rebuilds: u64,
    /// Artifact checksum checks since start-up (deploys hash as they write and are not
    /// counted).
    #[serde(default)]
    pub artifact_checks: u64,
    /// Artifacts the start-up scrub has still to check: until it is 0, a function's first
    /// load may check its artifact itself.
    #[serde(default)]
    pub artifacts_unchecked: usize,
    /// Functions whose compiled code came from the incremental compilation cache since
    /// start-up (`None` without the cache).
    #[serde(default)]
    pub compile_cache_hits: Option<u64>,
    /// Functions compiled for want of a cache entry since start-up.
    #[serde(default)]
    pub compile_cache_misses: Option<u64>,
    /// Whether deploys are answered with the fast tier first.
    pub fast_deploy: bool,
    /// Fast-tier functions still waiting for Cranelift's code.
    pub tier_ups_pending: usize,
    /// Source functions moved onto their snapshots since start-up.
    #[serde(default)]
    pub source_snapshots: u64,
    /// Source functions' snapshots that failed since start-up (their functions stay on
    /// their engines; the log says why).
    #[serde(default)]
    pub source_snapshot_failures: u64,
    /// Whether guests are fuel-metered.
    pub fuel_metering: bool,
    /// Connections closed for sending their headers too slowly.
    pub slow_clients_closed: u64,
    /// Connections closed because their client stopped reading.
    pub stalled_readers_closed: u64,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
}

/// One line a function wrote, as `GET /v1/functions/{name}/logs` streams it (one JSON
/// object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the function's log, from 1; resume with `after=<seq>`.
    pub seq: u64,
    /// When it was written, ms since the Unix epoch.
    pub time_ms: u64,
    /// The function's version (generation) that wrote it.
    pub version: u64,
    /// The request being served (0: none).
    pub request: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line.
    pub text: String,
    /// For a structured line (an SDK's `log` call): its level, `debug` `info` `warn` or
    /// `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// For a structured line: its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a structured line: its fields in the order written, each value as text (a
    /// string as it is, anything else as compact JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// The body of every admin API error: `{"error": {"code": "route_taken", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An admin API error: a stable code for programs, a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What kind of error, stable across versions (match on this, never on the message).
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person; its wording may change.
    pub message: String,
}

/// The admin API's error codes (docs/operations.md lists them with their statuses). A code
/// this version does not know reads as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no admin token, or a wrong one (or, on the peer endpoints, the cluster token).
    Unauthorized,
    /// 429: too many failed attempts from this address, or too many log followers.
    TooManyRequests,
    /// 404: no admin route has this path.
    NoSuchRoute,
    /// 405: the path exists, the method does not (the `Allow` header lists those that do).
    MethodNotAllowed,
    /// 400: a malformed request: query, body, spec, name, split.
    BadRequest,
    /// 400: the wasm does not validate, compile or link, or asks for what thaw does not offer.
    InvalidModule,
    /// 404: no such function, version or blob.
    NotFound,
    /// 404: the function has no such key (`/kv`).
    NoSuchKey,
    /// 404: the host has no key-value store, or is not in a cluster.
    NotConfigured,
    /// 409: another function serves the route.
    RouteTaken,
    /// 409: a newer change took this one's traffic before it was served.
    Superseded,
    /// 409: the invocation is not in a state the change applies to (a retry of one that
    /// did not fail, a discard of a running one).
    WrongState,
    /// 413: the upload, the spec or a value is over its limit.
    TooLarge,
    /// 503: the host has no room for the work now; retry.
    Busy,
    /// 503: the cluster's registry (etcd) or the key-value backend cannot be reached; nothing
    /// changed.
    Unavailable,
    /// 504: a deploy's `wait` ran out before enough nodes could serve the version.
    WaitTimedOut,
    /// 500: thaw could not do it (see the host's log).
    Internal,
    /// A code from a newer thaw.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status every answer with this code has (one per code).
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::Unauthorized => S::UNAUTHORIZED,
            Self::TooManyRequests => S::TOO_MANY_REQUESTS,
            Self::NoSuchRoute | Self::NotFound | Self::NoSuchKey | Self::NotConfigured => {
                S::NOT_FOUND
            }
            Self::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            Self::BadRequest | Self::InvalidModule => S::BAD_REQUEST,
            Self::RouteTaken | Self::Superseded | Self::WrongState => S::CONFLICT,
            Self::TooLarge => S::PAYLOAD_TOO_LARGE,
            Self::Busy | Self::Unavailable => S::SERVICE_UNAVAILABLE,
            Self::WaitTimedOut => S::GATEWAY_TIMEOUT,
            Self::Internal | Self::Unknown => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::TooManyRequests => "too_many_requests",
            Self::NoSuchRoute => "no_such_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest => "bad_request",
            Self::InvalidModule => "invalid_module",
            Self::NotFound => "not_found",
            Self::NoSuchKey => "no_such_key",
            Self::NotConfigured => "not_configured",
            Self::RouteTaken => "route_taken",
            Self::Superseded => "superseded",
            Self::WrongState => "wrong_state",
            Self::TooLarge => "too_large",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::WaitTimedOut => "wait_timed_out",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes a query string into `T`: the one parser of every admin query (percent-decoding
/// included). Unknown parameters are refused (the structs deny them), with their names.
pub fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, String> {
    serde_urlencoded::from_str(query).map_err(|e| format!("bad query {query:?}: {e}"))
}

/// The query of `PUT /v1/functions/{name}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployQuery {
    /// Take this percent (0-100) beside the versions serving, instead of all traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
    /// With a canary: keep versions that were only pinnable (0%) in the split.
    #[serde(deserialize_with = "flag", skip_serializing_if = "std::ops::Not::not")]
    pub keep_pinned: bool,
    /// In a cluster: answer once this many nodes (1 or more) serve the new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<usize>,
    /// How long `wait` waits, seconds (1-3600; default [`DeployQuery::DEFAULT_WAIT_S`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
}

impl DeployQuery {
    /// `wait_s` when the query does not say.
    pub const DEFAULT_WAIT_S: u64 = 60;

    /// Checks the values' ranges (what the types alone do not say).
    pub fn check(&self) -> Result<(), String> {
        if let Some(canary) = self.canary.filter(|p| *p > 100) {
            return Err(format!("canary={canary} is not a percent (0-100)"));
        }
        if self.wait == Some(0) {
            return Err("wait=0 is not a node count (1 or more)".into());
        }
        if let Some(wait_s) = self.wait_s.filter(|s| !(1..=3600).contains(s)) {
            return Err(format!("wait_s={wait_s} is not 1 to 3600 seconds"));
        }
        Ok(())
    }
}

/// The query of `GET /v1/functions/{name}/logs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this `seq`.
    pub after: u64,
    /// Only lines written at or after this time (ms since the epoch).
    pub since_ms: u64,
    /// Only the last this many of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Keep the response open and send lines as they are written.
    #[serde(deserialize_with = "flag", skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

/// The query of `/v1/functions/{name}/kv`: a bucket, and a key (or, to list the bucket's
/// keys, none and a cursor).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvQuery {
    /// The bucket (`""`: the default one).
    pub bucket: String,
    /// The key; none: list the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where a listing goes on ([`KvKeys::cursor`] of the page before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
}

/// Where an asynchronous invocation is (see the runtime's `events::invocations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvocationState {
    /// Stored, waiting for its (next) attempt.
    Queued,
    /// An attempt is running.
    Running,
    /// An attempt answered 1xx, 2xx or 3xx.
    Succeeded,
    /// Dead-lettered: its attempts or its age ran out, or it answered 4xx (not retried), or
    /// its function was removed. `thaw invocations retry` queues it again.
    Failed,
}

impl InvocationState {
    /// Whether no attempt will follow (until a retry is asked for).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// `GET /v1/invocations/{id}`, an element of `GET /v1/functions/{name}/invocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationInfo {
    /// 32 hex digits, random: knowing it is what lets a client read the result.
    pub id: String,
    /// The function it is for.
    pub function: String,
    /// Where it is.
    pub state: InvocationState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The request's method.
    pub method: String,
    /// The request's path and query.
    pub path: String,
    /// When it was accepted (answered 202), ms since the epoch.
    pub enqueued_ms: u64,
    /// When its next attempt is due, while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// When it succeeded or was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The last attempt's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the last attempt failed, or why it was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the result is sent when it is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// `GET /v1/functions/{name}/invocations`: newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationList {
    /// The invocations.
    pub invocations: Vec<InvocationInfo>,
}

/// The query of `GET /v1/functions/{name}/invocations`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvocationQuery {
    /// Only dead letters.
    #[serde(deserialize_with = "flag", skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// At most this many (default and most: 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// An element of `GET /v1/schedules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// The function.
    pub function: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone (`UTC` when the spec names none).
    pub tz: String,
    /// Whether a missed tick runs after downtime.
    pub catch_up: bool,
    /// The next tick, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ms: Option<u64>,
    /// The last tick this node ran, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
    /// Its status (the function's, or thaw's when it failed before answering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// A run is going on now.
    pub running: bool,
    /// Ticks this node ran.
    pub runs: u64,
    /// Ticks skipped because the previous run was still going (or missed while down).
    pub skipped: u64,
    /// Ticks another node of the cluster claimed.
    pub claimed_elsewhere: u64,
}

/// `GET /v1/schedules`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleList {
    /// Every function's schedules, by function then order in its spec.
    pub schedules: Vec<ScheduleInfo>,
}

/// One function's queue of asynchronous invocations, an element of [`EventsStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The function.
    pub function: String,
    /// Invocations queued or running.
    pub depth: u64,
    /// The oldest of them, ms since it was accepted (0 when none).
    pub oldest_age_ms: u64,
    /// Attempts started since the host started.
    pub attempts: u64,
    /// Dead letters since the host started.
    pub dead_letters: u64,
    /// Successes since the host started.
    pub succeeded: u64,
}

/// One function's queue trigger on this node, an element of [`EventsStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// The function.
    pub function: String,
    /// `nats` or `redis`.
    pub broker: String,
    /// The stream consumed.
    pub stream: String,
    /// Deliveries (attempts) started.
    pub delivered: u64,
    /// Messages acknowledged after success.
    pub acked: u64,
    /// Failed deliveries handed back for a retry.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_letters: u64,
    /// Sessions started again after the broker failed.
    pub reconnects: u64,
    /// Deliveries running now.
    pub running: u64,
    /// Most deliveries running at once since the trigger started.
    pub peak_running: u64,
}

/// `GET /v1/events`: every queue, schedule and trigger on this host (the dashboard's view).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsStatus {
    /// Functions with asynchronous invocations since the host started, by name.
    pub queues: Vec<QueueInfo>,
    /// Every schedule.
    pub schedules: Vec<ScheduleInfo>,
    /// Every queue trigger.
    #[serde(default)]
    pub triggers: Vec<TriggerInfo>,
}

/// A boolean parameter: `true`/`1`, `false`/`0`, or present with no value (`true`).
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let value = String::deserialize(deserializer)?;
    match value.as_str() {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not true or false"
        ))),
    }
}

/// The line `thaw serve` prints on stdout once both listeners are bound; scripts and tests
/// that bind port 0 read the addresses from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyLine {
    /// Where functions are served.
    pub functions: SocketAddr,
    /// Where the admin API listens.
    pub admin: SocketAddr,
    /// Where `/metrics` is served without authentication (`--metrics-listen`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Whether functions are served over TLS (`https://`).
    pub tls: bool,
}

impl ReadyLine {
    const PREFIX: &'static str = "thaw: functions on ";
    const MIDDLE: &'static str = ", admin on http://";
    const METRICS: &'static str = ", metrics on http://";

    /// The line's addresses, if `line` is the ready line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix(Self::PREFIX)?;
        let (tls, rest) = match rest.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, rest.strip_prefix("http://")?),
        };
        let (functions, rest) = rest.split_once(Self::MIDDLE)?;
        let (admin, metrics) = match rest.split_once(Self::METRICS) {
            Some((admin, metrics)) => (admin, Some(metrics.parse().ok()?)),
            None => (rest, None),
        };
        Some(Self {
            functions: functions.parse().ok()?,
            admin: admin.parse().ok()?,
            metrics,
            tls,
        })
    }
}

impl std::fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(
            f,
            "{}{scheme}://{}{}{}",
            Self::PREFIX,
            self.functions,
            Self::MIDDLE,
            self.admin
        )?;
        match self.metrics {
            Some(metrics) => write!(f, "{}{metrics}", Self::METRICS),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_round_trips() {
        let line = ReadyLine {
            functions: "127.0.0.1:8080".parse().unwrap(),
            admin: "[::1]:8081".parse().unwrap(),
            metrics: None,
            tls: false,
        };
        let text = line.to_string();
        assert_eq!(
            text,
            "thaw: functions on http://127.0.0.1:8080, admin on http://[::1]:8081"
        );
        assert_eq!(ReadyLine::parse(&text), Some(line));
        let with_metrics = ReadyLine {
            metrics: Some("127.0.0.1:9090".parse().unwrap()),
            ..line
        };
        let text = with_metrics.to_string();
        assert!(
            text.ends_with(", metrics on http://127.0.0.1:9090"),
            "{text}"
        );
        assert_eq!(ReadyLine::parse(&text), Some(with_metrics));
        let tls = ReadyLine { tls: true, ..line };
        let text = tls.to_string();
        assert!(text.starts_with("thaw: functions on https://127.0.0.1:8080, admin on http://"));
        assert_eq!(ReadyLine::parse(&text), Some(tls));
        assert_eq!(ReadyLine::parse("thaw: something else"), None);
    }
}

/// A node of a cluster, as it registers itself in etcd under its lease (`GET /v1/cluster`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// The node's name (`--node-id`), unique in the cluster.
    pub id: String,
    /// Where it serves functions, `host:port`.
    pub functions: String,
    /// Where its admin API (and its peer endpoints) listen, `host:port`.
    pub admin: String,
    /// Its instance slots: how many requests it can run at once.
    pub instance_slots: u32,
    /// Its engine compatibility key: nodes with the same key can share compiled code.
    pub engine: String,
    /// thaw's version.
    pub version: String,
}

/// `GET /v1/cluster`: this node and what it knows of the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// `"ok"`, or why etcd cannot be reached (the node serves what it last knew).
    pub etcd: String,
    /// Whether the node has mirrored the registry from etcd since it started.
    pub synced: bool,
    /// The members registered now, sorted by name (empty when etcd cannot be reached).
    pub members: Vec<ClusterMember>,
}

/// A deploy's answer with `?wait=N`: the version and how many nodes can serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyNodes {
    /// The version deployed.
    pub version: u64,
    /// Nodes that reported it ready when the answer was given.
    pub ready: usize,
}
