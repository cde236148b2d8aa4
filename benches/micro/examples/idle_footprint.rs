//! What one loaded, idle function holds in memory, piece by piece: the heap bytes (glibc's
//! `mallinfo2`: small blocks plus mmapped ones) that N deserialized copies of a component's
//! artifact take, what linking them (`instantiate_pre`, `ProxyPre`) adds, and what thaw's
//! own per-function state (`Function::unloaded`) takes; divided by N.
//!
//! `cargo run --release -p thaw-benches --example idle_footprint [COMPONENT.wasm [N]]`
//!
//! Each copy is deserialized from a file of its own, as a host with many functions does.
//! Heap only: the artifact's mapping is the kernel's (see `benches/density.sh` for the
//! resident set as a whole).

use thaw_runtime::engine::ThawEngine;
use thaw_runtime::engine::artifact::Kind;
use thaw_runtime::function::{Function, FunctionRecord};
use thaw_runtime::guest::Linkers;
use thaw_runtime::guest::host::ProxyHost;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

fn heap() -> usize {
    // SAFETY: mallinfo2 has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

fn main() {
    let engine = ThawEngine::new(thaw_benches::engine_options(false)).expect("engine");
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| thaw_test_functions::HELLO.to_owned());
    let n: usize = args.next().map_or(200, |n| n.parse().expect("N"));
    let wasm = std::fs::read(&path).expect("the component");
    let dir = tempfile::tempdir().expect("tempdir");
    let artifact = Component::new(engine.engine(), &wasm)
        .and_then(|c| c.serialize())
        .expect("compile");
    let paths: Vec<_> = (0..n)
        .map(|i| {
            let path = dir.path().join(format!("{i}.cwasm"));
            std::fs::write(&path, &artifact).expect("artifact");
            path
        })
        .collect();
    let linkers = Linkers::new(engine.engine()).expect("linkers");

    let before = heap();
    // SAFETY: artifacts this process just serialized with this engine.
    let components: Vec<Component> = paths
        .iter()
        .map(|p| unsafe { Component::deserialize_file(engine.engine(), p) }.expect("load"))
        .collect();
    let deserialized = heap();
    let pres: Vec<ProxyPre<ProxyHost>> = components
        .iter()
        .map(|c| {
            let pre = linkers.proxy.instantiate_pre(c).expect("instantiate_pre");
            ProxyPre::new(pre).expect("a proxy")
        })
        .collect();
    let linked = heap();
    let functions: Vec<Function> = (0..n)
        .map(|i| {
            Function::unloaded(
                FunctionRecord {
                    name: format!("f{i}"),
                    digest: format!("{i:064}"),
                    kind: Kind::Component,
                    engine: None,
                    wasm_bytes: wasm.len() as u64,
                    code_digest: None,
                    spec: Default::default(),
                    generation: 1,
                    deployed_at_ms: 0,
                },
                &Default::default(),
            )
        })
        .collect();
    let state = heap();
    let per = |from: usize, to: usize| to.saturating_sub(from) / n;
    println!(
        "{n} copies of {path} ({} byte artifact), heap bytes per function:",
        artifact.len()
    );
    println!(
        "  Component::deserialize_file   {:>8}",
        per(before, deserialized)
    );
    println!(
        "  instantiate_pre + ProxyPre     {:>8}",
        per(deserialized, linked)
    );
    println!("  Function::unloaded (thaw)      {:>8}", per(linked, state));
    println!("  all                            {:>8}", per(before, state));
    drop((functions, pres, components));
}
