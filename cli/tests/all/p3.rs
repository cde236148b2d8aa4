//! WASIp3 handlers (`wasi:http/handler@0.3.0`, the guest `functions/p3`) on a real server:
//! isolation by default, concurrent reuse when asked, every limit per request, and a trap
//! that costs only the requests in flight in its instance.

use thaw_runtime::spec::{FunctionSpec, LimitsSpec, ReuseSpec};
use thaw_test_functions as wasm;

use crate::support::{TestServer, client};

fn spec(limits: LimitsSpec, reuse: Option<ReuseSpec>) -> FunctionSpec {
    FunctionSpec {
        route: Some("/p3".into()),
        limits,
        reuse,
        ..Default::default()
    }
}

fn reuse(max_requests: u32, max_concurrent: u32) -> Option<ReuseSpec> {
    Some(ReuseSpec {
        max_requests,
        idle_timeout_ms: 60_000,
        max_concurrent,
    })
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let r = server.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `peak N` from the guest's `/sleep` answer: the most requests its instance had in flight.
fn peak(body: &str) -> u64 {
    body.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `n` concurrent `/p3/sleep?ms=..` requests; their statuses and bodies.
async fn sleepers(server: &TestServer, n: usize, ms: u64) -> Vec<(u16, String)> {
    let url = format!("{}/p3/sleep?ms={ms}", server.url);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_p3_handler_is_served_one_request_per_instance_by_default() {
    let server = TestServer::start();
    server
        .deploy("p3", wasm::P3, spec(Default::default(), None))
        .await;

    let r = server.get("/p3/hello").await;
    assert_eq!(r.status(), 200);
    let timing = r.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(
        timing.contains("fresh") || timing.contains("pool-hit"),
        "{timing}"
    );
    assert_eq!(r.text().await.unwrap(), "Hello, WASI!");

    // Isolation: every request sees an instance that served nothing before.
    for _ in 0..5 {
        assert_eq!(get(&server, "/p3/count").await, (200, "1".into()));
    }
    // Concurrent requests never share an instance.
    for (status, body) in sleepers(&server, 8, 200).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(peak(&body), 1, "{body}");
    }

    // The body streams both ways; the guest's headers come back.
    let r = client()
        .post(format!("{}/p3/echo", server.url))
        .header("x-echo", "hi")
        .body(vec![b'e'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo"], "hi");
    assert_eq!(r.bytes().await.unwrap().len(), 200_000);

    let f = server.admin().get("p3").await.unwrap();
    assert_eq!(f["failures"], 0, "{f}");
    // What they cost: each instance's peak memory once it ends (one instance per request
    // here); no CPU (thaw does not poll a p3 guest's calls).
    let f = server
        .wait_for(Some("p3"), "every instance's peak memory", |f| {
            f["peak_memory_kib"]["p50"].as_u64() > Some(0)
        })
        .await;
    assert!(
        f["cpu_us"]["p50"].is_null() && f["cpu_us_total"] == 0,
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_reuse_a_p3_instance_takes_requests_concurrently() {
    // Two instance slots for 32 clients: requests share instances.
    let server = TestServer::start_with(&["--instance-slots", "2"]);
    server
        .deploy("p3", wasm::P3, spec(Default::default(), reuse(1000, 16)))
        .await;

    let results = sleepers(&server, 32, 300).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let most = results.iter().map(|(_, b)| peak(b)).max().unwrap();
    assert!(most > 1, "no instance ever had two requests in flight");
    assert!(
        most <= 16,
        "an instance had {most} requests in flight, max_concurrent is 16"
    );

    // Sequential requests reach an instance that served before.
    let (_, first) = get(&server, "/p3/count").await;
    let (_, second) = get(&server, "/p3/count").await;
    let (first, second): (u64, u64) = (first.parse().unwrap(), second.parse().unwrap());
    assert!(first > 1 || second > 1, "counts {first}, {second}");

    // max_requests retires an instance: with one request per instance in all, a count
    // never exceeds 1 even though reuse is on.
    server
        .deploy("p3", wasm::P3, spec(Default::default(), reuse(1, 16)))
        .await;
    for _ in 0..3 {
        assert_eq!(get(&server, "/p3/count").await, (200, "1".into()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_limit_holds_per_p3_request() {
    let server = TestServer::start();
    let limits = LimitsSpec {
        timeout_ms: Some(500),
        max_request_body_kib: Some(64),
        max_response_body_kib: Some(1024),
        ..Default::default()
    };
    server.deploy("p3", wasm::P3, spec(limits, None)).await;

    // A declared length over the limit: refused before any instance.
    let r = client()
        .post(format!("{}/p3/echo", server.url))
        .body(vec![b'x'; 65 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A chunked body that grows past it while the guest reads it.
    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 16 * 1024]));
    match client()
        .post(format!("{}/p3/echo", server.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
    {
        // The guest answers before it reads, so its head may be out: then the body is cut,
        // never complete.
        Ok(r) if r.status() == 200 => assert!(r.bytes().await.is_err(), "a complete echo"),
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }

    // A response past its limit is cut off and counted.
    let r = server.get("/p3/big?kib=2048").await;
    assert_eq!(r.status(), 200, "the head was out before the body grew");
    assert!(
        r.bytes().await.is_err(),
        "a response past the limit arrived whole"
    );
    // Within the limit: whole.
    let r = server.get("/p3/big?kib=512").await;
    assert_eq!(r.bytes().await.unwrap().len(), 512 * 1024);
    // A trap after the head: the body ends in an error, never looks complete.
    let r = server.get("/p3/late-trap").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a body cut by a trap looked complete"
    );

    // Timeouts: an async wait past the timeout, and a guest that spins without yielding.
    assert_eq!(get(&server, "/p3/sleep?ms=5000").await.0, 504);
    assert_eq!(get(&server, "/p3/spin").await.0, 504);

    // The host is fine, and it counted what happened.
    assert_eq!(
        get(&server, "/p3/hello").await,
        (200, "Hello, WASI!".into())
    );
    // Counted: the two oversized request bodies (declared, and chunked), the response, and
    // the two timeouts.
    server
        .wait_for(Some("p3"), "the limit hits counted", |f| {
            f["limit_hits"]["request_body"] == 2
                && f["limit_hits"]["response_body"] == 1
                && f["limit_hits"]["timeout"] == 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_p3_trap_fails_only_the_requests_in_its_instance() {
    let server = TestServer::start();
    // Isolated: a trap costs its own request only, even with others running beside it.
    server
        .deploy("p3", wasm::P3, spec(Default::default(), None))
        .await;
    let others = tokio::spawn({
        let url = server.url.clone();
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| client().get(format!("{url}/p3/sleep?ms=300")).send())
                .collect();
            futures::future::join_all(tasks).await
        }
    });
    let (status, body) = get(&server, "/p3/trap").await;
    assert_eq!(status, 500, "{body}");
    for r in others.await.unwrap() {
        assert_eq!(r.unwrap().status(), 200);
    }

    // Reused: the requests in flight in the trapping instance fail with it; the function
    // then serves from a new instance. One slot, so the sleepers and the trap share it.
    let server = TestServer::start_with(&["--instance-slots", "1"]);
    server
        .deploy("p3", wasm::P3, spec(Default::default(), reuse(1000, 16)))
        .await;
    assert_eq!(get(&server, "/p3/count").await, (200, "1".into()));
    let sleeping = tokio::spawn({
        let url = server.url.clone();
        async move {
            client()
                .get(format!("{url}/p3/sleep?ms=2000"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    // Wait until the sleeper is inside the instance (the only one: one slot). The guest
    // counts every request it starts, so once the sleeper is in, a count is one ahead of
    // the counts asked for.
    let mut asked = 1;
    loop {
        let (status, count) = get(&server, "/p3/count").await;
        assert_eq!(status, 200);
        asked += 1;
        if count.parse::<u64>().unwrap() > asked {
            break;
        }
        assert!(asked < 200, "the sleeper never reached the instance");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, _) = get(&server, "/p3/trap").await;
    assert_eq!(status, 500);
    assert_eq!(sleeping.await.unwrap(), 500, "the trap ended its instance");
    // A new instance: it starts counting again.
    assert_eq!(get(&server, "/p3/count").await, (200, "1".into()));
    let f = server.admin().get("p3").await.unwrap();
    assert_eq!(f["failures"], 2, "{f}");
}
