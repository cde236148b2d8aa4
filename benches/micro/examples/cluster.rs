//! The cluster benchmark: how long a deploy takes to reach every node, and throughput through
//! HAProxy with three nodes against one. Everything real, on loopback: Debian's etcd and
//! HAProxy, three release `thaw serve` processes, wrk.
//!
//! ```text
//! cargo build --release -p thaw-cli
//! cargo run --release -p thaw-benches --example cluster -- [ROUNDS] [JS_WASM] [WRK_SECS]
//! ```
//!
//! Propagation: a deploy through node 1 without `--wait`; from its answer until nodes 2 and
//! 3 both answer requests with the new version (each polled every 2 ms). Every round deploys
//! new code (the component with a custom section naming the round: a new digest, the same
//! compile work), so every round fetches (and without artifact sharing compiles) afresh.
//! Measured for `hello` and for a JavaScript component (default
//! `target/baselines/lang/js.wasm`, made by scripts/setup-bench), with and without artifact
//! sharing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thaw_harness::process::{serve_command, wait_ready_line};
use thaw_harness::{Etcd, HaProxy, Killed};

const TOKEN: &str = "bench-admin-token-0123456789";
const CLUSTER_TOKEN: &str = "bench-cluster-token-0123456789";

struct Node {
    _process: Killed,
    url: String,
    admin: String,
}

fn node(thaw: &Path, dir: &Path, etcd: &str, id: &str, sharing: bool) -> Node {
    let mut child = serve_command(thaw, &dir.join(id))
        .args(["--cluster", &format!("etcd={etcd}"), "--node-id", id])
        .args(["--artifact-sharing", if sharing { "true" } else { "false" }])
        .env("THAW_ADMIN_TOKEN", TOKEN)
        .env("THAW_CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("THAW_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting thaw");
    let stdout = child.stdout.take().expect("piped");
    let process = Killed(child);
    let ready = wait_ready_line(stdout, Duration::from_secs(60)).expect("thaw serve started");
    Node {
        _process: process,
        url: format!("http://{}", ready.functions),
        admin: format!("http://{}", ready.admin),
    }
}

/// `wasm` with a custom section naming `round` appended: other bytes, the same code.
fn variant(wasm: &[u8], round: usize) -> Vec<u8> {
    let name = b"thaw-bench";
    let payload = round.to_le_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // LEB128 of a length below 128
    out.extend_from_slice(&section);
    out
}

async fn deploy(http: &reqwest::Client, node: &Node, name: &str, wasm: Vec<u8>) -> u64 {
    let form = reqwest::multipart::Form::new()
        .part(
            "spec",
            reqwest::multipart::Part::text(format!(r#"{{"route":"/{name}"}}"#)),
        )
        .part("wasm", reqwest::multipart::Part::bytes(wasm));
    let response = http
        .put(format!("{}/v1/functions/{name}", node.admin))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let info: serde_json::Value = response.json().await.unwrap();
    info["generation"].as_u64().unwrap()
}

async fn serves(http: &reqwest::Client, node: &Node, name: &str, version: u64) -> bool {
    let Ok(response) = http.get(format!("{}/{name}", node.url)).send().await else {
        return false;
    };
    let header = response
        .headers()
        .get("x-thaw-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = response.bytes().await;
    header.as_deref() == Some(&format!("v{version}"))
}

/// Until every node has mirrored the registry (`GET /readyz`).
async fn wait_ready(http: &reqwest::Client, nodes: &[Node]) {
    for n in nodes {
        loop {
            let ready = http.get(format!("{}/readyz", n.url)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "median {:.0} ms (min {:.0}, max {:.0}, n={})",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

async fn propagation(thaw: &Path, label: &str, wasm: &[u8], sharing: bool, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start().expect("etcd (Debian's etcd-server)");
    let etcd_url = etcd.url();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| node(thaw, dir.path(), &etcd_url, id, sharing))
        .collect();
    let http = reqwest::Client::new();
    wait_ready(&http, &nodes).await;
    let (mut deploys, mut spreads) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let version = deploy(&http, &nodes[0], "f", variant(wasm, round)).await;
        let answered = Instant::now();
        for n in &nodes[1..] {
            while !serves(&http, n, "f", version).await {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        deploys.push((answered - started).as_secs_f64() * 1e3);
        spreads.push(answered.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "| {label} | {} | {} | {} |",
        if sharing { "on" } else { "off" },
        summary(deploys),
        summary(spreads)
    );
}

fn haproxy(dir: &Path, backends: &[&Node]) -> HaProxy {
    let backends: Vec<String> = backends
        .iter()
        .map(|n| n.url.trim_start_matches("http://").to_owned())
        .collect();
    HaProxy::start(dir, &backends).expect("haproxy (Debian's haproxy)")
}

fn wrk(url: &str, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), url])
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

async fn throughput(thaw: &Path, hello: &[u8], secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start().expect("etcd (Debian's etcd-server)");
    let etcd_url = etcd.url();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| node(thaw, dir.path(), &etcd_url, id, true))
        .collect();
    let http = reqwest::Client::new();
    wait_ready(&http, &nodes).await;
    let version = deploy(&http, &nodes[0], "hello", hello.to_vec()).await;
    for n in &nodes {
        while !serves(&http, n, "hello", version).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let one = haproxy(dir.path(), &[&nodes[0]]);
    let three = haproxy(dir.path(), &nodes.iter().collect::<Vec<_>>());
    let (one_url, three_url) = (format!("{}/hello", one.url), format!("{}/hello", three.url));
    let direct = format!("{}/hello", nodes[0].url);
    // Two rounds in opposite orders, so drift on a shared machine hits both alike.
    let setups = [
        ("one node, direct", &direct),
        ("HAProxy, one node", &one_url),
        ("HAProxy, three nodes", &three_url),
    ];
    let mut results = vec![Vec::new(); setups.len()];
    for round in 0..2 {
        let order: Vec<usize> = if round == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            results[i].push(wrk(setups[i].1, secs));
        }
    }
    for ((label, _), rps) in setups.iter().zip(results) {
        println!("| {label} | {:.0} | {:.0} |", rps[0], rps[1]);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    // benches/micro → the repository.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let js = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/baselines/lang/js.wasm"));
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let thaw = std::env::var_os("THAW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/thaw"));
    let hello = std::fs::read(thaw_test_functions::HELLO).unwrap();
    let js = std::fs::read(&js).unwrap_or_else(|e| panic!("{}: {e}", js.display()));

    println!("## Propagation: deploy answered -> all three nodes serve it ({rounds} rounds)\n");
    println!(
        "| function | artifact sharing | deploy through node 1 | until nodes 2 and 3 serve it |"
    );
    println!("|---|---|---|---|");
    for sharing in [true, false] {
        propagation(&thaw, "hello", &hello, sharing, rounds).await;
    }
    for sharing in [true, false] {
        propagation(&thaw, "JS (13 MB)", &js, sharing, rounds.min(5)).await;
    }
    println!("\n## Throughput, hello, wrk -t2 -c32 -d{secs}s, requests/s (round 1, round 2)\n");
    println!("| setup | round 1 | round 2 |\n|---|---|---|");
    throughput(&thaw, &hello, secs).await;
}
