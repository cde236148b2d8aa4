//! What reaches thaw as bytes from people it does not fully trust, and how it is parsed.
//!
//! - [`spec`]: a function's deploy-time description (JSON over the admin API);
//! - [`manifest`]: `thaw.toml`, many specs plus where their wasm is;
//! - [`config`]: a function's `wasi:config` values and secret references;
//! - [`events`]: a function's schedules and asynchronous delivery policy;
//! - [`cgi`]: the response a preview1 module prints on stdout;
//! - [`route`]: which route prefix serves a request path;
//! - [`outbound`]: the `scheme://host:port` patterns of a function's outbound allow-list;
//! - [`source`]: a function deployed as source (JavaScript, Python) in place of wasm;
//! - [`assets`]: a function's static assets and the bundle they are uploaded in;
//! - [`traffic`]: a function's traffic split between its versions (`v4=80 v5=20`);
//! - [`forwarded`]: the client behind a trusted proxy (`Forwarded`, `X-Forwarded-For`);
//! - [`api`]: the admin API's wire types, shared by server, CLI and tests.
//!
//! This crate is apart from `thaw-runtime` for one reason: it does not link wasmtime, so the
//! fuzz targets in `fuzz/` (which instrument everything they link) build in seconds. The
//! runtime re-exports these modules under their own names (`thaw_runtime::spec`, ...).

#![deny(missing_docs)]

pub mod api;
pub mod assets;
pub mod cgi;
pub mod config;
pub mod events;
pub mod forwarded;
pub mod manifest;
pub mod outbound;
pub mod route;
pub mod source;
pub mod spec;
pub mod spin;
pub mod traffic;
