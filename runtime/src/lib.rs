//! thaw: a self-hosted serverless runtime for WebAssembly functions.
//!
//! The host loads functions (standard `wasi:http` components, or WASI preview1 modules run
//! CGI-style), compiles them once into a content-addressed artifact cache, and serves HTTP
//! requests to them, one fresh instance per request, from a pooling allocator.
//!
//! The layout follows the life of a function:
//! - [`spec`] and [`manifest`]: what the user asks for;
//! - [`engine`]: the one wasmtime configuration, linkers and epoch ticker;
//! - [`artifact`]: compile once, load from disk afterwards; [`datadir`]: atomic persistence;
//! - [`function`] and [`registry`]: a loaded function and the name/route tables;
//! - [`platform`]: deploy (with [`snapshot`]s and the fast tier), remove, start-up loading;
//! - [`invoke`], [`pool`], [`host`], [`cgi`], [`body`], [`timing`]: the request path;
//! - [`server`] and [`admin`]: the listeners; [`client`] and [`commands`]: the CLI.

#![deny(missing_docs)]

// The parsers of untrusted bytes live in thaw-spec (no wasmtime there, so fuzzing is cheap);
// they keep their paths here.
pub use thaw_spec::{cgi, manifest, outbound, spec};

pub mod admin;
pub mod artifact;
pub mod auth;
pub mod bench;
pub mod body;
pub mod cgi_output;
pub mod client;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod engine;
pub mod error;
pub mod function;
pub mod guest_log;
pub mod host;
pub mod invoke;
pub mod limits;
pub mod platform;
pub mod pool;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod timing;
