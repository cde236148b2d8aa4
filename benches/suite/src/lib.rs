//! `thaw bench`: the cold-start suite, a crate of its own so that its progress bars and charts
//! are no dependency of the runtime library; the CLI calls [`execute`]. The same "hello over HTTP" through every setup this
//! machine has, measured the same way, side by side, in one run.
//!
//! # What is measured
//! For each setup, the time from its "start" to the first byte of a `200` over 127.0.0.1, on
//! a fresh TCP connection every time ([`probe`]):
//!
//! | setup | "start" is |
//! |---|---|
//! | thaw, cold from disk | the request; the host runs, the function is deployed, its artifact is on disk and not loaded (`--load lazy`, a fresh host per batch) |
//! | thaw, after deploy | the upload of wasm thaw has never seen (a new digest: compiled, not cached) |
//! | thaw, warm | the request, with a warm instance waiting (a pool hit) |
//! | `wasmtime serve` | process start, the same component, compiled at start or precompiled |
//! | process | fork/exec of a static Go server, a static Rust one, Node, Python, Java |
//! | container | `crun` (with and without cgroups) and `runc` starting the Go server from a minimal OCI bundle; `crun` starting Node and Python |
//!
//! Per language (the rows named `JS: …`, `Python: …`, `Go: …`): thaw serving the `thaw new`
//! template's component cold from disk, beside a hello server process of the same language,
//! the same in a container, and for JS and Python `wasmtime serve` on the same component,
//! precompiled, at its defaults and with the pooling settings that are its best for
//! throughput. A row's "×" column is its median over thaw's cold start in the same language.
//! The thaw rows wait for the host's start-up scrub of artifact checksums (a few ms per
//! artifact, in the background) before the first request: they measure a host that has been
//! up a moment, not one racing its own start.
//!
//! The inner loop per language (`Rust: thaw dev, save → live`, beside `Rust: the build alone
//! (in thaw dev)`; the same for JS and Python): from saving an edit of the template under
//! `thaw dev` to the first answer with it (see `dev_loop`).
//!
//! Then steady state ([`throughput`]): requests per second and latency of thaw, `wasmtime
//! serve` and a plain hyper server at 1, 32 and 128 connections, with `wrk`.
//!
//! # Honesty rules the code keeps
//! - A setup runs only where its tools are present; otherwise it is listed as skipped, with
//!   the reason. Nothing is estimated.
//! - Every baseline process starts in its own process group, and the group is killed after
//!   each sample; before each sample the port must be free, so a server that outlived its
//!   sample (a container its runtime did not take down) cannot answer the next one.
//! - thaw's samples record the start kind its `Server-Timing` header reported, so a "warm"
//!   number that was not a pool hit would show.
//!
//! The results folder holds the table (`table.md`), every sample (`samples.csv`), a summary
//! (`summary.json`, with the machine), a chart (`chart.svg`) and `machine.json`.

mod dev_loop;
pub mod probe;
pub mod report;
pub mod setups;
mod source;
pub mod throughput;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use report::{Measured, Skipped, Summary};
use setups::{Container, Env, ProcessSetup, Sample, ThawHost, at, which, with_nonce};
use thaw_spec::source::Language;

/// `thaw bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Where the results folder (`<date>-<host>`) is created
    #[arg(long, default_value = "bench-results", value_name = "DIR")]
    pub out: PathBuf,
    /// Samples per process, container and `wasmtime serve` setup
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub samples: usize,
    /// Samples of thaw's cold-from-disk and warm setups (cheap, so more)
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub thaw_samples: usize,
    /// Samples of thaw's after-deploy setups (each compiles new code)
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub deploy_samples: usize,
    /// Seconds of each throughput run
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub throughput_secs: u64,
    /// Only setups whose name contains this (`throughput` for the throughput runs);
    /// repeatable
    #[arg(long, value_name = "TEXT")]
    pub only: Vec<String>,
    /// A quick check that the suite works: thaw's setups only, 3 samples each, no
    /// throughput
    #[arg(long)]
    pub smoke: bool,
    /// The hello component [default: target/guests/wasm32-wasip2/release/hello.wasm beside
    /// this binary's target directory]
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// The baselines built by scripts/setup-bench [default: target/baselines]
    #[arg(long, value_name = "DIR")]
    pub baselines: Option<PathBuf>,
    /// The `thaw new` templates' components for the per-language rows (`js.wasm`,
    /// `python.wasm`, `go.wasm`, built by scripts/setup-bench) [default: target/baselines/lang]
    #[arg(long, value_name = "DIR")]
    pub languages: Option<PathBuf>,
    /// The wasmtime CLI [default: $THAW_WASMTIME, target/tools/pip/wasmtime_cli/wasmtime,
    /// or wasmtime on $PATH]
    #[arg(long, value_name = "FILE")]
    pub wasmtime: Option<PathBuf>,
}

/// Runs the suite.
pub async fn execute(args: BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let env = environment(&args, scratch.path())?;
    let counts = if args.smoke {
        Counts {
            samples: 3,
            thaw: 3,
            deploys: 3,
        }
    } else {
        Counts {
            samples: args.samples,
            thaw: args.thaw_samples,
            deploys: args.deploy_samples,
        }
    };
    let wanted = |name: &str| {
        (!args.smoke || name.starts_with("thaw"))
            && (args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str())))
    };
    let mut results = Results::default();
    let wasm = std::fs::read(&env.wasm)?;
    thaw_setups(&env, &wasm, counts, &wanted, &mut results).await;
    language_setups(&env, counts, &wanted, &mut results).await;
    source_setups(&env, counts, &wanted, &mut results).await;
    dev_loop::dev_loop_setups(&env, counts.deploys, &wanted, &mut results).await;
    for (name, start, setup) in process_setups(&env) {
        if wanted(&name) {
            let result = setup.and_then(|setup| sample_process(&name, &setup, counts.samples));
            results.record(&name, start, result);
        }
    }
    results.relate_to_cold();
    let throughput_runs = if args.smoke || !wanted("throughput") {
        Vec::new()
    } else {
        let secs = Duration::from_secs(args.throughput_secs);
        run_throughput(&env, &wasm, secs, &mut results.skipped).await
    };
    write_report(&env, &args.out, &results, &throughput_runs)
}

