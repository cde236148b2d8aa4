//! `GET /healthz` and `GET /readyz` on the data listener: unauthenticated, answered before
//! routing, and no route can take them.

use thaw_test_functions as wasm;

use crate::support::{TestServer, client, deploy_multipart, route};

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_are_answered_by_the_host() {
    let server = TestServer::start();
    // A function on "/" takes every other path, not these.
    server.deploy("hello", wasm::HELLO, route("/")).await;
    let r = server.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let mut ready = false;
    for _ in 0..200 {
        let r = server.get("/readyz").await;
        if r.status() == 200 {
            ready = true;
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("start-up work"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "ready once start-up work is done");
    assert_eq!(
        server.get("/anything").await.text().await.unwrap(),
        "Hello, world!\n"
    );
    // No function may take a probe's path.
    for reserved in ["/healthz", "/readyz/x"] {
        let r = deploy_multipart(
            &server,
            "taker",
            &format!(r#"{{"route": "{reserved}"}}"#),
            wasm::HELLO,
        )
        .await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("reserved"));
    }
    // Unauthenticated: no token anywhere above; and not on the admin listener.
    let admin = client()
        .get(format!("{}/healthz", server.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
}
