//! HTTP: the [`http`](https://docs.rs/http) crate's types, and outbound requests over
//! `wasi:http/outgoing-handler`.
//!
//! Everything from the `http` crate is here (`thaw_sdk::http::Response::builder()`,
//! `thaw_sdk::http::header`, ...), plus [`send`] and its shorthands. Outbound calls are
//! `async`: make them from an `async fn` handler. Several can be in flight at once; join them
//! with [`crate::future::join`] or [`crate::future::join_all`], and the handler waits for the
//! slowest, not for the sum.
//!
//! ```no_run
//! use thaw_sdk::{Request, handler};
//!
//! #[handler]
//! async fn handle(_req: Request) -> Result<String, thaw_sdk::Error> {
//!     let weather = thaw_sdk::http::get("https://api.example.com/weather").await?;
//!     Ok(weather.into_body().text().await?)
//! }
//! ```
//!
//! # What the host allows
//! A request leaves only for a host in the function's `allowed_outbound_hosts` (nothing by
//! default), and each invocation may send `max_outbound_requests`; anything else fails with
//! [`Error::Denied`] or [`Error::TooManyRequests`], whose messages name the setting to
//! change. The host also caps every timeout at the function's `outbound_timeout_ms`.
//!
//! # Response bodies
//! [`Incoming`] reads the body as it arrives. [`Incoming::bytes`], [`Incoming::text`] and
//! [`Incoming::json`] gather it into memory, at most [`MAX_RESPONSE_BYTES`] of it (a larger
//! body is [`Error::ResponseTooLarge`]; [`Incoming::bytes_up_to`] sets another bound);
//! [`Incoming::chunk`] reads it piece by piece, for bodies of any size.

pub use ::http::*;

// `http::Result` (the glob above) is not re-exported: inside this module `Result` is std's.
#[allow(hidden_glob_reexports)]
use std::result::Result;
use std::time::Duration;

use wasi::http::types::ErrorCode;

use crate::Body;

/// How much of a response body [`Incoming::bytes`] (and `text`, `json`) gathers: 16 MiB.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Sends `request` and waits for the response's head; the body is read from the returned
/// response as it arrives.
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let request = thaw_sdk::http::Request::post("https://api.example.com/orders")
///     .header("content-type", "application/json")
///     .body(r#"{"quantity": 2}"#)?;
/// let response = thaw_sdk::http::send(request).await?;
/// assert!(response.status().is_success());
/// # Ok(()) }
/// ```
pub async fn send<B: Into<Body>>(request: Request<B>) -> Result<Response<Incoming>, Error> {
    send_with(request, Timeouts::default()).await
}

/// `GET url`.
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let page = thaw_sdk::http::get("https://example.com/").await?;
/// println!("{}", page.into_body().text().await?);
/// # Ok(()) }
/// ```
pub async fn get(url: &str) -> Result<Response<Incoming>, Error> {
    send(Request::get(url).body(Body::empty())?).await
}

/// `POST url` with `body`.
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let response = thaw_sdk::http::post("https://example.com/hook", "ping").await?;
/// # Ok(()) }
/// ```
pub async fn post(url: &str, body: impl Into<Body>) -> Result<Response<Incoming>, Error> {
    send(Request::post(url).body(body.into())?).await
}

/// `GET url`, a 2xx response's body parsed as JSON (any other status is
/// [`Error::Status`]).
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// struct Rate { eur: f64 }
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let rate: Rate = thaw_sdk::http::get_json("https://rates.example.com/usd").await?;
/// # Ok(()) }
/// ```
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, Error> {
    let request = Request::get(url)
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())?;
    json_of(send(request).await?).await
}

/// `POST url` with `value` as JSON, a 2xx response's body parsed as JSON.
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let created: serde_json::Value =
///     thaw_sdk::http::post_json("https://api.example.com/orders", &serde_json::json!({"n": 2}))
///         .await?;
/// # Ok(()) }
/// ```
pub async fn post_json<T: serde::Serialize, R: serde::de::DeserializeOwned>(
    url: &str,
    value: &T,
) -> Result<R, Error> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Json(e.to_string()))?;
    let request = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body))?;
    json_of(send(request).await?).await
}

