//! Write [thaw](https://github.com/thaw-rs/thaw) functions in Rust.
//!
//! A function is a plain Rust function from a [`Request`] to anything that implements
//! [`IntoResponse`], marked with [`#[handler]`](handler). Built for `wasm32-wasip2`, it becomes
//! a standard `wasi:http` proxy component: thaw runs it, and so do `wasmtime serve` and Spin.
//!
//! ```no_run
//! use thaw_sdk::{Request, handler};
//!
//! #[handler]
//! fn hello(req: Request) -> String {
//!     let name = thaw_sdk::query(&req, "name").unwrap_or_else(|| "world".into());
//!     format!("Hello, {name}!\n")
//! }
//! ```
//!
//! JSON in, JSON out, and errors that become responses:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use thaw_sdk::{Error, Json, Request, handler};
//!
//! #[derive(Deserialize)]
//! struct Order { quantity: u32 }
//! #[derive(Serialize)]
//! struct Answer { doubled: u32 }
//!
//! #[handler]
//! fn double(req: Request) -> Result<Json<Answer>, Error> {
//!     let order: Order = thaw_sdk::json(&req)?; // a 400 with serde's message if malformed
//!     if order.quantity == 0 {
//!         return Err(Error::bad_request("quantity must be positive"));
//!     }
//!     Ok(Json(Answer { doubled: order.quantity * 2 }))
//! }
//! ```
//!
//! An `async fn` handler runs on the SDK's executor and can call out, read its settings,
//! keep state, query databases and log ([`http`], [`config`], [`kv`], [`sql`], [`pg`], [`log`],
//! [`future`]):
//!
//! ```no_run
//! use thaw_sdk::{Request, handler, http, kv, log};
//!
//! #[handler]
//! async fn handle(_req: Request) -> Result<String, thaw_sdk::Error> {
//!     let calls = kv::Store::open("default")?.increment("calls", 1)?;
//!     let upstream = thaw_sdk::config::get("upstream")?.unwrap_or_default();
//!     let answer = http::get(&upstream).await?.into_body().text().await?;
//!     log::info!("called upstream", calls = calls, bytes = answer.len());
//!     Ok(answer)
//! }
//! ```
//!
//! The crate needs a `cdylib` crate type and the `wasm32-wasip2` target:
//! `cargo build --release --target wasm32-wasip2` produces `target/wasm32-wasip2/release/<name>.wasm`.
//!
//! # Expensive start-up, done once at deploy
//! Work a function does before it can answer (building a table, parsing embedded data) can
//! run at deploy time instead of per request: put it in a function marked [`#[init]`](init).
//! thaw runs it once when the function is deployed and snapshots the instance's memory
//! (Wizer); every request then starts from the snapshot, with the work already done. Keep
//! the result in a `static` that the handler reads, and initialise it lazily there too, so the
//! function also works on hosts that do not snapshot:
//!
//! ```no_run
//! use std::sync::OnceLock;
//! use thaw_sdk::{Request, handler, init};
//!
//! static SQUARES: OnceLock<Vec<u64>> = OnceLock::new();
//! fn squares() -> Vec<u64> { (0..1_000_000).map(|i| i * i).collect() }
//!
//! #[init]
//! fn warm_up() {
//!     SQUARES.get_or_init(squares);
//! }
//!
//! #[handler]
//! fn handle(_req: Request) -> String {
//!     format!("{}\n", SQUARES.get_or_init(squares)[999])
//! }
//! ```
//!
//! The init function may not call the host (no clocks, random numbers, environment
//! variables or I/O: none of that can be captured in a snapshot, and a `HashMap`'s random
//! seed counts); a deploy whose init does is refused with the name of the call.
//!
//! # What happens per request
//! The SDK reads the whole request body into memory, calls the handler, then writes the
//! response (streamed to the host in chunks). Headers the host forbids in responses are
//! dropped by `wasi:http` itself. A panic in the handler traps the instance: the host answers
//! 500 and the next request gets a fresh instance. For bodies of unbounded size, an
//! `async fn` handler takes `http::Request<Body>` and returns `http::Response<Body>`: see
//! [`Body`].

#![deny(missing_docs)]

// The Rust snippets of thaw's guide compile as this crate's doctests (only under
// `cargo test`: the guide is outside the published crate).
#[cfg(doctest)]
#[doc = include_str!("../../docs/functions.md")]
struct GuideSnippets;

use std::io::{Read as _, Write as _};

pub mod config;
pub mod event;
pub mod future;
pub mod http;
pub mod kv;
pub mod log;
pub mod pg;
pub mod sql;

