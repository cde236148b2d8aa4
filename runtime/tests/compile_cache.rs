//! Cranelift's incremental compilation cache (`engine::compile_cache`): what it serves is
//! the code a cold compile produces, byte for byte, and it survives a restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use thaw_runtime::engine::artifact::{Compiled, compile};
use thaw_runtime::engine::compile_cache::CompileCache;
use thaw_runtime::engine::{EngineOptions, ThawEngine};
use thaw_runtime::spec::Kind;
use thaw_test_functions as wasm;

fn options() -> EngineOptions {
    EngineOptions {
        instance_slots: 2,
        max_memory_bytes: 64 << 20,
        keep_resident_bytes: 64 << 10,
        on_demand: false,
        fuel_metering: false,
    }
}

/// Compiles `path` and returns the serialized artifact.
fn artifact(engine: &ThawEngine, path: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("wasm");
    let compiled = compile(engine.engine(), Kind::Component, &bytes).expect("compile");
    if let Some(cache) = engine.compile_cache() {
        cache.flush();
    }
    match compiled {
        Compiled::Component(c) => c.serialize().expect("serialize"),
        Compiled::Module(m) => m.serialize().expect("serialize"),
    }
}

fn counts(engine: &ThawEngine) -> (u64, u64) {
    let stats = engine.compile_cache().expect("a cache").stats();
    (
        stats.hits.load(Ordering::Relaxed),
        stats.misses.load(Ordering::Relaxed),
    )
}

#[test]
fn cached_code_is_the_code_of_a_cold_compile_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compile-cache.redb");
    let plain = ThawEngine::new(options()).unwrap();
    let cold_hello = artifact(&plain, wasm::HELLO);
    let cold_echo = artifact(&plain, wasm::ECHO);

    // An empty cache: everything is compiled, and the result is what a cacheless engine
    // produces.
    let first =
        ThawEngine::with_compile_cache(options(), Arc::new(CompileCache::open(&path).unwrap()))
            .unwrap();
    assert_eq!(artifact(&first, wasm::HELLO), cold_hello);
    let (hits, misses) = counts(&first);
    assert_eq!(hits, 0);
    assert!(misses > 0);
    drop(first);

    // A new process on the same file: hello comes from the cache, identical.
    let second =
        ThawEngine::with_compile_cache(options(), Arc::new(CompileCache::open(&path).unwrap()))
            .unwrap();
    assert_eq!(artifact(&second, wasm::HELLO), cold_hello);
    let (hits, misses_again) = counts(&second);
    assert!(hits > 0, "hello's functions are found");
    assert!(
        misses_again < misses / 10,
        "almost nothing is compiled again: {misses_again} of {misses}"
    );

    // Another Rust component shares the standard library's functions with hello: some
    // come from the cache, and its artifact is still a cold compile's.
    let before = counts(&second).0;
    assert_eq!(artifact(&second, wasm::ECHO), cold_echo);
    assert!(counts(&second).0 > before, "echo shares code with hello");

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "the cache is readable by its owner only"
    );
}

#[test]
fn a_damaged_cache_file_is_set_aside_and_compiling_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compile-cache.redb");
    std::fs::write(&path, b"not a database at all").unwrap();
    let cache = CompileCache::open(&path).expect("a new cache replaces the damaged one");
    assert!(path.with_extension("redb.old").exists());
    let engine = ThawEngine::with_compile_cache(options(), Arc::new(cache)).unwrap();
    let plain = ThawEngine::new(options()).unwrap();
    assert_eq!(
        artifact(&engine, wasm::HELLO),
        artifact(&plain, wasm::HELLO)
    );
}
