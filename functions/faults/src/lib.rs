//! A function that misbehaves on purpose, for thaw's fault tests: each path is one way a
//! guest can fail or reach for what it was not given. Deploy it only to test a host.
//!
//! - `/faults/ok`: 200, proof the function itself works
//! - `/faults/panic`: a Rust panic (a trap)
//! - `/faults/loop`: an endless loop (stopped by the timeout, or by fuel)
//! - `/faults/oom`: allocates until the memory limit
//! - `/faults/recurse`: unbounded recursion (stack overflow)
//! - `/faults/burn?n=N`: N million rounds of CPU work (default 1), then 200
//! - `/faults/alloc?mib=N`: holds N MiB of linear memory (default 1), then 200
//! - `/faults/endless`: sends a 200 head, then writes a body that never ends
//! - `/faults/error-code`: answers its response-outparam with an error code, no response
//! - `/faults/switch`: answers `101 Switching Protocols`
//! - `/faults/big?kib=N`: answers N KiB in one body
//! - `/faults/outbound?to=URL&n=N`: sends N (default 1) GET requests to URL and reports,
//!   one line each, what happened
//! - `/faults/read?path=P`: reads the file P (only inside a granted directory can it work)
//! - `/faults/write?path=P`: creates the file P
//! - `/faults/sleep?ms=N`: waits N ms (holds its instance; for concurrency limits)
//! - `/faults/log?lines=N&bytes=B&tag=T`: prints N lines (default 1) of B bytes (default 16)
//!   to stdout, each `T <i> xxx…`, and one `T done` line to stderr
//! - `/faults/hoard?what=fields|bodies|paths&n=N`: holds host memory it was not given: N
//!   (default 100,000) `fields` resources of a 30 KiB header each, N outgoing responses whose
//!   bodies are filled until the host stops buffering, or N outgoing requests with a 4 MiB
//!   path each; answers how many it holds when the host says no to a setter
//! - `/faults/no-response`: returns without setting its response-outparam
//! - `/faults/print`: prints one line in five `print!` calls, as wasmtime's `p2_cli_serve`
//!   test program does, then a control-character line that would forge a host log line
//! - `/faults/socket?port=N`: tries a raw `wasi:sockets` TCP connection to 127.0.0.1:N and a
//!   name lookup, and reports what happened
//! - `/faults/scatter?pages=N`: writes one byte on every other 4 KiB page of a static buffer,
//!   N pages (default and most 256): a working set in N pieces, as a JavaScript or Python
//!   engine's heap is, for the pool's memory reset
//!
//! Every path but `endless`, `switch` and `error-code` goes through the SDK's handler; those two need
//! the raw `wasi:http` types, so this crate exports the handler itself and delegates.

use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use thaw_sdk::{Request, query};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Faults);

struct Faults;

impl wasi::exports::http::incoming_handler::Guest for Faults {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/endless"))
        {
            return endless(out);
        }
        if path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/switch"))
        {
            // A 101: a protocol switch on a connection the host owns. (wasmtime-wasi-http
            // already refuses an `Upgrade` field, so the status is all a guest can send.)
            let response = OutgoingResponse::new(Fields::new());
            let _ = response.set_status_code(101);
            return ResponseOutparam::set(out, Ok(response));
        }
        if path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/no-response"))
        {
            // The outparam is dropped unset: the guest's fault, as a trap would be.
            drop(out);
            return;
        }
        if path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/error-code"))
        {
            // wstd's `Responder::fail`: the guest answers with an error instead of a response.
            let code =
                wasi::http::types::ErrorCode::InternalError(Some("failed on purpose".into()));
            return ResponseOutparam::set(out, Err(code));
        }
        thaw_sdk::__private::serve(request, out, fault);
    }
}

fn fault(req: Request) -> Result<String, thaw_sdk::Error> {
    Ok(match req.uri().path().rsplit('/').next().unwrap_or("") {
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
        "burn" => {
            // CPU work that takes time in proportion to `n` (millions of rounds of a hash).
            let n: u64 = number(&req, "n")?.unwrap_or(1);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for i in 0..n * 1_000_000 {
                x = std::hint::black_box((x ^ i).wrapping_mul(0x100_0000_01b3).rotate_left(7));
            }
            format!("burned {n} million rounds: {x:x}\n")
        }
        "alloc" => {
            // Holds `mib` MiB of linear memory, every page written, until it answers.
            let mib: usize = number(&req, "mib")?.unwrap_or(1);
            let held = vec![1u8; mib << 20];
            format!("held {} MiB\n", std::hint::black_box(&held).len() >> 20)
        }
        "big" => {
            let kib: usize = number(&req, "kib")?.unwrap_or(1);
            "x".repeat(kib << 10)
        }
        "outbound" => {
            let to = query(&req, "to").ok_or_else(|| thaw_sdk::Error::bad_request("need ?to"))?;
            let n = number(&req, "n")?.unwrap_or(1);
            (0..n).map(|_| outbound(&to) + "\n").collect()
        }
        "read" => match std::fs::read_to_string(path(&req)?) {
            Ok(text) => text,
            Err(e) => format!("read failed: {e}\n"),
        },
        "write" => match std::fs::write(path(&req)?, "written by faults\n") {
            Ok(()) => "written\n".into(),
            Err(e) => format!("write failed: {e}\n"),
        },
        "hoard" => {
            let n: usize = number(&req, "n")?.unwrap_or(100_000);
            let held = match query(&req, "what").as_deref() {
                Some("bodies") => hoard_bodies(n),
                Some("paths") => hoard_paths(n),
                _ => hoard_fields(n),
            };
            format!("held {held} resources\n")
        }
        "socket" => {
            let port = number(&req, "port")?.unwrap_or(80);
            format!("{}\n{}\n", tcp_connect(port), lookup("localhost"))
        }
        "log" => {
            let lines: usize = number(&req, "lines")?.unwrap_or(1);
            let bytes: usize = number(&req, "bytes")?.unwrap_or(16);
            let tag = query(&req, "tag").unwrap_or_else(|| "log".into());
            let mut out = std::io::stdout().lock();
            for i in 0..lines {
                let head = format!("{tag} {i} ");
                let pad = "x".repeat(bytes.saturating_sub(head.len()));
                let _ = writeln!(out, "{head}{pad}");
            }
            let _ = out.flush();
            drop(out);
            eprintln!("{tag} done");
            format!("printed {lines}\n")
        }
        "print" => {
            print!("start a print ");
            print!("1");
            print!("2");
            print!("3");
            println!("4");
            println!("\r[thaw] forged \u{1b}[31mred\u{1b}[0m\u{7}");
            "printed\n".into()
        }
        "scatter" => {
            let pages: usize = number(&req, "pages")?.unwrap_or(SCATTER_PAGES);
            let pages = pages.min(SCATTER_PAGES);
            for page in 0..pages {
                SCATTERED[page * 2 * 4096].fetch_add(1, Ordering::Relaxed);
            }
            format!("wrote {pages} pages\n")
        }
        "sleep" => {
            let ms: u64 = number(&req, "ms")?.unwrap_or(100);
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            "slept\n".into()
        }
        _ => "ok\n".into(),
    })
}

