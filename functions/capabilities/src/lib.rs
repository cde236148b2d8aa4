//! A guest that reads its configuration and keeps state, for thaw's tests and as an example.
//!
//! - `/config/KEY`: `wasi:config/store.get(KEY)`: the value, or 404 `none`;
//! - `/config-hello`: the value of `hello` (what wasmtime's `p2_cli_serve_config` asks);
//! - `/kv-hello`: `hello` from the default bucket (wasmtime's `p2_cli_serve_keyvalue`);
//! - `/count?bucket=B`: increments `visits` and answers the new count;
//! - `/get?bucket=B&key=K`, `/set?bucket=B&key=K` (the body is the value), `/delete?...`;
//! - `/list?bucket=B`: the bucket's keys, one per line (all pages);
//! - `/open-many?n=N`: opens N buckets and holds them all.
//!
//! A store error is answered with 500 and its name (`no-such-store`, `access-denied`, or
//! `other: <reason>`), so a test sees what the guest was told.

use std::io::{Read as _, Write as _};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "capabilities", generate_all });
}

use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::{atomics, store};

wasi::http::proxy::export!(Capabilities);

struct Capabilities;

fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

fn describe(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(reason) => format!("other: {reason}"),
    }
}

fn body_of(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("body");
    let mut bytes = Vec::new();
    {
        let mut stream = body.stream().expect("stream");
        stream.read_to_end(&mut bytes).expect("read");
    }
    bytes
}

fn answer(request: IncomingRequest) -> (u16, Vec<u8>) {
    let path_with_query = request.path_with_query().unwrap_or_default();
    let (path, query) = path_with_query
        .split_once('?')
        .unwrap_or((&path_with_query, ""));
    let bucket_name = param(query, "bucket").unwrap_or_default();
    let key = param(query, "key").unwrap_or_default();
    let open = || store::open(&bucket_name);
    let last = path.rsplit('/').next().unwrap_or("");
    let result: Result<(u16, Vec<u8>), store::Error> = (|| {
        Ok(match last {
            "config-hello" => match config::get("hello") {
                Ok(Some(v)) => (200, v.into_bytes()),
                Ok(None) => (404, b"none".to_vec()),
                Err(e) => (500, format!("{e:?}").into_bytes()),
            },
            "kv-hello" => match store::open("")?.get("hello")? {
                Some(v) => (200, v),
                None => (404, b"none".to_vec()),
            },
            "count" => {
                let n = atomics::increment(&open()?, "visits", 1)?;
                (200, n.to_string().into_bytes())
            }
            "get" => match open()?.get(&key)? {
                Some(v) => (200, v),
                None => (404, b"none".to_vec()),
            },
            "set" => {
                let value = body_of(&request);
                open()?.set(&key, &value)?;
                (204, Vec::new())
            }
            "open-many" => {
                // Holds `n` buckets open at once (a guest that never drops them).
                let n: usize = param(query, "n").and_then(|n| n.parse().ok()).unwrap_or(1);
                let mut held = Vec::with_capacity(n);
                for _ in 0..n {
                    held.push(open()?);
                }
                (200, held.len().to_string().into_bytes())
            }
            "delete" => {
                open()?.delete(&key)?;
                (204, Vec::new())
            }
            "list" => {
                let bucket = open()?;
                let mut keys = Vec::new();
                let mut cursor = None;
                loop {
                    let page = bucket.list_keys(cursor)?;
                    keys.extend(page.keys);
                    match page.cursor {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                keys.sort();
                (200, keys.join("\n").into_bytes())
            }
            _ => {
                let key = path.split("/config/").nth(1).unwrap_or("");
                match config::get(key) {
                    Ok(Some(v)) => (200, v.into_bytes()),
                    Ok(None) => (404, b"none".to_vec()),
                    Err(e) => (500, format!("{e:?}").into_bytes()),
                }
            }
        })
    })();
    result.unwrap_or_else(|e| (500, describe(e).into_bytes()))
}

impl wasi::exports::http::incoming_handler::Guest for Capabilities {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (status, body) = answer(request);
        let response = OutgoingResponse::new(Fields::new());
        response.set_status_code(status).expect("status");
        let outgoing = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        {
            let mut stream = outgoing.write().expect("stream");
            stream.write_all(&body).expect("write");
            stream.blocking_flush().expect("flush");
        }
        OutgoingBody::finish(outgoing, None).expect("finish");
    }
}
