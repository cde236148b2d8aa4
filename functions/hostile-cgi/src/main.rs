//! A hostile CGI program: what a tenant who wants to attack the host or other tenants would
//! print. The first `&`-separated word of the query string picks the misbehaviour; the tests
//! in `runtime/tests/all/hostile.rs` say what thaw must do with each.
//!
//! | query | prints |
//! |---|---|
//! | `split` | `Content-Length: 0`, then a whole second HTTP response as the "body" |
//! | `status=N` | `Status: N` with `Upgrade` and `Connection` fields (101, 100, 700, ...) |
//! | `te-cl` | both `Transfer-Encoding: chunked` and `Content-Length` |
//! | `hop` | hop-by-hop fields (`Connection`, `Keep-Alive`, `Upgrade`, `Transfer-Encoding`, `TE`, `Trailer`, `Proxy-Connection`) around a body `ok` |
//! | `length-ok` | a `Content-Length` that matches its body |
//! | `flood&bytes=N` | a 200 head and N bytes of body, ignoring every write error |
//! | `big&bytes=N` | a 200 head and N bytes of body, written normally |
//! | `header=NAME` | the value of the meta-variable NAME (e.g. `HTTP_X_FORWARDED_USER`) |
//! | `body` | the length of the request body it read |

use std::io::{Read, Write};

fn main() {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let mut words = query.split('&');
    let what = words.next().unwrap_or("");
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let bytes = || {
        param("bytes")
            .and_then(|b| b.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let mut out = std::io::stdout().lock();
    match what {
        "split" => {
            // The injected response a pipelining client would read as its next answer.
            let _ = out.write_all(
                b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\ninjected",
            );
        }
        "te-cl" => {
            let _ = out.write_all(
                b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok",
            );
        }
        "hop" => {
            let _ = out.write_all(
                b"Content-Type: text/plain\r\nConnection: close, X-Secret\r\nKeep-Alive: timeout=5\r\n\
                  Upgrade: websocket\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: X-T\r\n\
                  Proxy-Connection: keep-alive\r\nX-Secret: hop\r\nX-Kept: yes\r\n\r\nok",
            );
        }
        "length-ok" => {
            let _ = out.write_all(b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
        }
        "flood" | "big" => {
            let ignore_errors = what == "flood";
            let chunk = [b'x'; 8192];
            let mut left = bytes();
            let head = out.write_all(b"Content-Type: application/octet-stream\r\n\r\n");
            if head.is_err() && !ignore_errors {
                std::process::exit(3);
            }
            while left > 0 {
                let n = left.min(chunk.len());
                // `flood` is the guest that ignores short writes and errors and exits 0.
                if out.write_all(&chunk[..n]).is_err() && !ignore_errors {
                    std::process::exit(3);
                }
                left -= n;
            }
            let _ = out.flush();
        }
        "header" => {
            let name = param("header").unwrap_or_default();
            let value = std::env::var(&name).unwrap_or_else(|_| "<unset>".into());
            let _ = write!(out, "Content-Type: text/plain\r\n\r\n{value}");
        }
        "body" => {
            let mut body = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut body);
            let _ = write!(out, "Content-Type: text/plain\r\n\r\n{}", body.len());
        }
        _ => match param("status") {
            Some(code) => {
                let _ = write!(
                    out,
                    "Status: {code} Whatever\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                );
            }
            None => {
                let _ = write!(
                    out,
                    "Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nunknown misbehaviour {what:?}\n"
                );
            }
        },
    }
}