/// How many samples each kind of setup takes.
#[derive(Clone, Copy)]
struct Counts {
    /// Per process started per sample (baselines).
    samples: usize,
    /// Per thaw cold or warm request.
    thaw: usize,
    /// Per deploy.
    deploys: usize,
}

/// Where everything the suite runs is: the binaries, the components, a scratch directory.
fn environment(args: &BenchArgs, scratch: &Path) -> anyhow::Result<Env> {
    let thaw = std::env::current_exe().context("finding the thaw binary")?;
    // .../target/<profile>/thaw → .../target
    let target_dir = thaw
        .parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("target"));
    let env = Env {
        wasm: args
            .wasm
            .clone()
            .unwrap_or_else(|| target_dir.join("guests/wasm32-wasip2/release/hello.wasm")),
        baselines: args
            .baselines
            .clone()
            .unwrap_or_else(|| target_dir.join("baselines")),
        wasmtime: args
            .wasmtime
            .clone()
            .or_else(|| std::env::var_os("THAW_WASMTIME").map(PathBuf::from))
            .or_else(|| {
                let pip = target_dir.join("tools/pip/wasmtime_cli/wasmtime");
                pip.is_file().then_some(pip)
            })
            .or_else(|| which("wasmtime")),
        languages: args
            .languages
            .clone()
            .unwrap_or_else(|| target_dir.join("baselines/lang")),
        engines: target_dir.join("engines"),
        thaw,
        scratch: scratch.to_owned(),
    };
    anyhow::ensure!(
        env.wasm.is_file(),
        "no hello component at {} (build it with `cargo build -p thaw-test-functions`, or pass --wasm)",
        env.wasm.display()
    );
    Ok(env)
}

/// What the suite measured, and what it could not.
#[derive(Default)]
struct Results {
    measured: Vec<Measured>,
    skipped: Vec<Skipped>,
    /// Lines that are not sample rows (the density run's totals).
    notes: Vec<String>,
}

impl Results {
    /// One setup's samples (or why there are none).
    fn record(&mut self, name: &str, start: &str, result: anyhow::Result<Vec<Sample>>) {
        match result {
            Ok(samples) if samples.is_empty() => self.skipped.push(Skipped {
                name: name.to_owned(),
                reason: "0 samples asked for".into(),
            }),
            Ok(samples) => {
                let mut kinds = BTreeMap::new();
                for s in &samples {
                    if let Some(kind) = &s.start_kind {
                        *kinds.entry(kind.clone()).or_insert(0) += 1;
                    }
                }
                let samples: Vec<Duration> = samples.iter().map(|s| s.elapsed).collect();
                self.measured.push(Measured {
                    name: name.to_owned(),
                    start: start.to_owned(),
                    summary: Summary::of(&samples),
                    ratio_to_thaw_cold: None,
                    start_kinds: kinds,
                    samples,
                });
            }
            Err(e) => self.skipped.push(Skipped {
                name: name.to_owned(),
                reason: format!("{e:#}"),
            }),
        }
    }

    /// Each row over thaw's cold start in its language (`JS: …`), or over hello's.
    fn relate_to_cold(&mut self) {
        let cold: BTreeMap<String, f64> = self
            .measured
            .iter()
            .filter_map(|m| {
                let language = m.name.strip_suffix("thaw, cold from disk")?;
                Some((language.to_owned(), m.summary.median_us))
            })
            .collect();
        for m in &mut self.measured {
            let language = LANGUAGES
                .iter()
                .chain(&PEER_LANGUAGES)
                .map(|(l, _)| format!("{l}: "))
                .find(|prefix| m.name.starts_with(prefix.as_str()))
                .unwrap_or_default();
            m.ratio_to_thaw_cold = cold.get(&language).map(|c| m.summary.median_us / c);
        }
    }
}

/// thaw's own setups with the hello component: cold from disk, after a deploy (with and
/// without the fast tier), warm.
async fn thaw_setups(
    env: &Env,
    wasm: &[u8],
    counts: Counts,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
) {
    for (name, start) in [
        (
            "thaw, cold from disk",
            "the request (artifact on disk, not loaded)",
        ),
        ("thaw, after deploy", "the upload of new wasm"),
        (
            "thaw, after deploy (--fast-deploy)",
            "the upload of new wasm",
        ),
        ("thaw, warm (pool hit)", "the request"),
    ] {
        if !wanted(name) {
            continue;
        }
        let bar = progress(
            name,
            match name {
                "thaw, cold from disk" | "thaw, warm (pool hit)" => counts.thaw,
                _ => counts.deploys,
            },
        );
        let result = match name {
            "thaw, cold from disk" => {
                thaw_cold(env, wasm, "cold", counts.thaw, false, &[], &bar).await
            }
            "thaw, after deploy" => thaw_deploy(env, wasm, counts.deploys, false, &bar).await,
            "thaw, warm (pool hit)" => thaw_warm(env, wasm, "warm", counts.thaw, &[], &bar).await,
            _ => thaw_deploy(env, wasm, counts.deploys, true, &bar).await,
        };
        bar.finish_and_clear();
        results.record(name, start, result);
    }
}

/// thaw per language: the templates' components, cold from disk and first after start,
/// and the deploy of a second function on a runtime compiled before.
async fn language_setups(
    env: &Env,
    counts: Counts,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
) {
    for (language, file) in LANGUAGES.into_iter().chain(PEER_LANGUAGES) {
        for (setup, loaded, start) in [
            (
                "thaw, cold from disk",
                false,
                "the request (artifact on disk, not loaded)",
            ),
            (
                "thaw, first request after start",
                true,
                "the request (code loaded at start, no instance yet)",
            ),
        ] {
            let name = format!("{language}: {setup}");
            if !wanted(&name) {
                continue;
            }
            let result = match language_wasm(env, file).and_then(|p| Ok(std::fs::read(p)?)) {
                Ok(wasm) => {
                    let bar = progress(&name, counts.thaw);
                    let scratch = format!("{file}-{loaded}");
                    let result =
                        thaw_cold(env, &wasm, &scratch, counts.thaw, loaded, &[], &bar).await;
                    bar.finish_and_clear();
                    result
                }
                Err(e) => Err(e),
            };
            results.record(&name, start, result);
        }
        // A deploy of new wasm built on the same language runtime as one deployed before:
        // the template with a nonce section (new digest, same functions), so Cranelift's
        // incremental cache has every function. A real second function differs in a few
        // (its own code; for JS and Python mostly in data, the pre-initialised heap).
        let name = format!("{language}: thaw, deploy of a second function");
        // Not for the wasi:http-only builds: a deploy is the same work as the template's.
        if wanted(&name) && !PEER_LANGUAGES.iter().any(|(l, _)| *l == language) {
            let deploys = counts.deploys.min(5);
            let result = match language_wasm(env, file).and_then(|p| Ok(std::fs::read(p)?)) {
                Ok(wasm) => {
                    let bar = progress(&name, deploys);
                    let renew =
                        |i: usize| with_nonce(&wasm, &format!("{}-{i}", std::process::id()));
                    let result =
                        thaw_second_deploy(env, &wasm, &renew, file, deploys, &[], &bar).await;
                    bar.finish_and_clear();
                    result
                }
                Err(e) => Err(e),
            };
            results.record(
                &name,
                "the upload of new wasm on a runtime compiled before",
                result,
            );
        }
    }
}

