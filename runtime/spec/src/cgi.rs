//! CGI (RFC 3875) for WASI preview1 modules: request metadata in, parsed response out.
//!
//! A preview1 command has no HTTP interface, only environment variables, stdin and stdout. thaw
//! speaks CGI to it, as web servers have for thirty years: the request's metadata becomes
//! meta-variables in the environment ([`request_env`]), the body arrives on stdin, and the
//! module prints CGI header fields, a blank line and the body on stdout ([`parse_response`]).
//!
//! The parser reads bytes the guest controls. It never panics, bounds the header section, and
//! rejects anything that is not a well-formed CGI response with a [`CgiError`] that says what
//! is wrong; the data plane answers those with 502.
//!
//! # The host frames the response, never the guest
//! A guest's header fields are copied into the response hyper writes, so a field that controls
//! the connection would let one tenant speak HTTP on the host's behalf: a guest printing
//! `Content-Length: 0` before a body that is itself a whole HTTP response makes a pipelining
//! client (or a proxy in front of thaw) read that injected response as the answer to its next
//! request, which may be to another function. So:
//! - hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every field it names,
//!   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are
//!   dropped: they describe a connection the guest does not own;
//! - `Content-Length` is dropped after a check: hyper frames the body by its real length. A
//!   value that contradicts a non-empty body is an attempt at splitting, or a bug, and is
//!   refused ([`CgiError::ContentLength`]); with an empty body (a `HEAD` answer) it is
//!   dropped;
//! - `Transfer-Encoding` together with `Content-Length` is refused ([`CgiError::Framing`]), as
//!   RFC 9112 §6.3 treats it in a request: the sender is confused or hostile;
//! - `Status:` must be a final status, 200..=599: 1xx would make hyper send an interim or
//!   protocol-switching response the host never agreed to.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Largest header section accepted from a module.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A CGI response, ready to be sent.
#[derive(Debug)]
pub struct CgiResponse {
    /// `Status:` (or 302 for a bare `Location:`, else 200).
    pub status: StatusCode,
    /// Every header field other than `Status:`.
    pub headers: HeaderMap,
    /// Everything after the blank line.
    pub body: Bytes,
}

/// Why a module's output is not a CGI response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    /// Nothing at all on stdout.
    #[error("the module wrote nothing to stdout")]
    Empty,
    /// The header section never ended.
    #[error("no blank line ends the header section within the first {MAX_HEADER_BYTES} bytes")]
    NoHeaderEnd,
    /// A header line is not `Name: value`.
    #[error("header line {0} is not `Name: value`")]
    NotAField(usize),
    /// A header name is not an HTTP token.
    #[error("header line {0} has an invalid field name")]
    BadName(usize),
    /// A header value has bytes HTTP does not allow.
    #[error("header line {0} has an invalid field value")]
    BadValue(usize),
    /// `Status:` is not a three-digit final status code, 200..=599.
    #[error("invalid Status field {0:?}")]
    BadStatus(String),
    /// `Content-Length` is not a number, or contradicts the body that follows.
    #[error("Content-Length {declared:?} contradicts the body of {actual} bytes")]
    ContentLength {
        /// The field's value as printed.
        declared: String,
        /// The body's real length.
        actual: usize,
    },
    /// Framing fields that cannot both hold (`Transfer-Encoding` with `Content-Length`).
    #[error("{0}")]
    Framing(&'static str),
    /// The header section has no fields.
    #[error(
        "the header section is empty: CGI needs at least one of Content-Type, Location or Status"
    )]
    NoFields,
}