pub use ::http::{HeaderMap, HeaderValue, Method, StatusCode};
pub use thaw_sdk_macro::{handler, init};
/// A streaming body: a request's as it arrives, or a response's as it is produced.
///
/// Take `http::Request<Body>` instead of [`Request`] in an `async fn` handler to read the
/// request as it arrives, and return `http::Response<Body>` to answer with a stream:
///
/// ```no_run
/// use thaw_sdk::{Body, handler, http};
///
/// #[handler]
/// async fn upload(req: http::Request<Body>) -> http::Response<Body> {
///     // Echo the body back without holding it in memory.
///     http::Response::new(req.into_body())
/// }
/// ```
///
/// Build one from bytes or text (`Body::from("hi")`), from JSON (`Body::from_json`), or from a
/// stream of chunks (`Body::from_try_stream`); read one whole with `contents().await`.
pub use wstd::http::Body;

/// Headers as `wasi:http` fields (for a response, or an outbound request).
fn wasi_fields(
    headers: &HeaderMap,
) -> Result<wasi::http::types::Fields, wasi::http::types::HeaderError> {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    wasi::http::types::Fields::from_list(&entries)
}

/// The bindings of `wasi:config` and `wasi:keyvalue` (vendored in `wit/`).
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "sdk", generate_all });
}

/// The request a handler receives: the body is already read.
///
/// ```
/// let req: thaw_sdk::Request = thaw_sdk::http::Request::post("/orders").body(b"{}".to_vec()).unwrap();
/// assert_eq!(req.body(), b"{}");
/// ```
pub type Request = ::http::Request<Vec<u8>>;

/// The response a handler may build by hand (see [`IntoResponse`] for shortcuts).
///
/// ```
/// let res: thaw_sdk::Response = thaw_sdk::http::Response::builder()
///     .status(201)
///     .header("location", "/orders/7")
///     .body(Vec::new())
///     .unwrap();
/// ```
pub type Response = ::http::Response<Vec<u8>>;

/// Parses the request body as JSON. A malformed body is a 400 [`Error`] with serde's message.
///
/// ```
/// let req = thaw_sdk::http::Request::post("/").body(br#"{"n": 2}"#.to_vec()).unwrap();
/// let v: serde_json::Value = thaw_sdk::json(&req).unwrap();
/// assert_eq!(v["n"], 2);
/// ```
pub fn json<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Error> {
    serde_json::from_slice(req.body())
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
}

/// The request body as UTF-8 text. Invalid UTF-8 is a 400 [`Error`].
///
/// ```
/// let req = thaw_sdk::http::Request::post("/").body(b"hi".to_vec()).unwrap();
/// assert_eq!(thaw_sdk::text(&req).unwrap(), "hi");
/// ```
pub fn text(req: &Request) -> Result<&str, Error> {
    std::str::from_utf8(req.body()).map_err(|_| Error::bad_request("the body is not UTF-8"))
}

/// The first value of query parameter `key`, percent-decoded.
///
/// ```
/// let req = thaw_sdk::http::Request::get("http://h/?name=J%C3%BCrgen").body(Vec::new()).unwrap();
/// assert_eq!(thaw_sdk::query(&req, "name").as_deref(), Some("Jürgen"));
/// ```
pub fn query(req: &Request, key: &str) -> Option<String> {
    query_pairs(req).find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Every query parameter, percent-decoded, in order.
///
/// ```
/// let req = thaw_sdk::http::Request::get("http://h/?a=1&b=2").body(Vec::new()).unwrap();
/// assert_eq!(thaw_sdk::query_pairs(&req).count(), 2);
/// ```
pub fn query_pairs(req: &Request) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// An environment variable from the function's spec (a function sees nothing else).
///
/// ```no_run
/// let greeting = thaw_sdk::env("GREETING").unwrap_or_else(|| "Hello".into());
/// ```
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// An error that becomes a response: its status and its message as a plain-text body.
///
/// Any `std::error::Error` converts into a 500 with its message, so `?` works on I/O, parse
/// and serde errors; use [`Error::bad_request`] or [`Error::new`] for the client's mistakes.
///
/// ```
/// use thaw_sdk::{Error, StatusCode};
/// let e = Error::bad_request("quantity must be positive");
/// assert_eq!(e.status(), StatusCode::BAD_REQUEST);
/// assert_eq!(e.message(), "quantity must be positive");
/// let e = Error::new(StatusCode::CONFLICT, "taken");
/// let e = Error::not_found("no such order");
/// ```
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    message: String,
}