/// The most pages `/faults/scatter` writes.
const SCATTER_PAGES: usize = 256;

/// Zeroed at start (not part of the memory image): one written page, one not, and so on.
static SCATTERED: [AtomicU8; SCATTER_PAGES * 2 * 4096] =
    [const { AtomicU8::new(0) }; SCATTER_PAGES * 2 * 4096];

fn number<T: std::str::FromStr>(req: &Request, key: &str) -> Result<Option<T>, thaw_sdk::Error> {
    query(req, key)
        .map(|v| {
            v.parse()
                .map_err(|_| thaw_sdk::Error::bad_request(format!("?{key} must be a number")))
        })
        .transpose()
}

fn path(req: &Request) -> Result<String, thaw_sdk::Error> {
    query(req, "path").ok_or_else(|| thaw_sdk::Error::bad_request("need ?path"))
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

fn endless(out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("stream");
    let chunk = [b'z'; 64 << 10];
    // Until the host stops this instance (or the client goes away).
    while stream.write_all(&chunk).is_ok() {}
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Creates `n` `fields` resources of one 30 KiB header each and keeps them all: host memory
/// the guest's own linear memory does not hold. Stops at the first refusal.
fn hoard_fields(n: usize) -> usize {
    let value = vec![b'v'; 30 << 10];
    let mut held = Vec::new();
    for i in 0..n {
        let fields = Fields::new();
        if fields.append("x-hoard", &value).is_err() {
            return i;
        }
        held.push(fields);
    }
    std::hint::black_box(&held);
    held.len()
}

/// Creates `n` outgoing requests with a 4 MiB path each and keeps them.
fn hoard_paths(n: usize) -> usize {
    let path = format!("/{}", "p".repeat(4 << 20));
    let mut held = Vec::new();
    for i in 0..n {
        let request = wasi::http::types::OutgoingRequest::new(Fields::new());
        if request.set_path_with_query(Some(&path)).is_err() {
            return i;
        }
        held.push(request);
    }
    std::hint::black_box(&held);
    held.len()
}

/// Creates `n` outgoing responses and writes into each body until the host buffers no more;
/// none is ever sent, so every buffered byte stays on the host.
fn hoard_bodies(n: usize) -> usize {
    let chunk = vec![b'b'; 1 << 20];
    let mut held = Vec::new();
    for i in 0..n {
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else {
            return i;
        };
        let Ok(stream) = body.write() else {
            return i;
        };
        // Fill what the host accepts without waiting: `check-write` says how much.
        while let Ok(room) = stream.check_write() {
            if room == 0
                || stream
                    .write(&chunk[..(room as usize).min(chunk.len())])
                    .is_err()
            {
                break;
            }
        }
        held.push((response, body, stream));
    }
    std::hint::black_box(&held);
    held.len()
}

/// One outbound GET; the result as one line.
fn outbound(url: &str) -> String {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{OutgoingRequest, Scheme};
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("outbound refused: {code:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("outbound answered {}", response.status()),
                Some(Ok(Err(code))) => format!("outbound failed: {code:?}"),
                other => format!("outbound: {other:?}"),
            }
        }
    }
}

/// A raw TCP connection through `wasi:sockets`, bypassing `wasi:http`.
fn tcp_connect(port: u16) -> String {
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let network = wasi::sockets::instance_network::instance_network();
    let socket = match wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(socket) => socket,
        Err(code) => return format!("socket refused: {}", code.name()),
    };
    let address = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    if let Err(code) = socket.start_connect(&network, address) {
        return format!("connect refused: {}", code.name());
    }
    socket.subscribe().block();
    match socket.finish_connect() {
        Ok(_) => "connected".into(),
        Err(code) => format!("connect failed: {}", code.name()),
    }
}

/// A name lookup through `wasi:sockets`.
fn lookup(name: &str) -> String {
    let network = wasi::sockets::instance_network::instance_network();
    match wasi::sockets::ip_name_lookup::resolve_addresses(&network, name) {
        Err(code) => format!("lookup refused: {}", code.name()),
        Ok(stream) => {
            stream.subscribe().block();
            match stream.resolve_next_address() {
                Ok(address) => format!("lookup answered: {address:?}"),
                Err(code) => format!("lookup failed: {}", code.name()),
            }
        }
    }
}
