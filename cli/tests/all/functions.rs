//! Every example function, through a real server.

use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

#[tokio::test(flavor = "multi_thread")]
async fn every_example_function_answers() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server
        .deploy("orders", wasm::ORDERS, route("/api/orders"))
        .await;
    server
        .deploy("markdown", wasm::MARKDOWN, Default::default())
        .await;
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    server
        .deploy("wordcount", wasm::WORDCOUNT, route("/cgi/wc"))
        .await;
    let http = client();

    // hello (SDK): query and env.
    let r = server.get("/hello?name=tests").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello, tests!\n");

    orders(&server, &http).await;
    // markdown (real work on the body).
    let r = http
        .post(format!("{}/markdown", server.url))
        .body("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n~~old~~ *new*\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(html.contains("<h1>Title</h1>"), "{html}");
    assert!(html.contains("<table>"), "{html}");
    assert!(html.contains("<del>old</del> <em>new</em>"), "{html}");

    // echo (plain wasi crate).
    let r = http
        .post(format!("{}/echo/path?status=202", server.url))
        .header("x-trace", "t-1")
        .header("content-type", "text/plain")
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-echo-trace"], "t-1");
    assert_eq!(r.headers()["x-echo-method"], "POST");
    assert_eq!(r.headers()["x-echo-path"], "/echo/path");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "ping");

    wordcount(&server, &http).await;
}

/// orders (SDK + serde): valid JSON is priced, invalid JSON and invalid orders are 400s.
async fn orders(server: &TestServer, http: &reqwest::Client) {
    let r = http
        .post(format!("{}/api/orders", server.url))
        .body(r#"{"currency":"eur","items":[{"sku":"A","unit_price_cents":250,"quantity":4}],"discount_percent":25}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let priced: serde_json::Value = r.json().await.unwrap();
    assert_eq!(priced["subtotal_cents"], 1000);
    assert_eq!(priced["discount_cents"], 250);
    assert_eq!(priced["total_cents"], 750);
    assert_eq!(priced["currency"], "EUR");
    for (body, reason) in [
        ("{not json", "invalid JSON"),
        (r#"{"currency":"eur","items":[]}"#, "at least one item"),
        (
            r#"{"currency":"euro","items":[{"sku":"A","unit_price_cents":1,"quantity":1}]}"#,
            "ISO 4217",
        ),
        (
            r#"{"currency":"eur","items":[{"sku":"A","unit_price_cents":1,"quantity":0}]}"#,
            "quantity must be positive",
        ),
    ] {
        let r = http
            .post(format!("{}/api/orders", server.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{body} -> {text}");
    }
    let r = server.get("/api/orders").await;
    assert_eq!(r.status(), 405);
}

/// wordcount (CGI, wasip1): body on stdin, CGI variables, CGI response parsed.
async fn wordcount(server: &TestServer, http: &reqwest::Client) {
    let r = http
        .post(format!("{}/cgi/wc/extra/path?x=1", server.url))
        .body("one two three\nfour\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-word-count"], "4");
    let text = r.text().await.unwrap();
    for line in [
        "lines 2",
        "words 4",
        "bytes 19",
        "method POST",
        "script /cgi/wc",
        "path /extra/path",
        "query x=1",
    ] {
        assert!(text.contains(line), "missing {line:?} in {text}");
    }
    let r = http
        .post(format!("{}/cgi/wc?format=json", server.url))
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "CGI Status: header is passed through");
}
