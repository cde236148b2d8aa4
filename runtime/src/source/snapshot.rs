//! A source function's snapshot: its language engine with its program already loaded, as a
//! component of its own.
//!
//! A source function's instance is the shared engine, instantiated, then `load(program)`:
//! about a millisecond of evaluation per instance that a componentized function did once, at
//! build time, in its own Wizer snapshot. Here the same is done after the deploy: the
//! engine is instrumented by [Wizer], instantiated, `load` runs, and the instance's memories
//! and globals are written back into the engine as its initial state. Instances of the
//! result start with the program evaluated, exactly as a component built from the same
//! source would.
//!
//! # What load may not do
//! As for a function's own pre-initialisation ([`crate::engine::snapshot`]), the host is out
//! of reach while `load` runs: a wall-clock read, a random seed or any I/O would be frozen
//! into the snapshot and be wrong for every later instance, so those imports trap, and a
//! program whose load calls one (top-level code reading the date, say) cannot be
//! snapshotted and stays on the shared engine. One exception: the monotonic clock, which
//! SpiderMonkey reads on every entry (for its collector's timing). It answers 0 throughout:
//! wasmtime's WASI clock counts from each instance's store's creation, so any reading an
//! instance of the snapshot takes later is at least every reading frozen in its heap, and
//! time never runs backwards for the program (a componentize-js build freezes readings of
//! its build machine's clock instead). And the
//! environment, which CPython reads on its first entry: it answers the function's own
//! variables, which every instance of this version gets (no arguments, no working
//! directory, as for a request).
//!
//! # The engine's own first entry
//! An engine may do work on its first entry that is not the program's: componentize-py's
//! runtime, on the first call into any export, copies the environment into `os.environ`
//! and reseeds Python's `random` module from the host's random source (so that instances of
//! its own build-time snapshot do not share a seed). That draw would trap like any other, so
//! before `load`, the snapshot run calls the engine's `snapshot-start` (engines/wit), and the
//! random source answers during that call only. The seed it draws is frozen into the
//! snapshot, so the Python engine reseeds `random` once more on each instance's first request
//! (engines/python/thaw_engine.py); the JavaScript engine draws nothing on entry. During
//! `load` the random source traps again, and the Python engine refuses a program whose top
//! level drew from the generator seeded before it (no host call, but the same values in
//! every instance). An engine without `snapshot-start` (built before it) gets no such call:
//! a Python one then fails at its first entry, as it always did, and stays on its engine.
//!
//! # Cost
//! Instrumenting and compiling the 13-19 MB engine once more, running `load`, and rewriting
//! the component (without the data segments the rewrite emptied: [`super::compact`]); then
//! the result is compiled as any component (see [`crate::engine::artifact`]). That is
//! seconds of CPU, which is why it is not the deploy's path (a deploy answers in
//! milliseconds on the shared engine) and runs only for functions whose traffic pays for it.
//!
//! [Wizer]: https://github.com/bytecodealliance/wasmtime/tree/main/crates/wizer

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wizer::{WasmtimeWizerComponent, Wizer};

use super::PROGRAM_INTERFACE;

/// The traffic that makes a source function worth its snapshot: about a second of CPU a
/// minute spent loading its program into new instances, so that the snapshot (seconds of CPU,
/// once) pays for itself within minutes.
pub const HOT_REQUESTS_PER_SEC: f64 = 5.0;

/// The shortest stretch a rate is judged over: a burst of a few requests is not traffic.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// How busy a source function has been, as the tier-up (`crate::control`) judges it.
#[derive(Default)]
pub struct Heat {
    /// Requests and time at the last look that started a window.
    last: Mutex<Option<(u64, Instant)>>,
    /// A tier-up was started for this copy of the function.
    tried: AtomicBool,
}