async fn json_of<R: serde::de::DeserializeOwned>(response: Response<Incoming>) -> Result<R, Error> {
    let status = response.status();
    let body = response.into_body();
    if !status.is_success() {
        return Err(Error::Status {
            url: body.url,
            status,
        });
    }
    body.json().await
}

/// A response body being received: read it whole ([`Incoming::text`], [`Incoming::json`],
/// [`Incoming::bytes`]) or piece by piece ([`Incoming::chunk`]).
///
/// ```no_run
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let response = thaw_sdk::http::get("https://example.com/").await?;
/// let status = response.status();
/// let body: thaw_sdk::http::Incoming = response.into_body();
/// let text = body.text().await?;
/// # Ok(()) }
/// ```
pub struct Incoming {
    // Declared before `body`: a stream must be dropped before the body it belongs to.
    stream: Option<wasi::io::streams::InputStream>,
    body: Option<wasi::http::types::IncomingBody>,
    url: String,
    content_length: Option<u64>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The whole body, at most [`MAX_RESPONSE_BYTES`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), thaw_sdk::http::Error> {
    /// let bytes = thaw_sdk::http::get("https://example.com/logo.png").await?.into_body().bytes().await?;
    /// # Ok(()) }
    /// ```
    pub async fn bytes(self) -> Result<Vec<u8>, Error> {
        self.bytes_up_to(MAX_RESPONSE_BYTES).await
    }

    /// The whole body, or [`Error::ResponseTooLarge`] as soon as it passes `limit` bytes
    /// (what arrived so far is dropped).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), thaw_sdk::http::Error> {
    /// let small = thaw_sdk::http::get("https://example.com/").await?.into_body().bytes_up_to(1024).await?;
    /// # Ok(()) }
    /// ```
    pub async fn bytes_up_to(mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(
            self.content_length
                .map_or(0, |n| n.min(limit as u64) as usize),
        );
        while let Some(chunk) = self.chunk().await? {
            if out.len() + chunk.len() > limit {
                return Err(Error::ResponseTooLarge {
                    url: self.url,
                    limit,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The whole body as UTF-8 text, at most [`MAX_RESPONSE_BYTES`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), thaw_sdk::http::Error> {
    /// let text = thaw_sdk::http::get("https://example.com/").await?.into_body().text().await?;
    /// # Ok(()) }
    /// ```
    pub async fn text(self) -> Result<String, Error> {
        let url = self.url.clone();
        String::from_utf8(self.bytes().await?)
            .map_err(|_| Error::Body(format!("the response from {url} is not UTF-8")))
    }

    /// The whole body parsed as JSON, at most [`MAX_RESPONSE_BYTES`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), thaw_sdk::http::Error> {
    /// let v: serde_json::Value = thaw_sdk::http::get("https://example.com/a.json").await?.into_body().json().await?;
    /// # Ok(()) }
    /// ```
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let url = self.url.clone();
        serde_json::from_slice(&self.bytes().await?)
            .map_err(|e| Error::Json(format!("the response from {url}: {e}")))
    }

    /// The next piece of the body as it arrives, `None` at its end: for bodies of any size.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), thaw_sdk::http::Error> {
    /// let mut body = thaw_sdk::http::get("https://example.com/big").await?.into_body();
    /// let mut total = 0;
    /// while let Some(chunk) = body.chunk().await? {
    ///     total += chunk.len();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        use wasi::io::streams::StreamError;
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        loop {
            wstd::runtime::AsyncPollable::new(stream.subscribe())
                .wait_for()
                .await;
            match stream.read(CHUNK) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Ok(Some(bytes)),
                Err(StreamError::Closed) => {
                    self.stream = None;
                    if let Some(body) = self.body.take() {
                        drop(wasi::http::types::IncomingBody::finish(body));
                    }
                    return Ok(None);
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    self.stream = None;
                    return Err(match wasi::http::types::http_error_code(&e) {
                        Some(code) => Error::from_code(&self.url, code),
                        None => Error::Body(format!(
                            "reading the response from {}: {}",
                            self.url,
                            e.to_debug_string()
                        )),
                    });
                }
            }
        }
    }
}

/// The most a read of a response body asks for at once.
const CHUNK: u64 = 64 << 10;

/// Why an outbound request failed. Its message says what to change where there is something
/// to change (`allowed_outbound_hosts`, `max_outbound_requests`).
///
/// ```no_run
/// use thaw_sdk::http;
/// # async fn f() -> Result<String, thaw_sdk::Error> {
/// match http::get("https://api.example.com/v1").await {
///     Ok(response) => Ok(response.into_body().text().await?),
///     Err(http::Error::Denied { .. }) => Ok("not allowed to call the API".into()),
///     Err(http::Error::Timeout { .. }) => Ok("the API is slow; try later".into()),
///     Err(other) => Err(other.into()), // a 502 with the message
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The host refused the request: its host is not in the function's
    /// `allowed_outbound_hosts`.
    Denied {
        /// The request's URL.
        url: String,
    },
    /// The invocation already sent its `max_outbound_requests`.
    TooManyRequests {
        /// The request's URL.
        url: String,
    },
    /// The host name did not resolve.
    Dns {
        /// The request's URL.
        url: String,
        /// What the resolver said.
        detail: String,
    },
    /// Nothing listens there, or the connection was refused or reset.
    ConnectionRefused {
        /// The request's URL.
        url: String,
    },
    /// No answer in time (connecting, the first byte, or between bytes).
    Timeout {
        /// The request's URL.
        url: String,
        /// Which wait ran out.
        stage: &'static str,
    },
    /// The response body was larger than the limit it was read with.
    ResponseTooLarge {
        /// The request's URL.
        url: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A `get_json`/`post_json` response had a status other than 2xx.
    Status {
        /// The request's URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// A body that is not what was expected (not UTF-8, not readable).
    Body(String),
    /// JSON that did not serialize or parse.
    Json(String),
    /// The request could not be built (a bad URL or header).
    InvalidRequest(String),
    /// Any other failure, as `wasi:http` described it.
    Other {
        /// The request's URL.
        url: String,
        /// The description.
        detail: String,
    },
}

impl Error {
    fn from_code(url: &str, code: ErrorCode) -> Self {
        let url = url.to_owned();
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied { url },
            ErrorCode::ConnectionLimitReached => Error::TooManyRequests { url },
            ErrorCode::DnsError(e) => Error::Dns {
                url,
                detail: e.rcode.unwrap_or_else(|| "no answer".into()),
            },
            ErrorCode::DnsTimeout => Error::Dns {
                url,
                detail: "timed out".into(),
            },
            ErrorCode::DestinationNotFound => Error::Dns {
                url,
                detail: "not found".into(),
            },
            ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpUnroutable => Error::ConnectionRefused { url },
            ErrorCode::ConnectionTimeout => Error::Timeout {
                url,
                stage: "connecting",
            },
            ErrorCode::HttpResponseTimeout => Error::Timeout {
                url,
                stage: "waiting for the response",
            },
            ErrorCode::ConnectionReadTimeout => Error::Timeout {
                url,
                stage: "reading the response",
            },
            ErrorCode::ConnectionWriteTimeout => Error::Timeout {
                url,
                stage: "sending the request",
            },
            ErrorCode::HttpResponseBodySize(limit) => Error::ResponseTooLarge {
                url,
                limit: limit.map_or(0, |l| l as usize),
            },
            other => Error::Other {
                url,
                detail: format!("{other:?}"),
            },
        }
    }

    /// The status a handler that passes this error on with `?` answers: 504 for a timeout,
    /// 502 for anything else.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied { url } => write!(
                f,
                "request to {url} denied: its host is not in the function's allowed_outbound_hosts \
                 (add \"{}\" to allowed_outbound_hosts in thaw.toml)",
                origin(url)
            ),
            Error::TooManyRequests { url } => write!(
                f,
                "request to {url} refused: this invocation already sent its max_outbound_requests \
                 (raise limits.max_outbound_requests in thaw.toml)"
            ),
            Error::Dns { url, detail } => {
                write!(f, "request to {url}: name lookup failed ({detail})")
            }
            Error::ConnectionRefused { url } => write!(f, "request to {url}: connection refused"),
            Error::Timeout { url, stage } => write!(
                f,
                "request to {url} timed out {stage} (the host caps waits at the function's outbound_timeout_ms)"
            ),
            Error::ResponseTooLarge { url, limit } => {
                write!(f, "the response from {url} is larger than {limit} bytes")
            }
            Error::Status { url, status } => write!(f, "{url} answered {status}"),
            Error::Body(detail) | Error::Json(detail) | Error::InvalidRequest(detail) => {
                f.write_str(detail)
            }
            Error::Other { url, detail } => write!(f, "request to {url} failed: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<::http::Error> for Error {
    fn from(error: ::http::Error) -> Self {
        Error::InvalidRequest(format!("invalid request: {error}"))
    }
}

/// `scheme://host[:port]` of a URL, as `allowed_outbound_hosts` spells it.
fn origin(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            },
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// `scheme://host[:port]/path` of a request: no user info, no query.
fn shown(uri: &Uri) -> String {
    let path = uri.path();
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        },
        _ => path.to_owned(),
    }
}

/// How long to wait, for [`send_with`] (which has an example).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// For the connection.
    pub connect: Option<Duration>,
    /// For the response's head.
    pub first_byte: Option<Duration>,
    /// Between two pieces of the body.
    pub between_bytes: Option<Duration>,
}

/// [`send`] with shorter waits than the host's (the host's `outbound_timeout_ms` caps them).
///
/// ```no_run
/// use std::time::Duration;
/// use thaw_sdk::http::{Request, Timeouts, send_with};
/// # async fn f() -> Result<(), thaw_sdk::http::Error> {
/// let quick = Timeouts { first_byte: Some(Duration::from_millis(200)), ..Default::default() };
/// let response = send_with(Request::get("https://example.com/").body(())?, quick).await?;
/// # Ok(()) }
/// ```
pub async fn send_with<B: Into<Body>>(
    request: Request<B>,
    timeouts: Timeouts,
) -> Result<Response<Incoming>, Error> {
    // Errors name the URL without its query or user info: those may hold a key, and an
    // error's message may end up in a response.
    let url = shown(request.uri());
    let (parts, body) = request.into_parts();
    let outgoing = outgoing_request(&parts, &url)?;
    let options = request_options(timeouts);
    let outgoing_body = outgoing
        .body()
        .map_err(|()| invalid(&url, "the body was taken"))?;
    let pending = wasi::http::outgoing_handler::handle(outgoing, Some(options))
        .map_err(|code| Error::from_code(&url, code))?;

    // The body is sent while the response is awaited. Their results are looked at together:
    // when the host refuses the request, the body's stream closes too, and the response's
    // error is the one that says why.
    let sending = send_body(outgoing_body, body, &url);
    let receiving = receive_head(&pending, &url);
    let (sent, received) = crate::future::join(sending, receiving).await;
    let response = received?;
    sent?;
    into_response(response, url)
}

/// The error of a request thaw cannot express over WASI: `what` is wrong with it.
fn invalid(url: &str, what: &str) -> Error {
    Error::InvalidRequest(format!("invalid request to {url}: {what}"))
}

/// The WASI request for `parts`' head: headers, method, scheme, authority and path.
fn outgoing_request(
    parts: &request::Parts,
    url: &str,
) -> Result<wasi::http::types::OutgoingRequest, Error> {
    use wasi::http::types::{Method as WasiMethod, OutgoingRequest, Scheme as WasiScheme};
    let headers = crate::wasi_fields(&parts.headers)
        .map_err(|e| invalid(url, &format!("a header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match parts.method {
        Method::GET => WasiMethod::Get,
        Method::HEAD => WasiMethod::Head,
        Method::POST => WasiMethod::Post,
        Method::PUT => WasiMethod::Put,
        Method::DELETE => WasiMethod::Delete,
        Method::CONNECT => WasiMethod::Connect,
        Method::OPTIONS => WasiMethod::Options,
        Method::TRACE => WasiMethod::Trace,
        Method::PATCH => WasiMethod::Patch,
        ref other => WasiMethod::Other(other.as_str().to_owned()),
    };
    let scheme = match parts.uri.scheme_str() {
        Some("http") => WasiScheme::Http,
        Some("https") | None => WasiScheme::Https,
        Some(other) => WasiScheme::Other(other.to_owned()),
    };
    outgoing
        .set_method(&method)
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .map_err(|()| invalid(url, "the method or scheme"))?;
    let Some(authority) = parts.uri.authority() else {
        return Err(invalid(url, "no host"));
    };
    outgoing
        .set_authority(Some(authority.as_str()))
        .map_err(|()| invalid(url, "the host"))?;
    if let Some(path) = parts.uri.path_and_query() {
        outgoing
            .set_path_with_query(Some(path.as_str()))
            .map_err(|()| invalid(url, "the path"))?;
    }
    Ok(outgoing)
}

/// The WASI request options for `timeouts`.
fn request_options(timeouts: Timeouts) -> wasi::http::types::RequestOptions {
    let options = wasi::http::types::RequestOptions::new();
    let nanos = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    // A host that does not support a timeout refuses it; the host's own cap still holds.
    if let Some(d) = timeouts.connect {
        let _ = options.set_connect_timeout(Some(nanos(d)));
    }
    if let Some(d) = timeouts.first_byte {
        let _ = options.set_first_byte_timeout(Some(nanos(d)));
    }
    if let Some(d) = timeouts.between_bytes {
        let _ = options.set_between_bytes_timeout(Some(nanos(d)));
    }
    options
}

/// Writes `body` into the request's `outgoing_body` frame by frame, then finishes it.
async fn send_body<B: Into<Body>>(
    outgoing_body: wasi::http::types::OutgoingBody,
    body: B,
    url: &str,
) -> Result<(), Error> {
    use wstd::http::BodyExt as _;
    let stream = outgoing_body
        .write()
        .map_err(|()| Error::Body("the request body was taken".into()))?;
    {
        let stream = wstd::io::AsyncOutputStream::new(stream);
        let mut body = body.into().into_boxed_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Body(format!("the request body: {e:#}")))?;
            if let Ok(data) = frame.into_data() {
                stream
                    .write_all(&data)
                    .await
                    .map_err(|e| Error::Body(format!("sending the request body: {e}")))?;
            }
        }
        stream
            .flush()
            .await
            .map_err(|e| Error::Body(format!("sending the request body: {e}")))?;
    }
    wasi::http::types::OutgoingBody::finish(outgoing_body, None)
        .map_err(|code| Error::from_code(url, code))
}

/// Waits for the response's head.
async fn receive_head(
    pending: &wasi::http::types::FutureIncomingResponse,
    url: &str,
) -> Result<wasi::http::types::IncomingResponse, Error> {
    wstd::runtime::AsyncPollable::new(pending.subscribe())
        .wait_for()
        .await;
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(Error::from_code(url, code)),
        _ => Err(Error::Other {
            url: url.to_owned(),
            detail: "the response was already taken".into(),
        }),
    }
}

