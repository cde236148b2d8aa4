//! Counts the requests its instance has served and names the instance, so a host's instance
//! reuse can be observed from outside: the `x-instance` header is a random id drawn on the
//! instance's first request, `x-count` its running count.
//!
//! - any path: `200`, body `<instance> <count>`
//! - a path ending in `/trap`: the headers go out, then the instance traps mid-body (a host
//!   must never hand this instance another request)

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Counter);

static COUNT: AtomicU64 = AtomicU64::new(0);
static INSTANCE: OnceLock<u64> = OnceLock::new();

struct Counter;

impl wasi::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        let instance = *INSTANCE.get_or_init(wasi::random::random::get_random_u64);
        let headers = Fields::from_list(&[
            ("x-instance".into(), format!("{instance:016x}").into_bytes()),
            ("x-count".into(), count.to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("stream");
        if request
            .path_with_query()
            .unwrap_or_default()
            .ends_with("/trap")
        {
            stream.write_all(b"partial").expect("write");
            stream.blocking_flush().expect("flush");
            panic!("trapping after the response head, on purpose");
        }
        writeln!(stream, "{instance:016x} {count}").expect("write");
        stream.blocking_flush().expect("flush");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish");
    }
}
