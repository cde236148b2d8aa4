//! Crash safety: `kill -9` at any moment of a deploy leaves the old version or the new one
//! serving after a restart, never a broken or missing function, and no temp files behind;
//! concurrent deploys of one name while requests run lose nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

/// Which version answered: hello's body, or echo's (an empty body and an `x-echo-method`).
async fn version(server: &TestServer) -> &'static str {
    let r = server.get("/f").await;
    assert_eq!(r.status(), 200, "the function serves after the restart");
    let echo = r.headers().contains_key("x-echo-method");
    let body = r.text().await.unwrap();
    match (echo, body.as_str()) {
        (true, "") => "echo",
        (false, "Hello, world!\n") => "hello",
        _ => panic!("neither version answered: {body:?}"),
    }
}

/// A pseudo-random number from the clock: the kill points only need to spread, not to be
/// reproducible (each iteration logs its delay).
fn jitter(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos.wrapping_mul(6364136223846793005).rotate_left(17) % max
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_deploy_leaves_the_old_or_the_new_version() {
    let mut server = TestServer::start();
    server.deploy("f", wasm::HELLO, route("/f")).await;
    let mut current = "hello";
    // How long a deploy of each takes here, so the kill points cover all of it: the first
    // deploy of echo compiles, later ones of either find their artifact.
    let mut seen = std::collections::BTreeMap::new();
    for round in 1..=10 {
        let (next, path) = if current == "hello" {
            ("echo", wasm::ECHO)
        } else {
            ("hello", wasm::HELLO)
        };
        let delay = jitter(if round <= 3 { 1500 } else { 120 });
        let admin = server.admin();
        let bytes = thaw_test_functions::read(path);
        let deploy =
            tokio::spawn(async move { admin.deploy("f", &route("/f"), bytes.into()).await });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let finished = deploy.is_finished();
        server.kill_and_restart(round);
        let completed = if finished {
            deploy.await.unwrap().is_ok()
        } else {
            deploy.abort();
            false
        };
        let serving = version(&server).await;
        if completed {
            assert_eq!(
                serving, next,
                "round {round}: a deploy that was answered must survive"
            );
        } else {
            assert!(
                serving == current || serving == next,
                "round {round}: {serving} is neither old ({current}) nor new ({next})"
            );
        }
        *seen.entry(serving == next).or_insert(0) += 1;
        eprintln!(
            "round {round}: killed after {delay} ms, deploy answered: {completed}, serving {serving}"
        );
        current = serving;
        // No temp file of an interrupted write survives the restart.
        let tmp: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp"))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "round {round}: temp files left: {tmp:?}");
        // And the host is whole: every other part of it works.
        assert_eq!(
            server.admin().status().await.unwrap()["functions"],
            1,
            "round {round}"
        );
    }
    eprintln!("rounds where the new version won: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_of_one_name_with_requests_in_flight() {
    let server = TestServer::start_with(&["--instance-slots", "64"]);
    server.deploy("f", wasm::HELLO, route("/f")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, answered) = (stop.clone(), answered.clone());
        let url = format!("{}/f", server.url);
        clients.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&url).send().await.expect("request failed");
                assert_eq!(r.status(), 200, "a request failed during the deploys");
                r.bytes().await.expect("a body was cut off");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Four deployers race, three deploys each, alternating versions.
    let mut deployers = Vec::new();
    for d in 0..4 {
        let admin = server.admin();
        deployers.push(tokio::spawn(async move {
            for i in 0..3 {
                let path = if (d + i) % 2 == 0 {
                    wasm::ECHO
                } else {
                    wasm::HELLO
                };
                admin
                    .deploy("f", &route("/f"), thaw_test_functions::read(path).into())
                    .await
                    .expect("a concurrent deploy failed");
            }
        }));
    }
    for d in deployers {
        d.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client saw a failure");
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    let f = server.admin().get("f").await.unwrap();
    assert_eq!(f["generation"], 13, "every deploy counted once: {f}");
    // What serves is what the record says.
    let r = server.get("/f").await;
    let echo = r.headers().contains_key("x-echo-method");
    let expected =
        thaw_runtime::engine::artifact::sha256_hex(&thaw_test_functions::read(if echo {
            wasm::ECHO
        } else {
            wasm::HELLO
        }));
    assert_eq!(f["digest"], expected.as_str());
}
