//! TLS and HTTP/2 on the data plane against a real `thaw serve`, with Debian's `curl` (HTTP/2
//! by nghttp2) and `openssl s_client` as the clients, and certificates from a test CA that the
//! clients verify: HTTP/2 by ALPN and HTTP/1.1 on one TLS listener, h2c by prior knowledge on
//! a plain one, a limit holding per HTTP/2 stream, certificates chosen by SNI from a
//! directory, a changed certificate served without a restart, a bad one refused (at start,
//! naming the file; on reload, keeping the old one), HTTP/1.1 spoken after ALPN chose h2
//! refused without hanging, and a client that never starts its handshake closed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use thaw_harness::certs::{Issued, TestCa};
use thaw_harness::wait::{eventually, eventually_some};
use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;

use crate::support::{TestServer, route};

/// `curl` and `openssl`, or `None` (skipped unless services are required).
fn clients() -> Option<()> {
    thaw_harness::services::service_binaries(["curl", "openssl"], "curl and openssl").map(drop)
}

fn write(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.crt")), &issued.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key).unwrap();
}

/// `curl` against the server's port as `host`, trusting `ca`: the HTTP version, the status
/// and the body, or curl's error.
fn curl(server: &TestServer, ca: &Path, host: &str, path: &str, extra: &[&str]) -> String {
    let port = server.url.rsplit(':').next().unwrap();
    let scheme = server.url.split("://").next().unwrap();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The subject common name of the certificate the server presents for `sni`, or `None` if
/// the handshake failed.
fn served_name(server: &TestServer, sni: &str) -> Option<String> {
    let port = server.url.rsplit(':').next().unwrap();
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let subject = text.lines().find(|l| l.starts_with("subject="))?;
    Some(subject.rsplit("CN = ").next()?.trim().to_owned())
}

/// A connection that sends nothing is closed by the server (within a bound for a hung test),
/// and counted with the slow clients.
async fn a_silent_connection_is_closed(server: &TestServer) {
    let port = server.url.rsplit(':').next().unwrap();
    let mut silent = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await
    .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let status = server.admin().status().await.unwrap();
    assert!(
        status["slow_clients_closed"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_http2_serves_reloads_and_refuses_what_it_cannot_trust() {
    if clients().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    write(dir.path(), "site", &ca.issue(&["localhost"], 30));
    let (cert, key) = (dir.path().join("site.crt"), dir.path().join("site.key"));
    let server = TestServer::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--header-read-timeout-ms",
        "1000",
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server.deploy("hello", wasm::HELLO, route("/hello")).await;
    let tiny = FunctionSpec {
        route: Some("/tiny".into()),
        limits: LimitsSpec {
            max_header_bytes: Some(1024),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("tiny", wasm::ECHO, tiny).await;

    // HTTP/2 by ALPN and HTTP/1.1 on one listener, the certificate verified by the client.
    let h2 = curl(&server, &ca_file, "localhost", "/hello", &["--http2"]);
    assert!(h2.ends_with("\n2 200"), "{h2}");
    assert!(h2.starts_with("Hello"), "{h2}");
    let h1 = curl(&server, &ca_file, "localhost", "/hello", &["--http1.1"]);
    assert!(h1.ends_with("\n1.1 200"), "{h1}");

    // A limit holds per stream: a 2 KiB header to a function that takes 1 KiB of headers is
    // a 431 over HTTP/2, and the next stream of the same connection is served (curl reuses
    // it for its next URL). (A header limit rather than a body one: a 413 answered before curl has sent all of a
    // body makes the stream end in a reset, which curl 7.88 reports as its own error.)
    let big = format!("x-big: {}", "x".repeat(2048));
    let port = server.url.rsplit(':').next().unwrap();
    let both = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(&ca_file)
        .args([
            "-w",
            "%{http_version} %{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
        ])
        .args(["-H", &big, &format!("https://localhost:{port}/tiny")])
        .args(["--next", "--http2", "--cacert"])
        .arg(&ca_file)
        .args([
            "-w",
            "%{http_version} %{http_code} %{num_connects}\n",
            "-o",
            "/dev/null",
        ])
        .arg(format!("https://localhost:{port}/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&both.stdout),
        "2 431 1\n2 200 0\n",
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );

    // HTTP/1.1 spoken on a connection whose ALPN chose h2: a protocol error, and the server
    // closes the connection by itself (the client's input stays open, so only the server
    // can end it).
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "h2",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = s_client.stdin.take().unwrap();
        stdin
            .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let ended = eventually_some(
            "the server to close an h2 connection spoken to in HTTP/1.1",
            Duration::from_secs(15),
            || {
                let exited = s_client.try_wait().unwrap();
                async move { exited }
            },
        )
        .await;
        drop(stdin);
        let mut out = Vec::new();
        use std::io::Read as _;
        s_client
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out).contains("Hello"),
            "{ended:?}"
        );
    }

    // A client that connects and never starts its handshake is closed at the header read
    // timeout, and counted with the slow clients.
    a_silent_connection_is_closed(&server).await;

    // A new certificate in the same files is served without a restart.
    let renewed = ca.issue(&["localhost", "renewed.test"], 60);
    std::fs::write(&key, &renewed.key).unwrap();
    std::fs::write(&cert, &renewed.cert).unwrap();
    // rcgen puts the first name in the subject: the renewed one says `localhost` too, so the
    // name it adds is what tells them apart.
    eventually("the renewed certificate", Duration::from_secs(20), || {
        let answer = curl(&server, &ca_file, "renewed.test", "/hello", &["--http2"]);
        async move { answer.ends_with("\n2 200") }
    })
    .await;
    // A key that is not the certificate's: logged, and the renewed one keeps serving. (A
    // reload between the two writes above may have failed and been logged already: count.)
    let refusals = |log: &str| log.matches("is not the key of").count();
    let before = refusals(&server.log());
    std::fs::write(&key, ca.issue(&["localhost"], 30).key).unwrap();
    eventually(
        "the refused reload in the log",
        Duration::from_secs(20),
        || {
            let log = server.log();
            async move { refusals(&log) > before }
        },
    )
    .await;
    let still = curl(&server, &ca_file, "renewed.test", "/hello", &["--http2"]);
    assert!(still.ends_with("\n2 200"), "{still}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_of_certificates_is_chosen_by_sni() {
    if clients().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write(dir.path(), "api", &ca.issue(&["api.example.test"], 30));
    write(
        dir.path(),
        "apps",
        &ca.issue(&["*.apps.example.test", "apps.example.test"], 30),
    );
    let server = TestServer::start_with(&["--tls-dir", dir.path().to_str().unwrap()]);
    assert_eq!(
        served_name(&server, "api.example.test").as_deref(),
        Some("api.example.test")
    );
    for sni in ["one.apps.example.test", "apps.example.test"] {
        assert_eq!(
            served_name(&server, sni).as_deref(),
            Some("*.apps.example.test"),
            "{sni}"
        );
    }
    // No certificate is right for another name: the handshake fails, nothing is served.
    assert_eq!(served_name(&server, "other.test"), None);
    assert_eq!(served_name(&server, "deep.one.apps.example.test"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_by_prior_knowledge_on_a_plain_listener_and_silence_is_closed() {
    if clients().is_none() {
        return;
    }
    let server = TestServer::start_with(&["--header-read-timeout-ms", "1000"]);
    server.deploy("hello", wasm::HELLO, route("/hello")).await;
    let none = Path::new("/dev/null");
    // A connection that sends nothing (so neither protocol is known) is closed at the header
    // read timeout, and counted with the slow clients.
    a_silent_connection_is_closed(&server).await;
    for (flag, version) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
        let answer = curl(&server, none, "127.0.0.1", "/hello", &[flag]);
        assert!(
            answer.ends_with(&format!("\n{version} 200")),
            "{flag}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_that_cannot_serve_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.issue(&["localhost"], 30);
    let other = ca.issue(&["localhost"], 30);
    let expired = ca.issue(&["localhost"], -1);
    for (case, cert, key, says) in [
        (
            "a key of another certificate",
            &good.cert,
            &other.key,
            "is not the key of",
        ),
        (
            "an expired certificate",
            &expired.cert,
            &expired.key,
            "the certificate expired",
        ),
        (
            "not PEM",
            &"junk".to_owned(),
            &good.key,
            "holds no certificate",
        ),
    ] {
        let (cert_file, key_file) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_thaw"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert_file)
            .arg("--tls-key")
            .arg(&key_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("c."),
            "{case}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("functions on"),
            "{case}: it must not have started"
        );
    }
    // A certificate without its key is a usage error, before anything is read.
    let output = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--tls-cert", "c.crt"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));
}
