//! The admin API refuses every request without the right token, and nothing changes.

use reqwest::Method;
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, client_from};

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_needs_the_token() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    let before = server.admin().list().await.unwrap();

    let routes = [
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/functions"),
        (Method::GET, "/v1/functions/hello"),
        (Method::PUT, "/v1/functions/hello"),
        (Method::PUT, "/v1/functions/intruder"),
        (Method::DELETE, "/v1/functions/hello"),
        (Method::POST, "/v1/functions"),
        (Method::GET, "/nowhere"),
    ];
    let wrong = format!("{}x", server.token());
    // Each route from an address of its own: ten wrong tokens from one address within a
    // minute would be answered 429 (adversary.rs tests that back-off).
    for (i, (method, path)) in routes.iter().enumerate() {
        let source: std::net::IpAddr = format!("127.0.1.{}", i + 1).parse().unwrap();
        for token in [
            None,
            Some("wrong-token-of-some-length"),
            Some(wrong.as_str()),
        ] {
            let mut request = client_from(source)
                .request(method.clone(), format!("{}{path}", server.admin_url))
                .body(wasm::read(wasm::ECHO));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    // Nothing changed: the same function, same generation, still serving; no intruder.
    assert_eq!(server.admin().list().await.unwrap(), before);
    assert_eq!(server.get("/hello").await.status(), 200);
    assert_eq!(server.get("/intruder").await.status(), 404);

    // The token file is the owner's only.
    let meta = std::fs::metadata(server.data_dir.join("admin.token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077,
        0
    );
    assert!(server.log().contains("admin request refused"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_token_is_used_instead() {
    let server = TestServer::start_with(&["--admin-token", "a-configured-admin-token"]);
    let r = client()
        .get(format!("{}/v1/status", server.admin_url))
        .bearer_auth("a-configured-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !server.data_dir.join("admin.token").exists(),
        "no file when configured"
    );
}