/// Functions deployed as source, and their component counterparts where the component rows
/// have none (warm): the rows of [`source`].
async fn source_setups(
    env: &Env,
    counts: Counts,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
) {
    for (prefix, language, files) in source::SOURCES {
        let source = SourceRows {
            prefix,
            language,
            files,
            built: env.engines.join(format!("{language}.wasm")),
        };
        source_start_rows(env, counts, wanted, results, &source).await;
        source_warm_rows(env, counts, wanted, results, &source).await;
        source_density_rows(env, wanted, results, &source).await;
    }
}

/// The host flag of a source function's rows on its engine: without it, traffic moves the
/// function onto its snapshot (`--source-snapshots`, on by default), and the rows measure
/// that.
const ENGINE_ONLY: &str = "--source-snapshots=false";

/// One source language's rows: their prefix, the template, and its engine's file.
struct SourceRows {
    prefix: &'static str,
    language: Language,
    files: &'static [(&'static str, &'static str)],
    built: PathBuf,
}

impl SourceRows {
    fn missing(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "{} is not built (run scripts/build-engines)",
            self.built.display()
        )
    }
}

/// Cold from disk, first after start, and the deploy of a new function.
async fn source_start_rows(
    env: &Env,
    counts: Counts,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
    rows: &SourceRows,
) {
    let SourceRows {
        prefix,
        language,
        files,
        built,
    } = rows;
    let (prefix, language, files) = (*prefix, *language, *files);
    let missing = || rows.missing();
    let engines = env.engines.display().to_string();
    let engine_args = ["--engines", engines.as_str(), ENGINE_ONLY];
    let snapshot_args = ["--engines", engines.as_str()];
    let bundle = source::bundle(language, files, "fn");
    for (setup, loaded, start, args) in [
        (
            "thaw, cold from disk",
            false,
            "the request (source on disk, engine loaded, function not)",
            &engine_args[..],
        ),
        (
            "thaw, first request after start",
            true,
            "the request (program loaded at start, no instance yet)",
            &engine_args[..],
        ),
        (
            "thaw, cold from disk on its snapshot",
            false,
            "the request (after its tier-up: its snapshot on disk, its engine in memory; it starts on the engine while the snapshot loads behind it)",
            &snapshot_args[..],
        ),
    ] {
        let name = format!("{prefix}: {setup}");
        if !wanted(&name) {
            continue;
        }
        let result = if built.is_file() {
            let bar = progress(&name, counts.thaw);
            let scratch = format!("source-{language}-{loaded}-{}", args.len());
            let result = thaw_cold(env, &bundle, &scratch, counts.thaw, loaded, args, &bar).await;
            bar.finish_and_clear();
            result
        } else {
            Err(missing())
        };
        results.record(&name, start, result);
    }
    let name = format!("{prefix}: thaw, deploy of a new function");
    if wanted(&name) {
        let result = if built.is_file() {
            let bar = progress(&name, counts.deploys);
            let renew = |i: usize| {
                source::with_nonce(language, files, &format!("{}-{i}", std::process::id()))
            };
            let scratch = format!("source-{language}");
            let result = thaw_second_deploy(
                env,
                &bundle,
                &renew,
                &scratch,
                counts.deploys,
                &engine_args,
                &bar,
            )
            .await;
            bar.finish_and_clear();
            result
        } else {
            Err(missing())
        };
        results.record(&name, "the upload of new source", result);
    }
}

/// Warm, source and component, side by side.
async fn source_warm_rows(
    env: &Env,
    counts: Counts,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
    rows: &SourceRows,
) {
    let (prefix, language, built) = (rows.prefix, rows.language, &rows.built);
    let engines = env.engines.display().to_string();
    let engine_args = ["--engines", engines.as_str(), ENGINE_ONLY];
    let snapshot_args = ["--engines", engines.as_str()];
    let bundle = source::bundle(language, rows.files, "fn");
    let missing = || rows.missing();
    let component = source::component_prefix(language);
    let file = format!("{language}.wasm");
    for (row, code, args) in [
        (
            format!("{prefix}: thaw, warm (pool hit)"),
            built.is_file().then(|| bundle.clone()).ok_or_else(missing),
            &engine_args[..],
        ),
        (
            format!("{prefix}: thaw, warm (pool hit) on its snapshot"),
            built.is_file().then(|| bundle.clone()).ok_or_else(missing),
            &snapshot_args[..],
        ),
        (
            format!("{component}: thaw, warm (pool hit)"),
            language_wasm(env, &file).and_then(|p| Ok(std::fs::read(p)?)),
            &[][..],
        ),
    ] {
        if !wanted(&row) {
            continue;
        }
        let result = match code {
            Ok(code) => {
                let bar = progress(&row, counts.thaw);
                let scratch = format!("warm-{row}").replace([' ', ':', '(', ')', ','], "");
                let result = thaw_warm(env, &code, &scratch, counts.thaw, args, &bar).await;
                bar.finish_and_clear();
                result
            }
            Err(e) => Err(e),
        };
        results.record(&row, "the request", result);
    }
}

