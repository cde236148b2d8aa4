//! `wasi:keyvalue` latency, on the embedded store and on Redis, side by side in one run:
//! - the store alone, in-process (`set` of a 100-byte value, `get`, `increment`);
//! - a guest's call over loopback HTTP: `functions/capabilities` behind a real listener, one
//!   kept-alive connection, `POST /cap/set`, `GET /cap/get` (of the keys just set),
//!   `GET /cap/count`, and
//!   `GET /cap/config/missing` (the same request without the store: the HTTP and guest cost
//!   the store rows include).
//!
//! Redis rows need `redis-server` on PATH (started here on a free loopback port, without
//! persistence: the network and the script are measured, not Redis's disk). Prints medians
//! with p10 and p90 in microseconds.
//!
//! Run: `cargo run --release -p thaw-benches --example keyvalue` (`-- 2000` for more samples).

use std::time::Duration;

use thaw_benches::{BenchPlatform, Setup, quantile_us, timed};
use thaw_runtime::control::KeyValueBackend;
use thaw_runtime::keyvalue::{KeyValue, Quota};
use thaw_runtime::spec::FunctionSpec;

struct Row {
    name: String,
    samples: Vec<Duration>,
}

fn summary(rows: &[Row]) {
    println!("| row | median µs | p10 | p90 | n |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let mut s = row.samples.clone();
        s.sort();
        let at = |q: f64| quantile_us(&s, q);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            row.name,
            at(0.5),
            at(0.1),
            at(0.9),
            s.len()
        );
    }
}

async fn measure(label: &str, backend: KeyValueBackend, n: usize, rows: &mut Vec<Row>) {
    let bench = BenchPlatform::with_keyvalue(
        Setup {
            on_demand: false,
            warm: 4,
            server_timing: false,
            fast_deploy: false,
        },
        backend,
    );
    let platform = bench.platform.clone();
    let store: KeyValue = platform.keyvalue().expect("a store").clone();
    in_process(label, &store, n, rows).await;
    over_http(label, &platform, n, rows).await;
}

/// The store alone: set, get and increment, in-process.
async fn in_process(label: &str, store: &KeyValue, n: usize, rows: &mut Vec<Row>) {
    let value = vec![b'v'; 100];
    let mut row = |name: &str, samples| {
        rows.push(Row {
            name: format!("{label}: {name}"),
            samples,
        })
    };
    row(
        "store set, in-process",
        timed(n, |i| {
            let (store, value) = (store.clone(), value.clone());
            async move {
                let key = format!("k{}", i % 100);
                store
                    .set("bench", "", &key, value, Quota::UNLIMITED)
                    .await
                    .unwrap();
            }
        })
        .await,
    );
    row(
        "store get, in-process",
        timed(n, |i| {
            let store = store.clone();
            async move {
                let key = format!("k{}", i % 100);
                assert!(store.get("bench", "", &key).await.unwrap().is_some());
            }
        })
        .await,
    );
    row(
        "store increment, in-process",
        timed(n, |_| {
            let store = store.clone();
            async move {
                store
                    .increment("bench", "", "n", 1, Quota::UNLIMITED)
                    .await
                    .unwrap();
            }
        })
        .await,
    );
}

/// Through the guest (functions/capabilities) over loopback HTTP: set, get, increment, and
/// a request that does not touch the store.
async fn over_http(
    label: &str,
    platform: &std::sync::Arc<thaw_runtime::control::Platform>,
    n: usize,
    rows: &mut Vec<Row>,
) {
    let value = vec![b'v'; 100];
    let mut row = |name: &str, samples| {
        rows.push(Row {
            name: format!("{label}: {name}"),
            samples,
        })
    };
    let wasm = thaw_test_functions::read(thaw_test_functions::CAPABILITIES);
    let spec = FunctionSpec {
        route: Some("/cap".into()),
        ..Default::default()
    };
    platform.deploy("cap", spec, wasm.into()).await.unwrap();
    let (addr, stop) = thaw_benches::serve_on_loopback(platform.clone()).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await.unwrap();
            let status = r.status();
            r.bytes().await.unwrap();
            status
        }
    };
    row(
        "guest set over HTTP",
        timed(n, |i| {
            let (http, value) = (http.clone(), value.clone());
            let url = format!("{base}/cap/set?key=k{}", i % 100);
            async move {
                let r = http.post(url).body(value).send().await.unwrap();
                assert_eq!(r.status(), 204);
            }
        })
        .await,
    );
    row(
        "guest get over HTTP",
        timed(n, |i| {
            let url = format!("{base}/cap/get?key=k{}", i % 100);
            async move {
                assert_eq!(get(url).await, 200);
            }
        })
        .await,
    );
    row(
        "guest increment over HTTP",
        timed(n, |_| {
            let url = format!("{base}/cap/count");
            async move {
                assert_eq!(get(url).await, 200);
            }
        })
        .await,
    );
    row(
        "guest without the store over HTTP",
        timed(n, |_| {
            let url = format!("{base}/cap/config/missing");
            async move {
                assert_eq!(get(url).await, 404);
            }
        })
        .await,
    );
    let _ = stop.send(true);
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(measure("embedded", KeyValueBackend::Embedded, n, &mut rows));

    // Skipped (and said so) without Debian's redis-server.
    if let Some(redis) = thaw_harness::Redis::start() {
        rt.block_on(async {
            let store = thaw_runtime::keyvalue::redis::RedisStore::connect(&redis.url)
                .await
                .unwrap();
            measure("redis", KeyValueBackend::Redis(store), n, &mut rows).await;
        });
    }
    summary(&rows);
}
