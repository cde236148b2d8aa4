//! The request path in-process: a function built from wasm and invoked through
//! `thaw_runtime::invoke` with no data directory, no registry, no CLI and no listener. Each
//! test drives one way a request can get its instance or fail, and checks the status, the
//! start kind and the limit that was counted, all classified by type (trap codes and the
//! limiter's typed error), never by message text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use thaw_runtime::engine::artifact::{Origin, compile};
use thaw_runtime::engine::{EngineOptions, ThawEngine};
use thaw_runtime::function::pool::{PoolOptions, warm_up};
use thaw_runtime::function::{Function, FunctionRecord, Linking};
use thaw_runtime::guest::limit::Limit;
use thaw_runtime::invoke::{InvokeContext, Peer, invoke};
use thaw_runtime::spec::{FunctionSpec, Kind, LimitDefaults, LimitsSpec, detect_kind};
use thaw_test_functions as wasm;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// An engine, the request path's context, and functions built on them.
struct Host {
    linking: Linking,
    cx: InvokeContext,
    defaults: LimitDefaults,
}

impl Host {
    fn new(fuel_metering: bool) -> Self {
        let engine = ThawEngine::new(EngineOptions {
            instance_slots: 8,
            max_memory_bytes: 64 << 20,
            keep_resident_bytes: 64 << 10,
            on_demand: false,
            fuel_metering,
        })
        .expect("engine");
        Self {
            linking: Linking::single(Arc::new(engine)).expect("linkers"),
            cx: InvokeContext {
                admission: Arc::new(tokio::sync::Semaphore::new(8)),
                queue_timeout: Duration::from_secs(5),
                // No refill task: a test decides what is warm.
                pool: PoolOptions {
                    max_per_function: 0,
                    reserve_slots: 1,
                    idle_timeout: Duration::from_secs(30),
                    unload_after: None,
                },
                server_timing: true,
                loader: None,
                queue_waits: Default::default(),
                traces: None,
                trusted_proxies: Default::default(),
            },
            defaults: LimitDefaults {
                fuel_metering,
                ..LimitDefaults::default()
            },
        }
    }

    /// `path`'s wasm compiled, linked and wrapped as a loaded function with `limits`.
    fn function(&self, name: &str, path: &str, limits: LimitsSpec) -> Arc<Function> {
        let bytes = wasm::read(path);
        let kind = detect_kind(&bytes).expect("wasm");
        let compiled = compile(self.linking.engine().engine(), kind, &bytes).expect("compiles");
        let code = self.linking.link(compiled).expect("links");
        let record = FunctionRecord {
            name: name.into(),
            digest: "0".repeat(64),
            code_digest: None,
            kind,
            engine: None,
            wasm_bytes: bytes.len() as u64,
            spec: FunctionSpec {
                route: Some(format!("/{name}")),
                limits,
                ..Default::default()
            },
            generation: 1,
            deployed_at_ms: 0,
        };
        Arc::new(Function::loaded_with(
            record,
            &self.defaults,
            code,
            Origin::Compiled,
        ))
    }

    /// One GET; returns the status, the start kind from `Server-Timing`, and the body.
    async fn get(&self, function: &Arc<Function>, uri: &str) -> (u16, String, Bytes) {
        let request = http::Request::builder()
            .uri(uri)
            .body::<Body>(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let peer = Peer {
            remote: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            tls: false,
        };
        let response = invoke(&self.cx, function.clone(), request, peer).await;
        let status = response.status().as_u16();
        let start = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('"').nth(1))
            .unwrap_or("")
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, start, body)
    }
}

fn limits(f: impl FnOnce(&mut LimitsSpec)) -> LimitsSpec {
    let mut limits = LimitsSpec::default();
    f(&mut limits);
    limits
}

#[tokio::test]
async fn a_fresh_instance_then_a_pool_hit() {
    let host = Host::new(false);
    let hello = host.function("hello", wasm::HELLO, LimitsSpec::default());
    let (status, start, body) = host.get(&hello, "/hello").await;
    assert_eq!((status, start.as_str()), (200, "fresh"));
    assert_eq!(&body[..], b"Hello, world!\n");

    assert_eq!(warm_up(&hello, &host.cx.admission, 1).await, 1);
    let (status, start, body) = host.get(&hello, "/hello?name=pool").await;
    assert_eq!((status, start.as_str()), (200, "pool-hit"));
    assert_eq!(&body[..], b"Hello, pool!\n");
    // Every slot is back: the pool-hit instance was not reused (no opt-in).
    assert_eq!(host.cx.admission.available_permits(), 8);
}

#[tokio::test]
async fn a_memory_bomb_is_a_memory_limit_hit() {
    let host = Host::new(false);
    let faults = host.function("faults", wasm::FAULTS, limits(|l| l.memory_mib = Some(16)));
    let (status, ..) = host.get(&faults, "/faults/oom").await;
    assert_eq!(status, 500);
    assert_eq!(faults.stats.limit_hits.get(Limit::Memory), 1);
    assert_eq!(host.get(&faults, "/faults/ok").await.0, 200);
}

#[tokio::test]
async fn an_endless_loop_is_a_timeout() {
    let host = Host::new(false);
    let faults = host.function("faults", wasm::FAULTS, limits(|l| l.timeout_ms = Some(100)));
    let (status, ..) = host.get(&faults, "/faults/loop").await;
    assert_eq!(status, 504);
    assert_eq!(faults.stats.limit_hits.get(Limit::Timeout), 1);
    assert_eq!(faults.stats.limit_hits.get(Limit::Fuel), 0);
}

#[tokio::test]
async fn an_endless_loop_runs_out_of_fuel() {
    let host = Host::new(true);
    let faults = host.function(
        "faults",
        wasm::FAULTS,
        limits(|l| {
            l.fuel = Some(50_000_000);
            l.timeout_ms = Some(60_000);
        }),
    );
    let (status, ..) = host.get(&faults, "/faults/loop").await;
    assert_eq!(status, 504);
    assert_eq!(faults.stats.limit_hits.get(Limit::Fuel), 1);
    assert_eq!(faults.stats.limit_hits.get(Limit::Timeout), 0);
    assert_eq!(host.get(&faults, "/faults/ok").await.0, 200);
}

#[tokio::test]
async fn a_panic_is_a_trap_and_no_limit() {
    let host = Host::new(false);
    let faults = host.function("faults", wasm::FAULTS, LimitsSpec::default());
    let (status, _, body) = host.get(&faults, "/faults/panic").await;
    assert_eq!(status, 500);
    assert_eq!(&body[..], b"function failed (trap)\n");
    assert!(
        Limit::ALL
            .iter()
            .all(|&l| faults.stats.limit_hits.get(l) == 0)
    );
    assert_eq!(
        faults
            .stats
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn cgi_output_over_its_limit_is_502() {
    let host = Host::new(false);
    let cgi = host.function(
        "cgi",
        wasm::HOSTILE_CGI,
        limits(|l| l.max_response_body_kib = Some(100)),
    );
    assert_eq!(cgi.record.kind, Kind::Cgi);
    let (status, start, body) = host.get(&cgi, "/cgi?big&bytes=1000").await;
    assert_eq!((status, start.as_str(), body.len()), (200, "fresh", 1000));
    let (status, ..) = host.get(&cgi, "/cgi?flood&bytes=200000").await;
    assert_eq!(status, 502);
    assert_eq!(cgi.stats.limit_hits.get(Limit::ResponseBody), 1);
}