/// The density run (JS only): its deploy samples and its totals.
async fn source_density_rows(
    env: &Env,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
    rows: &SourceRows,
) {
    let (prefix, language, files, built) = (rows.prefix, rows.language, rows.files, &rows.built);
    let missing = || rows.missing();
    let name = format!("{prefix}: thaw, density of 1,000 functions");
    if language == Language::Js && wanted(&name) {
        let result = if built.is_file() {
            source_density(env, language, files, 1_000).await
        } else {
            Err(missing())
        };
        match result {
            Ok((deploys, note)) => {
                results.record(
                    &format!("{prefix}: thaw, each deploy of 1,000 functions"),
                    "the upload of new source (to its answer)",
                    Ok(deploys),
                );
                results.notes.push(note);
            }
            Err(e) => results.record(&name, "", Err(e)),
        }
    }
}

/// Deploys `n` different functions (each answers its own name) on a host with `--load
/// background`, timing each deploy; restarts the host (SIGKILL), waits until every function
/// is loaded, and asks each once. Returns the deploy samples and a line with the totals and
/// the host's resident set.
async fn source_density(
    env: &Env,
    language: Language,
    files: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<(Vec<Sample>, String)> {
    let engines = env.engines.display().to_string();
    let data = env.scratch.join(format!("density-{language}"));
    let mut host = ThawHost::start(&env.thaw, &data, &["--engines", &engines])?;
    // The engine's load is the host's, not a deploy's.
    host.admin
        .deploy(
            "engine",
            &at("engine"),
            source::bundle(language, files, "engine").into(),
        )
        .await?;
    let bar = progress(&format!("{language} source: deploy of {n} functions"), n);
    let rss_before = host.rss_kib()?;
    let started = std::time::Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("f{i}");
        let code = source::answering(language, &name);
        let start = std::time::Instant::now();
        host.admin.deploy(&name, &at(&name), code.into()).await?;
        samples.push(Sample {
            elapsed: start.elapsed(),
            start_kind: None,
        });
        bar.inc(1);
    }
    let deploy_all = started.elapsed();
    bar.finish_and_clear();
    let rss_deployed = host.rss_kib()?;
    host.restart()?;
    let restarted = std::time::Instant::now();
    host.wait_for_loading(n + 1).await?;
    let loaded = restarted.elapsed();
    let rss_loaded = host.rss_kib()?;
    let mut wrong = 0;
    for i in 0..n {
        let name = format!("f{i}");
        let answer = probe::body(host.addr, &format!("/{name}"))?;
        if answer.trim() != name {
            wrong += 1;
        }
    }
    let rss_answered = host.rss_kib()?;
    anyhow::ensure!(
        wrong == 0,
        "{wrong} of {n} functions did not answer their own name"
    );
    let note = format!(
        "{language} source, {n} functions: all deployed in {:.1} s; after a restart all loaded \
         (`--load background`) in {:.0} ms, the host's RSS {} MiB (before the deploys: {} MiB; \
         after them: {} MiB); after one request to each (every answer its own name): {} MiB",
        deploy_all.as_secs_f64(),
        loaded.as_secs_f64() * 1e3,
        rss_loaded >> 10,
        rss_before >> 10,
        rss_deployed >> 10,
        rss_answered >> 10,
    );
    Ok((samples, note))
}

/// `samples` samples of a setup that starts a process per sample.
fn sample_process(name: &str, setup: &ProcessSetup, samples: usize) -> anyhow::Result<Vec<Sample>> {
    let bar = progress(name, samples);
    let result = (0..samples)
        .map(|_| {
            let sample = setup.sample();
            bar.inc(1);
            sample
        })
        .collect::<anyhow::Result<Vec<_>>>();
    bar.finish_and_clear();
    result
}

/// The report: table.md, samples.csv, machine.json, summary.json and chart.svg in a new
/// results directory under `out`; the table and the machine on stdout.
fn write_report(
    env: &Env,
    out: &Path,
    results: &Results,
    throughput_runs: &[report::Throughput],
) -> anyhow::Result<()> {
    let Results {
        measured,
        skipped,
        notes,
    } = results;
    let tools = tool_versions(env);
    let machine = report::machine(&tools);
    let dir = report::results_dir(out, &report::hostname())?;
    let mut table = report::table(measured, skipped);
    if !throughput_runs.is_empty() {
        table.push('\n');
        table.push_str(&report::throughput_table(throughput_runs));
    }
    for note in notes {
        table.push_str(&format!("\n- {note}\n"));
    }
    std::fs::write(dir.join("table.md"), &table)?;
    std::fs::write(dir.join("samples.csv"), report::csv(measured))?;
    std::fs::write(
        dir.join("machine.json"),
        serde_json::to_vec_pretty(&machine)?,
    )?;
    let summary = serde_json::json!({
        "date": report::today(),
        "machine": machine,
        "setups": measured,
        "skipped": skipped,
        "throughput": throughput_runs,
        "notes": notes,
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    if !measured.is_empty() {
        report::svg(measured, &dir.join("chart.svg"))?;
    }
    println!("{table}");
    println!(
        "machine: {} ({} cores, {} GiB), {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?")
    );
    println!("results: {}", dir.display());
    Ok(())
}

/// The per-language rows' prefixes and their components in [`Env::languages`].
const LANGUAGES: [(&str, &str); 3] = [
    ("JS", "js.wasm"),
    ("Python", "python.wasm"),
    ("Go", "go.wasm"),
];

/// The JS and Python templates' handlers built with wasi:http/proxy as their only world
/// (benches/baselines/lang-proxy, by scripts/setup-bench): what both thaw and `wasmtime
/// serve` can serve, for the rows side by side. The templates themselves import thaw's
/// configuration, key-value and SQL interfaces, which `wasmtime serve` refuses to link.
const PEER_LANGUAGES: [(&str, &str); 2] = [
    ("JS (wasi:http only)", "js-proxy.wasm"),
    ("Python (wasi:http only)", "python-proxy.wasm"),
];

/// `wasmtime serve`'s settings that made it fastest under load here (WASMTIME-48-NOTES):
/// the pooling allocator, PAGEMAP_SCAN, 64 MiB kept resident per slot.
const WASMTIME_BEST: &str =
    "pooling-allocator=y,pooling-pagemap-scan=y,pooling-memory-keep-resident=67108864";

/// The wasmtime CLI and `wasm` precompiled by it into the scratch directory as
/// `<name>.cwasm`, compiled once per run: the process and throughput setups share it.
fn wasmtime_precompiled(env: &Env, wasm: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let wasmtime = env.wasmtime.clone().ok_or_else(|| {
        anyhow::anyhow!("the wasmtime CLI is not installed (run scripts/setup-bench)")
    })?;
    let cwasm = env.scratch.join(format!("{name}.cwasm"));
    if !cwasm.is_file() {
        let status = Command::new(&wasmtime)
            .args(["compile", "-o"])
            .arg(&cwasm)
            .arg(wasm)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "wasmtime compile {} failed",
            wasm.display()
        );
    }
    Ok((wasmtime, cwasm))
}

