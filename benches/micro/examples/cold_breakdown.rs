//! Where a cold start from disk spends its time, phase by phase, in-process.
//!
//! `cargo run --release -p thaw-benches --example cold_breakdown [WASM [ROUNDS [same-file] [keep] [thread] [idle] [evict]]]`
//!
//! It compiles `hello` (or the component given) once and writes the artifact to a new file per round (so each round
//! loads its own mapping, as a host loading many functions does), then times what thaw does on the first request to a function on
//! disk: the checksum check done off the request path (the start-up scrub, streaming the file;
//! shown for its cost), the `stat` a load does instead when the scrub has checked the file,
//! `Component::deserialize_file` (mmap, code
//! registration), `instantiate_pre` (type-checking the imports against the linker),
//! `ProxyPre::new`, the first instantiation (which builds the module's copy-on-write memory
//! image) and, for comparison, a second one. Prints the median of each phase.
//!
//! With `same-file`, the artifact is written once and every round maps that file again (no
//! checksum, no writes): the rounds are then nothing but loads and instantiations, for a
//! profiler (`perf record --call-graph dwarf`).
//!
//! With `keep`, every round's component and its `ProxyPre` stay alive to the end, as in a host
//! with many functions loaded: each load then takes memory never used before, where without it
//! a round reuses what the round before freed. With `thread`, the rounds run on a thread other
//! than `main`, as a host's loads run on a blocking-pool thread: glibc gives such a thread its
//! own arena, which grows differently from the main thread's heap. `idle` sleeps 20 ms before
//! each round and `evict` first writes 64 MiB elsewhere: a host's load comes after the core idled
//! or ran other work, with its caches cold, where back-to-back rounds find them warm.

use std::time::{Duration, Instant};

use thaw_runtime::engine::ThawEngine;
use thaw_runtime::engine::artifact::{Kind, file_checksum};
use thaw_runtime::function::{Function, FunctionRecord};
use thaw_runtime::guest::Linkers;
use thaw_runtime::guest::host::ProxyHost;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

const ROUNDS: usize = 30;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| thaw_test_functions::HELLO.to_owned());
    let rounds: usize = args.next().map_or(ROUNDS, |n| n.parse().expect("ROUNDS"));
    let mut modes = Modes::default();
    for mode in args {
        match mode.as_str() {
            "same-file" => modes.same_file = true,
            "keep" => modes.keep = true,
            "thread" => modes.thread = true,
            "idle" => modes.idle = true,
            "evict" => modes.evict = true,
            other => panic!(
                "unknown argument {other:?} (expected same-file, keep, thread, idle or evict)"
            ),
        }
    }
    if modes.thread {
        std::thread::spawn(move || run(&path, rounds, modes))
            .join()
            .expect("the rounds' thread");
    } else {
        run(&path, rounds, modes);
    }
}

/// How the rounds run (see the module's docs).
#[derive(Clone, Copy, Default)]
struct Modes {
    same_file: bool,
    keep: bool,
    thread: bool,
    idle: bool,
    evict: bool,
}

fn run(path: &str, rounds: usize, modes: Modes) {
    let Modes {
        same_file,
        keep,
        idle,
        evict,
        ..
    } = modes;
    let mut elsewhere = vec![0u8; if evict { 64 << 20 } else { 0 }];
    let engine = ThawEngine::new(thaw_benches::engine_options(false)).expect("engine");
    let wasm = std::fs::read(path).expect("the component");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let record = FunctionRecord {
        name: "hello".into(),
        digest: String::new(),
        kind: Kind::Component,
        engine: None,
        wasm_bytes: wasm.len() as u64,
        code_digest: None,
        spec: Default::default(),
        generation: 1,
        deployed_at_ms: 0,
    };
    let function = Function::unloaded(record, &Default::default());
    let linkers = Linkers::new(engine.engine()).expect("linkers");

    let mut phases: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut time =
        |name: &'static str, elapsed: Duration| match phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, samples)) => samples.push(elapsed),
            None => phases.push((name, vec![elapsed])),
        };
    let start = Instant::now();
    let artifact = Component::new(engine.engine(), &wasm)
        .and_then(|c| c.serialize())
        .expect("compile");
    // Once, not per round: what a deploy pays before any of the phases below.
    println!(
        "compile and serialize (Cranelift, no cache): {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut artifact_bytes = 0;
    // Only held, never read: what `keep` keeps alive until the end.
    let mut kept = Vec::new();
    for round in 0..rounds {
        let path = dir
            .path()
            .join(format!("{}.cwasm", if same_file { 0 } else { round }));
        if !same_file || round == 0 {
            std::fs::write(&path, &artifact).expect("write");
        }
        if !same_file {
            let start = Instant::now();
            file_checksum(&path).expect("checksum");
            time("scrub's checksum (off path)", start.elapsed());
        }

        // Just before the timed phases, after any write or checksum that would warm the
        // caches again.
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
        if evict {
            // One write per cache line, a different value each round.
            for line in elsewhere.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            std::hint::black_box(&elsewhere);
        }
        let start = Instant::now();
        artifact_bytes = std::fs::metadata(&path).expect("stat").len() as usize;
        time("stat (checked file)", start.elapsed());

        let start = Instant::now();
        // SAFETY: the file was serialized just above by this engine.
        let component =
            unsafe { Component::deserialize_file(engine.engine(), &path) }.expect("deserialize");
        time("deserialize_file", start.elapsed());

        let start = Instant::now();
        let pre = linkers.proxy.instantiate_pre(&component).expect("link");
        time("instantiate_pre", start.elapsed());

        let start = Instant::now();
        let pre = ProxyPre::new(pre).expect("proxy");
        time("ProxyPre::new", start.elapsed());

        runtime.block_on(async {
            for name in ["first instantiation", "second instantiation"] {
                let mut store =
                    wasmtime::Store::new(engine.engine(), ProxyHost::new(&function.guest()));
                store.set_epoch_deadline(1_000_000);
                let start = Instant::now();
                pre.instantiate_async(&mut store)
                    .await
                    .expect("instantiate");
                time(name, start.elapsed());
            }
        });
        if keep {
            kept.push((component, pre));
        }
    }
    println!(
        "{path}: {} KB wasm, {} KB artifact, {rounds} rounds",
        wasm.len() >> 10,
        artifact_bytes >> 10
    );
    for (name, mut samples) in phases {
        samples.sort();
        println!(
            "{name:>24}: median {:>7.1} µs",
            samples[samples.len() / 2].as_secs_f64() * 1e6
        );
    }
}