/// Parses a module's stdout. `out` is consumed so the body can be handed on without copying.
pub fn parse_response(mut out: Bytes) -> Result<CgiResponse, CgiError> {
    if out.is_empty() {
        return Err(CgiError::Empty);
    }
    let window = &out[..out.len().min(MAX_HEADER_BYTES)];
    let (header_len, sep_len) = find_header_end(window).ok_or(CgiError::NoHeaderEnd)?;
    let body = out.split_off(header_len + sep_len);
    let head = &out[..header_len];

    let mut headers = HeaderMap::new();
    let mut status = None;
    for (index, line) in head.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(CgiError::NotAField(number))?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"status") {
            status = Some(parse_status(value)?);
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| CgiError::BadName(number))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| CgiError::BadValue(number))?;
        headers.append(name, value);
    }
    if status.is_none() && headers.is_empty() {
        return Err(CgiError::NoFields);
    }
    take_framing(&mut headers, body.len())?;
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiResponse {
        status,
        headers,
        body,
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection` and
/// `Keep-Alive`, which clients still honour): they describe the connection, which is the
/// host's.
const HOP_BY_HOP: [HeaderName; 6] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

/// Checks and removes the fields that frame the message or belong to the connection (see
/// the module docs): after this, hyper alone decides how the body is delimited.
fn take_framing(headers: &mut HeaderMap, body_len: usize) -> Result<(), CgiError> {
    use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    if chunked && headers.contains_key(CONTENT_LENGTH) {
        return Err(CgiError::Framing(
            "both Transfer-Encoding and Content-Length: the body's framing is ambiguous",
        ));
    }
    headers.remove(TRANSFER_ENCODING);
    for value in headers.get_all(CONTENT_LENGTH) {
        let declared = value.as_bytes();
        let matches = std::str::from_utf8(declared)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n == body_len);
        // An empty body with a length is a HEAD answer (or a 204/304): nothing to inject.
        if !matches && body_len != 0 {
            return Err(CgiError::ContentLength {
                declared: String::from_utf8_lossy(declared).into_owned(),
                actual: body_len,
            });
        }
    }
    headers.remove(CONTENT_LENGTH);
    // Fields that `Connection` names are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    Ok(())
}

/// Finds the blank line: returns the length of the header section (without its final line
/// break) and the length of the separator. Accepts CRLF and bare LF, as RFC 3875 §6.3 asks.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(offset) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + offset;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some((nl, 3)),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &value[start..end.max(start)]
}

fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let bad = || CgiError::BadStatus(String::from_utf8_lossy(value).into_owned());
    let code = value.get(..3).ok_or_else(bad)?;
    if value.get(3).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let code = StatusCode::from_bytes(code).map_err(|_| bad())?;
    // Final statuses only: 1xx are interim or protocol switches (see the module docs).
    if !(200..=599).contains(&code.as_u16()) {
        return Err(bad());
    }
    Ok(code)
}

/// What [`request_env`] needs to know about the request and the server.
pub struct CgiRequest<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The function's route prefix (`SCRIPT_NAME`).
    pub script_name: &'a str,
    /// The path below the route (`PATH_INFO`), empty or starting with '/'.
    pub path_info: &'a str,
    /// The raw query string without '?'.
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The body length, if known (the body is buffered before the module runs, so it is).
    pub content_length: Option<u64>,
    /// The address of the client.
    pub remote_addr: std::net::SocketAddr,
    /// The address the request arrived on.
    pub server_addr: std::net::SocketAddr,
    /// The target's authority when the request was sent in absolute form
    /// (`GET http://host/path`): RFC 9112 §3.2.2 says it wins over `Host`, so it is
    /// `HTTP_HOST`, as the `wasi:http` executors take it for the request's authority.
    pub authority: Option<&'a str>,
    /// The request's HTTP version (`SERVER_PROTOCOL`).
    pub version: http::Version,
    /// Whether the connection is TLS: `HTTPS=on` and `REQUEST_SCHEME=https`, as Apache and
    /// nginx set them.
    pub https: bool,
}

