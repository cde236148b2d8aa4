//! An `async` function that uses everything the SDK offers, for thaw's tests and as an
//! example: outbound HTTP, configuration, the key-value store, structured logs and streaming
//! bodies.
//!
//! - `/fetch?url=U`: GETs `U`; answers `<status> <body>`, or 502/504 with the error's kind and
//!   message (`denied: ...`);
//! - `/fan?url=U&n=N`: N GETs of `U` at once (joined); answers their statuses;
//! - `/config?key=K`: the setting, or 404 `none`;
//! - `/count`: increments `count` in the default store and answers the new value;
//! - `/set?key=K` (the body is the value): 204, or 507 `quota <field>: ...`;
//! - `/log?msg=M`: logs M at info with fields `order=42` and `who="a b"`;
//! - `/stream?n=N`: answers N lines, produced one at a time;
//! - `/echo`: answers the request's body as it arrives.
//!
//! It imports only what `wasmtime serve` offers, so the compatibility test runs it there too;
//! SQL is in functions/todo.

use thaw_sdk::http::{self, StatusCode};
use thaw_sdk::{Body, IntoResponse as _, handler, kv, log};

type Answer = http::Response<Body>;

fn answer(status: StatusCode, text: impl Into<String>) -> Answer {
    let mut response = (status, text.into()).into_response().map(Body::from);
    *response.status_mut() = status;
    response
}

fn param(req: &http::Request<Body>, key: &str) -> Option<String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decoded(v))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error's kind, for the tests: the variant's name in lower case.
fn kind(e: &http::Error) -> &'static str {
    match e {
        http::Error::Denied { .. } => "denied",
        http::Error::TooManyRequests { .. } => "too-many-requests",
        http::Error::Dns { .. } => "dns",
        http::Error::ConnectionRefused { .. } => "connection-refused",
        http::Error::Timeout { .. } => "timeout",
        http::Error::ResponseTooLarge { .. } => "response-too-large",
        _ => "other",
    }
}

fn failed(e: http::Error) -> Answer {
    answer(e.status(), format!("{}: {e}", kind(&e)))
}

#[handler]
async fn handle(req: http::Request<Body>) -> Answer {
    // The last segment: the function answers under any route (thaw passes the full path).
    let path = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    match format!("/{path}").as_str() {
        "/fetch" => {
            let Some(url) = param(&req, "url") else {
                return answer(StatusCode::BAD_REQUEST, "url=?");
            };
            let limit = param(&req, "limit").and_then(|l| l.parse().ok());
            let response = match http::get(&url).await {
                Ok(r) => r,
                Err(e) => return failed(e),
            };
            let status = response.status();
            let body = match limit {
                Some(limit) => response.into_body().bytes_up_to(limit).await,
                None => response.into_body().bytes().await,
            };
            match body {
                Ok(body) => answer(
                    StatusCode::OK,
                    format!("{} {}", status.as_u16(), String::from_utf8_lossy(&body)),
                ),
                Err(e) => failed(e),
            }
        }
        "/fan" => {
            let (Some(url), Some(n)) = (param(&req, "url"), param(&req, "n")) else {
                return answer(StatusCode::BAD_REQUEST, "url=?&n=?");
            };
            let n: usize = n.parse().unwrap_or(1);
            let calls = (0..n).map(|_| http::get(&url));
            let mut statuses = Vec::new();
            for result in thaw_sdk::future::join_all(calls).await {
                match result {
                    Ok(r) => statuses.push(r.status().as_u16().to_string()),
                    Err(e) => return failed(e),
                }
            }
            answer(StatusCode::OK, statuses.join(" "))
        }
        "/config" => match thaw_sdk::config::get(&param(&req, "key").unwrap_or_default()) {
            Ok(Some(value)) => answer(StatusCode::OK, value),
            Ok(None) => answer(StatusCode::NOT_FOUND, "none"),
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        "/count" => {
            let counted = kv::Store::open("default").and_then(|s| s.increment("count", 1));
            match counted {
                Ok(n) => answer(StatusCode::OK, n.to_string()),
                Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "/set" => {
            let key = param(&req, "key").unwrap_or_default();
            let mut body = req.into_body();
            let value = match body.contents().await {
                Ok(v) => v.to_vec(),
                Err(e) => return answer(StatusCode::BAD_REQUEST, format!("{e:#}")),
            };
            let set = kv::Store::open("default").and_then(|s| s.set(&key, value));
            match set {
                Ok(()) => answer(StatusCode::NO_CONTENT, ""),
                Err(kv::Error::Quota { quota, message }) => answer(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("quota {}: {message}", quota.field()),
                ),
                Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "/log" => {
            let msg = param(&req, "msg").unwrap_or_else(|| "hello".into());
            log::info!(msg, order = 42, who = "a b");
            answer(StatusCode::OK, "logged")
        }
        "/stream" => {
            let n: usize = param(&req, "n").and_then(|n| n.parse().ok()).unwrap_or(10);
            let lines = futures_lite::stream::iter(0..n).then(|i| async move {
                futures_lite::future::yield_now().await;
                format!("line {i}\n")
            });
            http::Response::new(Body::from_stream(lines))
        }
        "/echo" => http::Response::new(req.into_body()),
        _ => answer(StatusCode::NOT_FOUND, "no such path"),
    }
}

use futures_lite::StreamExt as _;
