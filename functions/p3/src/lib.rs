//! A WASIp3 (`wasi:http/handler@0.3.0`) test function.
//!
//! Routes are matched on the path's last segment, so the function works under any route
//! prefix:
//! - `/` and `/hello`: `Hello, WASI!`, as wasmtime's `p3_cli_serve_hello_world`;
//! - `/echo`: streams the request body back, chunk by chunk, with the `x-echo` header;
//! - `/big?kib=N`: a body of N KiB, written in 16 KiB chunks;
//! - `/count`: how many requests this instance has served (1 unless the instance is reused);
//! - `/sleep?ms=N`: answers after N ms (an async wait: other requests may run meanwhile),
//!   with how many requests this instance had in flight at most so far;
//! - `/spin`: loops forever (only the host's timeout ends it);
//! - `/trap`: panics (a trap);
//! - `/late-trap`: answers 200, writes 16 KiB of its body, then panics;
//! - `/swarm?n=N`: spawns N tasks that each wait 0 ns in a loop, forever, and never
//!   answers: the host spends its time switching tasks, not in this guest's code;
//! - `/hoard?n=N`: creates N (default 100,000) `fields` of one 30 KiB header each and keeps
//!   them: host memory outside its linear memory; answers only if the host never says no;
//! - `/hoard-paths?n=N`: creates N requests with a 4 MiB path each and keeps them; answers
//!   how many it holds when the host refuses the path.

use std::sync::atomic::{AtomicU64, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(P3);

struct P3;

static SERVED: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

impl wasip3::exports::http::handler::Guest for P3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let route = path.rsplit('/').next().unwrap_or_default();
        let param = |name: &str| -> u64 {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        match route {
            "" | "hello" => Ok(text(200, b"Hello, WASI!".to_vec())),
            "count" => Ok(text(200, served.to_string().into_bytes())),
            "sleep" => {
                let ms = param("ms");
                let now = IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1;
                PEAK.fetch_max(now, Ordering::Relaxed);
                wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
                IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
                let peak = PEAK.load(Ordering::Relaxed);
                Ok(text(
                    200,
                    format!("slept {ms} ms; peak {peak}").into_bytes(),
                ))
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("the guest trapped on purpose"),
            "swarm" => {
                for _ in 0..param("n") {
                    wit_bindgen::spawn_local(async {
                        loop {
                            wasip3::clocks::monotonic_clock::wait_for(0).await;
                        }
                    });
                }
                loop {
                    wasip3::clocks::monotonic_clock::wait_for(1_000_000_000).await;
                }
            }
            "hoard-paths" => {
                let n = match param("n") {
                    0 => 100_000,
                    n => n as usize,
                };
                let path = format!("/{}", "p".repeat(4 << 20));
                let mut held = Vec::new();
                for _ in 0..n {
                    let (_, trailers) = wit_future::new(|| Ok(None));
                    let (request, _sent) = Request::new(Fields::new(), None, trailers, None);
                    if request.set_path_with_query(Some(&path)).is_err() {
                        break;
                    }
                    held.push(request);
                }
                let count = held.len();
                std::hint::black_box(&held);
                Ok(text(200, format!("held {count} requests").into_bytes()))
            }
            "hoard" => {
                let n = match param("n") {
                    0 => 100_000,
                    n => n as usize,
                };
                let value = vec![b'v'; 30 << 10];
                let mut held = Vec::new();
                for _ in 0..n {
                    let fields = Fields::new();
                    if fields.append("x-hoard", &value).is_err() {
                        break;
                    }
                    held.push(fields);
                }
                let count = held.len();
                std::hint::black_box(&held);
                Ok(text(200, format!("held {count} fields").into_bytes()))
            }
            "late-trap" => Ok(streamed(200, Fields::new(), |mut tx| async move {
                tx.write_all(vec![b'l'; 16 * 1024]).await;
                panic!("the guest trapped after its response head");
            })),
            "big" => {
                let kib = param("kib") as usize;
                Ok(streamed(200, Fields::new(), move |mut tx| async move {
                    let mut left = kib * 1024;
                    while left > 0 {
                        let n = left.min(16 * 1024);
                        if !tx.write_all(vec![b'b'; n]).await.is_empty() {
                            return; // the host stopped reading
                        }
                        left -= n;
                    }
                }))
            }
            "echo" => {
                let headers = Fields::new();
                let echo = request.get_headers().get("x-echo");
                if !echo.is_empty() {
                    let _ = headers.set("x-echo", &echo);
                }
                let (_, request_done) = wit_future::new(|| Ok(()));
                let (mut body, _trailers) = Request::consume_body(request, request_done);
                Ok(streamed(200, headers, move |mut tx| async move {
                    let mut buf = Vec::with_capacity(16 * 1024);
                    loop {
                        let (result, chunk) = body.read(buf).await;
                        if !chunk.is_empty() && !tx.write_all(chunk.clone()).await.is_empty() {
                            return;
                        }
                        match result {
                            StreamResult::Complete(_) => {
                                buf = chunk;
                                buf.clear();
                            }
                            StreamResult::Dropped | StreamResult::Cancelled => return,
                        }
                    }
                }))
            }
            _ => Ok(text(404, b"not found".to_vec())),
        }
    }
}

/// A response with a whole body.
fn text(status: u16, body: Vec<u8>) -> Response {
    streamed(status, Fields::new(), move |mut tx| async move {
        tx.write_all(body).await;
    })
}

/// A response whose body `write` produces after the handler returned.
fn streamed<F, Fut>(status: u16, headers: Fields, write: F) -> Response
where
    F: FnOnce(wit_bindgen::StreamWriter<u8>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(rx), trailers_rx);
    let _ = response.set_status_code(status);
    wit_bindgen::spawn_local(async move {
        write(tx).await;
        drop(trailers_tx);
    });
    response
}