/// A template's component, or why it is not there.
fn language_wasm(env: &Env, file: &str) -> anyhow::Result<PathBuf> {
    let path = env.languages.join(file);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built (run scripts/setup-bench)",
        path.display()
    );
    Ok(path)
}

fn progress(name: &str, len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>38} {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_owned());
    bar
}

/// Cold from disk: the function deployed under many names (one artifact), a fresh host with
/// `--load lazy` per batch, each name's first request timed.
///
/// With `loaded_at_start`, the host runs with its default `--load background` and each
/// batch waits until every function's code is loaded: the first request then starts a
/// first instance of code already in memory, as after a restart a moment ago.
async fn thaw_cold(
    env: &Env,
    wasm: &[u8],
    scratch: &str,
    n: usize,
    loaded_at_start: bool,
    host_args: &[&str],
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Sample>> {
    // A source function's engine is the host's, not the function's: the host loads it at
    // start-up, and the samples wait for that; they measure the function's start.
    let source = host_args.contains(&"--engines");
    // A source function's rows on its snapshot: the host's default, where traffic moves it
    // there; the rows on its engine turn that off.
    let snapshot = source && !host_args.contains(&ENGINE_ONLY);
    let batch = n.clamp(1, 50);
    let data = env.scratch.join(scratch);
    let mut args: Vec<&str> = host_args.to_vec();
    if !loaded_at_start {
        args.extend(["--load", "lazy"]);
    }
    let mut host = ThawHost::start(&env.thaw, &data, &args)?;
    for i in 0..batch {
        let name = format!("cold-{i}");
        host.admin
            .deploy(&name, &at(&name), wasm.to_vec().into())
            .await?;
    }
    if source {
        host.admin
            .deploy("engine", &at("engine"), wasm.to_vec().into())
            .await?;
    }
    if snapshot {
        // Every function of the batch runs the same program on the same engine: one
        // snapshot, which each loads from the artifact cache after the restarts.
        host.wait_for_snapshot("cold-0").await?;
    }
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        host.restart()?;
        host.wait_for_scrub().await?;
        if loaded_at_start {
            host.wait_for_loading(batch + usize::from(source)).await?;
        }
        if source {
            // As a host is a moment after its start: its engines loaded. A function with a
            // snapshot on disk then starts on its engine while the snapshot loads behind it.
            host.wait_for_engines().await?;
            host.get("/engine")?;
        }
        for i in 0..batch.min(n - samples.len()) {
            samples.push(host.get(&format!("/cold-{i}"))?);
            bar.inc(1);
        }
    }
    Ok(samples)
}

