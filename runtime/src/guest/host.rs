//! Per-request store data: one struct per kind of function, one field per capability.
//!
//! A store lives for exactly one request (isolation by default: no state survives between
//! requests), so these structs are built on the request path and must stay cheap: no
//! sockets, environment variables copied from a list prepared at load time, the outbound
//! allow-list shared from the function. Building a WASI context, an HTTP context and a
//! resource table is a few allocations.
//!
//! # Host memory a guest can hold
//! A guest's linear memory is bounded by its limiter, but the objects it creates through
//! WASI live in the host's heap: a `fields` resource, an outgoing body's buffered chunks, a
//! pollable. wasmtime's defaults allow 128 KiB per `fields`, 1 MiB chunks and a million table
//! entries, so one instance could pin gigabytes. Here every store gets:
//! - a [`ResourceTable`] capped at the function's `max_host_resources` (default 512), and
//!   the store's component handles at twice that (the guest's own handles and p3's streams
//!   and futures count there too; the table's cap, which is typed, is meant to hit first);
//! - `fields` capped at [`MAX_FIELDS_BYTES`] (32 KiB: four times a typical proxy's whole
//!   header section; wasmtime's default is 128 KiB);
//! - outgoing bodies that buffer at most two chunks of [`BODY_CHUNK_BYTES`] (64 KiB, against
//!   1 MiB) before the guest must wait for the reader;
//! - an outgoing request's method, authority and path capped ([`cap_request_strings`]:
//!   wasmtime keeps them at any length, so one request could otherwise hold as much as the
//!   guest's whole memory, and a thousand of them a thousand times that).
//!
//! The most one table entry can hold is an outgoing request or response that owns all of
//! that at once: headers (32 KiB), method, authority and path (9.25 KiB), a finished body's
//! two chunks (128 KiB) and its trailers (32 KiB), about 201 KiB; the documented figure,
//! [`HOST_RESOURCE_BYTES`](crate::spec::HOST_RESOURCE_BYTES), is 256 KiB with the maps'
//! overhead. One instance holds at most `max_host_resources` entries per request it may run
//! at once (a WASIp3 instance with `reuse.max_concurrent` gets that many times the cap), so
//! 512 × 256 KiB = 128 MiB per request at the default: as much as the default `memory_mib`.
//! A push past the cap fails with a typed
//! [`ResourceTableError::Full`](wasmtime::component::ResourceTableError), a trap the request
//! path counts as a `host_resources` limit hit.
//!
//! The chunk size is a trade: each write of a streaming guest moves at most one chunk, so
//! smaller chunks mean more host calls per megabyte. Against wasmtime's 1 MiB, 16 KiB chunks
//! cut a 50 MB stream's throughput to about 0.6×, 64 KiB to about 0.9×
//! (benches/results/2026-12-02-issue-20-request-path); 64 KiB keeps the bound per resource
//! within 256 KiB.
//!
//! No ambient authority: a guest sees the environment variables of its spec and nothing of
//! the host's, no directory unless the spec grants one, and no network but `wasi:http`
//! requests its allow-list permits. `wasi:sockets` is linked (the standard WASI imports must
//! link) but a `WasiCtx` built without `inherit_network` or a socket address check refuses
//! every address and name lookup.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfig;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::GuestConfig;
use super::keyvalue::{GuestKeyValue, KvView};
use super::limit::{Limit, LimitHits};
use super::limiter::GuestLimiter;
use super::log::GuestLog;
use crate::outbound::AllowList;
use crate::spec::Limits;
use crate::telemetry::OutboundTrace;

