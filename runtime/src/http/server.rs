//! The HTTP listeners: the data plane (functions) and the admin API, with graceful shutdown.
//!
//! Both are hyper 1 servers on tokio, one task per connection, speaking HTTP/1.1 and HTTP/2:
//! on a plain listener a connection that opens with HTTP/2's preface is HTTP/2 (h2c by prior
//! knowledge, as gRPC clients and proxies speak to backends), any other HTTP/1.1. On a TLS
//! listener ([`super::tls`]) ALPN decides: `h2` is HTTP/2 only (a client that then speaks
//! HTTP/1.1 gets a protocol error and the connection closes), `http/1.1` HTTP/1.1 only, and
//! no ALPN either, by the preface. Every request, an HTTP/2 stream as much as an HTTP/1.1
//! request, goes through the same handler, so limits, timeouts and body rules hold per
//! stream. Shutdown stops accepting, lets every in-flight request finish (up to a drain
//! timeout), then returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::Platform;
use crate::control::versions::VersionSet;
use crate::events::{Events, invocations};
use crate::invoke::body::ResponseBody;
use crate::invoke::{InvokeError, Peer, invoke};

/// How a listener treats its connections.
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// Time in-flight requests get at shutdown.
    pub drain_timeout: Duration,
    /// Time a client gets to send a request's headers (from the connection's start, or from
    /// the previous response on a kept-alive connection) before the connection is closed.
    ///
    /// This is the slowloris guard. No instance exists before the headers are complete (the
    /// route is not even known), so a slow client costs a socket and a small buffer until
    /// this fires, never an instance slot. A slow *body* is bounded by the function's own
    /// timeout: a component's runs while the guest waits for it; a CGI module's body is read
    /// before anything is taken, with a minimum rate ([`crate::invoke::body::read_bounded`]).
    pub header_read_timeout: Duration,
    /// Connections closed by `header_read_timeout`, for the status API.
    pub slow_clients: Arc<AtomicU64>,
    /// Time a client may accept no response bytes at all while some wait to be sent, before
    /// its connection is closed (see [`SendTimeout`]).
    pub send_timeout: Duration,
    /// Connections closed by `send_timeout`, for the status API.
    pub stalled_readers: Arc<AtomicU64>,
    /// TLS (see [`super::tls`]); `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A signal every listener watches; `true` means "stop accepting and drain".
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that triggers it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Serves the data plane on `listener` until `shutdown` fires, then drains. With `events`,
/// a request that prefers it (`Prefer: respond-async`) is stored and answered 202, and
/// `/v1/invocations/<id>` answers with its result (see [`crate::events::invocations`]).
pub async fn serve_functions(
    listener: TcpListener,
    platform: Arc<Platform>,
    events: Option<Arc<Events>>,
    shutdown: Shutdown,
    options: ListenerOptions,
) -> anyhow::Result<()> {
    serve(listener, shutdown, options, move |req, peer| {
        let platform = platform.clone();
        let events = events.clone();
        async move {
            match req.uri().path() {
                "/healthz" => return health(platform.health()),
                "/readyz" => return probe(platform.ready()),
                path if path.starts_with(invocations::LOCATION_PREFIX) => {
                    return match (&events, req.method()) {
                        (Some(events), &http::Method::GET) => {
                            invocations::read(events, &path[invocations::LOCATION_PREFIX.len()..])
                                .await
                        }
                        _ => InvokeError::NotFound.into_response(),
                    };
                }
                _ => {}
            }
            if let Err(why) = check_target(&req) {
                tracing::debug!(remote = %peer.remote, "refused a request: {why}");
                return InvokeError::BadRequest(why.into()).into_response();
            }
            // An absolute-form target names the host itself (and the executors take it over
            // `Host`); `check_target` has checked both.
            let host = match req.uri().authority() {
                Some(authority) => Some(authority.as_str()),
                None => req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok()),
            }
            .and_then(thaw_spec::route::request_host);
            let Some(set) = platform.registry().route(host, req.uri().path()) else {
                return InvokeError::NotFound.into_response();
            };
            let function = match req.headers().get(&VERSION) {
                None => set.pick().clone(),
                Some(pin) => match pinned(&set, pin) {
                    Some(function) => function.clone(),
                    None => return InvokeError::NoSuchVersion.into_response(),
                },
            };
            drop(set);
            if let Some(refused) =
                crate::invoke::check_rate(platform.invoke_context(), &function, req.headers(), peer)
            {
                return refused;
            }
            let mut req = req;
            // RFC 9112 §3.2.2: an absolute-form target's host is the request's, and `Host` is
            // ignored. The guest gets the one the request was routed by, so that a `Host`
            // naming another site can neither reach a guest that reads it nor get past a
            // proxy in front that checks `Host` only.
            if let Some(authority) = req.uri().authority()
                && req.headers().get(http::header::HOST).map(|h| h.as_bytes())
                    != Some(authority.as_str().as_bytes())
                && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(http::header::HOST, host);
            }
            super::auth::strip_session_cookie(req.headers_mut());
            crate::events::strip_forged_events(req.headers_mut());
            let version = function.version_header.clone();
            // Static assets first, unless the function answers first (then they answer
            // what it does not: a 404 to a GET or HEAD).
            let assets = function.assets.clone();
            fn below<'p>(path: &'p str, route: &str) -> &'p str {
                let prefix = thaw_spec::route::split(route).1;
                match path.strip_prefix(prefix) {
                    Some(rest) if prefix != "/" => rest,
                    _ => path,
                }
            }
            let mut asked = None;
            if let Some(assets) = &assets {
                if !assets.run_function_first {
                    let path = below(req.uri().path(), &function.route);
                    let found = assets.serve(req.method(), path, req.headers());
                    if found.is_some() || assets.only {
                        function
                            .stats
                            .asset_responses
                            .fetch_add(1, Ordering::Relaxed);
                        let mut response = match found {
                            Some(found) => found.map(crate::invoke::body::full),
                            // Assets only: no guest to ask.
                            None => Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                                .body(crate::invoke::body::full(bytes::Bytes::from_static(
                                    b"no such file\n",
                                )))
                                .expect("static response parts are valid"),
                        };
                        response.headers_mut().insert(VERSION, version);
                        return response;
                    }
                } else if matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                    asked = Some((
                        req.method().clone(),
                        below(req.uri().path(), &function.route).to_owned(),
                        req.headers().clone(),
                        function.stats.clone(),
                    ));
                }
            }
            let mut response = match &events {
                Some(events) if invocations::wants_async(req.headers()) => {
                    invocations::accept(events, &function, req, peer).await
                }
                _ => invoke(platform.invoke_context(), function, req, peer).await,
            };
            if response.status() == http::StatusCode::NOT_FOUND
                && let (Some(assets), Some((method, path, headers, stats))) = (&assets, &asked)
                && let Some(found) = assets.serve(method, path, headers)
            {
                stats.asset_responses.fetch_add(1, Ordering::Relaxed);
                response = found.map(crate::invoke::body::full);
            }
            super::auth::drop_session_set_cookie(response.headers_mut());
            response.headers_mut().insert(VERSION, version);
            response
        }
    })
    .await
}

