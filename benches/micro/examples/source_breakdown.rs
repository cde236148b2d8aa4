//! Where a source function's start goes, phase by phase, in-process: the deploy's
//! validation (`prepare`: parse, rewrite, evaluate), then per instance the engine's
//! instantiation and the program's `load`, and, beside them, the instantiation of a component
//! built from the same language (the component path's only per-instance phase). Then the
//! snapshot a source function could tier up to ([`thaw_runtime::source::snapshot`]): what
//! taking it costs (on the baseline compiler's engine, and on Cranelift's), what compiling
//! the result costs, and what instantiating it costs per instance.
//!
//! `cargo run --release -p thaw-benches --example source_breakdown -- ENGINE.wasm SOURCE [COMPONENT.wasm [ROUNDS]]`
//!
//! ENGINE is `target/engines/js.wasm` or `python.wasm`; SOURCE a `.js` or `.py` file (its
//! language picks the entry's name). The engine and the component are compiled once, not
//! timed. Prints the median and p90 of each phase. With `SNAPSHOT_OUT=PATH` it also writes
//! the snapshot's wasm there (`cold_breakdown PATH` then times its start from disk).

use std::time::{Duration, Instant};

use thaw_runtime::engine::ThawEngine;
use thaw_runtime::engine::artifact::Kind;
use thaw_runtime::function::{Function, FunctionRecord};
use thaw_runtime::guest::Linkers;
use thaw_runtime::guest::host::ProxyHost;
use thaw_runtime::source::{Bundle, Language, LanguageEngine};
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The samples of each phase, in the order the phases were first timed.
type Phases = Vec<(&'static str, Vec<Duration>)>;

/// What is measured: the language engine and the program it runs, and a component to compare.
struct Subject<'a> {
    engine: &'a ThawEngine,
    function: &'a Function,
    language_engine: &'a LanguageEngine,
    bundle: &'a Bundle,
    peer: Option<&'a ProxyPre<ProxyHost>>,
    /// The engine's wasm, for the snapshot.
    engine_wasm: &'a [u8],
    linkers: &'a Linkers,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(engine_path), Some(source_path)) = (args.next(), args.next()) else {
        eprintln!("usage: source_breakdown ENGINE.wasm SOURCE [COMPONENT.wasm [ROUNDS]]");
        std::process::exit(2);
    };
    let component_path = args.next().filter(|p| !p.is_empty());
    let rounds: usize = args.next().map_or(50, |n| n.parse().expect("ROUNDS"));
    let engine = ThawEngine::new(thaw_benches::engine_options(false)).expect("engine");
    let linkers = Linkers::new(engine.engine()).expect("linkers");
    let (component, pre) = link(&engine, &linkers, &engine_path);
    let bundle = bundle_of(&source_path);
    let language_engine = LanguageEngine::new("bench".into(), &component, pre).expect("engine");
    let peer = component_path
        .as_deref()
        .map(|path| link(&engine, &linkers, path));
    let function = Function::unloaded(
        FunctionRecord {
            name: "f".into(),
            digest: String::new(),
            kind: Kind::Source,
            engine: None,
            wasm_bytes: 0,
            code_digest: None,
            spec: Default::default(),
            generation: 1,
            deployed_at_ms: 0,
        },
        &Default::default(),
    );
    let subject = Subject {
        engine: &engine,
        function: &function,
        language_engine: &language_engine,
        bundle: &bundle,
        peer: peer.as_ref().map(|(_, pre)| pre),
        engine_wasm: &std::fs::read(&engine_path).expect("the engine's wasm"),
        linkers: &linkers,
    };
    let phases = measure(&subject, rounds);
    report(&source_path, &bundle, rounds, phases);
}

/// Compiles the component at `path` (timed, once, not a phase) and links it as a proxy.
fn link(engine: &ThawEngine, linkers: &Linkers, path: &str) -> (Component, ProxyPre<ProxyHost>) {
    let started = Instant::now();
    let component = Component::from_file(engine.engine(), path).expect("compile");
    println!(
        "{path}: compiled in {:.1} s (once, not a phase)",
        started.elapsed().as_secs_f64()
    );
    let pre =
        ProxyPre::new(linkers.proxy.instantiate_pre(&component).expect("link")).expect("a proxy");
    (component, pre)
}

