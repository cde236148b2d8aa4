//! The request path in-process: one request, from `Request` to the last byte of the
//! response body, for each way a request can get its instance, and the per-request cost of
//! an expensive start with and without a pre-initialisation snapshot.
//!
//! Rows (all on the `hello` example unless named):
//! - `invoke-hello/{fresh-pooling, fresh-on-demand}`: a new instance per request, from the
//!   pooling allocator or with on-demand allocation;
//! - `invoke-hello/pool-hit`: a pre-instantiated instance from the warm pool;
//! - `invoke-hello/disk`: the first request to a function whose artifact is on disk but not
//!   loaded (deserialize with mmap, link, instantiate, call);
//! - `invoke-hello/compile`: the first request when the artifact is missing (Cranelift);
//! - `invoke-hello-busy/*`: fresh and pool-hit while a thread spins on the other core;
//! - `sdk-handler/{sync,async}-{pool-hit,fresh}`: the SDK's plain `fn` handler beside its
//!   `async fn` one (`functions/hello-async`, the same greeting on the executor);
//! - `instantiate-hello/*`: store, instantiate and drop alone, per allocator;
//! - `invoke-primes/{snapshot, no-snapshot}`: `functions/primes`, whose start-up sieves ten
//!   million numbers, on a fresh instance per request (and `no-snapshot-winch`: the same with
//!   code from Winch, the fast tier, to show how much slower baseline-compiled code runs).
//!
//! Each group runs its rows side by side in one process, so ratios hold on a noisy machine
//! even where absolute numbers drift. A current-thread runtime keeps cross-thread wake-ups
//! (criterion's thread is not a tokio worker) out of the numbers; loads use the blocking
//! pool, as in the server.
//!
//! Run: `cargo bench -p thaw-benches --bench invoke` (add `-- --quick` for a short run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Empty};
use thaw_benches::{BenchPlatform, BusyCore, Setup};
use thaw_runtime::control::Platform;
use thaw_runtime::function::pool::warm_up;
use thaw_runtime::function::{Code, Function};
use thaw_runtime::invoke::{Peer, invoke};
use thaw_runtime::spec::{FunctionSpec, LimitDefaults};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

const PEER: fn() -> Peer = || Peer {
    remote: "127.0.0.1:1".parse().unwrap(),
    local: "127.0.0.1:2".parse().unwrap(),
    tls: false,
};

fn request(uri: &str) -> http::Request<Body> {
    http::Request::builder()
        .uri(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

/// One request; checks the status and, if Server-Timing is on, the start kind.
async fn call(platform: &Arc<Platform>, function: &Arc<Function>, uri: &str, kind: Option<&str>) {
    let response = invoke(
        platform.invoke_context(),
        function.clone(),
        request(uri),
        PEER(),
    )
    .await;
    assert_eq!(response.status(), 200);
    if let Some(kind) = kind {
        let timing = response.headers()["server-timing"].to_str().unwrap();
        assert!(
            timing.starts_with(&format!("start;desc=\"{kind}\"")),
            "{timing}"
        );
    }
    response.into_body().collect().await.unwrap();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The pool-hit rows fill the pool themselves (`warm_up`, untimed) and run without the
    // refill task: on this current-thread runtime a refill woken by the request would run
    // inside the timed call, while in the server it runs on another worker, off the request
    // path.
    let [pooling, on_demand, warm] = [false, true, false].map(|on_demand| {
        BenchPlatform::new(Setup {
            on_demand,
            warm: 0,
            server_timing: true,
            fast_deploy: false,
        })
    });
    let hello = thaw_test_functions::HELLO;
    let pooled = pooling.deploy(&rt, "hello", hello, Default::default());
    let unpooled = on_demand.deploy(&rt, "hello", hello, Default::default());
    let warmed = warm.deploy(&rt, "hello", hello, Default::default());
    let uri = "http://localhost/hello?name=bench";

    let fresh = |b: &mut criterion::Bencher, (p, f): (&BenchPlatform, &Arc<Function>)| {
        b.to_async(&rt)
            .iter(|| call(&p.platform, f, uri, Some("fresh")))
    };
    let pool_hit_of = |b: &mut criterion::Bencher, function: &Arc<Function>, uri: &'static str| {
        b.to_async(&rt).iter_custom(|iters| {
            let platform = &warm.platform;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    while function.pool.is_empty() {
                        warm_up(function, &platform.invoke_context().admission, 1).await;
                    }
                    let start = Instant::now();
                    call(platform, function, uri, Some("pool-hit")).await;
                    total += start.elapsed();
                }
                total
            }
        })
    };
    let pool_hit = |b: &mut criterion::Bencher| pool_hit_of(b, &warmed, uri);
    let mut group = c.benchmark_group("invoke-hello");
    group.bench_function("fresh-pooling", |b| fresh(b, (&pooling, &pooled)));
    group.bench_function("fresh-on-demand", |b| fresh(b, (&on_demand, &unpooled)));
    group.bench_function("pool-hit", pool_hit);
    // The first request to a function that is registered but not loaded; `before` runs
    // untimed ahead of each one (the compile row deletes the artifact there).
    let first_request = |b: &mut criterion::Bencher, kind: &'static str, before: &dyn Fn()| {
        b.to_async(&rt).iter_custom(|iters| {
            let (platform, record) = (&pooling.platform, pooled.record.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    before();
                    let unloaded = Arc::new(Function::unloaded(
                        record.clone(),
                        &LimitDefaults::default(),
                    ));
                    let start = Instant::now();
                    call(platform, &unloaded, uri, Some(kind)).await;
                    total += start.elapsed();
                }
                total
            }
        })
    };
    group.bench_function("disk", |b| first_request(b, "disk", &|| {}));
    group.sample_size(10);
    let artifact = pooling
        .platform
        .data_dir()
        .artifacts(&pooling.platform.cache().engines().compatibility_key())
        .join(format!("{}.cwasm", pooled.record.code_digest()));
    group.bench_function("compile", |b| {
        first_request(b, "compile", &|| std::fs::remove_file(&artifact).unwrap())
    });
    group.finish();

    // The SDK's two handler shapes side by side: the same hello as a plain `fn` and as an
    // `async fn` (which runs on the executor), from the warm pool and fresh.
    let warmed_async = warm.deploy(
        &rt,
        "hello-async",
        thaw_test_functions::HELLO_ASYNC,
        Default::default(),
    );
    let pooled_async = pooling.deploy(
        &rt,
        "hello-async",
        thaw_test_functions::HELLO_ASYNC,
        Default::default(),
    );
    let mut group = c.benchmark_group("sdk-handler");
    group.bench_function("sync-pool-hit", |b| pool_hit_of(b, &warmed, uri));
    group.bench_function("async-pool-hit", |b| {
        pool_hit_of(b, &warmed_async, "http://localhost/hello-async?name=bench")
    });
    group.bench_function("sync-fresh", |b| fresh(b, (&pooling, &pooled)));
    group.bench_function("async-fresh", |b| {
        b.to_async(&rt).iter(|| {
            call(
                &pooling.platform,
                &pooled_async,
                "http://localhost/hello-async?name=bench",
                Some("fresh"),
            )
        })
    });
    group.finish();

    let busy = BusyCore::start();
    let mut group = c.benchmark_group("invoke-hello-busy");
    group.bench_function("fresh-pooling", |b| fresh(b, (&pooling, &pooled)));
    group.bench_function("pool-hit", pool_hit);
    group.finish();
    drop(busy);

    instantiate(c, &rt, [("pooling", &pooled), ("on-demand", &unpooled)]);
    primes(c, &rt, &pooling);
}