/// What a request's target and `Host` must be before it is routed; the reason if not.
///
/// - **No dot segments, no encoded `/` or `.` in a segment.** Routing matches the path as
///   sent. A proxy in front that normalises `/a/../b` to `/b` for its access rules but
///   forwards the raw target would otherwise let `/allowed/../denied` reach a function it
///   denies, and a CGI module would see `PATH_INFO=/../..`. Such a path is never what a
///   client means by a function's route, so it is refused rather than normalised: both
///   readings of it stay impossible. Every executor is behind this check.
/// - **`Host` per RFC 9112 §3.2:** exactly one on HTTP/1.1 (none is allowed on HTTP/1.0),
///   and a valid authority. An absolute-form target (`GET http://h/p`) names the host
///   itself; the executors take its authority over `Host`.
pub fn check_target<B>(req: &Request<B>) -> Result<(), &'static str> {
    let path = req.uri().path();
    if path.contains('\\') {
        // Some servers and URL parsers (WHATWG's) read `\` as `/`.
        return Err("a '\\' in the path");
    }
    for segment in path.split('/') {
        // `..;x` is `..` to servers that take `;` as a parameter separator (Tomcat).
        let name = segment.split(';').next().unwrap_or(segment);
        if name == "." || name == ".." {
            return Err("a dot segment in the path");
        }
        let encoded = segment.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && matches!(
                    (w[1], w[2].to_ascii_uppercase()),
                    // '.', '/', '\\', and '%' itself (a double encoding: `%252e`).
                    (b'2', b'E' | b'F' | b'5') | (b'5', b'C')
                )
        });
        if encoded {
            return Err("an encoded '/', '\\', '.' or '%' in the path");
        }
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err("user information in the target");
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err("more than one Host field"),
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Err("no Host field (HTTP/1.1 requires one)");
        }
        (Some(host), None) if !is_host_value(host.as_bytes()) => {
            return Err("an invalid Host field");
        }
        _ => {}
    }
    Ok(())
}

