//! Paths of the example functions, built to wasm by this crate's build script.
//!
//! Tests and benchmarks use these so that everything runs the same bytes users deploy.
//!
//! # Adding a function
//! 1. `cargo new --lib functions/<name>` (or `--bin` for a wasip1 CGI command), set
//!    `crate-type = ["cdylib"]` for a component, and add it to `members` in
//!    `functions/Cargo.toml`.
//! 2. A `wasm32-wasip1` guest (a CGI command) says so in its `Cargo.toml`:
//!    `[package.metadata.thaw] target = "wasm32-wasip1"`; the default is `wasm32-wasip2`.
//!    Nothing else lists guests: `build.rs` and `scripts/test` read the members list.
//! 3. If it is an example users should see, add it to `functions/thaw.toml` too.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));

/// Reads one of the paths above.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}
