//! The host's two engines (`engine::concurrency`): which code compiles on which, and an
//! artifact filed under the other engine's name (a cluster peer's, see
//! `ArtifactCache::store_artifact`) still loads, without a rebuild.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use thaw_runtime::datadir::DataDir;
use thaw_runtime::engine::artifact::{ArtifactCache, Compiled, Origin, compile, sha256_hex};
use thaw_runtime::engine::{Concurrency, EngineOptions, HostEngines, concurrency};
use thaw_runtime::spec::Kind;
use thaw_test_functions as wasm;

fn options() -> EngineOptions {
    EngineOptions {
        instance_slots: 2,
        max_memory_bytes: 64 << 20,
        keep_resident_bytes: 64 << 10,
        on_demand: true,
        fuel_metering: false,
    }
}

#[test]
fn wasip3_components_need_the_concurrent_engine_and_nothing_else_does() {
    let read = |path: &str| std::fs::read(path).expect("wasm");
    assert_eq!(
        concurrency::needed(Kind::Component, &read(wasm::P3)),
        Concurrency::On
    );
    for component in [wasm::HELLO, wasm::ECHO, wasm::CAPABILITIES, wasm::SDK_TOUR] {
        assert_eq!(
            concurrency::needed(Kind::Component, &read(component)),
            Concurrency::Off,
            "{component}"
        );
    }
    assert_eq!(
        concurrency::needed(Kind::Cgi, &read(wasm::WORDCOUNT)),
        Concurrency::Off
    );
}

#[test]
fn an_artifact_under_the_other_engines_name_loads_without_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path().join("data")).unwrap();
    let engines = Arc::new(HostEngines::new(options(), None).unwrap());
    let cache = ArtifactCache::new(data.clone(), engines.clone()).unwrap();

    // The hello (which the scan puts on the engine without concurrency), compiled on the
    // concurrent engine, as a peer's fallback compile would have: stored by its digest, it
    // is filed under the name of the engine the scan picks.
    let hello = std::fs::read(wasm::HELLO).unwrap();
    let digest = sha256_hex(&hello);
    std::fs::create_dir_all(data.wasm_dir()).unwrap();
    std::fs::write(data.wasm(&digest), &hello).unwrap();
    let Compiled::Component(on) = compile(
        engines.get(Concurrency::On).engine(),
        Kind::Component,
        &hello,
    )
    .unwrap() else {
        panic!("a component");
    };
    cache
        .store_artifact(&digest, &on.serialize().unwrap())
        .unwrap();

    let (loaded, origin) = cache.load(Kind::Component, &digest).unwrap();
    assert_eq!(origin, Origin::Artifact);
    let Compiled::Component(loaded) = loaded else {
        panic!("a component");
    };
    assert!(wasmtime::Engine::same(
        loaded.engine(),
        engines.get(Concurrency::On).engine()
    ));
    assert_eq!(cache.stats().rebuilds.load(Ordering::Relaxed), 0);
    assert_eq!(cache.stats().compilations.load(Ordering::Relaxed), 0);
}

/// A component whose init the engine without concurrency refuses to compile (it declares a
/// `stream` type, which the scan does not look for): the deploy's snapshot
/// (`snapshot_for`, which `Platform::snapshot` calls) is taken on the concurrent engine
/// instead of failing, as its compile would be. An init that traps is a failure of the init,
/// not a refusal, and is reported as such.
#[tokio::test]
async fn a_snapshot_the_engine_without_concurrency_refuses_is_taken_on_the_other() {
    use thaw_runtime::engine::snapshot::{SnapshotError, snapshot, snapshot_for};
    let component = |init: &str| {
        wat::parse_str(format!(
            r#"(component
                (type $bytes (stream u8))
                (core module $m
                    (memory (export "memory") 1)
                    (func (export "init") {init}))
                (core instance $i (instantiate $m))
                (func $init (canon lift (core func $i "init")))
                (export "wizer-initialize" (func $init)))"#
        ))
        .unwrap()
    };
    let wasm = component("(i32.store (i32.const 0) (i32.const 42))");
    assert_eq!(
        concurrency::needed(Kind::Component, &wasm),
        Concurrency::Off,
        "the scan does not see types"
    );
    let engines = HostEngines::new(options(), None).unwrap();
    let budget = std::time::Duration::from_secs(10);
    let off = snapshot(
        engines.get(Concurrency::Off).engine(),
        &wasm,
        budget,
        64 << 20,
    )
    .await;
    assert!(
        matches!(off, Err(SnapshotError::Refused(_))),
        "refused before init ran: {off:?}"
    );
    let taken = snapshot_for(&engines, &wasm, budget, 64 << 20)
        .await
        .expect("taken on the concurrent engine");
    assert!(wasmparser::Parser::is_component(&taken));

    let trapping = component("unreachable");
    let on = snapshot(
        engines.get(Concurrency::On).engine(),
        &trapping,
        budget,
        64 << 20,
    )
    .await;
    assert!(
        matches!(on, Err(SnapshotError::Failed(_))),
        "an init that ran and trapped failed: {on:?}"
    );
    let error = snapshot_for(&engines, &trapping, budget, 64 << 20)
        .await
        .expect_err("a trapping init is no snapshot");
    assert!(format!("{error:#}").contains("unreachable"), "{error:#}");
}