/// After deploy: upload never-seen wasm (a nonce section changes its digest), then the first
/// request; timed from the start of the upload.
async fn thaw_deploy(
    env: &Env,
    wasm: &[u8],
    n: usize,
    fast: bool,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Sample>> {
    let data = env
        .scratch
        .join(if fast { "deploy-fast" } else { "deploy" });
    // Without the incremental compilation cache: every sample is a cold compile, as the
    // first function of its kind is (the per-language rows measure the cache).
    let args: &[&str] = if fast {
        &["--fast-deploy", "--compile-cache=false"]
    } else {
        &["--compile-cache=false"]
    };
    let host = ThawHost::start(&env.thaw, &data, args)?;
    let spec = at("fresh");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = with_nonce(wasm, &format!("{}-{i}", std::process::id()));
        let start = std::time::Instant::now();
        host.admin.deploy("fresh", &spec, bytes.into()).await?;
        let seen = probe::first_byte(host.addr, "/fresh", start, start + Duration::from_secs(30))?;
        samples.push(seen.into());
        bar.inc(1);
        if fast {
            // Let the background Cranelift compile finish: it would slow the next sample.
            for _ in 0..600 {
                if host.admin.status().await?.tier_ups_pending == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(samples)
}

/// A second function on a language runtime compiled before: one deploy of `first` (not
/// timed: it fills the compilation cache, or waits for the source engine), then `n` deploys
/// of `renew(i)`, the same code under new digests, each timed from the start of its upload to
/// the first byte of its first answer.
async fn thaw_second_deploy(
    env: &Env,
    first: &[u8],
    renew: &dyn Fn(usize) -> Vec<u8>,
    scratch: &str,
    n: usize,
    host_args: &[&str],
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Sample>> {
    let data = env.scratch.join(format!("{scratch}-second"));
    let host = ThawHost::start(&env.thaw, &data, host_args)?;
    host.admin
        .deploy("first", &at("first"), first.to_vec().into())
        .await?;
    let spec = at("second");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = renew(i);
        let start = std::time::Instant::now();
        host.admin.deploy("second", &spec, bytes.into()).await?;
        let seen = probe::first_byte(host.addr, "/second", start, start + Duration::from_secs(60))?;
        samples.push(seen.into());
        bar.inc(1);
    }
    Ok(samples)
}

/// Warm: requests to a deployed, loaded function with a warm instance waiting.
async fn thaw_warm(
    env: &Env,
    wasm: &[u8],
    scratch: &str,
    n: usize,
    host_args: &[&str],
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Sample>> {
    let host = ThawHost::start(&env.thaw, &env.scratch.join(scratch), host_args)?;
    host.admin
        .deploy("hello", &at("hello"), wasm.to_vec().into())
        .await?;
    for _ in 0..20 {
        host.get("/hello")?;
    }
    if host_args.contains(&"--engines") && !host_args.contains(&ENGINE_ONLY) {
        host.wait_for_snapshot("hello").await?;
        // The swapped-in snapshot's pool fills from its first request, which the last one
        // before the swap may not have been.
        host.get("/hello")?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        // Each sample must find an instance waiting: wait for the refill task to put one back
        // (a fixed pause was not enough on a loaded machine, and a sample then came out fresh).
        warm_instance(&host, "hello").await?;
        samples.push(host.get("/hello")?);
        bar.inc(1);
    }
    Ok(samples)
}

/// Waits until `name` has an instance in its warm pool (at most ten seconds).
async fn warm_instance(host: &ThawHost, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if host.admin.get(name).await?.warm_instances > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} had no warm instance after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

type Planned = (String, &'static str, anyhow::Result<ProcessSetup>);

/// The per-sample process setups, each with its command or the reason it cannot run here.
fn process_setups(env: &Env) -> Vec<Planned> {
    let mut out = peer_setups(env);
    out.extend(process_baselines(env));
    out.extend(container_baselines(env));
    out
}

/// `path` if it is a file, else why not.
fn need(path: PathBuf, what: &str) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(anyhow::anyhow!(
            "{what} not found at {} (run scripts/setup-bench)",
            path.display()
        ))
    }
}

/// A tool on `$PATH`, else why not.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    which(name).ok_or_else(|| anyhow::anyhow!("{name} is not installed (run scripts/setup-bench)"))
}

/// A process serving `/hello`, started as `program args`.
fn simple(program: anyhow::Result<PathBuf>, args: Vec<String>) -> anyhow::Result<ProcessSetup> {
    program.map(|program| ProcessSetup {
        program,
        args,
        path: "/hello",
        container: None,
    })
}

/// The peer, `wasmtime serve`: hello compiling at start and precompiled, and the templates'
/// JS and Python components at its defaults and its best settings.
fn peer_setups(env: &Env) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    let wasmtime = env.wasmtime.clone().ok_or_else(|| {
        anyhow::anyhow!("the wasmtime CLI is not installed (run scripts/setup-bench)")
    });
    let wasm = env.wasm.display().to_string();
    out.push((
        "wasmtime serve (compiles at start)".into(),
        "process start (compiles the component, no cache)",
        simple(
            wasmtime
                .as_ref()
                .cloned()
                .map_err(|e| anyhow::anyhow!("{e}")),
            // No compilation cache: every start compiles, as a first deploy would.
            [
                "serve",
                "-Ccache=n",
                "-Scli",
                "--addr",
                "127.0.0.1:{port}",
                &wasm,
            ]
            .map(String::from)
            .to_vec(),
        ),
    ));
    out.push((
        "wasmtime serve (precompiled)".into(),
        "process start (--allow-precompiled)",
        wasmtime.and_then(|_| {
            let (wasmtime, precompiled) = wasmtime_precompiled(env, &env.wasm, "hello")?;
            simple(
                Ok(wasmtime),
                [
                    "serve",
                    "-Scli",
                    "--allow-precompiled",
                    "--addr",
                    "127.0.0.1:{port}",
                    &precompiled.display().to_string(),
                ]
                .map(String::from)
                .to_vec(),
            )
        }),
    ));

    // The peer on the JS and Python handlers built for wasi:http alone: precompiled, at its
    // defaults and at its best settings for throughput (the pooling allocator reserves its
    // slots at start, which may cost a cold start something; both are shown).
    for (language, file) in &PEER_LANGUAGES {
        let compiled = language_wasm(env, file)
            .and_then(|wasm| wasmtime_precompiled(env, &wasm, file))
            .map(|(wasmtime, cwasm)| (wasmtime, cwasm.display().to_string()));
        for (variant, options) in [("", None), (", pooling + pagemap", Some(WASMTIME_BEST))] {
            let setup = match &compiled {
                Ok((wasmtime, cwasm)) => {
                    let mut args: Vec<String> = vec!["serve".into(), "-Scli".into()];
                    if let Some(options) = options {
                        args.extend(["-O".into(), options.into()]);
                    }
                    args.extend(
                        ["--allow-precompiled", "--addr", "127.0.0.1:{port}", cwasm]
                            .map(String::from),
                    );
                    simple(Ok(wasmtime.clone()), args)
                }
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            out.push((
                format!("{language}: wasmtime serve (precompiled{variant})"),
                "process start (--allow-precompiled)",
                setup,
            ));
        }
    }

    out
}

/// Plain processes: Go, Rust, Node.js, Python, Java.
fn process_baselines(env: &Env) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    let b = &env.baselines;
    out.push((
        "Go: process (static)".into(),
        "fork/exec",
        simple(need(b.join("hello-go"), "the Go baseline"), vec![]),
    ));
    out.push((
        "process: Rust (static)".into(),
        "fork/exec",
        simple(need(b.join("hello-rust"), "the Rust baseline"), vec![]),
    ));
    out.push((
        "JS: process: Node.js".into(),
        "fork/exec",
        need(b.join("hello.js"), "hello.js")
            .and_then(|js| simple(tool("node"), vec![js.display().to_string()])),
    ));
    out.push((
        "Python: process: python3".into(),
        "fork/exec",
        need(b.join("hello.py"), "hello.py").and_then(|py| {
            // Not `python3` from $PATH: a pyenv shim there adds ~80 ms of its own.
            simple(
                need(PathBuf::from("/usr/bin/python3"), "/usr/bin/python3"),
                vec![py.display().to_string()],
            )
        }),
    ));
    out.push((
        "process: Java".into(),
        "fork/exec",
        need(b.join("java/Hello.class"), "the compiled Java class").and_then(|_| {
            simple(
                tool("java"),
                vec![
                    "-cp".into(),
                    b.join("java").display().to_string(),
                    "Hello".into(),
                ],
            )
        }),
    ));

    out
}

/// Containers: the Go server under crun and runc, Node.js and Python under crun.
fn container_baselines(env: &Env) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    for (name, runtime, cgroups) in [
        ("Go: container: crun, no cgroups", "crun", false),
        ("Go: container: crun, cgroups", "crun", true),
        ("Go: container: runc, cgroups", "runc", true),
    ] {
        out.push((
            name.into(),
            "runtime start (crun/runc run)",
            container_setup(env, runtime, cgroups, name, None),
        ));
    }
    for (name, args) in [
        (
            "JS: container: crun, Node.js",
            ["/usr/bin/node", "/app/hello.js"],
        ),
        (
            "Python: container: crun, python3",
            ["/usr/bin/python3", "/app/hello.py"],
        ),
    ] {
        out.push((
            name.into(),
            "runtime start (crun run)",
            container_setup(env, "crun", true, name, Some(&args)),
        ));
    }
    out
}