impl Heat {
    /// Whether `requests` (the function's count now) make it hot since the window began;
    /// true at most once per copy of the function.
    pub fn hot(&self, requests: u64, now: Instant) -> bool {
        if self.tried.load(Ordering::Relaxed) {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some((before, since)) = *last else {
            *last = Some((requests, now));
            return false;
        };
        let window = now.saturating_duration_since(since);
        if window < MIN_WINDOW {
            return false;
        }
        *last = Some((requests, now));
        let rate = requests.saturating_sub(before) as f64 / window.as_secs_f64();
        rate >= HOT_REQUESTS_PER_SEC && !self.tried.swap(true, Ordering::Relaxed)
    }
}

/// The name a source function's snapshot is cached under, from everything the snapshot
/// depends on: its engine's digest, its program's, the environment variables its load saw
/// and its memory limit as the spec sets it (the snapshot's heap was grown under it). The
/// artifact cache keeps the compiled snapshot (never its wasm, which is remade if the
/// artifact is lost), and the collector keeps it as long as a version it belongs to is kept.
/// Two functions of the same program and settings share one.
pub fn key<'a>(
    engine: &str,
    program: &str,
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
    memory_mib: Option<u64>,
) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    // "2": snapshots without the segments they emptied (`super::compact`); an upgrade takes
    // the snapshots of busy functions again rather than keep serving the slower ones.
    hash.update(b"thaw source snapshot 2\n");
    for part in [engine, program] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    for (name, value) in env {
        for part in [name, value] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
    }
    hash.update(memory_mib.map_or([0xff; 8], u64::to_le_bytes));
    hex::encode(hash.finalize())
}

/// Fills `bytes` from the host's random source while the engine is `waking`; traps after.
fn draw(waking: &AtomicBool, bytes: &mut [u8]) -> wasmtime::Result<()> {
    if !waking.load(Ordering::Relaxed) {
        return Err(wasmtime::Error::msg(
            "the program draws a random value while it loads: frozen into a snapshot, every \
             instance would get the same one",
        ));
    }
    getrandom::getrandom(bytes).map_err(|e| wasmtime::Error::msg(format!("random source: {e}")))
}

/// How much larger than its engine a snapshot may be: a program that builds a large heap at
/// its top level would otherwise cost that much disk per busy function.
pub const MAX_HEAP_GROWTH: usize = 32 << 20;

