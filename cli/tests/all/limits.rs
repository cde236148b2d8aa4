//! Per-function limits, outbound network and filesystem grants: each limit hit costs that one
//! request (with its documented status), is counted, and the host serves on.

use std::time::Duration;

use thaw_runtime::spec::{DirGrant, FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{
    ErrorCode, TestServer, assert_healthy, black_hole, client, error_code, hits, upstream,
};

fn with_limits(limits: LimitsSpec) -> FunctionSpec {
    FunctionSpec {
        limits,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_queues_then_refuses() {
    let server = TestServer::start_with(&["--queue-timeout-ms", "1000"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(LimitsSpec {
        max_concurrency: Some(1),
        max_queue: Some(1),
        ..Default::default()
    });
    server.deploy("faults", wasm::FAULTS, spec).await;

    // One request holds the only place for 3 s.
    let sleeper = tokio::spawn({
        let url = format!("{}/faults/sleep?ms=3000", server.url);
        async move { client().get(url).send().await.unwrap().status() }
    });
    server
        .wait_for(Some("faults"), "the sleeper to run", |f| f["running"] == 1)
        .await;
    // The next one waits in the queue (of one)...
    let queued = tokio::spawn({
        let url = format!("{}/faults/ok", server.url);
        async move { client().get(url).send().await.unwrap() }
    });
    server
        .wait_for(Some("faults"), "a request to queue", |f| f["queued"] == 1)
        .await;
    // ...so a third finds the queue full: 503 at once, with Retry-After.
    let r = server.get("/faults/ok").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // The queued one gives up after the queue timeout (1 s < the sleeper's 3 s): 503.
    let queued = queued.await.unwrap();
    assert_eq!(queued.status(), 503);
    // Other functions never waited.
    assert_healthy(&server).await;
    assert_eq!(sleeper.await.unwrap(), 200);
    // The place is free again.
    assert_eq!(server.get("/faults/ok").await.status(), 200);
    let faults = server.admin().get("faults").await.unwrap();
    assert_eq!(hits(&faults, "concurrency"), 2);
    assert!(
        server.log().contains("limit=\"concurrency\"")
            || server.log().contains("limit=concurrency")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_limits_are_431() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = FunctionSpec {
        route: Some("/strict".into()),
        limits: LimitsSpec {
            max_headers: Some(10),
            max_header_bytes: Some(1024),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("strict", wasm::HELLO, spec).await;

    let many = (0..20).fold(client().get(format!("{}/strict", server.url)), |r, i| {
        r.header(format!("x-h{i}"), "v")
    });
    assert_eq!(many.send().await.unwrap().status(), 431);
    let long = client()
        .get(format!("{}/strict", server.url))
        .header("x-long", "v".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 431);
    assert_eq!(server.get("/strict").await.status(), 200);
    // The host-wide ceiling (hyper's 100 fields) holds for every function.
    let flood = (0..150).fold(client().get(format!("{}/hello", server.url)), |r, i| {
        r.header(format!("x-h{i}"), "v")
    });
    assert_eq!(flood.send().await.unwrap().status(), 431);
    assert_healthy(&server).await;
    assert_eq!(
        hits(&server.admin().get("strict").await.unwrap(), "headers"),
        2
    );

    // A fuel limit on a host that does not meter fuel is refused at deploy.
    let err = server
        .admin()
        .deploy(
            "fuel",
            &with_limits(LimitsSpec {
                fuel: Some(1000),
                ..Default::default()
            }),
            thaw_test_functions::read(wasm::HELLO).into(),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::BadRequest), "{err:#}");
    // The message names the flag the host needs.
    assert!(format!("{err:#}").contains("--fuel-metering"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_stops_a_cpu_bound_guest() {
    let server = TestServer::start_with(&["--fuel-metering"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(LimitsSpec {
        fuel: Some(50_000_000),
        timeout_ms: Some(60_000),
        ..Default::default()
    });
    server.deploy("faults", wasm::FAULTS, spec).await;
    assert_eq!(server.get("/faults/ok").await.status(), 200);
    // The endless loop runs out of fuel long before its 60 s timeout.
    assert_eq!(server.get("/faults/loop").await.status(), 504);
    assert_eq!(server.get("/faults/ok").await.status(), 200);
    let faults = server.admin().get("faults").await.unwrap();
    assert_eq!(hits(&faults, "fuel"), 1);
    assert_eq!(hits(&faults, "timeout"), 0);
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_past_its_limit_stops_the_guest() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = with_limits(LimitsSpec {
        max_response_body_kib: Some(1024),
        // Far longer than the test: the guest must be stopped by the limit, not the clock.
        timeout_ms: Some(600_000),
        ..Default::default()
    });
    server.deploy("faults", wasm::FAULTS, spec).await;

    // An endless body: the head went out, so the status stays 200, but the body is cut
    // (the client sees an error, never a clean end) at the limit.
    let r = server.get("/faults/endless").await;
    assert_eq!(r.status(), 200);
    let mut received = 0usize;
    let mut stream = r;
    let outcome = loop {
        match stream.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the body must not end cleanly");
    assert!(
        received <= 1024 * 1024,
        "received {received} bytes past the limit"
    );
    // The guest was stopped, its slot freed (long before its ten-minute timeout).
    server
        .wait_for(None, "the endless guest's slot to come back", |s| {
            s["slots_running"] == 0
        })
        .await;
    // Within the limit: fine.
    let r = server.get("/faults/big?kib=512").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 512 * 1024);
    let faults = server.admin().get("faults").await.unwrap();
    assert_eq!(hits(&faults, "response_body"), 1);
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_only_to_allowed_hosts() {
    let allowed = upstream().await;
    let other = upstream().await;
    let silent = black_hole().await;
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let spec = FunctionSpec {
        route: Some("/net".into()),
        allowed_outbound_hosts: vec![
            format!("http://127.0.0.1:{allowed}"),
            format!("http://localhost:{silent}"),
        ],
        limits: LimitsSpec {
            max_outbound_requests: Some(2),
            outbound_timeout_ms: Some(300),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("net", wasm::FAULTS, spec).await;
    server
        .deploy("nonet", wasm::FAULTS, Default::default())
        .await;

    // Allowed host: two requests go out, the third is over the per-invocation limit.
    let out = get_text(
        &server,
        format!("/net/outbound?to=http://127.0.0.1:{allowed}/&n=3"),
    )
    .await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[..2], ["outbound answered 200"; 2], "{out}");
    assert!(lines[2].contains("ConnectionLimitReached"), "{out}");
    // Another port on the same address: denied.
    let out = get_text(
        &server,
        format!("/net/outbound?to=http://127.0.0.1:{other}/"),
    )
    .await;
    assert!(out.contains("HttpRequestDenied"), "{out}");
    // A function without an allow-list reaches nothing.
    let out = get_text(
        &server,
        format!("/nonet/outbound?to=http://127.0.0.1:{allowed}/"),
    )
    .await;
    assert!(out.contains("HttpRequestDenied"), "{out}");
    sockets_and_lookups_are_refused(&server, allowed).await;
    // An allowed host that never answers: the outbound timeout ends it, the guest goes on.
    let out = get_text(
        &server,
        format!("/net/outbound?to=http://localhost:{silent}/"),
    )
    .await;
    assert!(
        !out.contains("answered") && out.contains("outbound failed"),
        "{out}"
    );

    let net = server.admin().get("net").await.unwrap();
    assert_eq!(hits(&net, "outbound_requests"), 1);
    assert_eq!(hits(&net, "outbound_host"), 1);
    assert_eq!(
        hits(&server.admin().get("nonet").await.unwrap(), "outbound_host"),
        1
    );
    assert!(
        server
            .log()
            .contains(&format!("outbound request to http://127.0.0.1:{other}/"))
    );
    assert_healthy(&server).await;
    a_malformed_pattern_is_refused_at_deploy(&server).await;
}

/// GETs `path` on `server`, which must answer 200; the body.
async fn get_text(server: &TestServer, path: String) -> String {
    let url = format!("{}{path}", server.url);
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// No way around wasi:http: raw sockets and name lookups are refused, even for a function
/// whose allow-list names the address (`allowed`, a port on loopback).
async fn sockets_and_lookups_are_refused(server: &TestServer, allowed: u16) {
    for function in ["net", "nonet"] {
        let out = get_text(server, format!("/{function}/socket?port={allowed}")).await;
        let lines: Vec<_> = out.lines().collect();
        assert!(
            lines[0].ends_with("refused: access-denied"),
            "{function}: {out}"
        );
        assert!(
            lines[1].starts_with("lookup refused") || lines[1].starts_with("lookup failed"),
            "{function}: {out}"
        );
        assert!(
            !out.contains("connected") && !out.contains("answered"),
            "{out}"
        );
    }
}

/// A malformed pattern is refused at deploy, naming it.
async fn a_malformed_pattern_is_refused_at_deploy(server: &TestServer) {
    let bad = FunctionSpec {
        allowed_outbound_hosts: vec!["http://example.com/path".into()],
        ..Default::default()
    };
    let err = server
        .admin()
        .deploy("bad", &bad, thaw_test_functions::read(wasm::HELLO).into())
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::BadRequest), "{err:#}");
    // The message names the pattern to fix.
    assert!(
        format!("{err:#}").contains("http://example.com/path"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_only_in_granted_directories() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("a.txt"), "granted\n").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let grant = |host: &std::path::Path, guest: &str, writable| DirGrant {
        host: host.to_path_buf(),
        guest: guest.into(),
        writable,
    };
    let spec = FunctionSpec {
        route: Some("/files".into()),
        dirs: vec![
            grant(shared.path(), "/data", false),
            grant(scratch.path(), "/scratch", true),
        ],
        ..Default::default()
    };
    server.deploy("files", wasm::FAULTS, spec).await;
    server
        .deploy("nofiles", wasm::FAULTS, Default::default())
        .await;
    let text = |path: &str| {
        let url = format!("{}{path}", server.url);
        async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };

    assert_eq!(text("/files/read?path=/data/a.txt").await, "granted\n");
    // Read-only by default.
    let out = text("/files/write?path=/data/b.txt").await;
    assert!(out.starts_with("write failed"), "{out}");
    assert!(!shared.path().join("b.txt").exists());
    // A writable grant.
    assert_eq!(text("/files/write?path=/scratch/c.txt").await, "written\n");
    assert!(scratch.path().join("c.txt").exists());
    // Nothing outside the grants, no escape through `..`.
    for path in ["/etc/passwd", "/data/../etc/passwd", "/data/../../a.txt"] {
        let out = text(&format!("/files/read?path={path}")).await;
        assert!(out.starts_with("read failed"), "{path}: {out}");
    }
    // A function without grants sees no filesystem at all.
    let out = text("/nofiles/read?path=/data/a.txt").await;
    assert!(out.starts_with("read failed"), "{out}");

    // A grant of a directory the host does not have is refused at deploy.
    let missing = FunctionSpec {
        dirs: vec![grant(&shared.path().join("nope"), "/x", false)],
        ..Default::default()
    };
    let err = server
        .admin()
        .deploy(
            "missing",
            &missing,
            thaw_test_functions::read(wasm::HELLO).into(),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::BadRequest), "{err:#}");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_without_an_instance() {
    let server = TestServer::start_with(&["--header-read-timeout-ms", "500"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    // A slowloris client: a request line, then one header byte every 100 ms, never done.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..100 {
            if socket.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Meanwhile the host serves others, and holds no instance for this client.
            assert_healthy(&server).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .ok();
    // The server closed the connection: a read ends (EOF, a 408, or a reset).
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection was not closed");
    let status = server.admin().status().await.unwrap();
    assert!(
        status["slow_clients_closed"].as_u64().unwrap() >= 1,
        "{status}"
    );
    // No slot is held for the slow client. Read once the warm pool's refill (which takes a
    // slot for a moment while it instantiates after the healthy requests above) is done.
    server
        .wait_for(None, "no slot running", |s| s["slots_running"] == 0)
        .await;
    assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_body_is_refused() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let body = vec![b'x'; 100 << 20];
    // Declared: refused before the upload is read (the client may see its write cut off).
    match client()
        .post(format!("{}/hello", server.url))
        .body(body.clone())
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    // Chunked, no length: cut off at the 16 MiB default while the guest reads.
    let chunks = body
        .chunks(1 << 20)
        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
        .collect::<Vec<_>>();
    match client()
        .post(format!("{}/hello", server.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    server
        .wait_for(Some("hello"), "both 413s to be counted", |f| {
            f["limit_hits"]["request_body"] == 2
        })
        .await;
    assert_healthy(&server).await;
}

/// `rate_per_s` with `burst`, and `client_rate_per_s` per client address: over the limit is a
/// 429 with `Retry-After` before any instance starts, counted as `rate`; a client behind a
/// trusted proxy is the address the proxy forwarded, and a client that is not behind one is
/// its socket's address whatever it claims; a rate of 0 is refused at deploy, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_answer_429_before_any_instance_starts() {
    let server = TestServer::start_with(&["--trusted-proxies", "127.0.0.1"]);
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let rated = |route: &str, limits| FunctionSpec {
        route: Some(route.into()),
        limits,
        ..Default::default()
    };
    server
        .deploy(
            "rated",
            wasm::HELLO,
            rated(
                "/rated",
                LimitsSpec {
                    rate_per_s: Some(1),
                    burst: Some(3),
                    ..Default::default()
                },
            ),
        )
        .await;

    // The bucket holds 3 and refills at 1/s: of 40 requests sent one after another, at least
    // the 3 pass, and at most 3 more than the seconds they took.
    let http = client();
    let started = std::time::Instant::now();
    let (mut passed, mut limited) = (0u64, 0u64);
    for _ in 0..40 {
        let r = http
            .get(format!("{}/rated", server.url))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => passed += 1,
            429 => {
                limited += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry), "Retry-After: {retry}");
                assert!(r.text().await.unwrap().contains("too many requests"));
            }
            other => panic!("status {other}"),
        }
    }
    let seconds = started.elapsed().as_secs();
    assert!(
        (3..=4 + seconds).contains(&passed),
        "{passed} passed in {seconds} s"
    );
    let rated_info = server.admin().get("rated").await.unwrap();
    assert_eq!(hits(&rated_info, "rate"), limited);
    // The guest never started for a refused request: every start is a request that passed.
    let starts: u64 = rated_info["starts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(starts, passed, "{rated_info}");

    // Per client: each forwarded address has its bucket (1 request, then 429).
    let one_per_client = || {
        rated(
            "/per-client",
            LimitsSpec {
                client_rate_per_s: Some(1),
                client_burst: Some(1),
                ..Default::default()
            },
        )
    };
    server
        .deploy("per-client", wasm::HELLO, one_per_client())
        .await;
    // The status of a request to `/per-client` on `server` whose X-Forwarded-For says `client`.
    async fn claiming(server: &TestServer, client: &str) -> u16 {
        crate::support::client()
            .get(format!("{}/per-client", server.url))
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    // The client wrote the left one itself; the trusted proxy appended the right one.
    assert_eq!(claiming(&server, "1.1.1.1, 203.0.113.1").await, 200);
    assert_eq!(
        claiming(&server, "2.2.2.2, 203.0.113.1").await,
        429,
        "same client"
    );
    assert_eq!(
        claiming(&server, "203.0.113.2").await,
        200,
        "another client"
    );
    assert_healthy(&server).await;

    // Without --trusted-proxies the socket's peer is the client, whatever it claims.
    let plain = TestServer::start();
    plain
        .deploy("per-client", wasm::HELLO, one_per_client())
        .await;
    assert_eq!(claiming(&plain, "203.0.113.1").await, 200);
    assert_eq!(
        claiming(&plain, "203.0.113.2").await,
        429,
        "a claim is not an address"
    );

    // A rate of 0, or a bucket without a rate: 400 naming the field, nothing deployed.
    for (limits, field) in [
        (
            LimitsSpec {
                rate_per_s: Some(0),
                ..Default::default()
            },
            "rate_per_s",
        ),
        (
            LimitsSpec {
                client_burst: Some(5),
                ..Default::default()
            },
            "client_burst",
        ),
    ] {
        let e = server
            .admin()
            .typed()
            .deploy(
                "zero",
                &rated("/zero", limits),
                thaw_test_functions::read(wasm::HELLO).into(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
    // A negative rate does not parse: the same 400, naming the field.
    let response = crate::support::deploy_multipart(
        &server,
        "zero",
        r#"{"route": "/zero", "limits": {"rate_per_s": -5}}"#,
        wasm::HELLO,
    )
    .await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rate_per_s"), "{body}");
    assert!(server.admin().get("zero").await.is_err());
}
