//! SIGTERM drains: a request in flight completes, then the process exits cleanly.

use std::time::Duration;

use thaw_test_functions as wasm;

use crate::support::{TestServer, client};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut server = TestServer::start();
    server.deploy("echo", wasm::ECHO, Default::default()).await;

    // A request whose body trickles in over about a second.
    let chunks = futures::stream::unfold(0, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(format!("chunk{i};")), i + 1))
    });
    let url = format!("{}/echo", server.url);
    let in_flight = tokio::spawn(async move {
        let r = client()
            .post(url)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    // The request has reached the function (counted once routed, while its body trickles).
    server
        .wait_for(Some("echo"), "the request in flight", |f| {
            f["requests"] == 1
        })
        .await;
    let mut child = server.terminate();

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    let expected: String = (0..10).map(|i| format!("chunk{i};")).collect();
    assert_eq!(body, expected);

    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "thaw exits 0 after draining: {exit:?}");
    assert!(server.log().contains("draining in-flight requests"));
}
