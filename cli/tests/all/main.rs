//! Integration tests: a real `thaw serve` process on 127.0.0.1:0, real wasm built from
//! `functions/` (see `thaw-test-functions`), a real HTTP client.
//!
//! One binary with modules, as wasmtime organises its tests: it links once and the modules
//! share the helpers in `support`.

mod admin_api;
mod adversary;
mod assets;
mod auth;
mod bench;
mod cli;
mod cluster;
mod coldstart;
mod compat;
mod crash;
mod dashboard;
mod deploy;
mod events;
mod faults;
mod functions;
mod hostile;
mod limits;
mod load;
mod logs;
mod metrics;
mod p3;
mod packaging;
mod probes;
mod redeploy;
mod registry;
mod restart;
mod sdk;
mod shutdown;
mod source;
mod spin;
mod sql;
mod state;
mod streaming;
mod support;
mod templates;
mod tls;
mod traces;
mod triggers;
mod versions;
