//! A thaw cluster, all of it real and on loopback: Debian's etcd, three `thaw serve` nodes
//! joined to it, and Debian's HAProxy in front of them (health-checking `/readyz`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thaw_runtime::api::ClusterStatus;
use thaw_test_functions as wasm;

use thaw_harness::{Etcd, HaProxy};

use crate::support::{ErrorCode, TestServer, client, eventually, route};

const TOKEN: &str = "cluster-token-for-the-tests";

/// The lease TTL the nodes register with: a dead node leaves the member list within it.
const TTL_SECS: u64 = 2;

/// A node joined to `etcd` as `id`.
fn node(etcd: &Etcd, id: &str) -> TestServer {
    node_with(etcd, id, &[])
}

/// A node joined to `etcd` as `id`, with more flags.
fn node_with(etcd: &Etcd, id: &str, more: &[&str]) -> TestServer {
    let url = format!("etcd={}", etcd.url());
    let ttl = TTL_SECS.to_string();
    let mut args = vec![
        "--cluster",
        &url,
        "--cluster-token",
        TOKEN,
        "--node-id",
        id,
        "--cluster-ttl-secs",
        &ttl,
    ];
    args.extend_from_slice(more);
    TestServer::start_with(&args)
}

async fn cluster_status(node: &TestServer) -> ClusterStatus {
    node.admin()
        .typed()
        .cluster()
        .await
        .expect("GET /v1/cluster")
}

/// The version that serves `path` on `node` (its `x-thaw-version`), if it answers 200.
async fn serving(node: &TestServer, path: &str) -> Option<String> {
    let response = client()
        .get(format!("{}{path}", node.url))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    Some(
        response
            .headers()
            .get("x-thaw-version")?
            .to_str()
            .ok()?
            .to_owned(),
    )
}