/// A container setup: the Go server alone in a read-only root filesystem, the host's
/// network (no network namespace), started by `crun run` or `runc run`. With `interpreter`
/// (a program and its script), the root is an empty one with the host's `/usr` bound in
/// read-only and the baselines' scripts at `/app`: Node and Python as a distribution's
/// image would hold them, without a registry to pull one from.
fn container_setup(
    env: &Env,
    runtime: &str,
    cgroups: bool,
    name: &str,
    interpreter: Option<&[&str]>,
) -> anyhow::Result<ProcessSetup> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "containers need root here");
    let runtime_path = which(runtime)
        .ok_or_else(|| anyhow::anyhow!("{runtime} is not installed (run scripts/setup-bench)"))?;
    let oci = env.baselines.join("oci");
    let template = std::fs::read(oci.join("config.json")).with_context(|| {
        format!(
            "no OCI bundle at {} (run scripts/setup-bench)",
            oci.display()
        )
    })?;
    let mut template: serde_json::Value = serde_json::from_slice(&template)?;
    template["root"]["path"] = oci.join("rootfs").display().to_string().into();
    if let Some(args) = interpreter {
        let root = env.baselines.join("oci-interpreters/rootfs");
        anyhow::ensure!(
            root.is_dir(),
            "no root filesystem at {} (run scripts/setup-bench)",
            root.display()
        );
        template["root"]["path"] = root.display().to_string().into();
        template["process"]["args"] = serde_json::json!(args);
        let bind = |source: &Path, destination: &str| {
            serde_json::json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "ro"],
            })
        };
        let mounts = template["mounts"]
            .as_array_mut()
            .context("the OCI template has no mounts")?;
        mounts.push(bind(Path::new("/usr"), "/usr"));
        mounts.push(bind(&env.baselines, "/app"));
    }
    if cgroups {
        let parent = setups::own_cgroup().context("cannot tell this process's cgroup")?;
        template["linux"]["cgroupsPath"] = format!("{parent}/thaw-bench").into();
    } else if let Some(linux) = template["linux"].as_object_mut() {
        linux.remove("cgroupsPath");
    }
    let bundle = env.scratch.join(name.replace([' ', ',', ':'], "-"));
    std::fs::create_dir_all(&bundle)?;
    let id = format!("thaw-bench-{}-{runtime}-{cgroups}", std::process::id());
    let bundle_arg = bundle.display().to_string();
    let (program, args) = if runtime == "crun" {
        // crun 1.8 refuses cgroup v1/v2 hybrid hosts; in a private mount namespace without
        // the v2 mount it runs. Without cgroups it is told not to manage any.
        let manager = if cgroups {
            ""
        } else {
            "--cgroup-manager=disabled "
        };
        (
            which("unshare").context("unshare is not installed")?,
            vec![
                "-m".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                format!(
                    "umount /sys/fs/cgroup/unified 2>/dev/null; exec {} {manager}run --bundle {bundle_arg} {id}",
                    runtime_path.display()
                ),
            ],
        )
    } else {
        (
            runtime_path.clone(),
            vec!["run".into(), "--bundle".into(), bundle_arg, id.clone()],
        )
    };
    Ok(ProcessSetup {
        program,
        args,
        path: "/hello",
        container: Some(Container {
            runtime: runtime_path,
            id,
            config: bundle.join("config.json"),
            template,
        }),
    })
}

/// A server under load: what keeps it running (dropped, and killed, at the end), and its URL.
struct LoadTarget {
    _host: Option<ThawHost>,
    _group: Option<probe::Group>,
    url: String,
}

/// Throughput of thaw, wasmtime serve and plain hyper at 1, 32 and 128 connections; of thaw
/// and wasmtime serve on the JS and Python templates at 32.
async fn run_throughput(
    env: &Env,
    wasm: &[u8],
    duration: Duration,
    skipped: &mut Vec<Skipped>,
) -> Vec<report::Throughput> {
    let Some(wrk) = which("wrk") else {
        skipped.push(Skipped {
            name: "throughput".into(),
            reason: "wrk is not installed (run scripts/setup-bench)".into(),
        });
        return Vec::new();
    };
    let servers = hello_servers(env, wasm)
        .await
        .into_iter()
        .map(|(name, started)| (name.to_owned(), started, &[1u32, 32, 128][..]))
        .chain(
            language_servers(env)
                .await
                .into_iter()
                .map(|(name, started)| (name, started, &[32u32][..])),
        );
    let mut runs = Vec::new();
    for (server, started, connections) in servers {
        let server = server.as_str();
        let target = match started {
            Ok(s) => s,
            Err(e) => {
                skipped.push(Skipped {
                    name: format!("throughput: {server}"),
                    reason: format!("{e:#}"),
                });
                continue;
            }
        };
        // Warm up (code paged in, pools sized), not recorded.
        let url = &target.url;
        let _ = throughput::wrk(&wrk, server, url, 32, Duration::from_secs(2));
        for &connections in connections {
            let bar = progress(&format!("throughput: {server}, {connections} conn"), 1);
            match throughput::wrk(&wrk, server, url, connections, duration) {
                Ok(run) => runs.push(run),
                Err(e) => skipped.push(Skipped {
                    name: format!("throughput: {server}, {connections} connections"),
                    reason: format!("{e:#}"),
                }),
            }
            bar.finish_and_clear();
        }
    }
    runs
}

