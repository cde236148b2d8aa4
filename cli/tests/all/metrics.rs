//! `/metrics` scraped by a real Prometheus (Debian's `prometheus` package, started here on a
//! free loopback port): the counts it stores are the requests that were sent, through both
//! ways of scraping (the admin listener with the token from a `credentials_file`, and
//! `--metrics-listen` without one), and `promtool check metrics` finds nothing to complain
//! about in the exposition.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use thaw_test_functions as wasm;

use thaw_harness::Prometheus;

use crate::support::{TestServer, client, eventually, service_binaries, thaw_command};

/// Prometheus's binaries, or `None` (the test is skipped, unless the CI asks for it).
fn prometheus() -> Option<(PathBuf, PathBuf)> {
    let [server, tool] = service_binaries(["prometheus", "promtool"], "prometheus")?;
    Some((server, tool))
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").split('/').next().unwrap()
}

/// One PromQL instant query's single value, or `None` while there is no result.
async fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let answer: serde_json::Value = client()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// Polls `promql` until it equals `expected` (Prometheus scrapes every second), at most 30 s.
async fn scraped(prometheus: &str, promql: &str, expected: f64) {
    eventually(
        &format!("{promql} to be {expected}"),
        Duration::from_secs(30),
        || async { query(prometheus, promql).await == Some(expected) },
    )
    .await;
}

