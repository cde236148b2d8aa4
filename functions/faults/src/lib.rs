//! A function that misbehaves on purpose, for thaw's fault tests: each path is one way a
//! guest can fail. Deploy it only to test a host.
//!
//! - `/faults/ok`: 200, proof the function itself works
//! - `/faults/panic`: a Rust panic (a trap)
//! - `/faults/loop`: an endless loop (stopped by the timeout)
//! - `/faults/oom`: allocates until the memory limit
//! - `/faults/recurse`: unbounded recursion (stack overflow)
//! - `/faults/outbound`: tries an outbound HTTP request and reports what happened

use thaw_sdk::{Request, handler};

#[handler]
fn fault(req: Request) -> String {
    match req.uri().path().rsplit('/').next().unwrap_or("") {
        "panic" => panic!("this function panics on purpose"),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recurse" => format!("{}\n", recurse(std::hint::black_box(1))),
        "outbound" => outbound(),
        _ => "ok\n".into(),
    }
}

fn recurse(n: u64) -> u64 {
    // Never true in practice; it only keeps the compiler from calling this endless.
    if n == u64::MAX {
        return 0;
    }
    let mut pad = [n; 64];
    pad[std::hint::black_box(0)] = recurse(n + 1);
    std::hint::black_box(&pad);
    pad[1]
}

fn outbound() -> String {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("127.0.0.1:9"));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("outbound refused: {code:?}\n"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("outbound answered {}\n", response.status()),
                Some(Ok(Err(code))) => format!("outbound failed: {code:?}\n"),
                other => format!("outbound: {other:?}\n"),
            }
        }
    }
}
