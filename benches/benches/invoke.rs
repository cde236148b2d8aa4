//! The request path in-process: one request to the `hello` example, from `Request` to the last
//! byte of the response body, with the pooling allocator and with on-demand allocation.
//!
//! What one iteration includes: admission (a semaphore permit), a store with fresh WASI and
//! HTTP contexts, instantiation from the pre-linked `ProxyPre`, the guest's handler, and
//! collecting the streamed response body. It excludes HTTP parsing and the socket (the
//! cold-start suite measures those end to end). A second group measures instantiation alone
//! (store + `instantiate_async` + drop), the part the allocator choice changes.
//!
//! Both platforms run side by side in one process and one run, so their ratio is meaningful
//! even on a noisy machine; the absolute numbers are not.
//!
//! A third group runs `echo` (written against the plain `wasi` crate, no SDK) the same way;
//! it touches a 64 KiB buffer per request, which shows what fresh guest memory costs.
//!
//! Run: `cargo bench -p thaw-benches --bench invoke` (add `-- --quick` for a short run).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Empty};
use thaw_runtime::engine::EngineOptions;
use thaw_runtime::function::{Code, Function};
use thaw_runtime::host::ProxyHost;
use thaw_runtime::invoke::{Peer, invoke};
use thaw_runtime::platform::{LoadMode, Platform, PlatformConfig};
use thaw_runtime::pool::PoolOptions;
use thaw_runtime::spec::LimitDefaults;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// A platform with `hello` (SDK) and `echo` (plain `wasi` crate) deployed.
fn platform(
    on_demand: bool,
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> (Arc<Platform>, Arc<Function>, Arc<Function>) {
    let platform = Platform::open(PlatformConfig {
        data_dir: dir.to_path_buf(),
        engine: EngineOptions {
            instance_slots: 64,
            max_memory_bytes: 256 << 20,
            on_demand,
        },
        defaults: LimitDefaults::default(),
        queue_timeout: std::time::Duration::from_secs(1),
        load: LoadMode::Eager,
        // No warm pool: every iteration measures a fresh instance.
        pool: PoolOptions {
            max_per_function: 0,
            reserve_slots: 0,
            idle_timeout: std::time::Duration::from_secs(60),
        },
        server_timing: false,
    })
    .expect("opening the platform");
    let deploy = |name: &str, path: &str| {
        let wasm = thaw_test_functions::read(path);
        rt.block_on(platform.deploy(name, Default::default(), wasm.into()))
            .expect("deploying")
            .0
    };
    let hello = deploy("hello", thaw_test_functions::HELLO);
    let echo = deploy("echo", thaw_test_functions::ECHO);
    (Arc::new(platform), hello, echo)
}

fn request(uri: &'static str) -> http::Request<Body> {
    http::Request::builder()
        .uri(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap()
}

fn benches(c: &mut Criterion) {
    // A current-thread runtime: the guest task, the response channel and the body stream
    // all run on the benchmark's thread, so the numbers are the request path's own cost
    // rather than the latency of waking other threads (criterion's thread is not a tokio
    // worker, so with a multi-threaded runtime every hand-off would be a cross-thread wake).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = Peer {
        remote: "127.0.0.1:1".parse().unwrap(),
        local: "127.0.0.1:2".parse().unwrap(),
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let setups = [
        ("pooling", platform(false, dirs[0].path(), &rt)),
        ("on-demand", platform(true, dirs[1].path(), &rt)),
    ];

    let mut group = c.benchmark_group("invoke-hello");
    for (name, (platform, hello, _)) in &setups {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let request = request("http://localhost/hello?name=bench");
                let response = invoke(platform, hello.clone(), request, peer).await;
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"Hello, bench!\n");
            })
        });
    }
    group.finish();

    // The same through a component written against the plain `wasi` crate. It is not a
    // cheaper baseline: echo allocates a 64 KiB copy buffer per request, and touching fresh
    // pages of a new instance's memory (page faults on the copy-on-write image) is one of the
    // larger costs of a request, which this row makes visible.
    let mut group = c.benchmark_group("invoke-echo");
    for (name, (platform, _, echo)) in &setups {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = invoke(
                    platform,
                    echo.clone(),
                    request("http://localhost/echo"),
                    peer,
                )
                .await;
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert!(body.is_empty());
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("instantiate-hello");
    for (name, (platform, function, _)) in &setups {
        let Some(Code::Proxy(pre)) = function.code() else {
            unreachable!("hello is a component")
        };
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut store = wasmtime::Store::new(
                    platform.engine().engine(),
                    ProxyHost::new(&function.name, &function.env, &function.limits),
                );
                store.limiter(|host| &mut host.limits);
                store.set_epoch_deadline(u64::MAX / 2);
                let _proxy = pre.instantiate_async(&mut store).await.unwrap();
                // Dropping the store returns the instance's slot to the pool: part of the cost.
                drop(store);
            })
        });
    }
    group.finish();
}

criterion_group!(invoke_benches, benches);
criterion_main!(invoke_benches);