/// The engine `engine_wasm` with `program` loaded, as a component whose instances need no
/// `load`. The run happens on `engine` (any engine: only the resulting memory is kept, so a
/// baseline compiler's quick compile serves), within `budget` and `memory_bytes`.
pub async fn snapshot(
    engine: &Engine,
    engine_wasm: &[u8],
    program: &str,
    env: &[(String, String)],
    budget: Duration,
    memory_bytes: u64,
) -> anyhow::Result<Vec<u8>> {
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument_component(engine_wasm)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("instrumenting the engine")?;
    let component = Component::new(engine, &instrumented)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("compiling the instrumented engine")?;
    let mut store = crate::engine::snapshot::snapshot_store(engine, budget, memory_bytes);
    // Nothing of the host is reachable but the monotonic clock, the function's environment
    // and, while the engine is first entered, the random source: every other import traps,
    // with its name in the error.
    let waking = Arc::new(AtomicBool::new(true));
    let mut linker = Linker::new(engine);
    for (name, _) in component.component_type().imports(engine) {
        if name.starts_with("wasi:random/random@0.2") {
            let mut random = linker
                .instance(name)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let during = waking.clone();
            random
                .func_wrap("get-random-bytes", move |_, (len,): (u64,)| {
                    if len > 1 << 16 {
                        return Err(wasmtime::Error::msg(format!(
                            "{len} random bytes asked for at once"
                        )));
                    }
                    let mut bytes = vec![0; len as usize];
                    draw(&during, &mut bytes)?;
                    Ok((bytes,))
                })
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let during = waking.clone();
            random
                .func_wrap("get-random-u64", move |_, ()| {
                    let mut bytes = [0; 8];
                    draw(&during, &mut bytes)?;
                    Ok((u64::from_le_bytes(bytes),))
                })
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        if name.starts_with("wasi:cli/environment@0.2") {
            let mut environment = linker
                .instance(name)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let env = env.to_vec();
            environment
                .func_wrap("get-environment", move |_, ()| Ok((env.clone(),)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            environment
                .func_wrap("get-arguments", |_, ()| Ok((Vec::<String>::new(),)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            environment
                .func_wrap("initial-cwd", |_, ()| Ok((None::<String>,)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        if name.starts_with("wasi:clocks/monotonic-clock@0.2") {
            let mut clock = linker
                .instance(name)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            clock
                .func_wrap("now", |_, ()| Ok((0u64,)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            clock
                .func_wrap("resolution", |_, ()| Ok((1u64,)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let instance = linker
        .instantiate_async(&mut store, &component)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("instantiating the instrumented engine")?;
    let (_, interface) = component
        .get_export(None, PROGRAM_INTERFACE)
        .with_context(|| format!("the engine does not export {PROGRAM_INTERFACE}"))?;
    // The engine's own first entry (see the module's docs), where it has one: engines built
    // before `snapshot-start` existed get none, and their first entry's draw traps in `load`.
    if let Some(start) = component.get_export_index(Some(&interface), "snapshot-start") {
        let start = instance
            .get_typed_func::<(), ()>(&mut store, &start)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        start
            .call_async(&mut store, ())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("entering the engine before its load")?;
    }
    waking.store(false, Ordering::Relaxed);
    let load = component
        .get_export_index(Some(&interface), "load")
        .context("the engine has no `load`")?;
    let load = instance
        .get_typed_func::<(&str,), (Result<(), String>,)>(&mut store, &load)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (loaded,) = load
        .call_async(&mut store, (program,))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("loading the program without the host (does its top level call it?)")?;
    loaded.map_err(|message| anyhow::anyhow!("the program did not load: {message}"))?;
    let snapshot = wizer
        .snapshot_component(
            &cx,
            &mut WasmtimeWizerComponent {
                store: &mut store,
                instance,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("taking the snapshot")?;
    let snapshot = super::compact::drop_emptied_segments(snapshot)
        .context("dropping the segments the snapshot emptied")?;
    anyhow::ensure!(
        snapshot.len() <= engine_wasm.len() + MAX_HEAP_GROWTH,
        "the program's heap after its load is {} MiB over the engine's own: too large to keep \
         as a snapshot (at most {} MiB)",
        (snapshot.len() - engine_wasm.len()) >> 20,
        MAX_HEAP_GROWTH >> 20
    );
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_hot_once_at_five_requests_a_second() {
        let heat = Heat::default();
        let t0 = Instant::now();
        assert!(!heat.hot(0, t0), "the first look only starts a window");
        assert!(
            !heat.hot(100, t0 + Duration::from_millis(500)),
            "under a second"
        );
        // 100 requests in 2 s: 50 a second.
        assert!(heat.hot(100, t0 + Duration::from_secs(2)));
        assert!(
            !heat.hot(1_000, t0 + Duration::from_secs(3)),
            "once per copy"
        );

        let quiet = Heat::default();
        assert!(!quiet.hot(0, t0));
        // 4 requests in 1 s, then 40 in 10 s: under 5 a second both times.
        assert!(!quiet.hot(4, t0 + Duration::from_secs(1)));
        assert!(!quiet.hot(44, t0 + Duration::from_secs(11)));
        assert!(
            quiet.hot(100, t0 + Duration::from_secs(12)),
            "56 in the last second"
        );
    }

    #[test]
    fn the_key_names_everything_the_snapshot_depends_on() {
        let env = std::collections::BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let other = std::collections::BTreeMap::from([("A".to_owned(), "2".to_owned())]);
        let a = key("engine-a", "program-1", &env, None);
        assert_eq!(a.len(), 64);
        assert_eq!(a, key("engine-a", "program-1", &env, None));
        assert_ne!(a, key("engine-b", "program-1", &env, None));
        assert_ne!(a, key("engine-a", "program-2", &env, None));
        assert_ne!(a, key("engine-a", "program-1", &other, None));
        assert_ne!(a, key("engine-a", "program-1", &env, Some(64)));
        // Parts are length-prefixed: moving a character between them changes the key.
        assert_ne!(key("ab", "c", &env, None), key("a", "bc", &env, None));
    }
}
