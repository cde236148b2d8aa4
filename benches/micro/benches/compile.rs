//! What a deploy and a cold load cost: compiling the example components with Cranelift and
//! with Winch (the baseline compiler thaw's `--fast-deploy` uses), and loading a serialized
//! Cranelift artifact with `deserialize_file` (an mmap), side by side.
//!
//! Run: `cargo bench -p thaw-benches --bench compile`.

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Strategy};

fn engine(strategy: Strategy) -> Engine {
    let mut config = Config::new();
    config.strategy(strategy);
    config.epoch_interruption(true);
    Engine::new(&config).unwrap()
}

fn benches(c: &mut Criterion) {
    let cranelift = engine(Strategy::Cranelift);
    let winch = engine(Strategy::Winch);
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in [
        ("hello", thaw_test_functions::HELLO),
        ("markdown", thaw_test_functions::MARKDOWN),
    ] {
        let wasm = thaw_test_functions::read(path);
        let mut group = c.benchmark_group(format!("compile-{name}"));
        group.sample_size(10);
        group.bench_function("cranelift", |b| {
            b.iter(|| Component::new(&cranelift, &wasm).unwrap())
        });
        group.bench_function("winch", |b| {
            b.iter(|| Component::new(&winch, &wasm).unwrap())
        });
        group.finish();

        let artifact = dir.path().join(format!("{name}.cwasm"));
        std::fs::write(
            &artifact,
            Component::new(&cranelift, &wasm)
                .unwrap()
                .serialize()
                .unwrap(),
        )
        .unwrap();
        c.bench_function(&format!("deserialize-{name}"), |b| {
            // SAFETY: the artifact was serialized just above by the same engine.
            b.iter(|| unsafe { Component::deserialize_file(&cranelift, &artifact).unwrap() })
        });
    }
}

criterion_group!(compile_benches, benches);
criterion_main!(compile_benches);