/// Largest content of one `fields` resource a guest creates (names, values and wasmtime's
/// per-entry overhead, as it counts them).
pub const MAX_FIELDS_BYTES: usize = 32 << 10;
/// Largest chunk of an outgoing body the host copies out of the guest in one write; a p2
/// body buffers at most two of them.
pub const BODY_CHUNK_BYTES: usize = 64 << 10;
/// Longest method a guest may set on an outgoing request (wasmtime takes any length).
pub const MAX_METHOD_BYTES: usize = 256;
/// Longest authority a guest may set on an outgoing request.
pub const MAX_AUTHORITY_BYTES: usize = 1 << 10;
/// Longest path and query a guest may set on an outgoing request (nginx's default limit
/// for a whole request line is 8 KiB).
pub const MAX_PATH_BYTES: usize = 8 << 10;

/// Puts length caps in front of the setters whose strings wasmtime-wasi-http keeps without
/// a bound (an outgoing request's method, authority, path), for WASIp2 and WASIp3: each
/// shadows the linker's own function and calls it once the length is within
/// [`MAX_METHOD_BYTES`], [`MAX_AUTHORITY_BYTES`] or [`MAX_PATH_BYTES`]; a longer string is
/// the setter's own error (`Err(())`), as for a malformed one. The WASIp3 ones only when
/// `p3_linked` (the concurrent engine's linker).
pub(crate) fn cap_request_strings(
    linker: &mut wasmtime::component::Linker<ProxyHost>,
    p3_linked: bool,
) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut;
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::p2::bindings::http::types as p2;
    use wasmtime_wasi_http::p3::bindings::http::types as p3;

    type Store<'a> = StoreContextMut<'a, ProxyHost>;
    type Set = wasmtime::Result<(Result<(), ()>,)>;
    let within = |s: Option<&String>, max: usize| s.is_none_or(|s| s.len() <= max);
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    type P2Request = Resource<wasmtime_wasi_http::p2::types::HostOutgoingRequest>;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        move |mut store: Store<'_>, (req, method): (P2Request, p2::Method)| -> Set {
            if let p2::Method::Other(s) = &method
                && !within(Some(s), MAX_METHOD_BYTES)
            {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p2::HostOutgoingRequest::set_method(&mut http, req, method)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        move |mut store: Store<'_>, (req, authority): (P2Request, Option<String>)| -> Set {
            if !within(authority.as_ref(), MAX_AUTHORITY_BYTES) {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p2::HostOutgoingRequest::set_authority(
                &mut http, req, authority,
            )?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        move |mut store: Store<'_>, (req, path): (P2Request, Option<String>)| -> Set {
            if !within(path.as_ref(), MAX_PATH_BYTES) {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p2::HostOutgoingRequest::set_path_with_query(
                &mut http, req, path,
            )?,))
        },
    )?;
    if !p3_linked {
        linker.allow_shadowing(false);
        return Ok(());
    }
    let mut types = linker.instance("wasi:http/types@0.3.0")?;
    type P3Request = Resource<wasmtime_wasi_http::p3::Request>;
    types.func_wrap(
        "[method]request.set-method",
        move |mut store: Store<'_>, (req, method): (P3Request, p3::Method)| -> Set {
            if let p3::Method::Other(s) = &method
                && !within(Some(s), MAX_METHOD_BYTES)
            {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p3::HostRequest::set_method(&mut http, req, method)?,))
        },
    )?;
    types.func_wrap(
        "[method]request.set-authority",
        move |mut store: Store<'_>, (req, authority): (P3Request, Option<String>)| -> Set {
            if !within(authority.as_ref(), MAX_AUTHORITY_BYTES) {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p3::HostRequest::set_authority(&mut http, req, authority)?,))
        },
    )?;
    types.func_wrap(
        "[method]request.set-path-with-query",
        move |mut store: Store<'_>, (req, path): (P3Request, Option<String>)| -> Set {
            if !within(path.as_ref(), MAX_PATH_BYTES) {
                return Ok((Err(()),));
            }
            let mut http = store.data_mut().http();
            Ok((p3::HostRequest::set_path_with_query(&mut http, req, path)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Store data for a `wasi:http` component.
pub struct ProxyHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    /// The store's resource limiter (install it with `Store::limiter`).
    pub limiter: GuestLimiter,
    /// The request being served, for the guest's log lines.
    request: Arc<std::sync::atomic::AtomicU64>,
    /// What `wasi:config/store` answers, shared by every store of the version.
    config: Arc<crate::guest::config::Resolved>,
    /// The function's `wasi:keyvalue` access.
    keyvalue: Option<GuestKeyValue>,
    /// Buckets the guest holds open (see [`crate::guest::keyvalue::MAX_OPEN_BUCKETS`]).
    open_buckets: usize,
    /// The function's `spin:sqlite` access.
    sql: Option<super::sqlite::GuestSql>,
    /// Connections the guest holds open (see [`crate::guest::sqlite::MAX_OPEN_CONNECTIONS`]).
    open_connections: usize,
    /// The function's `spin:postgres` access.
    postgres: Option<super::postgres::GuestPostgres>,
    /// The function's `spin:redis` access.
    redis: Option<super::redis::GuestRedis>,
    /// Redis connections the guest holds open (see [`crate::guest::redis::MAX_OPEN_CONNECTIONS`]).
    open_redis: usize,
}

impl ProxyHost {
    /// The store data for one instance of the guest `config` describes.
    pub fn new(config: &GuestConfig<'_>) -> Self {
        let request = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let log = |stream| {
            GuestLog::new(
                config.name.clone(),
                stream,
                config.log.clone(),
                config.version,
                request.clone(),
            )
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(config.env)
            .args(&[&**config.name])
            // Guest output is the function's log, not the host's stdout: each line goes to
            // `tracing` and to the function's log buffer.
            .stdout(log("stdout"))
            .stderr(log("stderr"));
        super::grant_dirs(&mut wasi, config);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(config.host_resources());
        Self {
            wasi: wasi.build(),
            http,
            table,
            outbound: OutboundPolicy {
                function: config.name.clone(),
                allow: config.outbound.clone(),
                remaining: config.limits.max_outbound_requests,
                max: config.limits.max_outbound_requests,
                timeout: config.limits.outbound_timeout,
                hits: config.hits.clone(),
                sent: config.outbound_sent.clone(),
                trace: None,
            },
            limiter: GuestLimiter::new(config.limits),
            request,
            config: config.config.clone(),
            keyvalue: config.keyvalue.cloned(),
            open_buckets: 0,
            sql: config.sql.cloned(),
            open_connections: 0,
            postgres: config.postgres.cloned(),
            redis: config.redis.cloned(),
            open_redis: 0,
        }
    }

    /// Starts serving request `request`: resets what is counted per invocation (for an
    /// instance that served before), tags the guest's log lines with it, and has its
    /// outbound requests join `trace`.
    pub fn begin_request(&mut self, request: u64, trace: Option<OutboundTrace>) {
        self.outbound.remaining = self.outbound.max;
        self.outbound.trace = trace;
        self.request
            .store(request, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Outbound HTTP under the function's allow-list.
///
/// `wasi:http/outgoing-handler` is always linked (components built for the proxy world
/// import it, and must link), but a request only leaves if its scheme, host and port match
/// the function's `allowed_outbound_hosts` (empty by default: nothing leaves) and the
/// invocation has not used up its `max_outbound_requests`. Anything else fails inside the
/// guest (`HTTP-request-denied` for a host not allowed, `connection-limit-reached` for a
/// used-up count), and is logged and counted as a limit hit. Allowed
/// requests get the function's outbound timeout for connecting, the first byte and every
/// byte after, whatever longer timeouts the guest asked for.
struct OutboundPolicy {
    function: Arc<str>,
    allow: Arc<AllowList>,
    remaining: u32,
    max: u32,
    timeout: Duration,
    hits: Arc<LimitHits>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// The request's trace, when traces are exported: outbound requests join it.
    trace: Option<OutboundTrace>,
}

type SendRequestFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for OutboundPolicy {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendRequestFuture {
        // The two refusals carry different codes so that an SDK can tell its author which
        // setting to change: `HTTP-request-denied` means only "not in the allow-list" (as on
        // Spin and wasmtime), and a used-up count is `connection-limit-reached`.
        let denied = if !self.allow.allows(request.uri()) {
            Some((
                Limit::OutboundHost,
                "not in the function's allowed_outbound_hosts",
                wasmtime_wasi_http::Error::HttpRequestDenied,
            ))
        } else if self.remaining == 0 {
            Some((
                Limit::OutboundRequests,
                "the invocation used up its max_outbound_requests",
                wasmtime_wasi_http::Error::ConnectionLimitReached,
            ))
        } else {
            None
        };
        if let Some((limit, why, code)) = denied {
            self.hits.hit(
                &self.function,
                limit,
                &format_args!("outbound request to {} denied: {why}", request.uri()),
            );
            return Box::new(async { Err(code) });
        }
        self.remaining -= 1;
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cap =
            |asked: Option<Duration>| Some(asked.map_or(self.timeout, |t| t.min(self.timeout)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        let span = self.trace.as_ref().map(|t| t.start(&mut request));
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options)).await;
            if let Some(mut span) = span {
                use opentelemetry::trace::Span as _;
                match &sent {
                    Ok((response, _)) => span.set_attribute(opentelemetry::KeyValue::new(
                        "http.response.status_code",
                        i64::from(response.status().as_u16()),
                    )),
                    Err(e) => {
                        span.set_status(opentelemetry::trace::Status::error(format!("{e:?}")))
                    }
                }
                span.end();
            }
            let (response, io) = sent?;
            Ok((
                response.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

impl ProxyHost {
    /// The guest's `wasi:config/store`.
    pub fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::new(&self.config.vars)
    }

    /// The guest's `wasi:keyvalue`.
    pub fn keyvalue(&mut self) -> KvView<'_> {
        KvView {
            table: &mut self.table,
            access: self.keyvalue.as_ref(),
            open_buckets: &mut self.open_buckets,
        }
    }
}

impl ProxyHost {
    /// The guest's `spin:variables` and `spin:key-value`.
    pub fn spin(&mut self) -> super::spin::SpinView<'_> {
        super::spin::SpinView {
            table: &mut self.table,
            config: &self.config,
            keyvalue: self.keyvalue.as_ref(),
            open_buckets: &mut self.open_buckets,
        }
    }

    /// The guest's `spin:postgres`.
    pub fn postgres(&mut self) -> super::postgres::PgView<'_> {
        super::postgres::PgView {
            table: &mut self.table,
            access: self.postgres.as_ref(),
            declared: &self.config.postgres,
        }
    }

    /// The guest's `spin:redis`.
    pub fn redis(&mut self) -> super::redis::RedisView<'_> {
        super::redis::RedisView {
            table: &mut self.table,
            access: self.redis.as_ref(),
            open: &mut self.open_redis,
        }
    }

    /// The guest's `spin:sqlite`.
    pub fn sqlite(&mut self) -> super::sqlite::SqlView<'_> {
        super::sqlite::SqlView {
            table: &mut self.table,
            access: self.sql.as_ref(),
            open_connections: &mut self.open_connections,
        }
    }
}

impl WasiView for ProxyHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ProxyHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Store data for a WASI preview1 module run CGI-style.
pub struct CgiHost {
    pub(crate) wasi: WasiP1Ctx,
    /// The store's resource limiter (install it with `Store::limiter`).
    pub limiter: GuestLimiter,
}

impl CgiHost {
    /// Store data around an already configured WASI context.
    pub fn new(wasi: WasiP1Ctx, limits: &Limits) -> Self {
        Self {
            wasi,
            limiter: GuestLimiter::new(limits),
        }
    }
}