/// The RFC 3875 meta-variables for a request, appended to `env`.
///
/// Every request header becomes `HTTP_<NAME>` except `Content-Type` and `Content-Length`
/// (they have their own variables), `Authorization` (§4.1.18: servers should not pass it) and
/// `Proxy` (the "httpoxy" hole: `HTTP_PROXY` would be read as a proxy setting), and every
/// header whose name contains `_`. CGI turns `-` into `_`, so `X_Forwarded_User` and
/// `X-Forwarded-User` would both become `HTTP_X_FORWARDED_USER`: a client could add to (or,
/// first in line, decide) a variable that a proxy in front of thaw set, the spoofing nginx and
/// Apache prevent the same way. Returns how many headers were dropped for that reason.
pub fn request_env(req: &CgiRequest<'_>, env: &mut Vec<(String, String)>) -> usize {
    let mut underscored = 0;
    let mut push = |k: &str, v: &str| env.push((k.to_owned(), v.to_owned()));
    push("GATEWAY_INTERFACE", "CGI/1.1");
    push(
        "SERVER_SOFTWARE",
        concat!("thaw/", env!("CARGO_PKG_VERSION")),
    );
    push(
        "SERVER_PROTOCOL",
        match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        },
    );
    if req.https {
        push("HTTPS", "on");
    }
    push("REQUEST_SCHEME", if req.https { "https" } else { "http" });
    push("SERVER_NAME", &req.server_addr.ip().to_string());
    push("SERVER_PORT", &req.server_addr.port().to_string());
    push("REMOTE_ADDR", &req.remote_addr.ip().to_string());
    push("REQUEST_METHOD", req.method.as_str());
    push("SCRIPT_NAME", req.script_name);
    push("PATH_INFO", req.path_info);
    push("QUERY_STRING", req.query);
    if let Some(ct) = req.headers.get(http::header::CONTENT_TYPE)
        && let Ok(ct) = ct.to_str()
    {
        push("CONTENT_TYPE", ct);
    }
    if let Some(len) = req.content_length {
        push("CONTENT_LENGTH", &len.to_string());
    }
    for (name, value) in req.headers {
        use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
        if name == CONTENT_TYPE || name == CONTENT_LENGTH || name == AUTHORIZATION {
            continue;
        }
        if name.as_str() == "proxy" || (name == http::header::HOST && req.authority.is_some()) {
            continue;
        }
        if name.as_str().contains('_') {
            underscored += 1;
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let mut key = String::with_capacity(5 + name.as_str().len());
        key.push_str("HTTP_");
        key.extend(name.as_str().chars().map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        // Repeated headers are joined as RFC 3875 §4.1.18 describes; `Cookie` with "; ", its
        // own separator (HTTP/2 clients may send each cookie as a field of its own, RFC 9113
        // §8.2.3, and cookie parsers split on ';').
        if let Some((_, existing)) = env.iter_mut().find(|(k, _)| *k == key) {
            existing.push_str(if name == http::header::COOKIE {
                "; "
            } else {
                ", "
            });
            existing.push_str(value);
        } else {
            env.push((key, value.to_owned()));
        }
    }
    if let Some(authority) = req.authority {
        env.push(("HTTP_HOST".to_owned(), authority.to_owned()));
    }
    underscored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<CgiResponse, CgiError> {
        parse_response(Bytes::copy_from_slice(s))
    }

    #[test]
    fn status_headers_and_body() {
        let r = parse(b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nhello")
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["content-type"], "text/plain");
        assert_eq!(r.headers["x-a"], "1");
        assert_eq!(&r.body[..], b"hello");
    }

    #[test]
    fn bare_newlines_and_defaults() {
        let r = parse(b"Content-Type: text/html\n\n<p>hi</p>\n").unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"<p>hi</p>\n");
        let r = parse(b"Location: /elsewhere\n\n").unwrap();
        assert_eq!(r.status, StatusCode::FOUND);
        assert!(r.body.is_empty());
    }

    #[test]
    fn body_may_contain_blank_lines() {
        let r = parse(b"Content-Type: text/plain\n\na\n\nb").unwrap();
        assert_eq!(&r.body[..], b"a\n\nb");
    }

    #[test]
    fn malformed_output_is_rejected() {
        assert_eq!(parse(b"").unwrap_err(), CgiError::Empty);
        assert_eq!(parse(b"hello world").unwrap_err(), CgiError::NoHeaderEnd);
        assert_eq!(
            parse(b"just text\n\nbody").unwrap_err(),
            CgiError::NotAField(1)
        );
        assert_eq!(parse(b"Bad Name: x\n\n").unwrap_err(), CgiError::BadName(1));
        assert_eq!(parse(b"X: a\x01b\n\n").unwrap_err(), CgiError::BadValue(1));
        for interim in [
            &b"Status: 100 Continue\n\n"[..],
            b"Status: 101 Switching\nUpgrade: h2c\n\n",
        ] {
            assert!(matches!(parse(interim), Err(CgiError::BadStatus(_))));
        }
        assert!(matches!(
            parse(b"Status: 99\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: 600 Nope\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: 2000\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: \n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert_eq!(parse(b"\n\nbody").unwrap_err(), CgiError::NotAField(1));
        let endless = vec![b'x'; MAX_HEADER_BYTES + 10];
        assert_eq!(parse(&endless).unwrap_err(), CgiError::NoHeaderEnd);
    }

    #[test]
    fn the_host_frames_the_response() {
        // Response splitting: a short Content-Length before a body holding a second response.
        let split =
            parse(b"Content-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert!(
            matches!(split, Err(CgiError::ContentLength { actual: 39, .. })),
            "{split:?}"
        );
        assert!(matches!(
            parse(b"Content-Length: 5\n\nab"),
            Err(CgiError::ContentLength { .. })
        ));
        assert!(matches!(
            parse(b"Content-Length: nope\n\nab"),
            Err(CgiError::ContentLength { .. })
        ));
        assert!(matches!(
            parse(b"Transfer-Encoding: chunked\nContent-Length: 2\n\nab"),
            Err(CgiError::Framing(_))
        ));
        // A matching length, and a length before an empty body (HEAD), are dropped.
        let r = parse(b"Content-Type: text/plain\nContent-Length: 2\n\nab").unwrap();
        assert!(!r.headers.contains_key("content-length"));
        let r = parse(b"Content-Type: text/plain\nContent-Length: 9\n\n").unwrap();
        assert!(!r.headers.contains_key("content-length"));
        // Hop-by-hop fields, and those Connection names, are dropped; the rest kept.
        let r = parse(
            b"Content-Type: text/plain\nConnection: close, X-Secret\nKeep-Alive: 5\nUpgrade: ws\n\
              Transfer-Encoding: chunked\nTE: trailers\nTrailer: X-T\nProxy-Connection: k\n\
              X-Secret: s\nX-Kept: yes\n\nok",
        )
        .unwrap();
        let names: Vec<_> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_output() {
        let full = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope";
        for i in 0..=full.len() {
            let _ = parse(&full[..i]);
        }
        // Every single byte value in every position of a short header.
        for pos in 0..8 {
            for byte in 0..=255u8 {
                let mut s = b"A: bc\n\nd".to_vec();
                s[pos] = byte;
                let _ = parse(&s);
            }
        }
    }

    #[test]
    fn env_follows_rfc_3875() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("x-request-id", "abc".parse().unwrap());
        headers.insert("authorization", "secret".parse().unwrap());
        headers.insert("proxy", "http://evil".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        headers.append("cookie", "a=1".parse().unwrap());
        headers.append("cookie", "b=2".parse().unwrap());
        headers.insert("x-forwarded-user", "alice".parse().unwrap());
        headers.insert("x_forwarded_user", "admin".parse().unwrap());
        let mut env = Vec::new();
        let dropped = request_env(
            &CgiRequest {
                method: &Method::POST,
                script_name: "/cgi",
                path_info: "/x/y",
                query: "a=1&b=2",
                headers: &headers,
                content_length: Some(3),
                remote_addr: "127.0.0.1:5000".parse().unwrap(),
                server_addr: "127.0.0.1:8080".parse().unwrap(),
                authority: None,
                version: http::Version::HTTP_11,
                https: false,
            },
            &mut env,
        );
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("REQUEST_METHOD"), Some("POST"));
        assert_eq!(get("SCRIPT_NAME"), Some("/cgi"));
        assert_eq!(get("PATH_INFO"), Some("/x/y"));
        assert_eq!(get("QUERY_STRING"), Some("a=1&b=2"));
        assert_eq!(get("CONTENT_TYPE"), Some("application/json"));
        assert_eq!(get("CONTENT_LENGTH"), Some("3"));
        assert_eq!(get("HTTP_X_REQUEST_ID"), Some("abc"));
        assert_eq!(get("HTTP_ACCEPT"), Some("a, b"));
        assert_eq!(get("HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get("HTTP_AUTHORIZATION"), None);
        assert_eq!(get("HTTP_PROXY"), None);
        assert_eq!(get("HTTP_CONTENT_TYPE"), None);
        assert_eq!(get("HTTP_X_FORWARDED_USER"), Some("alice"));
        assert_eq!(dropped, 1);

        // An absolute-form target's authority wins over Host.
        headers.insert("host", "from-header".parse().unwrap());
        let mut env = Vec::new();
        request_env(
            &CgiRequest {
                method: &Method::GET,
                script_name: "",
                path_info: "/",
                query: "",
                headers: &headers,
                content_length: None,
                remote_addr: "127.0.0.1:5000".parse().unwrap(),
                server_addr: "127.0.0.1:8080".parse().unwrap(),
                authority: Some("from-target:81"),
                version: http::Version::HTTP_11,
                https: false,
            },
            &mut env,
        );
        let hosts: Vec<&str> = env
            .iter()
            .filter(|(k, _)| k == "HTTP_HOST")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(hosts, ["from-target:81"]);
    }
}