/// The response with its head and an [`Incoming`] body that reads the WASI body's stream.
fn into_response(
    response: wasi::http::types::IncomingResponse,
    url: String,
) -> Result<Response<Incoming>, Error> {
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers().entries() {
        builder = builder.header(name, value);
    }
    let body = response.consume().map_err(|()| Error::Other {
        url: url.clone(),
        detail: "the response body was taken".into(),
    })?;
    let stream = body.stream().map_err(|()| Error::Other {
        url: url.clone(),
        detail: "the response body stream was taken".into(),
    })?;
    let incoming = Incoming {
        stream: Some(stream),
        body: Some(body),
        url: url.clone(),
        content_length: None,
    };
    let mut response = builder.body(incoming).map_err(|e| Error::Other {
        url,
        detail: format!("the response's head: {e}"),
    })?;
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    response.body_mut().content_length = length;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_request_names_the_field_and_the_origin() {
        let uri: Uri = "https://user:secret@api.example.com:8443/v1/x?key=secret"
            .parse()
            .unwrap();
        assert_eq!(shown(&uri), "https://api.example.com:8443/v1/x");
        let e = Error::Denied { url: shown(&uri) };
        let text = e.to_string();
        assert!(text.contains("allowed_outbound_hosts"), "{text}");
        assert!(text.contains("\"https://api.example.com:8443\""), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let t = Error::Timeout {
            url: "http://x/".into(),
            stage: "connecting",
        };
        assert_eq!(crate::Error::from(t).status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