/// The bundle of the one source file at `source_path`, its file name the entry.
fn bundle_of(source_path: &str) -> Bundle {
    let language = Language::of_path(source_path).expect("a .js or .py file");
    let entry = std::path::Path::new(source_path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name")
        .to_owned();
    Bundle {
        language,
        entry: entry.clone(),
        files: vec![(entry, std::fs::read_to_string(source_path).expect("source"))],
    }
}

/// Times the deploy's `prepare` (up to 20 rounds), then per round the engine's instantiation,
/// the program's `load` and, with a peer, the component's instantiation.
fn measure(subject: &Subject<'_>, rounds: usize) -> Phases {
    let Subject {
        engine,
        function,
        language_engine,
        bundle,
        peer,
        engine_wasm,
        linkers,
    } = subject;
    let store = || thaw_runtime::guest::proxy_store(engine.engine(), &function.guest());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut phases: Phases = Vec::new();
    let mut time =
        |name: &'static str, elapsed: Duration| match phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, samples)) => samples.push(elapsed),
            None => phases.push((name, vec![elapsed])),
        };
    runtime.block_on(async {
        let mut program = String::new();
        for _ in 0..rounds.min(20) {
            let mut s = store();
            let started = Instant::now();
            program = language_engine
                .prepare(&mut s, bundle, function.deadline_ticks)
                .await
                .expect("prepare");
            time(
                "deploy: prepare (instantiate, parse, load)",
                started.elapsed(),
            );
        }
        for _ in 0..rounds {
            let mut s = store();
            let started = Instant::now();
            let instance = language_engine
                .pre
                .instance_pre()
                .instantiate_async(&mut s)
                .await
                .expect("instantiate");
            time("instance: engine instantiation", started.elapsed());
            let started = Instant::now();
            language_engine
                .load(&mut s, &instance, &program)
                .await
                .expect("load");
            time("instance: load(program)", started.elapsed());
            if let Some(peer) = peer {
                let mut s = store();
                let started = Instant::now();
                peer.instantiate_async(&mut s).await.expect("instantiate");
                time("component: instantiation", started.elapsed());
            }
        }
        // The snapshot: a few rounds, each some seconds.
        let fast = ThawEngine::new_fast_tier(&thaw_benches::engine_options(true)).expect("winch");
        let memory = function.limits.memory_bytes;
        let mut snapshot = Vec::new();
        for (name, on) in [
            ("tier-up: snapshot on Winch's engine", &fast),
            ("tier-up: snapshot on Cranelift's engine", *engine),
        ] {
            for _ in 0..3 {
                let started = Instant::now();
                snapshot = thaw_runtime::source::snapshot::snapshot(
                    on.engine(),
                    engine_wasm,
                    &program,
                    &function.env,
                    function.limits.timeout,
                    memory,
                )
                .await
                .expect("snapshot");
                time(name, started.elapsed());
            }
        }
        println!(
            "snapshot: {} bytes (the engine: {} bytes)",
            snapshot.len(),
            engine_wasm.len()
        );
        if let Some(path) = std::env::var_os("SNAPSHOT_OUT") {
            // For `cold_breakdown SNAPSHOT.wasm`: where a start of the snapshot from disk goes.
            std::fs::write(&path, &snapshot).expect("writing SNAPSHOT_OUT");
        }
        let mut component = None;
        for _ in 0..3 {
            let started = Instant::now();
            component = Some(Component::new(engine.engine(), &snapshot).expect("compile"));
            time("tier-up: compile the snapshot", started.elapsed());
        }
        let component = component.expect("compiled");
        let pre = ProxyPre::new(linkers.proxy.instantiate_pre(&component).expect("link"))
            .expect("a proxy");
        for _ in 0..rounds {
            let mut s = store();
            let started = Instant::now();
            pre.instantiate_async(&mut s).await.expect("instantiate");
            time("snapshot: instantiation", started.elapsed());
        }
    });
    phases
}

/// Prints the median and p90 of each phase.
fn report(source_path: &str, bundle: &Bundle, rounds: usize, phases: Phases) {
    println!(
        "{source_path} ({} bytes of program), {rounds} rounds",
        bundle.files[0].1.len()
    );
    for (name, mut samples) in phases {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "{name:>44}: median {:>8.1} µs, p90 {:>8.1} µs",
            at(0.5).as_secs_f64() * 1e6,
            at(0.9).as_secs_f64() * 1e6
        );
    }
}