/// Prometheus scraping `server` both ways: the admin listener with the token from a
/// `credentials_file`, and the metrics listener without one.
fn start_prometheus(binary: &Path, dir: &Path, server: &TestServer) -> Prometheus {
    let token_file = server.data_dir.join("admin.token");
    let config = format!(
        r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: thaw-admin
    authorization:
      type: Bearer
      credentials_file: {token}
    static_configs:
      - targets: ["{admin}"]
  - job_name: thaw-metrics-listener
    static_configs:
      - targets: ["{metrics}"]
"#,
        token = token_file.display(),
        admin = host_port(&server.admin_url),
        metrics = host_port(server.metrics_url.as_deref().unwrap()),
    );
    Prometheus::start(binary, dir, &config)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_counts_that_were_sent() {
    let Some((prometheus_bin, promtool)) = prometheus() else {
        return;
    };
    let server = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    for _ in 0..37 {
        assert_eq!(server.get("/hello").await.status(), 200);
    }
    for _ in 0..23 {
        assert_eq!(server.get("/echo?status=404").await.status(), 404);
    }

    check_exposition(&server, &promtool).await;

    // A real Prometheus, scraping both ways.
    let dir = tempfile::tempdir().unwrap();
    let prometheus = start_prometheus(&prometheus_bin, dir.path(), &server);
    let url = prometheus.url.clone();
    for job in ["thaw-admin", "thaw-metrics-listener"] {
        scraped(&url, &format!(r#"up{{job="{job}"}}"#), 1.0).await;
        scraped(
            &url,
            &format!(r#"sum(thaw_requests_total{{job="{job}",function="hello",code="2xx"}})"#),
            37.0,
        )
        .await;
        scraped(
            &url,
            &format!(r#"sum(thaw_requests_total{{job="{job}",function="echo",code="4xx"}})"#),
            23.0,
        )
        .await;
        scraped(
            &url,
            &format!(r#"sum(thaw_starts_total{{job="{job}",function="hello"}})"#),
            37.0,
        )
        .await;
        scraped(
            &url,
            &format!(r#"sum(thaw_request_duration_seconds_count{{job="{job}",function="echo"}})"#),
            23.0,
        )
        .await;
    }
    // More traffic shows up in the next scrapes.
    for _ in 0..5 {
        assert_eq!(server.get("/hello").await.status(), 200);
    }
    scraped(
        &url,
        r#"sum(thaw_requests_total{job="thaw-admin",function="hello"})"#,
        42.0,
    )
    .await;
}

/// The exposition itself, read directly: the token is needed on the admin listener, not on
/// the metrics listener, which serves nothing else; both formats; promtool's lint.
async fn check_exposition(server: &TestServer, promtool: &Path) {
    // The exposition itself: the token is needed on the admin listener, not on the other.
    let metrics_url = server.metrics_url.clone().unwrap();
    let open = client().get(&metrics_url).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = open.text().await.unwrap();
    let openmetrics = client()
        .get(&metrics_url)
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
    assert!(
        text.contains(r#"thaw_requests_total{function="hello",version="v1",code="2xx"} 37"#),
        "{text}"
    );
    let admin = format!("{}/metrics", server.admin_url);
    assert_eq!(client().get(&admin).send().await.unwrap().status(), 401);
    let with_token = client()
        .get(&admin)
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    assert_eq!(
        client()
            .get(metrics_url.replace("/metrics", "/v1/status"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the metrics listener serves nothing else"
    );

    // promtool's lint of the exposition.
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// The `cpu` of a response's `Server-Timing`, and its `handler`, in ms.
fn cpu_and_handler(response: &reqwest::Response) -> (f64, f64) {
    let timing = response.headers()["server-timing"].to_str().unwrap();
    let of = |name: &str| -> f64 {
        let at = timing
            .find(&format!("{name};dur="))
            .unwrap_or_else(|| panic!("no {name} in {timing}"));
        let rest = &timing[at + name.len() + 5..];
        rest[..rest.find(',').unwrap_or(rest.len())]
            .parse()
            .unwrap()
    };
    (of("cpu"), of("handler"))
}

/// What each request costs, per request and per function: the guest's CPU time (the
/// thread's CPU clock around its calls) in `Server-Timing`, the admin API, `thaw list` and
/// `/metrics`, and its instance's peak linear memory beside it. CPU work shows as CPU time
/// (far more than a trivial request's, and never more than the handler's wall time); held
/// memory shows as the instance's peak.
#[tokio::test]
async fn each_request_reports_the_cpu_and_memory_it_cost() {
    let server = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    let ok = server.get("/faults/ok").await;
    assert_eq!(ok.status(), 200);
    let (cpu_ok, _) = cpu_and_handler(&ok);
    let burn = server.get("/faults/burn?n=40").await;
    assert_eq!(burn.status(), 200);
    let (cpu_burn, handler_burn) = cpu_and_handler(&burn);
    assert!(
        cpu_burn > 10.0 * cpu_ok.max(0.001),
        "40 million rounds cost {cpu_burn} ms of CPU, a trivial request {cpu_ok} ms"
    );
    // One thread's CPU clock cannot run ahead of the wall clock (1 µs of rounding).
    assert!(
        cpu_burn <= handler_burn + 0.001,
        "{cpu_burn} > {handler_burn}"
    );
    let alloc = server.get("/faults/alloc?mib=24").await;
    assert_eq!(alloc.status(), 200);
    let (cpu_alloc, _) = cpu_and_handler(&alloc);

    // Per function: the total holds every call's CPU (at least what the heads reported),
    // and 24 MiB held shows as the peak. A call's cost is recorded when the guest returns,
    // a moment after its response head: waited for, bounded.
    let reported = cpu_ok + cpu_burn + cpu_alloc;
    let total_ms = |f: &serde_json::Value| f["cpu_us_total"].as_u64().unwrap() as f64 / 1e3;
    let info = server
        .wait_for(Some("faults"), "all three calls' costs", |f| {
            f["peak_memory_kib"]["p99"].as_u64() >= Some(24 << 10)
                && total_ms(f) >= reported - 0.003
        })
        .await;
    assert!(info["cpu_us"]["p99"].as_u64().unwrap() as f64 >= cpu_burn * 1e3 * 0.8);
    let peak_kib = info["peak_memory_kib"]["p99"].as_u64().unwrap();

    let list = thaw_command(&server, &["list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("CPU µs 50/99") && text.contains("PEAK KiB 50/99"),
        "{text}"
    );
    let line = text.lines().find(|l| l.starts_with("faults")).unwrap();
    assert!(line.contains(&format!("/{}", peak_kib)), "{line}");

    let metrics_url = server.metrics_url.clone().unwrap();
    let exposition = client()
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> f64 {
        let line = exposition
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{function=\"faults\"")))
            .unwrap_or_else(|| panic!("no {name} in\n{exposition}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("thaw_function_cpu_seconds_total") * 1e3 >= reported - 0.003);
    assert_eq!(sample("thaw_instance_peak_memory_bytes_count"), 3.0);
    assert!(sample("thaw_instance_peak_memory_bytes_sum") >= f64::from(24u32 << 20));
}