/// The hello servers: thaw, `wasmtime serve`, and plain hyper (no wasm).
async fn hello_servers(env: &Env, wasm: &[u8]) -> Vec<(&'static str, anyhow::Result<LoadTarget>)> {
    let mut servers: Vec<(&str, anyhow::Result<LoadTarget>)> = Vec::new();
    // thaw.
    let thaw = async {
        let host = ThawHost::start(&env.thaw, &env.scratch.join("throughput"), &[])?;
        host.admin
            .deploy("hello", &at("hello"), wasm.to_vec().into())
            .await?;
        let url = format!("http://{}/hello", host.addr);
        Ok(LoadTarget {
            _host: Some(host),
            _group: None,
            url,
        })
    }
    .await;
    servers.push(("thaw", thaw));
    // wasmtime serve and plain hyper: a process each.
    servers.push((
        "wasmtime serve",
        match &env.wasmtime {
            Some(w) => spawn_server(
                w,
                [
                    "serve",
                    "-Scli",
                    "--addr",
                    "127.0.0.1:{port}",
                    &env.wasm.display().to_string(),
                ]
                .map(String::from)
                .to_vec(),
            ),
            None => Err(anyhow::anyhow!("the wasmtime CLI is not installed")),
        },
    ));
    // Built by scripts/setup-bench beside the thaw binary (the bench crate's own binary).
    let plain = env.thaw.with_file_name("thaw-plain-hello");
    servers.push((
        "plain hyper (no wasm)",
        if plain.is_file() {
            spawn_server(&plain, vec!["127.0.0.1:{port}".into()])
        } else {
            Err(anyhow::anyhow!(
                "{} is missing: scripts/setup-bench builds it",
                plain.display()
            ))
        },
    ));
    servers
}

/// JS and Python at 32 connections: thaw at its default and with 64 KiB kept resident per
/// slot on the templates' components; thaw and `wasmtime serve` (at its defaults and at its
/// best settings) on the same handlers built for wasi:http alone; and the source rows.
async fn language_servers(env: &Env) -> Vec<(String, anyhow::Result<LoadTarget>)> {
    let mut language_servers: Vec<(String, anyhow::Result<LoadTarget>)> = Vec::new();
    let thaw_on = |file: &str, args: &'static [&'static str]| {
        let path = language_wasm(env, file);
        let data = env.scratch.join(format!("throughput-{file}{}", args.len()));
        async move {
            let wasm = std::fs::read(path?)?;
            let host = ThawHost::start(&env.thaw, &data, args)?;
            host.admin.deploy("f", &at("f"), wasm.into()).await?;
            let url = format!("http://{}/f", host.addr);
            Ok(LoadTarget {
                _host: Some(host),
                _group: None,
                url,
            })
        }
    };
    for (language, file) in &LANGUAGES[..2] {
        for (variant, args) in [
            ("", &[][..]),
            // The default keeps 8 MiB where the kernel has PAGEMAP_SCAN; 64 KiB shows what
            // that default is worth (it was the default before).
            (", keep-resident 64 KiB", &["--keep-resident-kib", "64"][..]),
        ] {
            let started = thaw_on(file, args).await;
            language_servers.push((format!("{language}: thaw{variant}"), started));
        }
    }
    // The same handlers without thaw's interfaces, on thaw and on the peer at its defaults
    // and at its best settings.
    for (language, file) in &PEER_LANGUAGES {
        let started = thaw_on(file, &[]).await;
        language_servers.push((format!("{language}: thaw"), started));
        let compiled =
            language_wasm(env, file).and_then(|path| wasmtime_precompiled(env, &path, file));
        for (variant, options) in [("", None), (" (pooling + pagemap)", Some(WASMTIME_BEST))] {
            let peer = compiled
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|(wasmtime, cwasm)| {
                    let mut args = vec!["serve".to_owned(), "-Scli".to_owned()];
                    if let Some(options) = options {
                        args.extend(["-O".to_owned(), options.to_owned()]);
                    }
                    args.extend(
                        ["--allow-precompiled", "--addr", "127.0.0.1:{port}"].map(String::from),
                    );
                    args.push(cwasm.display().to_string());
                    spawn_server(wasmtime, args)
                });
            language_servers.push((format!("{language}: wasmtime serve{variant}"), peer));
        }
    }

    for ((prefix, language, files), snapshot) in
        source::SOURCES.iter().flat_map(|s| [(s, false), (s, true)])
    {
        let (prefix, language, files) = (*prefix, *language, *files);
        let started = async {
            let built = env.engines.join(format!("{language}.wasm"));
            anyhow::ensure!(
                built.is_file(),
                "{} is not built (run scripts/build-engines)",
                built.display()
            );
            let engines = env.engines.display().to_string();
            let data = env
                .scratch
                .join(format!("throughput-source-{language}-{snapshot}"));
            let mut args = vec!["--engines", engines.as_str()];
            if !snapshot {
                args.push(ENGINE_ONLY);
            }
            let host = ThawHost::start(&env.thaw, &data, &args)?;
            host.admin
                .deploy("f", &at("f"), source::bundle(language, files, "f").into())
                .await?;
            if snapshot {
                host.wait_for_snapshot("f").await?;
            }
            let url = format!("http://{}/f", host.addr);
            Ok(LoadTarget {
                _host: Some(host),
                _group: None,
                url,
            })
        }
        .await;
        let row = if snapshot {
            format!("{prefix}: thaw, on its snapshot")
        } else {
            format!("{prefix}: thaw")
        };
        language_servers.push((row, started));
    }
    language_servers
}

/// A process serving `/hello`, started as `program args` (`{port}` in them: a free port),
/// once it answers.
fn spawn_server(program: &Path, args: Vec<String>) -> anyhow::Result<LoadTarget> {
    let port = probe::free_port()?;
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let group = probe::Group::spawn(Command::new(program).args(&args))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = std::time::Instant::now();
    probe::first_byte(addr, "/hello", start, start + Duration::from_secs(60))?;
    Ok(LoadTarget {
        _host: None,
        _group: Some(group),
        url: format!("http://{addr}/hello"),
    })
}

fn tool_versions(env: &Env) -> Vec<(&'static str, Option<String>)> {
    let v = |name: &str, args: &[&str]| which(name).and_then(|p| report::version_of(&p, args));
    let go = env
        .baselines
        .parent()
        .map(|t| t.join("tools/go/go/bin/go"))
        .filter(|p| p.is_file());
    vec![
        ("thaw", Some(env!("CARGO_PKG_VERSION").to_owned())),
        (
            "wasmtime",
            env.wasmtime
                .as_ref()
                .and_then(|w| report::version_of(w, &["--version"])),
        ),
        ("go", go.and_then(|g| report::version_of(&g, &["version"]))),
        ("node", v("node", &["--version"])),
        (
            "python3",
            report::version_of(Path::new("/usr/bin/python3"), &["--version"]),
        ),
        ("java", v("java", &["-version"])),
        ("crun", v("crun", &["--version"])),
        ("runc", v("runc", &["--version"])),
        ("wrk", v("wrk", &["-v"])),
    ]
}