async fn wait_ready(node: &TestServer) {
    eventually("the node to be ready", Duration::from_secs(30), || async {
        client()
            .get(format!("{}/readyz", node.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Deploys hello as `name` at `path` through `node`, answered once `wait` nodes serve it.
async fn deploy(node: &TestServer, name: &str, path: &str, wait: usize) -> u64 {
    deploy_with(node, name, path, Some(wait)).await
}

async fn deploy_with(node: &TestServer, name: &str, path: &str, wait: Option<usize>) -> u64 {
    let info = node
        .admin()
        .typed()
        .deploy_waiting(
            name,
            &route(path),
            thaw_test_functions::read(wasm::HELLO).into(),
            None,
            wait,
        )
        .await
        .unwrap_or_else(|e| panic!("deploying {name} through a node: {e:#}"));
    info.generation
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_through_one_node_serves_on_all_and_a_split_holds_everywhere() {
    let Some(etcd) = Etcd::start() else { return };
    let nodes = [node(&etcd, "n1"), node(&etcd, "n2"), node(&etcd, "n3")];
    for n in &nodes {
        wait_ready(n).await;
    }
    every_node_is_a_member(&nodes).await;
    a_waiting_deploy_serves_on_every_node(&nodes).await;
    a_split_holds_on_every_node(&nodes).await;
    one_of_two_deploys_takes_a_route_everywhere(&nodes).await;
    a_component_from_a_registry_serves_on_every_node(&nodes).await;
    the_persisted_records_agree(&nodes);
}

/// A function deployed as source through one node serves on the others, including one
/// started without language engines: the record names the engine's digest, and that node
/// fetches the engine from its peers as it fetches any code (then the bundle and the
/// prepared program), and serves the function on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_function_deployed_through_one_node_serves_on_all() {
    let Some(etcd) = Etcd::start() else { return };
    let Some(engines) = crate::source::engines() else {
        return;
    };
    let with_engines = ["--engines", engines.to_str().unwrap()];
    let nodes = [
        node_with(&etcd, "s1", &with_engines),
        node_with(&etcd, "s2", &[]),
    ];
    for n in &nodes {
        wait_ready(n).await;
    }
    let none = nodes[1]
        .admin_request(reqwest::Method::GET, "/v1/engines")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        none,
        serde_json::json!([]),
        "s2 must start with no engines (THAW_ENGINES set?)"
    );
    let bundle = thaw_runtime::source::Bundle {
        language: thaw_runtime::source::Language::Js,
        entry: "index.js".into(),
        files: vec![(
            "index.js".into(),
            "export default { fetch() { return new Response(\"from source\\n\"); } };\n".into(),
        )],
    };
    let info = nodes[0]
        .admin()
        .typed()
        .deploy_waiting(
            "src",
            &route("/src"),
            bundle.to_bytes().into(),
            None,
            Some(1),
        )
        .await
        .unwrap_or_else(|e| panic!("deploying source through a node: {e:#}"));
    assert_eq!(info.kind.to_string(), "source");
    // s2 fetches the engine and compiles it (a 14 MB component) before it can serve: bounded
    // generously, for a loaded two-core machine.
    for n in &nodes {
        let url = format!("{}/src", n.url);
        eventually(
            "the source function on every node",
            Duration::from_secs(300),
            || {
                let url = url.clone();
                async move {
                    match client().get(url).send().await {
                        Ok(r) if r.status() == 200 => {
                            r.text().await.is_ok_and(|t| t == "from source\n")
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
    }
}

/// The member list (and `thaw cluster`) shows the three nodes, on one engine.
async fn every_node_is_a_member(nodes: &[TestServer]) {
    let members = cluster_status(&nodes[0]).await.members;
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    assert!(members.iter().all(|m| m.engine == members[0].engine));
    // `thaw cluster` shows the same.
    let out = crate::support::thaw_command(&nodes[2], &["cluster"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("node n3, etcd ok, synced"), "{text}");
    for (id, m) in ["n1", "n2", "n3"].iter().zip(&members) {
        assert!(
            text.contains(&format!("{id} ")) && text.contains(&m.functions),
            "{text}"
        );
    }
}

/// A deploy with `--wait 3`, through the API and through the CLI on another node, is
/// answered once all three serve it.
async fn a_waiting_deploy_serves_on_every_node(nodes: &[TestServer]) {
    // --wait 3: the answer comes once all three can serve it.
    assert_eq!(deploy(&nodes[0], "hello", "/hello", 3).await, 1);
    for n in nodes {
        assert_eq!(serving(n, "/hello").await.as_deref(), Some("v1"));
    }
    // The same through the CLI, on another node: `thaw deploy --wait 3`.
    let out = crate::support::thaw_command(
        &nodes[1],
        &[
            "deploy", "--name", "hello", "--route", "/hello", "--wait", "3",
        ],
    )
    .arg(wasm::HELLO)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in nodes {
        assert_eq!(serving(n, "/hello").await.as_deref(), Some("v2"));
    }
}

/// A component pushed to a registry (Debian's docker-registry) and deployed through one node
/// by its tag: the CLI pulls it, the other nodes fetch it from their peers as any code, and
/// every node's version records the registry reference pinned to its digest.
async fn a_component_from_a_registry_serves_on_every_node(nodes: &[TestServer]) {
    let Some(registry) = thaw_harness::Registry::start("ci", "registry-password") else {
        return;
    };
    let reference = format!("oci://{}/fns/hello:v1", registry.address);
    let cli = |node: &TestServer, args: &[&str]| {
        let out = crate::support::thaw_command(node, args)
            .args(["--registry-user", "ci"])
            .env("THAW_REGISTRY_PASSWORD", "registry-password")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said
    };
    let pushed = cli(&nodes[0], &["push", wasm::HELLO, &reference]);
    let pinned = pushed
        .trim()
        .rsplit_once('(')
        .unwrap()
        .1
        .trim_end_matches(')');
    cli(
        &nodes[2],
        &[
            "deploy",
            &reference,
            "--name",
            "from-registry",
            "--wait",
            "3",
        ],
    );
    for n in nodes {
        assert_eq!(serving(n, "/from-registry").await.as_deref(), Some("v1"));
        let versions = n.admin().typed().versions("from-registry").await.unwrap();
        assert_eq!(versions.versions[0].origin.as_deref(), Some(pinned));
    }
}

/// A split set through node 2 holds on all three: 100 requests per node, 50/50.
async fn a_split_holds_on_every_node(nodes: &[TestServer]) {
    nodes[1]
        .admin()
        .typed()
        .set_traffic(
            "hello",
            &thaw_runtime::traffic::TrafficSplit::parse_args(&["v1=50", "v2=50"]).unwrap(),
        )
        .await
        .expect("a split through node 2");
    for n in nodes {
        eventually(
            "the split on every node",
            Duration::from_secs(20),
            || async {
                n.admin()
                    .typed()
                    .versions("hello")
                    .await
                    .is_ok_and(|v| v.traffic.to_string() == "v1=50 v2=50")
            },
        )
        .await;
        let mut v1 = 0;
        for _ in 0..100 {
            if serving(n, "/hello").await.as_deref() == Some("v1") {
                v1 += 1;
            }
        }
        assert_eq!(v1, 50, "every 100 requests split exactly on {}", n.url);
    }
}

/// Two functions deployed at once through two nodes on one route: one gets it, the other
/// a 409, and every node routes it to the same one.
async fn one_of_two_deploys_takes_a_route_everywhere(nodes: &[TestServer]) {
    let hello = || thaw_test_functions::read(wasm::HELLO).into();
    let (admin_a, admin_b, shared) = (nodes[0].admin(), nodes[1].admin(), route("/shared"));
    let (a, b) = tokio::join!(
        admin_a.typed().deploy("a", &shared, hello()),
        admin_b.typed().deploy("b", &shared, hello())
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one takes the route: {a:?} {b:?}"
    );
    let refused = a.as_ref().err().or(b.as_ref().err()).unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::RouteTaken), "{refused}");
    let owner = if a.is_ok() { "a" } else { "b" };
    for n in nodes {
        eventually(
            "the route's owner on every node",
            Duration::from_secs(20),
            || async {
                let names: Vec<String> = n
                    .admin()
                    .typed()
                    .list()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|f| f.name)
                    .collect();
                names.iter().any(|f| f == owner)
                    && !names
                        .iter()
                        .any(|f| f == if owner == "a" { "b" } else { "a" })
            },
        )
        .await;
    }
}

/// The records the nodes persisted agree with etcd's (a restart starts from them).
fn the_persisted_records_agree(nodes: &[TestServer]) {
    let record =
        |n: &TestServer| std::fs::read_to_string(n.data_dir.join("functions/hello.json")).unwrap();
    let first: serde_json::Value = serde_json::from_str(&record(&nodes[0])).unwrap();
    for n in &nodes[1..] {
        let other: serde_json::Value = serde_json::from_str(&record(n)).unwrap();
        assert_eq!(first, other);
    }
}

/// HAProxy in front of `nodes`, health-checking `/readyz`, retrying a refused connection on
/// another node.
fn haproxy(nodes: &[&TestServer], dir: &Path) -> Option<HaProxy> {
    let backends: Vec<String> = nodes
        .iter()
        .map(|n| n.url.trim_start_matches("http://").to_owned())
        .collect();
    HaProxy::start(dir, &backends)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_costs_only_its_requests_in_flight_and_leaves_the_member_list() {
    let Some(etcd) = Etcd::start() else { return };
    let mut nodes = [node(&etcd, "n1"), node(&etcd, "n2"), node(&etcd, "n3")];
    for n in &nodes {
        wait_ready(n).await;
    }
    deploy(&nodes[0], "hello", "/hello", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let Some(balancer) = haproxy(&nodes.iter().collect::<Vec<_>>(), dir.path()) else {
        return;
    };
    let lb = balancer.url.clone();
    eventually("HAProxy to answer", Duration::from_secs(20), || async {
        serving_url(&format!("{lb}/hello")).await
    })
    .await;

    // 32 clients through HAProxy, each one request at a time.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), lb.clone());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    let answered = match http.get(format!("{url}/hello")).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if answered { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    eventually(
        "traffic through HAProxy",
        Duration::from_secs(20),
        || async { ok.load(Ordering::Relaxed) > 300 },
    )
    .await;
    nodes[2].kill9();
    // The member list drops the node when its lease expires.
    eventually(
        "the killed node to leave the member list",
        Duration::from_secs(TTL_SECS * 2 + 10),
        || async {
            let members = cluster_status(&nodes[0]).await.members;
            members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>() == ["n1", "n2"]
        },
    )
    .await;
    let before = ok.load(Ordering::Relaxed);
    eventually(
        "traffic after the kill",
        Duration::from_secs(20),
        || async { ok.load(Ordering::Relaxed) > before + 300 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    // At most one request per client was in flight when the node died.
    assert!(
        failed <= 32,
        "{failed} requests failed; only those in flight on the killed node may (at most 32)"
    );
    // A SIGTERM'd node deregisters at once, before draining.
    let mut child = nodes[1].terminate();
    eventually(
        "the stopped node to leave the member list",
        Duration::from_secs(TTL_SECS + 5),
        || async { cluster_status(&nodes[0]).await.members.len() == 1 },
    )
    .await;
    assert!(child.wait().unwrap().success());
}

async fn serving_url(url: &str) -> bool {
    client()
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_etcd_nodes_serve_and_refuse_changes_then_converge() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let mut nodes = [node(&etcd, "n1"), node(&etcd, "n2"), node(&etcd, "n3")];
    for n in &nodes {
        wait_ready(n).await;
    }
    deploy(&nodes[0], "hello", "/hello", 3).await;

    etcd.stop();
    for n in &nodes {
        assert_eq!(
            serving(n, "/hello").await.as_deref(),
            Some("v1"),
            "served without etcd"
        );
    }
    let refused = nodes[0]
        .admin()
        .typed()
        .deploy(
            "hello",
            &route("/hello"),
            thaw_test_functions::read(wasm::HELLO).into(),
        )
        .await
        .expect_err("a deploy without etcd");
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
    for n in &nodes {
        eventually(
            "healthz to say degraded",
            Duration::from_secs(20),
            || async {
                let r = client()
                    .get(format!("{}/healthz", n.url))
                    .send()
                    .await
                    .unwrap();
                // `degraded` and nothing more: the reason names etcd's address, which the
                // unauthenticated listener keeps to itself (the log and /v1/cluster have it).
                r.status() == 200 && r.text().await.unwrap() == "degraded\n"
            },
        )
        .await;
        // Still ready: a load balancer keeps sending it traffic.
        assert!(serving_url(&format!("{}/readyz", n.url)).await);
    }
    // Node 3 is down meanwhile; it comes back on its old data directory.
    nodes[2].kill9();

    etcd.restart();
    for n in &nodes[..2] {
        eventually("healthz ok again", Duration::from_secs(20), || async {
            let r = client()
                .get(format!("{}/healthz", n.url))
                .send()
                .await
                .unwrap();
            r.text().await.unwrap() == "ok\n"
        })
        .await;
    }
    // A deploy through node 2, and two concurrent deploys of one name through nodes 1 and 2.
    assert_eq!(deploy(&nodes[1], "hello", "/hello", 2).await, 2);
    // (Without --wait: the first may lose its traffic to the second before a node loads it.)
    let (a, b) = tokio::join!(
        deploy_with(&nodes[0], "hello", "/hello", None),
        deploy_with(&nodes[1], "hello", "/hello", None)
    );
    assert_eq!(
        [a.min(b), a.max(b)],
        [3, 4],
        "the two deploys are ordered, neither lost"
    );
    nodes[2].kill_and_restart(1);
    for n in &nodes {
        eventually(
            "every node on the last version",
            Duration::from_secs(30),
            || async { serving(n, "/hello").await.as_deref() == Some("v4") },
        )
        .await;
        let versions = n.admin().typed().versions("hello").await.unwrap();
        let kept: Vec<u64> = versions.versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, [1, 2, 3, 4], "on {}", n.url);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_from_a_peer_is_refused_and_another_peer_serves() {
    let Some(etcd) = Etcd::start() else { return };
    // Peers are tried in name order: a-1 first.
    let first = node(&etcd, "a-1");
    let second = node(&etcd, "b-2");
    wait_ready(&first).await;
    wait_ready(&second).await;
    deploy(&first, "hello", "/hello", 2).await;
    let digest = first
        .admin()
        .typed()
        .versions("hello")
        .await
        .unwrap()
        .versions[0]
        .digest
        .clone();
    // a-1's copies go bad: its wasm is other bytes (served as they are), its artifact no
    // longer matches its checksum (a-1 itself refuses to hand it out).
    std::fs::write(
        first.data_dir.join(format!("wasm/{digest}.wasm")),
        b"\0asm corrupt",
    )
    .unwrap();
    for artifact in find_files(
        &first.data_dir.join("artifacts"),
        &format!("{digest}.cwasm"),
    ) {
        let mut bytes = std::fs::read(&artifact).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&artifact, bytes).unwrap();
    }

    let third = node(&etcd, "c-3");
    wait_ready(&third).await;
    eventually(
        "the new node to serve hello",
        Duration::from_secs(30),
        || async { serving(&third, "/hello").await.as_deref() == Some("v1") },
    )
    .await;
    let log = third.log();
    assert!(
        log.contains("refused a corrupt blob from a peer"),
        "the corrupt wasm was refused:\n{log}"
    );
    let stored = std::fs::read(third.data_dir.join(format!("wasm/{digest}.wasm"))).unwrap();
    assert_eq!(stored, thaw_test_functions::read(wasm::HELLO));
    // And the artifact came from b-2, verified, not compiled here.
    assert!(!log.contains("compiling instead of fetching"), "{log}");

    // The peer endpoints want the cluster token, not nothing and not the admin token.
    for token in [None, Some(first.token())] {
        let mut request = client().get(format!("{}/v1/cluster/wasm/{digest}", second.admin_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    let ok = client()
        .get(format!("{}/v1/cluster/wasm/{digest}", second.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_on_a_single_host_is_refused_before_anything_is_deployed() {
    let server = TestServer::start();
    let refused = server
        .admin()
        .typed()
        .deploy_waiting(
            "hello",
            &route("/hello"),
            thaw_test_functions::read(wasm::HELLO).into(),
            None,
            Some(1),
        )
        .await
        .expect_err("wait=1 without a cluster");
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest), "{refused}");
    assert!(server.admin().list().await.unwrap().is_empty());
    // And GET /v1/cluster says there is no cluster.
    let status = server
        .admin_request(reqwest::Method::GET, "/v1/cluster")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tick_of_a_schedule_runs_on_exactly_one_node() {
    let Some(etcd) = Etcd::start() else { return };
    let nodes = [node(&etcd, "n1"), node(&etcd, "n2"), node(&etcd, "n3")];
    for n in &nodes {
        wait_ready(n).await;
    }
    let collector = crate::support::Collector::start().await;
    let spec = thaw_runtime::spec::FunctionSpec {
        route: Some("/tick".into()),
        schedule: vec![thaw_runtime::event_spec::ScheduleSpec::utc("* * * * * *")],
        allowed_outbound_hosts: vec![collector.url.clone()],
        config: [(
            "report".to_owned(),
            thaw_runtime::config::ConfigValue::Value(collector.url.clone()),
        )]
        .into(),
        ..Default::default()
    };
    nodes[0]
        .admin()
        .typed()
        .deploy_waiting(
            "tick",
            &spec,
            thaw_test_functions::read(wasm::EVENTS).into(),
            None,
            Some(3),
        )
        .await
        .expect("deploying a scheduled function");
    // Every node has the schedule (and its own view of the ticks it ran or lost to a peer).
    for n in &nodes {
        eventually(
            "the schedule on every node",
            Duration::from_secs(30),
            || async {
                n.admin()
                    .typed()
                    .schedules()
                    .await
                    .is_ok_and(|l| l.schedules.iter().any(|s| s.function == "tick"))
            },
        )
        .await;
    }
    // The ticks from the one after every node had the schedule: each ran exactly once.
    let from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1000;
    let ticks = || {
        let mut runs = std::collections::BTreeMap::<u64, usize>::new();
        for line in collector.lines() {
            let tick = line
                .strip_prefix("dev.thaw.schedule.tick ")
                .and_then(|rest| rest.split(['-', ' ']).next())
                .and_then(|ms| ms.parse::<u64>().ok());
            if let Some(tick) = tick.filter(|&t| t >= from) {
                *runs.entry(tick).or_default() += 1;
            }
        }
        runs
    };
    eventually("20 one-second ticks", Duration::from_secs(90), || {
        let n = ticks().len();
        async move { n >= 21 }
    })
    .await;
    let runs: Vec<(u64, usize)> = ticks().into_iter().take(20).collect();
    assert!(
        runs.iter().all(|&(_, n)| n == 1),
        "a tick ran more than once: {runs:?}"
    );
    let consecutive = runs.windows(2).all(|w| w[1].0 - w[0].0 == 1000);
    assert!(consecutive, "a tick was lost: {runs:?}");
    let mut ran_here = Vec::new();
    for n in &nodes {
        let list = n.admin().typed().schedules().await.unwrap();
        let s = list
            .schedules
            .iter()
            .find(|s| s.function == "tick")
            .unwrap();
        ran_here.push((s.runs, s.claimed_elsewhere));
    }
    eprintln!("ticks run / claimed by another node, per node: {ran_here:?}");
}