/// `instantiate-hello/*`: store, instantiate and drop alone, per allocator.
fn instantiate(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    functions: [(&str, &Arc<Function>); 2],
) {
    let mut group = c.benchmark_group("instantiate-hello");
    for (name, f) in functions {
        let Some(Code::Proxy(pre)) = f.code() else {
            unreachable!("hello is a component")
        };
        group.bench_function(name, |b| {
            b.to_async(rt).iter(|| async {
                let mut store = thaw_runtime::guest::proxy_store(pre.engine(), &f.guest());
                store.set_epoch_deadline(u64::MAX / 2);
                let _proxy = pre.instantiate_async(&mut store).await.unwrap();
                // Dropping the store returns the instance's slot to the pool: part of the cost.
                drop(store);
            })
        });
    }
    group.finish();
}

/// `invoke-primes/*`: an expensive start with and without a snapshot, and on Winch's code.
fn primes(c: &mut Criterion, rt: &tokio::runtime::Runtime, pooling: &BenchPlatform) {
    let primes = pooling.deploy(
        rt,
        "primes",
        thaw_test_functions::PRIMES,
        Default::default(),
    );
    let no_snapshot = FunctionSpec {
        route: Some("/raw".into()),
        snapshot: Some(false),
        ..Default::default()
    };
    let raw = pooling.deploy(rt, "raw", thaw_test_functions::PRIMES, no_snapshot.clone());
    // The same code compiled by Winch (the fast tier of --fast-deploy): how much slower it runs.
    let fast = BenchPlatform::new(Setup {
        on_demand: false,
        warm: 0,
        server_timing: true,
        fast_deploy: true,
    });
    let raw_winch = fast.deploy(rt, "raw", thaw_test_functions::PRIMES, no_snapshot.clone());
    assert_eq!(
        raw_winch.loaded().unwrap().origin,
        thaw_runtime::engine::artifact::Origin::FastTier
    );
    let mut group = c.benchmark_group("invoke-primes");
    group.bench_function("snapshot", |b| {
        b.to_async(rt).iter(|| {
            call(
                &pooling.platform,
                &primes,
                "http://localhost/primes?n=9999991",
                Some("fresh"),
            )
        })
    });
    group.sample_size(20);
    group.bench_function("no-snapshot", |b| {
        b.to_async(rt).iter(|| {
            call(
                &pooling.platform,
                &raw,
                "http://localhost/raw?n=9999991",
                Some("fresh"),
            )
        })
    });
    group.bench_function("no-snapshot-winch", |b| {
        b.to_async(rt).iter(|| {
            call(
                &fast.platform,
                &raw_winch,
                "http://localhost/raw?n=9999991",
                Some("fresh"),
            )
        })
    });
    group.finish();
}

criterion_group!(invoke_benches, benches);
criterion_main!(invoke_benches);