/// Whether `value` is a `Host` field value RFC 9110 §7.2 allows: empty, or `uri-host
/// [":" port]`, where the host is a reg-name (unreserved, sub-delims, pct-encoded) or an
/// IP literal in brackets. Checked by hand: parsing it as an `Authority` would copy it on
/// every request.
fn is_host_value(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        Some(i) if !value[i..].contains(&b']') => (&value[..i], &value[i + 1..]),
        _ => (value, &b""[..]),
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')),
        _ => host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'%'
                )
        }),
    };
    host_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// `GET /healthz`: the process serves, so always 200; the body is `ok`, or `degraded` (a
/// cluster node that cannot reach etcd serves what it knows and refuses changes: a liveness
/// probe must not restart it for that, so the status stays 200). The reason goes to the log
/// (when it changes) and to the authenticated `GET /v1/cluster`, never to this
/// unauthenticated answer: it can name internal addresses.
fn health(state: Result<(), String>) -> Response<ResponseBody> {
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let reason = state.as_ref().err();
    if last.as_ref() != reason {
        match reason {
            Some(reason) => tracing::warn!("health: degraded: {reason}"),
            None if last.is_some() => tracing::info!("health: ok again"),
            None => {}
        }
        *last = reason.cloned();
    }
    drop(last);
    let mut response = probe(Ok(()));
    if state.is_err() {
        *response.body_mut() = crate::invoke::body::full(bytes::Bytes::from_static(b"degraded\n"));
    }
    response
}

/// `GET /healthz` (see [`health`]) and `GET /readyz` (200 once start-up work
/// is done, else 503 with the reason): answered before routing, without authentication, and
/// without touching any function; routes cannot take these paths.
fn probe(state: Result<(), &'static str>) -> Response<ResponseBody> {
    let (status, body) = match state {
        Ok(()) => (http::StatusCode::OK, "ok\n"),
        Err(reason) => (http::StatusCode::SERVICE_UNAVAILABLE, reason),
    };
    let mut response = Response::new(crate::invoke::body::full(bytes::Bytes::from_static(
        body.as_bytes(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `x-thaw-version`: on a response, the version that served it; on a request, the version
/// to serve it (`v4` or `4`), if the function's split lists it (see
/// [`crate::control::versions`]). A guest's own header of that name is replaced.
pub const VERSION: http::HeaderName = http::HeaderName::from_static("x-thaw-version");

/// The version a request pins, if its function's split lists it.
fn pinned<'s>(
    set: &'s VersionSet,
    pin: &http::HeaderValue,
) -> Option<&'s Arc<crate::function::Function>> {
    let version = std::str::from_utf8(pin.as_bytes())
        .ok()
        .and_then(|text| crate::traffic::parse_version(text.trim()).ok())?;
    set.pinned(version)
}

/// Accept loop shared by both listeners.
pub async fn serve<H, F>(
    listener: TcpListener,
    mut shutdown: Shutdown,
    options: ListenerOptions,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let local = listener.local_addr()?;
    let graceful = GracefulShutdown::new();
    let protocols = Protocols::new(&options);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            remote,
            local,
            tls: tls.is_some(),
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let response = handler(req, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let stream = SendTimeout::new(
            stream,
            options.send_timeout,
            options.stalled_readers.clone(),
            remote,
        );
        // Taken now, so that a connection still in its TLS handshake at shutdown is waited
        // for as well.
        let (graceful, protocols, tls) = (graceful.watcher(), protocols.clone(), tls.clone());
        let (slow_clients, handshake_timeout) =
            (options.slow_clients.clone(), options.header_read_timeout);
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    // The protocol by the connection's first bytes, read within the header
                    // timeout: a client that sends nothing costs a socket until then.
                    let mut stream = stream;
                    let start =
                        tokio::time::timeout(handshake_timeout, Prefixed::read_start(&mut stream));
                    match start.await {
                        Ok(Ok(start)) => {
                            let h2 = start.is_h2();
                            protocols
                                .serve(start.into_io(stream), h2, service, graceful)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, "connection ended before a request: {e}");
                            return;
                        }
                        Err(_) => {
                            slow_clients.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%remote, "closed a connection that sent nothing in time");
                            return;
                        }
                    }
                }
                Some(acceptor) => {
                    // The handshake is bounded as the headers are: a client that opens a
                    // connection and says nothing costs a socket until then, nothing more.
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            slow_clients.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%remote, "closed a connection that did not finish its TLS handshake in time");
                            return;
                        }
                    };
                    // HTTP/2 over TLS is chosen by ALPN only (RFC 9113 §3.2); anything else
                    // is HTTP/1.1.
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    protocols
                        .serve(TokioIo::new(stream), h2, service, graceful)
                        .await
                }
            };
            if let Err(e) = served {
                if e.is_timeout() {
                    slow_clients.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "closed a connection that sent its headers too slowly");
                    return;
                }
                // Clients that drop connections mid-request are routine (load generators do it
                // at the end of every run), so this is debug, not warn.
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    tracing::info!(%local, "draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!(%local, "drain timeout reached; closing remaining connections");
        }
    }
    Ok(())
}

