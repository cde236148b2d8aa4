//! A hostile tenant and hostile clients (issue 9): each test is one hole an adversarial run
//! found, attacked the same way again against a real `thaw serve`. The hostile CGI program is
//! `functions/hostile-cgi`; its query string picks the misbehaviour.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{
    TestServer, addr, assert_healthy, client, deploy_multipart, eventually, hits, raw_exchange,
    route,
};

fn with_limits(route_path: &str, limits: LimitsSpec) -> FunctionSpec {
    FunctionSpec {
        limits,
        ..route(route_path)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cgi_output_cannot_frame_the_response_or_take_the_connection() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server
        .deploy("hostile", wasm::HOSTILE_CGI, route("/hostile"))
        .await;

    // Response splitting: `Content-Length: 0` and a second response as the body. A pipelining
    // client must read the host's 502, then the real answer to its second request.
    let exchange = raw_exchange(
        &server,
        b"GET /hostile?split HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        exchange.starts_with("HTTP/1.1 502"),
        "the split response is refused: {exchange}"
    );
    assert!(!exchange.contains("injected"), "{exchange}");
    assert!(exchange.contains("Hello, world!"), "{exchange}");

    // Statuses that are not final, with Upgrade; both framing fields at once: 502, logged.
    for query in ["status=101", "status=100", "status=700", "te-cl"] {
        let r = server.get(&format!("/hostile?{query}")).await;
        assert_eq!(r.status(), 502, "?{query}");
        assert!(r.headers().get("upgrade").is_none());
    }
    let log = server.log();
    assert!(log.contains("invalid Status field"), "the reason is logged");
    assert!(log.contains("framing is ambiguous"), "the reason is logged");

    // Hop-by-hop fields are dropped, the rest kept; the connection stays the host's.
    let exchange = raw_exchange(
        &server,
        b"GET /hostile?hop HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /hostile?length-ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = exchange.to_ascii_lowercase();
    for dropped in [
        "\r\nkeep-alive:",
        "\r\nupgrade:",
        "\r\ntransfer-encoding:",
        "\r\nte:",
        "\r\ntrailer:",
        "\r\nproxy-connection:",
        "\r\nx-secret:",
    ] {
        assert!(
            !lower.contains(dropped),
            "{dropped} reached the client: {exchange}"
        );
    }
    assert!(lower.contains("x-kept: yes"), "{exchange}");
    assert_eq!(
        lower.matches("http/1.1 200").count(),
        2,
        "`Connection: close` from the guest did not close the connection: {exchange}"
    );
    assert!(lower.contains("content-length: 2\r\n"), "{exchange}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_cgi_bodies_hold_no_place_and_time_out() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(
        "/body",
        LimitsSpec {
            max_concurrency: Some(2),
            timeout_ms: Some(1500),
            ..Default::default()
        },
    );
    server.deploy("body", wasm::HOSTILE_CGI, spec).await;

    // Two clients send their headers, promise a body, and stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream
            .write_all(b"POST /body?body HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Both stalled requests have reached the function (it counts a request once it is
    // routed, before its body), so the next request is served while they stall.
    eventually(
        "both stalled requests routed",
        Duration::from_secs(30),
        || async {
            let function = server.admin().get("body").await.unwrap();
            function["requests"] == 2
        },
    )
    .await;
    // Both of the function's places are free for a client that sends its body.
    let r = client()
        .post(format!("{}/body?body", server.url))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "5");

    // The stalled ones get 408 once the function's timeout has passed.
    for mut stream in stalled {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    }
    let function = server.admin().get("body").await.unwrap();
    assert_eq!(hits(&function, "slow_request_body"), 2);
    assert_eq!(hits(&function, "concurrency"), 0);
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_a_response_are_cut_off() {
    let server = TestServer::start_with(&["--send-timeout-ms", "500"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server.deploy("big", wasm::HOSTILE_CGI, route("/big")).await;
    const BYTES: usize = 30 << 20;

    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        let request = format!("GET /big?big&bytes={BYTES} HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        readers.push(stream);
    }
    server
        .wait_for(None, "three stalled readers closed", |s| {
            s["stalled_readers_closed"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    // What reaches them now ends early: the host let go of the rest.
    for mut stream in readers {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
        assert!(out.len() < BYTES, "a whole response after the send timeout");
    }
    assert!(
        server
            .log()
            .contains("closed a connection whose client stopped reading its response")
    );
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cgi_output_over_its_limit_is_502_and_counted() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(
        "/out",
        LimitsSpec {
            max_response_body_kib: Some(100),
            ..Default::default()
        },
    );
    server.deploy("out", wasm::HOSTILE_CGI, spec).await;

    // Exactly the limit is fine.
    let r = server.get("/out?big&bytes=102400").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 102_400);
    // Past it, by a little or a lot, from a guest that ignores every write error: 502.
    for bytes in [102_401, 167_908, 10_000_000] {
        let r = server.get(&format!("/out?flood&bytes={bytes}")).await;
        assert_eq!(r.status(), 502, "{bytes} bytes");
    }
    let function = server.admin().get("out").await.unwrap();
    assert_eq!(hits(&function, "response_body"), 3);
    assert_healthy(&server).await;
}

fn assert_owner_only(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let expected = if path.is_dir() { 0o700 } else { 0o600 };
    assert_eq!(mode, expected, "{} has mode {mode:o}", path.display());
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            assert_owner_only(&entry.unwrap().path());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_is_owner_only() {
    let mut server = TestServer::start();
    let spec = FunctionSpec {
        env: [("API_KEY".to_owned(), "s3cret".to_owned())].into(),
        ..Default::default()
    };
    server.deploy("hello", wasm::HELLO, spec.clone()).await;
    // A redeploy rewrites the record atomically: still owner-only.
    server
        .deploy(
            "hello",
            wasm::HELLO,
            FunctionSpec {
                route: Some("/hi".into()),
                ..spec
            },
        )
        .await;
    assert_owner_only(&server.data_dir);

    // A record an older thaw wrote 0644 is tightened at the next start.
    let record = server.data_dir.join("functions/hello.json");
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
    server.kill_and_restart(1);
    assert_owner_only(&server.data_dir);

    // A directory someone opened up is named at the next start.
    std::fs::set_permissions(&server.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    server.kill_and_restart(2);
    assert!(
        server.log().contains("is open to other users (mode 755)"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_initialisation_takes_its_slot_through_admission() {
    let server = TestServer::start_with(&[
        "--instance-slots",
        "1",
        "--queue-timeout-ms",
        "300",
        "--warm-max",
        "0",
    ]);
    let spec = with_limits(
        "/faults",
        LimitsSpec {
            timeout_ms: Some(30_000),
            ..Default::default()
        },
    );
    server.deploy("faults", wasm::FAULTS, spec).await;
    // The only slot is busy with an admitted request (long enough for a loaded machine to
    // get the deploy to admission meanwhile)...
    let busy = tokio::spawn({
        let url = format!("{}/faults/sleep?ms=8000", server.url);
        async move { client().get(url).send().await.unwrap().status() }
    });
    server
        .wait_for(None, "the slot to be taken", |s| s["slots_running"] == 1)
        .await;
    // ...so a deploy that must pre-initialise waits, then gets a clear 503.
    let refused = deploy_multipart(&server, "primes", "{}", wasm::PRIMES).await;
    assert_eq!(refused.status(), 503);
    let reason = refused.text().await.unwrap();
    assert!(reason.contains("instance slot"), "{reason}");
    // The admitted request was not disturbed.
    assert_eq!(busy.await.unwrap(), 200);
    assert!(!server.log().contains("function trapped"));
    // With the slot free, the same deploy goes through.
    let deployed = deploy_multipart(&server, "primes", "{}", wasm::PRIMES).await;
    assert_eq!(deployed.status(), 201);
    assert_eq!(server.get("/primes?n=97").await.status(), 200);
}

fn serve_on(data_dir: &Path) -> std::process::Output {
    thaw_harness::process::serve_command(Path::new(env!("CARGO_BIN_EXE_thaw")), data_dir)
        .env("THAW_INSTANCE_SLOTS", "8")
        .env("NO_COLOR", "1")
        .output()
        .expect("running thaw serve")
}

#[test]
fn an_empty_admin_token_file_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("admin.token"), "").unwrap();
    let output = serve_on(&data_dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fewer than 16"), "{stderr}");
    assert!(stderr.contains("Delete it"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_on_one_data_directory_refuses_to_start() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let output = serve_on(&server.data_dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("in use by another thaw (pid {})", server.pid())),
        "{stderr}"
    );
    // The first host lost nothing.
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn underscored_header_names_do_not_reach_cgi() {
    let server = TestServer::start();
    server
        .deploy("hostile", wasm::HOSTILE_CGI, route("/hostile"))
        .await;
    let r = client()
        .get(format!(
            "{}/hostile?header&header=HTTP_X_FORWARDED_USER",
            server.url
        ))
        .header("X_Forwarded_User", "admin")
        .header("X-Forwarded-User", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_past_its_limit_after_the_head_is_counted_as_that_limit() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(
        "/echo",
        LimitsSpec {
            max_request_body_kib: Some(1024),
            ..Default::default()
        },
    );
    server.deploy("echo", wasm::ECHO, spec).await;

    // A chunked 4 MiB body to a guest that answers before it reads: the head may already be
    // out when the limit is hit; the client then sees a cut body, never a complete one.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 64 << 10]));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    match client()
        .post(format!("{}/echo", server.url))
        .body(body)
        .send()
        .await
    {
        Ok(r) if r.status() == 413 => {}
        Ok(r) => {
            assert_eq!(r.status(), 200);
            assert!(r.bytes().await.is_err(), "a cut body, not a clean end");
        }
        // The host may answer and close while the upload is still going.
        Err(_) => {}
    }
    // Once the call is over (the guest stopped, its slot back), the hit was counted once.
    server
        .wait_for(None, "the call to end", |s| s["slots_running"] == 0)
        .await;
    let function = server.admin().get("echo").await.unwrap();
    assert_eq!(hits(&function, "request_body"), 1, "{function}");
    let log = server.log();
    assert!(log.contains("limit=\"request_body\""), "{log}");
    assert!(
        !log.contains("function trapped"),
        "counted as the limit, not a trap"
    );
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_specs_are_refused() {
    let server = TestServer::start();
    let env: serde_json::Map<_, _> = (0..2000)
        .map(|i| (format!("VAR_{i}"), serde_json::Value::from("x")))
        .collect();
    let spec = serde_json::json!({ "env": env }).to_string();
    let r = deploy_multipart(&server, "many", &spec, wasm::HELLO).await;
    assert_eq!(r.status(), 400);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("environment variables: 2000"), "{reason}");

    let spec = serde_json::json!({ "env": { "BIG": "x".repeat(2 << 20) } }).to_string();
    let r = deploy_multipart(&server, "huge", &spec, wasm::HELLO).await;
    assert_eq!(r.status(), 413);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("spec part"), "{reason}");
    assert_eq!(
        server.admin().status().await.unwrap()["functions"],
        0,
        "nothing was deployed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_whose_memory_is_over_its_limit_is_refused() {
    let server = TestServer::start();
    // 100 pages of 64 KiB: 6.25 MiB of initial memory.
    let module =
        wat::parse_str(r#"(module (memory (export "memory") 100) (func (export "_start")))"#)
            .unwrap();
    let spec = serde_json::json!({ "limits": { "memory_mib": 4 } }).to_string();
    let r = server
        .admin_request(reqwest::Method::PUT, "/v1/functions/fat")
        .multipart(
            reqwest::multipart::Form::new()
                .text("spec", spec)
                .part("wasm", reqwest::multipart::Part::bytes(module.clone())),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let reason = r.text().await.unwrap();
    assert!(
        reason.contains("initial memory is 7 MiB (100 pages"),
        "{reason}"
    );
    assert!(reason.contains("memory limit of 4 MiB"), "{reason}");
    // With room for it, the same module deploys and serves (an empty CGI output is a 502,
    // not a 500 from a failed instantiation).
    let spec = serde_json::json!({ "limits": { "memory_mib": 8 } }).to_string();
    let r = server
        .admin_request(reqwest::Method::PUT, "/v1/functions/fat")
        .multipart(
            reqwest::multipart::Form::new()
                .text("spec", spec)
                .part("wasm", reqwest::multipart::Part::bytes(module)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(server.get("/fat").await.status(), 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_cannot_switch_protocols() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    let exchange = raw_exchange(
        &server,
        b"GET /faults/switch HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(exchange.starts_with("HTTP/1.1 502"), "{exchange}");
    assert!(
        !exchange.to_ascii_lowercase().contains("upgrade:"),
        "{exchange}"
    );
    assert!(exchange.contains("Hello, world!"), "{exchange}");
    assert!(server.log().contains("is not a final status"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_error_code_is_500_as_with_wasmtime_serve() {
    let server = TestServer::start();
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    let r = server.get("/faults/error-code").await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "function failed (error code)\n");
    assert!(server.log().contains("the function answered with an error"));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn artifact_files(data_dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for key in std::fs::read_dir(data_dir.join("artifacts")).unwrap() {
        all.extend(files_in(&key.unwrap().path()));
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn code_no_version_refers_to_is_collected() {
    // One version kept: a redeploy drops the previous one (versions.rs tests keeping more).
    let mut server = TestServer::start_with(&["--keep-versions", "1"]);
    let first = server.deploy("f", wasm::HELLO, Default::default()).await;
    let digest = |f: &serde_json::Value| f["digest"].as_str().unwrap().to_owned();
    let hello = digest(&first);
    assert_eq!(
        files_in(&server.data_dir.join("wasm")),
        [format!("{hello}.wasm")]
    );

    // A redeploy with other code: the old code goes, the new stays.
    let second = server.deploy("f", wasm::ECHO, Default::default()).await;
    let echo = digest(&second);
    assert_eq!(
        files_in(&server.data_dir.join("wasm")),
        [format!("{echo}.wasm")]
    );
    assert_eq!(
        artifact_files(&server.data_dir),
        [format!("{echo}.cwasm"), format!("{echo}.cwasm.xxh3")]
    );
    // Code two functions share stays until neither refers to it.
    server.deploy("g", wasm::ECHO, Default::default()).await;
    server.admin().remove("g").await.unwrap();
    assert_eq!(
        files_in(&server.data_dir.join("wasm")),
        [format!("{echo}.wasm")]
    );
    server.admin().remove("f").await.unwrap();
    assert!(files_in(&server.data_dir.join("wasm")).is_empty());
    assert!(artifact_files(&server.data_dir).is_empty());

    // An upload a crash interrupted (the wasm written, no record): collected at start-up.
    server.deploy("h", wasm::HELLO, Default::default()).await;
    let orphan = server
        .data_dir
        .join("wasm")
        .join(format!("{}.wasm", "ab".repeat(32)));
    std::fs::write(&orphan, vec![0u8; 1 << 20]).unwrap();
    server.kill_and_restart(1);
    assert!(!orphan.exists(), "the orphan was collected");
    assert_eq!(
        files_in(&server.data_dir.join("wasm")),
        [format!("{hello}.wasm")]
    );
    assert_eq!(server.get("/h").await.status(), 200);
}
