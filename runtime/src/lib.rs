//! thaw: a self-hosted serverless runtime for WebAssembly functions.
//!
//! The host loads functions (standard `wasi:http` components, or WASI preview1 modules run
//! CGI-style), compiles them once into a content-addressed artifact cache, and serves HTTP
//! requests to them, one fresh instance per request, from a pooling allocator.
//!
//! The library is in layers; each depends only on those above it in this list, and a script
//! (`scripts/check-layers`, run by the test suite) fails on an import cycle among them:
//! - [`histogram`]: a lock-free latency histogram (no dependencies);
//! - [`telemetry`]: traces, W3C trace context in and out, OTLP export (no dependencies);
//! - [`datadir`]: the data directory, written atomically, locked, owner-only;
//! - [`keyvalue`]: functions' state, embedded (redb) or on Redis, scoped and under quota;
//! - [`sql`]: functions' SQL databases, embedded SQLite per function, confined and under quota;
//! - [`postgres`]: functions' Postgres, through pools the host holds per function and address;
//! - [`outbound_redis`]: functions' Redis, one shared connection per function and address;
//! - [`rate`]: rate limits per function and per client address (governor's limiters);
//! - [`assets`]: functions' static files, served from memory without a guest;
//! - [`engine`]: the one wasmtime configuration and epoch ticker, the artifact cache,
//!   pre-initialisation snapshots;
//! - [`guest`]: a guest's store and host state, built from a plain config; linkers; the
//!   resource limiter; guest output;
//! - [`source`]: functions deployed as source (JavaScript, Python): the language engines
//!   they share and the program each instance loads;
//! - [`function`]: a deployed function (record, code, warm pool, limits, start statistics)
//!   and the loader;
//! - [`invoke`]: the request path, behind a narrow [`invoke::InvokeContext`]; one executor
//!   per kind of function;
//! - [`control`]: the platform, registry, versions and traffic splits, deploy, tier-up,
//!   rollback, removal, garbage collection;
//! - [`events`]: what starts a function besides HTTP: schedules, asynchronous invocations
//!   with retries and dead letters, their durable store;
//! - [`cluster`]: several nodes on etcd: the shared registry, membership, readiness, code
//!   fetched from peers;
//! - [`metrics`]: the Prometheus exposition of the platform's counters, read at scrape time;
//! - [`history`]: the last minutes of those counters, sampled, for the dashboard;
//! - [`http`]: the data-plane and admin listeners, admin authentication, the dashboard.
//!
//! The parsers of untrusted bytes and the admin API's wire types live in `thaw-spec` (no
//! wasmtime there, so fuzzing is cheap) and keep their paths here: [`spec`], [`manifest`],
//! [`cgi`], [`config`], [`outbound`], [`route`], [`traffic`], [`forwarded`], [`api`],
//! [`event_spec`]. The CLI (`thaw-cli`) and the cold-start suite
//! (`thaw-bench`) are crates of their own.

#![deny(missing_docs)]

// The parsers of untrusted bytes live in thaw-spec (no wasmtime there, so fuzzing is cheap);
// they keep their paths here.
/// A function's schedules and asynchronous delivery policy, as its spec says them.
pub use thaw_spec::events as event_spec;
pub use thaw_spec::{
    api, assets as asset_spec, cgi, config, forwarded, manifest, outbound, route, spec, traffic,
};

pub mod assets;
pub mod cluster;
pub mod control;
pub mod datadir;
pub mod engine;
pub mod events;
pub mod function;
pub mod guest;
pub mod histogram;
pub mod history;
pub mod http;
pub mod invoke;
pub mod keyvalue;
pub mod metrics;
pub mod outbound_redis;
pub mod postgres;
pub mod rate;
pub mod source;
pub mod sql;
pub mod telemetry;