/// The connection builders of a listener, one per protocol.
#[derive(Clone)]
struct Protocols {
    h1: Arc<http1::Builder>,
    h2: Arc<http2::Builder<TokioExecutor>>,
}

impl Protocols {
    fn new(options: &ListenerOptions) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .keep_alive(true);
        // HTTP/2's own defaults (hyper's): 200 streams at once per connection, flow-control
        // windows of 1 MiB per connection and stream, and h2's bounds on reset streams (the
        // rapid-reset attack). A ping every 20 s finds dead connections, which HTTP/2
        // clients keep open for a long time.
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            h1: Arc::new(h1),
            h2: Arc::new(h2),
        }
    }

    /// Serves one connection with the protocol chosen, until it ends or shutdown drains it.
    async fn serve<I, S>(
        &self,
        io: I,
        h2: bool,
        service: S,
        graceful: hyper_util::server::graceful::Watcher,
    ) -> Result<(), hyper::Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ResponseBody> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if h2 {
            graceful.watch(self.h2.serve_connection(io, service)).await
        } else {
            graceful.watch(self.h1.serve_connection(io, service)).await
        }
    }
}

/// HTTP/2's connection preface (RFC 9113 §3.4): what a client that speaks it by prior
/// knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's first bytes, read to tell HTTP/2's preface from HTTP/1.1, and handed back
/// to the protocol that reads the rest ([`Prefixed::into_io`]). hyper-util's `auto` builder
/// does the same, but with no bound on how long the first bytes may take: a client that sent
/// nothing would keep its socket.
struct Prefixed {
    buf: [u8; 24],
    len: usize,
}

impl Prefixed {
    /// Reads until the bytes are no prefix of HTTP/2's preface, or are all of it.
    async fn read_start<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt as _;
        let mut start = Prefixed {
            buf: [0; 24],
            len: 0,
        };
        while start.len < H2_PREFACE.len() {
            let n = stream.read(&mut start.buf[start.len..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            start.len += n;
            if start.buf[..start.len] != H2_PREFACE[..start.len] {
                break;
            }
        }
        Ok(start)
    }

    fn is_h2(&self) -> bool {
        self.buf[..self.len] == H2_PREFACE[..]
    }

    /// `stream` with these bytes in front of what it reads next.
    fn into_io<S>(self, stream: S) -> TokioIo<PrefixedStream<S>> {
        TokioIo::new(PrefixedStream {
            start: self,
            read: 0,
            inner: stream,
        })
    }
}

/// A stream whose first bytes were already read (see [`Prefixed`]).
struct PrefixedStream<S> {
    start: Prefixed,
    read: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for PrefixedStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.start.len {
            let rest = &this.start.buf[this.read..this.start.len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for PrefixedStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection whose writes fail once the client has accepted nothing for a while.
///
/// hyper has no write timeout: a response it cannot send waits for the client for as long as
/// the connection lives, and with it whatever the response holds (a CGI module's buffered
/// output, a `wasi:http` guest blocked on a full body pipe and its instance slot). This wrapper
/// arms a timer when a write would block and fails the write with `TimedOut` if the socket has
/// taken no byte when it fires; any progress disarms it. It bounds a stall, not a rate: a
/// client that reads a little now and then keeps its connection, as with nginx's
/// `send_timeout`.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    closed: Arc<AtomicU64>,
    remote: SocketAddr,
}

impl<S> SendTimeout<S> {
    /// Wraps `inner`; `closed` counts the connections this closes.
    pub fn new(inner: S, timeout: Duration, closed: Arc<AtomicU64>, remote: SocketAddr) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            closed,
            remote,
        }
    }

    /// After a write returned `Pending`: arms the timer if needed and reports whether it fired.
    fn poll_stall(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                self.closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(remote = %self.remote, "closed a connection whose client stopped reading its response");
                std::task::Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client accepted no response bytes within the send timeout",
                ))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match result {
            std::task::Poll::Pending => self.poll_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, result)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
}
