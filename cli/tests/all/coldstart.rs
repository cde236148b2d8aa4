//! Cold start: every start kind observed from outside (Server-Timing and the per-function
//! counters), warm pools draining to zero when idle, instance reuse off by default and on when
//! asked, and a trapped instance never reused.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use thaw_runtime::spec::{FunctionSpec, ReuseSpec};
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, client, error_code};

/// The `desc` of the `start` metric in a Server-Timing header.
fn start_kind(response: &reqwest::Response) -> String {
    let header = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let start = header.split(',').next().unwrap().trim();
    start
        .strip_prefix("start;desc=\"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no start kind in {header:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_start_kind_and_scale_to_zero() {
    let mut server = TestServer::start_with(&["--load", "lazy", "--warm-idle-secs", "1"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;

    // Right after a deploy nothing is warm: the first request instantiates.
    let first = server.get("/hello").await;
    assert_eq!(first.status(), 200);
    assert_eq!(start_kind(&first), "fresh");
    let timing = first.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        timing.contains("instantiate;dur=") && timing.contains("handler;dur="),
        "{timing}"
    );

    // The refill task warms an instance off the request path; later requests take it.
    server
        .wait_for(None, "a warm instance", |s| {
            s["warm_instances"].as_u64() >= Some(1)
        })
        .await;
    let hit = server.get("/hello").await;
    assert_eq!(start_kind(&hit), "pool-hit");
    assert_eq!(hit.text().await.unwrap(), "Hello, world!\n");

    let described = server.admin().get("hello").await.unwrap();
    assert!(
        described["starts"]["fresh"].as_u64() >= Some(1),
        "{described}"
    );
    assert!(
        described["starts"]["pool-hit"].as_u64() >= Some(1),
        "{described}"
    );
    assert!(
        described["start_us"]["p50"].as_u64().is_some(),
        "{described}"
    );
    assert!(
        described["handler_us"]["p99"].as_u64().is_some(),
        "{described}"
    );

    // Idle past --warm-idle-secs: the pool drains to zero and its slots come back.
    server
        .wait_for(None, "the pool to drain", |s| {
            s["warm_instances"] == 0 && s["slots_in_use"] == 0
        })
        .await;

    // After a restart in lazy mode, the first request loads the artifact from disk.
    server.kill_and_restart(1);
    assert_eq!(
        server.admin().status().await.unwrap()["functions_loaded"],
        0
    );
    let from_disk = server.get("/hello").await;
    assert_eq!(start_kind(&from_disk), "disk");
    assert!(
        from_disk.headers()["server-timing"]
            .to_str()
            .unwrap()
            .contains("load;dur=")
    );

    // With the artifact gone, the first request after a restart has to compile.
    let engines = server.data_dir.join("artifacts");
    for engine in std::fs::read_dir(&engines).unwrap() {
        for artifact in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            std::fs::remove_file(artifact.unwrap().path()).unwrap();
        }
    }
    server.kill_and_restart(2);
    let compiled = server.get("/hello").await;
    assert_eq!(start_kind(&compiled), "compile");
    assert_eq!(compiled.text().await.unwrap(), "Hello, world!\n");
    let described = server.admin().get("hello").await.unwrap();
    assert_eq!(described["starts"]["compile"], 1, "{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_timing_can_be_switched_off() {
    let server = TestServer::start_with(&["--server-timing=false"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let r = server.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("server-timing"));
}

/// `(instance, count)` of one counter response.
async fn count(url: &str) -> (String, u64) {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let instance = r.headers()["x-instance"].to_str().unwrap().to_owned();
    let count = r.headers()["x-count"].to_str().unwrap().parse().unwrap();
    (instance, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn reuse_is_off_by_default_and_on_when_asked() {
    let server = TestServer::start();
    server
        .deploy("isolated", wasm::COUNTER, Default::default())
        .await;
    let reuse = FunctionSpec {
        reuse: Some(ReuseSpec {
            max_requests: 5,
            idle_timeout_ms: 60_000,
            max_concurrent: 1,
        }),
        ..Default::default()
    };
    server.deploy("reused", wasm::COUNTER, reuse).await;

    // Isolation: every request sees a fresh instance whose counter is 1.
    let mut instances = HashSet::new();
    for _ in 0..20 {
        let (instance, count) = count(&format!("{}/isolated", server.url)).await;
        assert_eq!(
            count, 1,
            "an instance served a second request without reuse"
        );
        assert!(instances.insert(instance), "an instance id came back");
    }

    // Reuse: instances keep their state, up to 5 requests each.
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..30 {
        let (instance, count) = count(&format!("{}/reused", server.url)).await;
        assert!(
            count <= 5,
            "an instance served more than max_requests: {count}"
        );
        let last = seen.insert(instance, count).unwrap_or(0);
        assert!(count > last, "counts of one instance only grow");
    }
    assert!(
        seen.values().any(|&c| c > 1),
        "no instance was reused: {seen:?}"
    );

    // A trapped instance is never handed another request.
    // The head is sent before the trap, but the trap may close the connection before hyper
    // has flushed it: then nothing names the instance, and the test asks again (a trap
    // never reaches the client as a complete answer either way).
    let mut attempts = 0;
    let r = loop {
        attempts += 1;
        match client()
            .get(format!("{}/reused/trap", server.url))
            .send()
            .await
        {
            Ok(r) => break r,
            Err(e) if attempts < 5 && e.is_request() => continue,
            Err(e) => panic!("the trap request: {e:?}"),
        }
    };
    let trapped = r.headers()["x-instance"].to_str().unwrap().to_owned();
    assert!(r.bytes().await.is_err(), "the body is cut off by the trap");
    for _ in 0..30 {
        let (instance, _) = count(&format!("{}/reused", server.url)).await;
        assert_ne!(instance, trapped, "a trapped instance was reused");
    }
    assert!(
        server
            .log()
            .contains("failed after sending its response head")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_run_init_once_at_deploy() {
    let mut server = TestServer::start();
    let snapshotted = server
        .deploy("primes", wasm::PRIMES, Default::default())
        .await;
    assert_eq!(snapshotted["snapshot"], true);
    let without = FunctionSpec {
        route: Some("/raw".into()),
        snapshot: Some(false),
        ..Default::default()
    };
    let raw = server.deploy("raw", wasm::PRIMES, without).await;
    assert_eq!(raw["snapshot"], false);

    // Same answers; only the function without a snapshot builds its table per request.
    let check = |server: &TestServer| {
        let (fast, slow) = (
            format!("{}/primes", server.url),
            format!("{}/raw", server.url),
        );
        async move {
            for query in [
                "?n=0",
                "?n=2",
                "?n=97",
                "?n=100",
                "?n=7919",
                "?n=9999991",
                "?n=x",
                "",
            ] {
                let a = client().get(format!("{fast}{query}")).send().await.unwrap();
                let b = client().get(format!("{slow}{query}")).send().await.unwrap();
                assert_eq!(a.status(), b.status(), "{query}");
                if a.status() == 200 {
                    assert_eq!(
                        a.headers()["x-initialized-here"],
                        "false",
                        "{query}: snapshot in effect"
                    );
                    assert_eq!(
                        b.headers()["x-initialized-here"],
                        "true",
                        "{query}: no snapshot"
                    );
                }
                assert_eq!(a.text().await.unwrap(), b.text().await.unwrap(), "{query}");
            }
        }
    };
    check(&server).await;
    let r = server.get("/primes?n=9999991").await;
    assert_eq!(
        r.text().await.unwrap(),
        "{\"n\":9999991,\"prime\":true,\"primes_up_to_n\":664579}\n"
    );

    // An artifact rebuild after a restart compiles the stored snapshot, not the upload.
    for engine in std::fs::read_dir(server.data_dir.join("artifacts")).unwrap() {
        for artifact in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            std::fs::remove_file(artifact.unwrap().path()).unwrap();
        }
    }
    server.kill_and_restart(1);
    check(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn init_that_calls_the_host_is_refused() {
    let server = TestServer::start();
    let err = server
        .admin()
        .deploy(
            "impure",
            &FunctionSpec::default(),
            wasm::read(wasm::IMPURE_INIT).into(),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::InvalidModule), "{err:#}");
    let message = format!("{err:#}");
    assert!(
        message.contains("wasi:clocks/wall-clock"),
        "names the host call: {message}"
    );
    assert_eq!(
        server.get("/impure").await.status(),
        404,
        "nothing was deployed"
    );

    // Without a snapshot the same function deploys and runs its init per request.
    let spec = FunctionSpec {
        snapshot: Some(false),
        ..Default::default()
    };
    server.deploy("impure", wasm::IMPURE_INIT, spec).await;
    assert_eq!(server.get("/impure").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn fast_deploy_answers_from_winch_then_tiers_up_to_cranelift() {
    let mut server = TestServer::start_with(&["--fast-deploy"]);
    let deployed = server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    assert_eq!(deployed["loaded_from"], "fast_tier");
    let r = server.get("/hello").await;
    assert_eq!(
        r.text().await.unwrap(),
        "Hello, world!\n",
        "the fast tier serves"
    );

    // Cranelift's code replaces it in the background; requests keep succeeding meanwhile.
    for _ in 0..1500 {
        assert_eq!(server.get("/hello").await.status(), 200);
        if server.admin().get("hello").await.unwrap()["loaded_from"] == "compiled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.admin().get("hello").await.unwrap()["loaded_from"],
        "compiled"
    );
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["tier_ups_pending"], 0);
    assert_eq!(
        status["compilations"], 1,
        "one Cranelift compile, persisted"
    );
    assert!(server.log().contains("tier-up: now serving Cranelift code"));

    // The persisted artifact is Cranelift's: a restart compiles nothing.
    server.kill_and_restart(1);
    assert_eq!(server.get("/hello").await.status(), 200);
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["compilations"], 0);
    assert_eq!(status["artifact_loads"], 1);
}

/// After a spike the warm pool shrinks back to what the traffic needs, not only to zero when
/// the function goes idle (the failure wasmCloud#5430 reports): eight requests at once grow
/// it to eight instances while they run; with one request at a time after that, it comes back to one within
/// a few sizing intervals, and stays there (one ready, not eight, not drained) while that
/// traffic lasts.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_shrinks_back_to_the_traffic_after_a_spike() {
    let server = TestServer::start_with(&["--warm-max", "8"]);
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    assert_eq!(server.get("/faults/ok").await.status(), 200);
    server
        .wait_for(Some("faults"), "a warm instance", |f| {
            f["warm_instances"] == 1
        })
        .await;
    // Active first (its pool sized every interval), then eight at once, each holding its
    // instance for two seconds: the pool grows to eight while they run (the target follows
    // the peak of the last interval).
    let spike: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{}/faults/sleep?ms=2000", server.url);
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    server
        .wait_for(Some("faults"), "the pool to grow to the spike", |f| {
            f["warm_instances"] == 8
        })
        .await;
    for request in spike {
        assert_eq!(request.await.unwrap(), 200);
    }

    // One request at a time, for as long as the check below takes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (url, stop) = (format!("{}/faults/ok", server.url), stop.clone());
        async move {
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
                served += 1;
            }
            served
        }
    });
    server
        .wait_for(Some("faults"), "the pool to shrink to one", |f| {
            f["warm_instances"] == 1
        })
        .await;
    // One request at a time never needs more than one: the pool does not grow again over
    // several sizing intervals (between a take and its refill it is briefly empty).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let warm = server.admin().get("faults").await.unwrap()["warm_instances"].clone();
        assert!(
            warm.as_u64() <= Some(1),
            "{warm} warm for one request at a time"
        );
    }
    server
        .wait_for(
            Some("faults"),
            "one warm instance under steady traffic",
            |f| f["warm_instances"] == 1,
        )
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(traffic.await.unwrap() > 0);
}

/// Kilobytes of `pid`'s resident set in its read-only mappings of the file named `file`:
/// the compiled image (a writable one is an instance's linear memory, mapped copy-on-write
/// from the file's data).
fn resident_kib_of(pid: u32, file: &str) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_file = false;
    let mut kib = 0;
    for line in smaps.lines() {
        // A mapping's header: `start-end perms offset dev inode [path]`; its fields follow.
        let is_header = line.split_once(' ').is_some_and(|(range, _)| {
            range.contains('-') && range.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        });
        if is_header {
            in_file = line.ends_with(file) && !line.contains(" rw-p ");
        } else if in_file && let Some(rest) = line.strip_prefix("Rss:") {
            kib += rest.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
        }
    }
    kib
}

/// A function loaded from its artifact that goes idle (its warm pool drained) gives its code
/// pages back (`function::trim`), and serves correctly when called again, from the same
/// mapping, as often as that happens.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_function_gives_its_code_pages_back_and_still_serves() {
    let mut server = TestServer::start_with(&["--warm-idle-secs", "1"]);
    let deployed = server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let digest = deployed["digest"].as_str().unwrap().to_owned();
    // Code compiled at deploy lives in anonymous memory; after a restart it runs from the
    // artifact's mapping, which is what is given back.
    server.kill_and_restart(1);
    server
        .wait_for(Some("hello"), "the function loaded", |f| {
            f["loaded_from"] == "artifact"
        })
        .await;
    let file = format!("{digest}.cwasm");
    for round in 0..2 {
        let r = server.get("/hello").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
        let resident = resident_kib_of(server.pid(), &file);
        assert!(
            resident > 0,
            "round {round}: the code is not mapped from {file}"
        );
        // Given back, all but a page or so that housekeeping reads afterwards.
        crate::support::eventually(
            "the idle function's code pages given back",
            Duration::from_secs(20),
            || {
                let pid = server.pid();
                let file = file.clone();
                async move { resident_kib_of(pid, &file) * 10 <= resident }
            },
        )
        .await;
    }
    let r = server.get("/hello").await;
    assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
}

/// A function idle past `--unload-idle-secs` has its code unloaded (its warm pool first, its
/// code pages with it), keeps its counters, and its next request loads it from its artifact
/// (a start from disk) and is answered as before.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_function_is_unloaded_and_its_next_request_loads_it() {
    let server = TestServer::start_with(&["--warm-idle-secs", "1", "--unload-idle-secs", "2"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let first = server.get("/hello").await;
    assert_eq!(first.text().await.unwrap(), "Hello, world!\n");
    server
        .wait_for(Some("hello"), "the idle function unloaded", |f| {
            f["loaded_from"].is_null()
        })
        .await;
    let again = server.get("/hello").await;
    assert_eq!(start_kind(&again), "disk");
    assert_eq!(again.text().await.unwrap(), "Hello, world!\n");
    let f = server.admin().get("hello").await.unwrap();
    assert_eq!(f["requests"], 2, "{f}");
    assert_eq!(f["loaded_from"], "artifact", "{f}");
}
