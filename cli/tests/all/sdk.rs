//! The Rust SDK against a real `thaw serve`: an `async fn` handler (functions/sdk-tour) calls
//! out over HTTP (allowed, refused, failing), reads its configuration, counts in its store
//! from many clients at once, runs into a quota, logs a structured line, and streams bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thaw_runtime::config::ConfigValue;
use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{TestServer, black_hole, client, read_head, thaw_command};

/// A loopback HTTP server. `/` answers `upstream`; `/big` 64 KiB; `/together?n=N` answers
/// only once N requests to it are in flight at the same moment (503 after 5 s otherwise), so
/// a caller that sends them one after another gets 503s: concurrency shown without a clock.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let waiting = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (waiting, arrived) = (waiting.clone(), arrived.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut socket).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, body) = if let Some(n) = path.strip_prefix("/together?n=") {
                    let n: usize = n.parse().unwrap();
                    waiting.fetch_add(1, Ordering::SeqCst);
                    arrived.notify_waiters();
                    let all_here = tokio::time::timeout(Duration::from_secs(5), async {
                        loop {
                            let notified = arrived.notified();
                            if waiting.load(Ordering::SeqCst) >= n {
                                return;
                            }
                            notified.await;
                        }
                    })
                    .await
                    .is_ok();
                    if all_here {
                        ("200 OK", b"together".to_vec())
                    } else {
                        ("503 Service Unavailable", b"alone".to_vec())
                    }
                } else if path == "/big" {
                    ("200 OK", vec![b'x'; 64 << 10])
                } else {
                    ("200 OK", b"upstream".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                // Read what is left of the request (the end of a body may arrive after its
                // head) until the caller closes: a socket closed with unread bytes is reset,
                // and a caller still sending would see the reset instead of this answer.
                let _ = socket.shutdown().await;
                let mut rest = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    port
}

async fn call(server: &TestServer, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}/tour{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The ports the tour's outbound calls go to: an allowed upstream, one not allowed, one
/// that never answers and one nothing listens on.
struct Outbound {
    up: u16,
    other: u16,
    silent: u16,
    closed: u16,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_rust_function_calls_out_reads_config_keeps_state_and_logs() {
    let outbound = Outbound {
        up: upstream().await,
        other: upstream().await,
        silent: black_hole().await,
        closed: thaw_harness::free_port(),
    };
    let server = TestServer::start();
    deploy_the_tour(&server, &outbound).await;
    outbound_calls_succeed_or_fail_by_kind(&server, &outbound).await;
    configuration_is_read(&server).await;
    concurrent_increments_count_exactly(&server).await;
    a_value_over_the_quota_is_refused(&server).await;
    a_structured_log_line_shows_in_thaw_logs(&server).await;
}

/// The tour at `/tour`, allowed to call all of `outbound` but `other`, with a greeting in
/// its configuration and 1 KiB values in its store.
async fn deploy_the_tour(server: &TestServer, outbound: &Outbound) {
    let Outbound {
        up, silent, closed, ..
    } = outbound;
    let spec = FunctionSpec {
        route: Some("/tour".into()),
        allowed_outbound_hosts: vec![
            format!("http://127.0.0.1:{up}"),
            format!("http://127.0.0.1:{silent}"),
            format!("http://127.0.0.1:{closed}"),
        ],
        config: [("greeting".to_owned(), ConfigValue::Value("hello".into()))].into(),
        limits: LimitsSpec {
            kv_max_value_kib: Some(1),
            // Long enough for the allowed calls on a loaded machine; the silent port's
            // timeout is this long.
            outbound_timeout_ms: Some(3000),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("tour", wasm::SDK_TOUR, spec).await;
}

/// Outbound: allowed, refused by the allow-list (the message names the field and the
/// origin to add), nothing listening, no answer in time, a body over the reader's bound.
async fn outbound_calls_succeed_or_fail_by_kind(server: &TestServer, outbound: &Outbound) {
    let Outbound {
        up,
        other,
        silent,
        closed,
    } = outbound;
    let fetch = |url: String| format!("/fetch?url={url}");
    assert_eq!(
        call(server, &fetch(format!("http://127.0.0.1:{up}/"))).await,
        (200, "200 upstream".into())
    );
    let (status, text) = call(server, &fetch(format!("http://127.0.0.1:{other}/"))).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.starts_with("denied: "), "{text}");
    assert!(
        text.contains(&format!(
            "add \"http://127.0.0.1:{other}\" to allowed_outbound_hosts"
        )),
        "{text}"
    );
    let (status, text) = call(server, &fetch(format!("http://127.0.0.1:{closed}/"))).await;
    assert_eq!(
        (status, text.split(':').next()),
        (502, Some("connection-refused")),
        "{text}"
    );
    let (status, text) = call(server, &fetch(format!("http://127.0.0.1:{silent}/"))).await;
    assert_eq!(
        (status, text.split(':').next()),
        (504, Some("timeout")),
        "{text}"
    );
    let (status, text) = call(
        server,
        &format!("/fetch?url=http://127.0.0.1:{up}/big&limit=1024"),
    )
    .await;
    assert_eq!(
        (status, text.split(':').next()),
        (502, Some("response-too-large")),
        "{text}"
    );
}

/// Configuration: a value and a missing key.
async fn configuration_is_read(server: &TestServer) {
    assert_eq!(
        call(server, "/config?key=greeting").await,
        (200, "hello".into())
    );
    assert_eq!(
        call(server, "/config?key=missing").await,
        (404, "none".into())
    );
}

/// State: 100 increments from 8 clients at once count exactly 100, each value once.
async fn concurrent_increments_count_exactly(server: &TestServer) {
    let counts: Vec<u64> = futures::future::join_all((0..8).map(|client| async move {
        let mut seen = Vec::new();
        for _ in 0..(100 / 8 + usize::from(client < 100 % 8)) {
            let (status, text) = call(server, "/count").await;
            assert_eq!(status, 200, "{text}");
            seen.push(text.parse::<u64>().unwrap());
        }
        seen
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=100).collect::<Vec<u64>>());
}

/// A value over kv_max_value_kib: the typed quota error, naming the field.
async fn a_value_over_the_quota_is_refused(server: &TestServer) {
    let r = client()
        .post(format!("{}/tour/set?key=big", server.url))
        .body(vec![b'v'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let text = r.text().await.unwrap();
    assert!(text.starts_with("quota kv_max_value_kib: "), "{text}");
}

/// A structured log line: `thaw logs` shows its level and fields beside the request.
async fn a_structured_log_line_shows_in_thaw_logs(server: &TestServer) {
    assert_eq!(
        call(server, "/log?msg=charged").await,
        (200, "logged".into())
    );
    let line = thaw_harness::eventually_some("the log line", Duration::from_secs(10), || async {
        let out = thaw_command(server, &["logs", "tour"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("charged"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        line.ends_with(r#" stderr INFO | charged order=42 who="a b""#),
        "{line}"
    );
    let request: u64 = line
        .split(" #")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no request id in {line}"));
    assert!(request > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn joined_outbound_calls_are_in_flight_together_and_bodies_stream() {
    let up = upstream().await;
    let server = TestServer::start();
    let spec = FunctionSpec {
        route: Some("/tour".into()),
        allowed_outbound_hosts: vec![format!("http://127.0.0.1:{up}")],
        ..Default::default()
    };
    server.deploy("tour", wasm::SDK_TOUR, spec).await;

    // Three calls joined: the upstream answers only when all three are in flight at once,
    // so the handler's time is the slowest call's, not the sum.
    assert_eq!(
        call(
            &server,
            &format!("/fan?url=http://127.0.0.1:{up}/together%3Fn=3&n=3")
        )
        .await,
        (200, "200 200 200".into())
    );

    // A response produced a line at a time, and a request body echoed as it arrives.
    let (status, text) = call(&server, "/stream?n=1000").await;
    assert_eq!(status, 200);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!((lines[0], lines[999]), ("line 0", "line 999"));
    let body: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let r = client()
        .post(format!("{}/tour/echo", server.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == body, "the echo differs");
}
