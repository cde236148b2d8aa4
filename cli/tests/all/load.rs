//! Load with faults mixed in: many requests across healthy and faulty functions, at once.
//!
//! Every healthy request must get its 200 and its body, every faulty one its documented
//! status (RELIABILITY.md), the host must not crash, and afterwards no instance or slot may
//! be left behind and memory must be back near its baseline.
//!
//! The test suite runs a short version; the figures in RELIABILITY.md come from
//! `THAW_LOAD_REQUESTS=100000 cargo test -p thaw-runtime --test all -- load --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

/// What one request does, and what it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Hello,
    Echo,
    Cgi,
    Panic,
    Loop,
    Oom,
    Recurse,
    Endless,
    NotFound,
    TooLarge,
}

impl Kind {
    /// The mix, per mille: 85% healthy, 15% faults of every kind.
    fn of(i: usize) -> Kind {
        match i % 1000 {
            0..600 => Kind::Hello,
            600..750 => Kind::Echo,
            750..850 => Kind::Cgi,
            850..870 => Kind::Panic,
            // Few: each holds an instance and a core until its 50 ms timeout.
            870..872 => Kind::Loop,
            872..890 => Kind::Oom,
            890..905 => Kind::Recurse,
            905..920 => Kind::Endless,
            920..960 => Kind::NotFound,
            _ => Kind::TooLarge,
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS")
}

/// Sends one request of `kind`; `Err` says what was wrong with the answer.
async fn one(http: &reqwest::Client, base: &str, kind: Kind, i: usize) -> Result<(), String> {
    let get = |path: &str| http.get(format!("{base}{path}"));
    let post = |path: &str, body: Vec<u8>| http.post(format!("{base}{path}")).body(body);
    let (request, status) = match kind {
        Kind::Hello => (get("/hello"), 200),
        Kind::Echo => (post("/echo", format!("payload {i}").into_bytes()), 200),
        Kind::Cgi => (post("/wc", b"one two three".to_vec()), 200),
        Kind::Panic => (get("/faults/panic"), 500),
        Kind::Loop => (get("/spin/loop"), 504),
        Kind::Oom => (get("/faults/oom"), 500),
        Kind::Recurse => (get("/faults/recurse"), 500),
        Kind::Endless => (get("/faults/endless"), 200),
        Kind::NotFound => (get("/nope"), 404),
        Kind::TooLarge => (post("/tiny", vec![b'x'; 4096]), 413),
    };
    let response = request.send().await.map_err(|e| format!("{e}"))?;
    if response.status() != status {
        return Err(format!("status {}", response.status()));
    }
    let body = response.bytes().await;
    match (kind, body) {
        // The endless body is cut at the response limit: it must not end cleanly.
        (Kind::Endless, Ok(b)) => Err(format!("endless body ended cleanly after {}", b.len())),
        (Kind::Endless, Err(_)) => Ok(()),
        (_, Err(e)) => Err(format!("body: {e}")),
        (Kind::Hello, Ok(b)) if &b[..] != b"Hello, world!\n" => Err(format!("hello body {b:?}")),
        (Kind::Echo, Ok(b)) if b != format!("payload {i}").as_bytes() => {
            Err(format!("echo body {b:?}"))
        }
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn load_with_mixed_faults() {
    let total: usize = std::env::var("THAW_LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let concurrency = 32;
    let server = TestServer::start_with(&[
        "--instance-slots",
        "64",
        "--warm-idle-secs",
        "1",
        "--queue-timeout-ms",
        "10000",
        // The default keeps up to 8 MiB of each freed memory slot resident, on purpose (see
        // `engine::default_keep_resident_bytes`): a slot an out-of-memory guest filled keeps
        // its 8 MiB until re-imaged for another module, which added 120-210 MiB here and
        // made the leak check below measure that design instead of leaks. At 64 KiB the
        // idle host measured within 5 MiB of its baseline over four runs.
        "--keep-resident-kib",
        "64",
    ]);
    server.deploy("hello", wasm::HELLO, route("/hello")).await;
    server.deploy("echo", wasm::ECHO, route("/echo")).await;
    server.deploy("wc", wasm::WORDCOUNT, route("/wc")).await;
    let faults = |route: &str, timeout_ms| FunctionSpec {
        route: Some(route.into()),
        limits: LimitsSpec {
            timeout_ms: Some(timeout_ms),
            memory_mib: Some(16),
            max_response_body_kib: Some(256),
            ..Default::default()
        },
        ..Default::default()
    };
    // The endless loop gets its own short timeout; the other faults a long one, so that on
    // a loaded machine they fail as themselves and not as timeouts.
    server
        .deploy("faults", wasm::FAULTS, faults("/faults", 10_000))
        .await;
    server
        .deploy("spin", wasm::FAULTS, faults("/spin", 50))
        .await;
    let tiny = FunctionSpec {
        route: Some("/tiny".into()),
        limits: LimitsSpec {
            max_request_body_kib: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("tiny", wasm::HELLO, tiny).await;

    let base = Arc::new(server.url.clone());
    let run = |from: usize, to: usize| {
        let next = Arc::new(AtomicUsize::new(from));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (next, base) = (next.clone(), base.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut counts = std::collections::BTreeMap::<Kind, usize>::new();
                    let mut wrong = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= to {
                            return (counts, wrong);
                        }
                        let kind = Kind::of(i);
                        *counts.entry(kind).or_default() += 1;
                        if let Err(e) = one(&http, &base, kind, i).await {
                            wrong.push(format!("request {i} ({kind:?}): {e}"));
                        }
                    }
                })
            })
            .collect();
        async move {
            let mut counts = std::collections::BTreeMap::<Kind, usize>::new();
            let mut wrong = Vec::new();
            for w in workers {
                let (c, mut e) = w.await.unwrap();
                for (k, n) in c {
                    *counts.entry(k).or_default() += n;
                }
                wrong.append(&mut e);
            }
            (counts, wrong)
        }
    };

    // Warm up (every function loaded, the allocator's slots touched), then let the warm
    // pools drain: the baseline is the idle host.
    let (_, wrong) = run(0, 1000).await;
    assert!(wrong.is_empty(), "warm-up: {wrong:?}");
    let idle = |s: &serde_json::Value| s["warm_instances"] == 0 && s["slots_in_use"] == 0;
    server.wait_for(None, "an idle host", idle).await;
    let rss_before = rss_kib(server.pid());

    let started = Instant::now();
    let (counts, wrong) = run(0, total).await;
    let elapsed = started.elapsed();
    server
        .wait_for(None, "an idle host after the run", idle)
        .await;
    // The allocator hands back what the last requests freed as it goes: the condition is
    // the assertion's own, given a bounded time to hold (a host that keeps the memory fails
    // it when the bound runs out).
    let back = |rss: u64| rss < rss_before + 32 * 1024;
    let bound = Instant::now() + Duration::from_secs(10);
    let mut rss_after = rss_kib(server.pid());
    while !back(rss_after) && Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_after = rss_kib(server.pid());
    }
    let status = server.admin().status().await.expect("the host is alive");

    let faulty: usize = counts
        .iter()
        .filter(|(k, _)| !matches!(k, Kind::Hello | Kind::Echo | Kind::Cgi))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "load: {total} requests ({faulty} to faults) at concurrency {concurrency} in {:.1} s \
         ({:.0}/s); wrong answers: {}; RSS idle before {} MiB, after {} MiB; by kind: {counts:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        wrong.len(),
        rss_before >> 10,
        rss_after >> 10,
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(status["slots_in_use"], 0, "no leaked slots: {status}");
    // The idle host measured 4-5 MiB above its baseline; a leak of one instance per faulty
    // request would be hundreds of MiB, and one of 100 KiB per faulty request 45 MiB.
    assert!(
        back(rss_after),
        "memory did not come back: {rss_before} KiB idle before, {rss_after} KiB after"
    );
}
