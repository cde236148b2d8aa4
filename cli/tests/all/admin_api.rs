//! The admin API's route table, as a client sees it: every known path answers a wrong
//! method with 405 and `Allow`, an unknown path with 404, every error has the stable shape
//! `{"error": {"code", "message"}}`, and query strings are decoded (percent-escapes
//! included) into typed parameters, unknown ones refused.

use reqwest::Method;
use thaw_runtime::api::ErrorBody;
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, route};

/// Each admin path with the methods it serves.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/status", &["GET"]),
    ("/v1/history", &["GET"]),
    ("/metrics", &["GET"]),
    ("/v1/cluster", &["GET"]),
    ("/v1/functions", &["GET"]),
    ("/v1/functions/hello", &["GET", "PUT", "DELETE"]),
    ("/v1/functions/hello/versions", &["GET"]),
    ("/v1/functions/hello/traffic", &["PUT"]),
    ("/v1/functions/hello/rollback", &["POST"]),
    ("/v1/functions/hello/promote", &["POST"]),
    ("/v1/functions/hello/logs", &["GET"]),
    ("/v1/functions/hello/kv", &["GET", "PUT", "DELETE"]),
];

async fn error_of(response: reqwest::Response) -> (u16, ErrorBody) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    let parsed = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "not an error body ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, parsed)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_answers_a_wrong_method_with_405_and_allow() {
    let server = TestServer::start();
    server
        .admin()
        .deploy("hello", &route("/hello"), wasm::read(wasm::HELLO).into())
        .await
        .expect("deploys");
    for (path, allowed) in ROUTES {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if allowed.contains(&method) {
                continue;
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let response = server
                .admin_request(method.clone(), path)
                .send()
                .await
                .unwrap();
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            let (status, body) = error_of(response).await;
            assert_eq!(status, 405, "{method} {path}");
            assert_eq!(
                body.error.code,
                ErrorCode::MethodNotAllowed,
                "{method} {path}"
            );
            assert_eq!(
                allow.as_deref(),
                Some(allowed.join(", ").as_str()),
                "{method} {path}"
            );
        }
    }
    for path in [
        "/v1/nothing",
        "/v1/functions/hello/nothing",
        "/v2/status",
        "/",
    ] {
        let response = server
            .admin_request(Method::GET, path)
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(response).await;
        assert_eq!(
            (status, body.error.code),
            (404, ErrorCode::NoSuchRoute),
            "{path}"
        );
    }
    // Without the token, a known path and an unknown one alike are 401: nothing is learnt.
    for path in ["/v1/status", "/v1/nothing"] {
        let response = crate::support::client()
            .get(format!("{}{path}", server.admin_url))
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(response).await;
        assert_eq!(
            (status, body.error.code),
            (401, ErrorCode::Unauthorized),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_codes_and_queries_are_typed() {
    let server = TestServer::start();
    let admin = server.admin();
    admin
        .deploy("hello", &route("/hello"), wasm::read(wasm::HELLO).into())
        .await
        .expect("deploys");
    let cases = [
        (
            Method::GET,
            "/v1/functions/nobody",
            404,
            ErrorCode::NotFound,
        ),
        (
            Method::GET,
            "/v1/functions/hello/logs?colour=red",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::GET,
            "/v1/functions/hello/logs?tail=many",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::GET,
            "/v1/functions/hello/logs?follow=perhaps",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::PUT,
            "/v1/functions/other?canary=101",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::PUT,
            "/v1/functions/other?wait=1",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::PUT,
            "/v1/functions/other?surprise=1",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::GET,
            "/v1/functions/hello/kv?key=a&cursor=x",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::PUT,
            "/v1/functions/hello/kv",
            400,
            ErrorCode::BadRequest,
        ),
        (
            Method::GET,
            "/v1/functions/hello/kv?key=absent",
            404,
            ErrorCode::NoSuchKey,
        ),
        (
            Method::POST,
            "/v1/functions/hello/rollback",
            404,
            ErrorCode::NotFound,
        ),
        (Method::GET, "/v1/cluster", 404, ErrorCode::NotConfigured),
    ];
    for (method, path, status, code) in cases {
        let response = server
            .admin_request(method.clone(), path)
            .send()
            .await
            .unwrap();
        let (got, body) = error_of(response).await;
        assert_eq!(
            (got, body.error.code),
            (status, code),
            "{method} {path}: {body:?}"
        );
        assert!(!body.error.message.is_empty());
    }
    typed_errors_and_decoded_keys(&server).await;
}

/// Through the typed client: a route conflict by its code, a missing key as `None`, a
/// missing function as an error; and a key with a space and a slash written and read back
/// (percent-escapes decoded).
async fn typed_errors_and_decoded_keys(server: &TestServer) {
    let admin = server.admin();
    let taken = admin
        .typed()
        .deploy("thief", &route("/hello"), wasm::read(wasm::ECHO).into())
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Some(ErrorCode::RouteTaken), "{taken}");

    // Percent-escapes are decoded: the key written as `a b/c` is the one read back.
    admin
        .typed()
        .kv_set("hello", "", "a b/c", "value".into())
        .await
        .expect("sets");
    let raw = server
        .admin_request(Method::GET, "/v1/functions/hello/kv?bucket=&key=a%20b%2Fc")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.bytes().await.unwrap(), "value");
    assert_eq!(
        admin.typed().kv_list("hello", "").await.unwrap(),
        vec!["a b/c".to_owned()]
    );
    assert_eq!(
        admin.typed().kv_get("hello", "", "absent").await.unwrap(),
        None
    );
    // A missing function stays an error, not an absent key.
    let missing = admin.typed().kv_get("nobody", "", "k").await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));
}
