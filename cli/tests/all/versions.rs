//! Versions and traffic splits: every deploy makes a version, a split is applied per request,
//! rollbacks and split changes under load lose nothing, a crash during a split change leaves
//! the old split or the new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use thaw_runtime::traffic::TrafficSplit;
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, client, eventually, route, thaw_command};

/// Which version served a response, checked against its body: v1 is `hello`, v2 is `echo`
/// (an empty body for GET, with `x-echo-method`), v3 is `hello` again.
async fn version_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200, "a request failed");
    let version = response
        .headers()
        .get("x-thaw-version")
        .expect("every response names its version")
        .to_str()
        .unwrap()
        .to_owned();
    let echo = response.headers().contains_key("x-echo-method");
    let body = response.text().await.unwrap();
    match version.as_str() {
        "v2" => assert!(echo && body.is_empty(), "v2 is echo: {body:?}"),
        _ => assert!(
            !echo && body == "Hello, world!\n",
            "{version} is hello: {body:?}"
        ),
    }
    version
}

/// `n` requests to `/api`, 16 at a time (pinned to a version with `pin`); responses per
/// version.
async fn spread(server: &TestServer, n: usize, pin: Option<&str>) -> BTreeMap<String, usize> {
    let http = client();
    let url = format!("{}/api", server.url);
    let versions: Vec<String> = futures::stream::iter(0..n)
        .map(|_| {
            let mut request = http.get(&url);
            if let Some(pin) = pin {
                request = request.header("x-thaw-version", pin);
            }
            async move { version_of(request.send().await.expect("GET")).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counts = BTreeMap::new();
    for version in versions {
        *counts.entry(version).or_default() += 1;
    }
    counts
}

fn thaw(server: &TestServer, args: &[&str]) -> String {
    let out = thaw_command(server, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "thaw {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn traffic(server: &TestServer) -> String {
    let admin = server.admin();
    admin
        .typed()
        .versions("api")
        .await
        .unwrap()
        .traffic
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_takes_its_share_until_promoted_or_rolled_back() {
    let mut server = TestServer::start();
    server.deploy("api", wasm::HELLO, route("/api")).await;
    a_canary_takes_its_share(&server).await;
    a_listed_version_can_be_pinned(&server).await;
    bad_splits_are_refused(&server).await;
    promote_and_rollback_move_all_traffic(&server).await;
    versions_and_split_survive_a_restart(&mut server).await;
    a_kept_canary_rolls_back_to_the_version_that_served(&server).await;
    a_canary_keeps_the_route(&server).await;
}

/// A canary deployed at 20% gets its share: 2,000 requests land within ±4 points of it, and
/// `thaw versions` lists the split.
async fn a_canary_takes_its_share(server: &TestServer) {
    let out = thaw(
        server,
        &[
            "deploy",
            wasm::ECHO,
            "--name",
            "api",
            "--route",
            "/api",
            "--canary",
            "20",
        ],
    );
    assert!(out.contains("traffic v1=80 v2=20"), "{out}");

    // 2,000 requests land within ±4 points of the split.
    let counts = spread(server, 2000, None).await;
    let v2 = counts.get("v2").copied().unwrap_or(0) as f64 / 20.0;
    assert!((16.0..=24.0).contains(&v2), "v2 got {v2}% of {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 2000);

    let listed = thaw(server, &["versions", "api"]);
    assert!(listed.starts_with("api: v1=80 v2=20"), "{listed}");
    assert!(listed.contains("80%") && listed.contains("20%"), "{listed}");
}

/// A request may pin a listed version, even one at 0%; an unlisted one is not found.
async fn a_listed_version_can_be_pinned(server: &TestServer) {
    // A request may pin a listed version; an unlisted one is not found.
    assert_eq!(
        spread(server, 20, Some("v2")).await,
        [("v2".into(), 20)].into()
    );
    let r = client()
        .get(format!("{}/api", server.url))
        .header("x-thaw-version", "v9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A version at 0% takes nothing, but can be pinned.
    thaw(server, &["traffic", "api", "v1=100", "v2=0"]);
    assert_eq!(spread(server, 50, None).await, [("v1".into(), 50)].into());
    assert_eq!(
        spread(server, 5, Some("2")).await,
        [("v2".into(), 5)].into()
    );
}

/// Bad splits are refused and change nothing.
async fn bad_splits_are_refused(server: &TestServer) {
    let admin = server.admin();
    let bad = admin
        .typed()
        .set_traffic(
            "api",
            &TrafficSplit::parse_args(&["v1=50", "v7=50"]).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::NotFound), "{bad}");
    let r = server
        .admin_request(reqwest::Method::PUT, "/v1/functions/api/traffic")
        .body(r#"[{"version":1,"percent":90}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("90%"));
    assert_eq!(traffic(server).await, "v1=100 v2=0");
}

/// Promote: all to the newest. Rollback: all to the one before; the rolled-back-from
/// version is not reachable, pinned or not.
async fn promote_and_rollback_move_all_traffic(server: &TestServer) {
    thaw(server, &["promote", "api"]);
    assert_eq!(spread(server, 30, None).await, [("v2".into(), 30)].into());
    let out = thaw(server, &["rollback", "api"]);
    assert!(out.starts_with("api: v1=100"), "{out}");
    assert_eq!(spread(server, 30, None).await, [("v1".into(), 30)].into());
    let r = client()
        .get(format!("{}/api", server.url))
        .header("x-thaw-version", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a version rolled back from cannot be pinned"
    );
}

/// A named rollback, then a restart: versions and split are persisted; the next deploy is
/// v3, whatever serves now.
async fn versions_and_split_survive_a_restart(server: &mut TestServer) {
    thaw(server, &["rollback", "api", "v2"]);
    server.kill_and_restart(1);
    assert_eq!(traffic(server).await, "v2=100");
    assert_eq!(spread(server, 10, None).await, [("v2".into(), 10)].into());
    let versions = server.admin().typed().versions("api").await.unwrap();
    let numbers: Vec<u64> = versions.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2]);
    // The next deploy is v3, whatever serves now.
    server.deploy("api", wasm::HELLO, route("/api")).await;
    assert_eq!(traffic(server).await, "v3=100");
    assert_eq!(spread(server, 10, None).await, [("v3".into(), 10)].into());
}

/// A canary beside a pinnable-only version, kept when asked: rollback goes to the version
/// that served, not to the one that was only being tried, and the canary lets go of its
/// code.
async fn a_kept_canary_rolls_back_to_the_version_that_served(server: &TestServer) {
    thaw(server, &["traffic", "api", "v2=0", "v3=100"]);
    let out = thaw(
        server,
        &[
            "deploy",
            wasm::HELLO,
            "--name",
            "api",
            "--route",
            "/api",
            "--canary",
            "20",
            "--keep-pinned",
        ],
    );
    assert!(out.contains("traffic v2=0 v3=80 v4=20"), "{out}");
    spread(server, 20, None).await;
    let out = thaw(server, &["rollback", "api"]);
    assert!(out.starts_with("api: v3=100"), "{out}");
    let versions = server.admin().typed().versions("api").await.unwrap();
    let v4 = versions.versions.iter().find(|v| v.version == 4).unwrap();
    assert!(!v4.loaded, "a version out of the split drops its code");
    assert!(v4.requests > 0, "and keeps its counts");
}

/// A canary must keep the route of the versions serving.
async fn a_canary_keeps_the_route(server: &TestServer) {
    let moved = thaw_command(
        server,
        &[
            "deploy",
            wasm::HELLO,
            "--name",
            "api",
            "--route",
            "/elsewhere",
            "--canary",
            "10",
        ],
    )
    .output()
    .unwrap();
    assert!(!moved.status.success());
    assert!(
        String::from_utf8_lossy(&moved.stderr).contains("same route"),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(traffic(server).await, "v3=100");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollbacks_and_split_changes_under_load_lose_no_request() {
    let server = TestServer::start_with(&["--instance-slots", "64"]);
    server.deploy("api", wasm::HELLO, route("/api")).await;
    server.deploy("api", wasm::ECHO, route("/api")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (stop, served) = (stop.clone(), served.clone());
        let url = format!("{}/api", server.url);
        clients.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let response = http.get(&url).send().await.expect("a request failed");
                let version = version_of(response).await;
                served[usize::from(version == "v2")].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let admin = server.admin();
    let admin = admin.typed();
    // After each change, requests are served under it before the next one: the clients
    // have answered another 20 (a fixed sleep could end before any did on a slow machine).
    let total = || {
        served
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<usize>()
    };
    let some_served = || {
        let from = total();
        eventually(
            "20 requests under the change",
            Duration::from_secs(30),
            move || std::future::ready(total() >= from + 20),
        )
    };
    for round in 0..4 {
        let split = if round % 2 == 0 {
            ["v1=50", "v2=50"]
        } else {
            ["v1=80", "v2=20"]
        };
        admin
            .set_traffic("api", &TrafficSplit::parse_args(&split).unwrap())
            .await
            .unwrap();
        some_served().await;
        admin.rollback("api", None).await.unwrap();
        some_served().await;
        admin.promote("api").await.unwrap();
        some_served().await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client saw a failure");
    }
    let (v1, v2) = (
        served[0].load(Ordering::Relaxed),
        served[1].load(Ordering::Relaxed),
    );
    assert!(v1 > 0 && v2 > 0, "both versions served: v1 {v1}, v2 {v2}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_during_a_split_change_leaves_the_old_or_the_new_split() {
    let mut server = TestServer::start();
    server.deploy("api", wasm::HELLO, route("/api")).await;
    server.deploy("api", wasm::ECHO, route("/api")).await;
    let mut current = "v2=100".to_owned();
    for round in 0..8u64 {
        let next = if round % 2 == 0 {
            ["v1=30", "v2=70"]
        } else {
            ["v1=70", "v2=30"]
        };
        let next = TrafficSplit::parse_args(&next).unwrap();
        let admin = server.admin();
        let change = tokio::spawn(async move { admin.typed().set_traffic("api", &next).await });
        // Kill at a different point of the change each round (before, during, after).
        tokio::time::sleep(Duration::from_micros(round * 700)).await;
        server.kill_and_restart(round as usize + 1);
        let answered = change.await.unwrap().is_ok();
        let now = traffic(&server).await;
        let expected = TrafficSplit::parse_args(
            &(if round % 2 == 0 {
                ["v1=30", "v2=70"]
            } else {
                ["v1=70", "v2=30"]
            }),
        )
        .unwrap()
        .to_string();
        assert!(
            now == current || now == expected,
            "round {round}: {now} is neither the old split {current} nor the new {expected}"
        );
        if answered {
            assert_eq!(now, expected, "an acknowledged change survives the crash");
        }
        // And it serves by it.
        let counts = spread(&server, 20, None).await;
        assert_eq!(counts.values().sum::<usize>(), 20);
        current = now;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_last_versions_are_kept_and_split_versions_always() {
    let server = TestServer::start_with(&["--keep-versions", "2"]);
    let first = server.deploy("api", wasm::HELLO, route("/api")).await;
    server.deploy("api", wasm::ECHO, route("/api")).await;
    server.deploy("api", wasm::FAULTS, route("/api")).await;
    let admin = server.admin();
    let admin = admin.typed();
    let numbers = |info: &thaw_runtime::api::VersionsInfo| -> Vec<u64> {
        info.versions.iter().map(|v| v.version).collect()
    };
    assert_eq!(numbers(&admin.versions("api").await.unwrap()), [2, 3]);
    // v1's code went with it.
    let hello = first["digest"].as_str().unwrap();
    assert!(!server.data_dir.join(format!("wasm/{hello}.wasm")).exists());
    let e = admin.rollback("api", Some(1)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(format!("{e:#}").contains("no version v1"), "{e:#}");

    // Versions in the split stay even beyond the number kept.
    admin
        .set_traffic(
            "api",
            &TrafficSplit::parse_args(&["v2=50", "v3=50"]).unwrap(),
        )
        .await
        .unwrap();
    let canary = admin
        .deploy_canary(
            "api",
            &route("/api"),
            thaw_test_functions::read(wasm::HELLO).into(),
            Some(10),
        )
        .await
        .unwrap();
    assert_eq!(canary.traffic.to_string(), "v2=45 v3=45 v4=10");
    assert_eq!(numbers(&admin.versions("api").await.unwrap()), [2, 3, 4]);
    assert!(server.data_dir.join(format!("wasm/{hello}.wasm")).exists());
}