impl Error {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message the client gets.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl<E: std::error::Error + 'static> From<E> for Error {
    /// A 500 with the error's message; an outbound call's error is a 502 (504 when it timed
    /// out), as a gateway answers.
    fn from(error: E) -> Self {
        let status = match (&error as &dyn std::any::Any).downcast_ref::<http::Error>() {
            Some(outbound) => outbound.status(),
            None => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

/// A value serialized as a JSON response (`Content-Type: application/json`).
///
/// ```
/// use thaw_sdk::{IntoResponse, Json};
/// let res = Json(serde_json::json!({"ok": true})).into_response();
/// assert_eq!(res.headers()["content-type"], "application/json");
/// ```
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

/// Anything a handler may return.
///
/// ```
/// use thaw_sdk::{IntoResponse, StatusCode};
/// let res = (StatusCode::CREATED, "made").into_response();
/// assert_eq!(res.status(), StatusCode::CREATED);
/// ```
pub trait IntoResponse {
    /// The response.
    fn into_response(self) -> Response;
}

fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = ::http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for ::http::Response<String> {
    fn into_response(self) -> Response {
        self.map(String::into_bytes)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        with_type(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            self.into_bytes(),
        )
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        self.to_owned().into_response()
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        with_type(StatusCode::OK, "application/octet-stream", self)
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut response = ::http::Response::new(Vec::new());
        *response.status_mut() = self;
        response
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => with_type(StatusCode::OK, "application/json", body),
            Err(e) => Error::from(e).into_response(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = self.message.into_bytes();
        body.push(b'\n');
        with_type(self.status, "text/plain; charset=utf-8", body)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

/// Used by the code `#[init]` generates: the `wizer-initialize` export. Not a stable API.
#[doc(hidden)]
pub mod __init {
    wit_bindgen::generate!({
        inline: "package thaw:init; world init { export wizer-initialize: func(); }",
        pub_export_macro: true,
        export_macro_name: "export_init",
        default_bindings_module: "::thaw_sdk::__init",
    });
}

/// Used by the code `#[handler]` generates; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wasi;

    use super::*;
    use wasi::http::types::{
        IncomingBody, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse,
        ResponseOutparam, Scheme,
    };

    /// Reads the request, calls the handler, writes the response.
    pub fn serve<R: IntoResponse>(
        incoming: IncomingRequest,
        out: ResponseOutparam,
        handler: fn(Request) -> R,
    ) {
        let response = match read_request(incoming) {
            Ok(request) => handler(request).into_response(),
            Err(error) => error.into_response(),
        };
        write_response(response, out);
    }

    fn read_request(incoming: IncomingRequest) -> Result<Request, Error> {
        let method = match incoming.method() {
            WasiMethod::Get => Method::GET,
            WasiMethod::Head => Method::HEAD,
            WasiMethod::Post => Method::POST,
            WasiMethod::Put => Method::PUT,
            WasiMethod::Delete => Method::DELETE,
            WasiMethod::Connect => Method::CONNECT,
            WasiMethod::Options => Method::OPTIONS,
            WasiMethod::Trace => Method::TRACE,
            WasiMethod::Patch => Method::PATCH,
            WasiMethod::Other(other) => Method::from_bytes(other.as_bytes())
                .map_err(|_| Error::bad_request("invalid method"))?,
        };
        let scheme = match incoming.scheme() {
            Some(Scheme::Https) => "https",
            _ => "http",
        };
        let authority = incoming.authority().unwrap_or_else(|| "localhost".into());
        let path = incoming.path_with_query().unwrap_or_else(|| "/".into());
        let mut builder = ::http::Request::builder()
            .method(method)
            .uri(format!("{scheme}://{authority}{path}"));
        for (name, value) in incoming.headers().entries() {
            builder = builder.header(name, value);
        }
        let body = incoming.consume().map_err(|()| {
            Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "request body already taken",
            )
        })?;
        let mut bytes = Vec::new();
        {
            let mut stream = body.stream().map_err(|()| {
                Error::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request body stream unavailable",
                )
            })?;
            stream
                .read_to_end(&mut bytes)
                .map_err(|e| Error::bad_request(format!("reading the request body: {e}")))?;
        }
        let _trailers = IncomingBody::finish(body);
        builder
            .body(bytes)
            .map_err(|e| Error::bad_request(format!("invalid request: {e}")))
    }

    fn write_response(response: Response, out: ResponseOutparam) {
        let (parts, body) = response.into_parts();
        let outgoing = match head(&parts) {
            Ok(outgoing) => outgoing,
            Err(error) => return write_response(error.into_response(), out),
        };
        let Ok(outgoing_body) = outgoing.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(outgoing));
        {
            let Ok(mut stream) = outgoing_body.write() else {
                return;
            };
            // `write_all` on the wasi stream honours the host's back-pressure (check-write).
            if stream.write_all(&body).is_err() || stream.blocking_flush().is_err() {
                return;
            }
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }

    /// The response's head for wasi:http: its status and headers, or a 500 naming the header
    /// wasi:http refuses. Both handler shapes answer through it.
    fn head(parts: &::http::response::Parts) -> Result<OutgoingResponse, Error> {
        let headers = wasi_fields(&parts.headers).map_err(|e| {
            Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the handler set a header wasi:http refuses: {e:?}"),
            )
        })?;
        let outgoing = OutgoingResponse::new(headers);
        let _ = outgoing.set_status_code(parts.status.as_u16());
        Ok(outgoing)
    }

    /// What an `async fn` handler may take: the buffered [`Request`], or
    /// `http::Request<Body>` to read the body as it arrives.
    pub trait FromIncoming: Sized {
        /// Reads the request (its head; the whole body for [`Request`]).
        fn from_incoming(incoming: IncomingRequest) -> impl Future<Output = Result<Self, Error>>;
    }

    impl FromIncoming for ::http::Request<Body> {
        async fn from_incoming(incoming: IncomingRequest) -> Result<Self, Error> {
            wstd::http::request::try_from_incoming(incoming)
                .map_err(|e| Error::bad_request(format!("invalid request: {e:#}")))
        }
    }

    impl FromIncoming for Request {
        async fn from_incoming(incoming: IncomingRequest) -> Result<Self, Error> {
            let (parts, mut body) = <::http::Request<Body>>::from_incoming(incoming)
                .await?
                .into_parts();
            let bytes = body
                .bytes_contents()
                .await
                .map_err(|e| Error::bad_request(format!("reading the request body: {e:#}")))?;
            Ok(Request::from_parts(parts, Vec::from(bytes)))
        }
    }

    /// What an `async fn` handler may return: anything [`IntoResponse`], or
    /// `http::Response<Body>` to stream the body.
    pub trait Respond {
        /// The response with its body as a stream.
        fn into_streaming(self) -> ::http::Response<Body>;
    }

    impl<T: IntoResponse> Respond for T {
        fn into_streaming(self) -> ::http::Response<Body> {
            self.into_response().map(Body::from)
        }
    }

    impl Respond for ::http::Response<Body> {
        fn into_streaming(self) -> ::http::Response<Body> {
            self
        }
    }

    /// Reads the request, runs the `async` handler on the executor (wstd's reactor over
    /// `wasi:io/poll`) and streams the response as it is produced.
    pub fn serve_async<A, F, R, H>(incoming: IncomingRequest, out: ResponseOutparam, handler: H)
    where
        A: FromIncoming,
        F: Future<Output = R>,
        R: Respond,
        H: FnOnce(A) -> F,
    {
        wstd::runtime::block_on(async move {
            let response = match A::from_incoming(incoming).await {
                Ok(request) => handler(request).await.into_streaming(),
                Err(error) => error.into_streaming(),
            };
            write_streaming(response, out).await;
        });
    }

    async fn write_streaming(response: ::http::Response<Body>, out: ResponseOutparam) {
        use wstd::http::BodyExt as _;
        let (parts, body) = response.into_parts();
        let outgoing = match head(&parts) {
            Ok(outgoing) => outgoing,
            Err(error) => return write_response(error.into_response(), out),
        };
        let Ok(outgoing_body) = outgoing.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(outgoing));
        {
            let Ok(stream) = outgoing_body.write() else {
                return;
            };
            let stream = wstd::io::AsyncOutputStream::new(stream);
            let mut body = body.into_boxed_body();
            while let Some(frame) = body.frame().await {
                // A body that fails half-way is not finished: the host cuts the response
                // off rather than pass a truncated body as complete.
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data()
                    && stream.write_all(&data).await.is_err()
                {
                    return;
                }
            }
            if stream.flush().await.is_err() {
                return;
            }
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, body: &str) -> Request {
        ::http::Request::builder()
            .uri(uri)
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    #[test]
    fn query_is_decoded() {
        let req = request("http://h/p?name=J%C3%BCrgen&x=1&name=second", "");
        assert_eq!(query(&req, "name").as_deref(), Some("Jürgen"));
        assert_eq!(query(&req, "missing"), None);
        assert_eq!(query_pairs(&req).count(), 3);
    }

    #[test]
    fn json_errors_are_400() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            a: u32,
        }
        let err = json::<T>(&request("/", "{")).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        json::<T>(&request("/", r#"{"a": 1}"#)).unwrap();
    }

    #[test]
    fn into_response_shortcuts() {
        let r = (StatusCode::CREATED, "made").into_response();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.body(), b"made");
        let r = Json(serde_json::json!({"a": 1})).into_response();
        assert_eq!(r.headers()["content-type"], "application/json");
        let r: Result<String, Error> = Err(Error::bad_request("nope"));
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.body(), b"nope\n");
        let io = std::io::Error::other("disk on fire");
        assert_eq!(Error::from(io).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
