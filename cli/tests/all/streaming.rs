//! Large bodies both ways, and status and headers passed through untouched.

use futures::StreamExt as _;
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

#[tokio::test(flavor = "multi_thread")]
async fn ten_mib_response_streams_through() {
    let server = TestServer::start();
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    let total = 10 * 1024 * 1024;
    let r = server.get(&format!("/echo/stream?bytes={total}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-bytes"], total.to_string());
    // Read it as a stream, checking the pattern as it arrives.
    let mut stream = r.bytes_stream();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        for byte in chunk.unwrap() {
            assert_eq!(
                byte,
                b'a' + ((seen % (64 * 1024)) % 26) as u8,
                "byte {seen}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, total);
}

#[tokio::test(flavor = "multi_thread")]
async fn five_mib_request_body_arrives_whole() {
    let server = TestServer::start();
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    server.deploy("wc", wasm::WORDCOUNT, route("/wc")).await;
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();

    let r = client()
        .post(format!("{}/echo", server.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap(),
        body,
        "component: echoed byte for byte"
    );

    let text: String = "word ".repeat(1024 * 1024);
    let r = client()
        .post(format!("{}/wc?format=json", server.url))
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let counts: serde_json::Value = r.json().await.unwrap();
    assert_eq!(counts["bytes"], text.len());
    assert_eq!(counts["words"], 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_headers_pass_through() {
    let server = TestServer::start();
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    for status in [200u16, 201, 204, 301, 404, 418, 500, 503] {
        let r = client()
            .put(format!("{}/echo/item?status={status}", server.url))
            .header("x-request-id", "abc-123")
            .header("x-multi", "one")
            .header("content-type", "application/x-thaw")
            .body(if status == 204 { "" } else { "payload" })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["x-echo-request-id"], "abc-123");
        assert_eq!(r.headers()["x-echo-multi"], "one");
        assert_eq!(r.headers()["x-echo-method"], "PUT");
        assert_eq!(r.headers()["content-type"], "application/x-thaw");
    }
}
