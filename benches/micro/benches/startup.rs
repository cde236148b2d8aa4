//! End-to-end starts over loopback HTTP, with the host in-process (the cold-start suite of
//! the benchmark issue measures whole processes):
//!
//! - `first-request-1000`: a data directory with 1,000 deployed functions; time from opening
//!   it (building the engine and its pool, registering every function, lazy loading) and
//!   binding the listener to the first `200` from one of them;
//! - `disk-over-http`: the first request to a function whose artifact is on disk but not yet
//!   loaded, on a new connection; `fresh-over-http` and `pool-hit-over-http` for comparison;
//! - `deploy-to-first-response`: deploying a never-seen build of `hello` (a unique custom
//!   section makes each one new) and its first response, with Cranelift and with
//!   `--fast-deploy` (Winch first).
//!
//! Prints median, p10, p90 and n for each. Run: `cargo bench -p thaw-benches --bench startup`.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thaw_benches::{BenchPlatform, Setup};
use thaw_runtime::control::{LoadMode, Platform};
use thaw_runtime::spec::FunctionSpec;

const FUNCTIONS: usize = 1000;

/// `GET path` on a new connection; returns the status code.
fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    std::str::from_utf8(&response[9..12])
        .unwrap()
        .parse()
        .unwrap()
}

fn serve(
    rt: &tokio::runtime::Runtime,
    platform: Arc<Platform>,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    rt.block_on(thaw_benches::serve_on_loopback(platform))
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<34} median {:>9.1} us   p10 {:>9.1} us   p90 {:>9.1} us   n {}",
        at(0.5).as_secs_f64() * 1e6,
        at(0.1).as_secs_f64() * 1e6,
        at(0.9).as_secs_f64() * 1e6,
        samples.len()
    );
}

fn setup() -> Setup {
    Setup {
        on_demand: false,
        warm: 0,
        server_timing: false,
        fast_deploy: false,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "thaw startup benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // A data directory with 1,000 functions (one compile; the rest reuse its artifact).
    let hello = thaw_test_functions::read(thaw_test_functions::HELLO);
    let seeded = BenchPlatform::new(setup());
    for i in 0..FUNCTIONS {
        rt.block_on(seeded.platform.deploy(
            &format!("f{i}"),
            FunctionSpec::default(),
            hello.clone().into(),
        ))
        .unwrap();
    }
    let mut dir = Some(seeded.into_dir());

    let mut first = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        // Lazy: the first request loads its own function. (With background loading the same
        // request would also load its function itself; the loader only competes for CPU.)
        let platform = BenchPlatform::open(setup(), dir.take().unwrap(), LoadMode::Lazy);
        let (addr, stop) = serve(&rt, platform.platform.clone());
        assert_eq!(get(addr, &format!("/f{}", (i * 97) % FUNCTIONS)), 200);
        first.push(started.elapsed());
        let _ = stop.send(true);
        dir = Some(platform.into_dir());
    }
    report("first-request-1000", first);

    // Per-request starts over HTTP, lazy loading: every f<i> starts unloaded.
    let platform = BenchPlatform::open(setup(), dir.take().unwrap(), LoadMode::Lazy);
    let (addr, stop) = serve(&rt, platform.platform.clone());
    let mut disk = Vec::new();
    let mut fresh = Vec::new();
    for i in 0..200 {
        let path = format!("/f{i}");
        let started = Instant::now();
        assert_eq!(get(addr, &path), 200);
        disk.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(get(addr, &path), 200);
        fresh.push(started.elapsed());
    }
    report("disk-over-http", disk);
    report("fresh-over-http", fresh);
    let _ = stop.send(true);
    drop(platform);

    pool_hits(&rt);
    deploys_to_first_response(&rt, &hello);
}

/// Requests that find a warm instance, over HTTP.
fn pool_hits(rt: &tokio::runtime::Runtime) {
    let warm = BenchPlatform::new(Setup { warm: 2, ..setup() });
    warm.deploy(
        rt,
        "hello",
        thaw_test_functions::HELLO,
        FunctionSpec::default(),
    );
    let (addr, stop) = serve(rt, warm.platform.clone());
    let mut hits = Vec::new();
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(2)); // let the refill task put one back
        let started = Instant::now();
        assert_eq!(get(addr, "/hello"), 200);
        hits.push(started.elapsed());
    }
    report("pool-hit-over-http", hits);
    let _ = stop.send(true);
}

/// Deploy to first response, each time a build thaw has never seen, with Cranelift and
/// with the fast tier.
fn deploys_to_first_response(rt: &tokio::runtime::Runtime, hello: &[u8]) {
    for (name, fast_deploy) in [
        ("deploy-to-first-response-cranelift", false),
        ("deploy-to-first-response-fast", true),
    ] {
        let platform = BenchPlatform::new(Setup {
            fast_deploy,
            ..setup()
        });
        let (addr, stop) = serve(rt, platform.platform.clone());
        let mut samples = Vec::new();
        for i in 0..15u32 {
            let mut wasm = hello.to_vec();
            // A custom section (id 0): name "thaw-bench", payload the sample number.
            let payload: Vec<u8> = [&[10u8][..], b"thaw-bench", &i.to_le_bytes()].concat();
            wasm.push(0);
            wasm.push(payload.len() as u8);
            wasm.extend_from_slice(&payload);
            let function = format!("d{i}");
            let started = Instant::now();
            rt.block_on(
                platform
                    .platform
                    .deploy(&function, FunctionSpec::default(), wasm.into()),
            )
            .unwrap();
            assert_eq!(get(addr, &format!("/{function}")), 200);
            samples.push(started.elapsed());
            // Untimed: let the background tier-up finish so it does not slow the next sample.
            while platform.platform.status().tier_ups_pending != 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        report(name, samples);
        let _ = stop.send(true);
        // Let background tier-ups finish before the next setup.
        std::thread::sleep(Duration::from_secs(2));
    }
}
