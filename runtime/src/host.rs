//! Per-request store data: one struct per kind of function, one field per capability.
//!
//! A store lives for exactly one request (isolation by default: no state survives between
//! requests), so these structs are built on the request path and must stay cheap: no
//! sockets, environment variables copied from a list prepared at load time, the outbound
//! allow-list shared from the function. Building a WASI context, an HTTP context and a
//! resource table is a few allocations.
//!
//! No ambient authority: a guest sees the environment variables of its spec and nothing of
//! the host's, no directory unless the spec grants one, and no network but `wasi:http`
//! requests its allow-list permits. `wasi:sockets` is linked (the standard WASI imports must
//! link) but a `WasiCtx` built without `inherit_network` or a socket address check refuses
//! every address and name lookup.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::function::{Function, FunctionStats};
use crate::guest_log::GuestLog;
use crate::limits::Limit;
use crate::outbound::AllowList;
use crate::spec::Limits;

/// Store data for a `wasi:http` component.
pub struct ProxyHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    /// The store's resource limiter (install it with `Store::limiter`).
    pub limits: StoreLimits,
}

impl ProxyHost {
    /// The store data for one request to `function`.
    pub fn new(function: &Function) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&function.env)
            .args(&[&*function.name])
            // Guest output is the function's log, not the host's stdout: each line goes to
            // `tracing` tagged with the function's name.
            .stdout(GuestLog::new(function.name.clone(), "stdout"))
            .stderr(GuestLog::new(function.name.clone(), "stderr"));
        grant_dirs(&mut wasi, function);
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy {
                function: function.name.clone(),
                allow: function.outbound.clone(),
                remaining: function.limits.max_outbound_requests,
                max: function.limits.max_outbound_requests,
                timeout: function.limits.outbound_timeout,
                stats: function.stats.clone(),
            },
            limits: store_limits(&function.limits),
        }
    }

    /// Resets what is counted per invocation, for an instance that serves another request.
    pub fn begin_request(&mut self) {
        self.outbound.remaining = self.outbound.max;
    }
}

/// Preopens the function's granted directories (read-only unless the grant says writable).
///
/// This opens each directory per store, a syscall per grant on the request path; only
/// functions with grants pay it, and a grant is the exception. A directory that vanished
/// since the deploy is logged and left out: the guest sees no such directory.
pub(crate) fn grant_dirs(wasi: &mut WasiCtxBuilder, function: &Function) {
    for dir in &function.record.spec.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
            tracing::warn!(function = %function.name, host = %dir.host.display(), "granted directory cannot be opened: {e:#}");
        }
    }
}

/// Outbound HTTP under the function's allow-list.
///
/// `wasi:http/outgoing-handler` is always linked (components built for the proxy world
/// import it, and must link), but a request only leaves if its scheme, host and port match
/// the function's `allowed_outbound_hosts` (empty by default: nothing leaves) and the
/// invocation has not used up its `max_outbound_requests`. Anything else fails inside the
/// guest with `HTTP-request-denied`, and is logged and counted as a limit hit. Allowed
/// requests get the function's outbound timeout for connecting, the first byte and every
/// byte after, whatever longer timeouts the guest asked for.
struct OutboundPolicy {
    function: Arc<str>,
    allow: Arc<AllowList>,
    remaining: u32,
    max: u32,
    timeout: Duration,
    stats: Arc<FunctionStats>,
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
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendRequestFuture {
        let denied = if !self.allow.allows(request.uri()) {
            Some((
                Limit::OutboundHost,
                "not in the function's allowed_outbound_hosts",
            ))
        } else if self.remaining == 0 {
            Some((
                Limit::OutboundRequests,
                "the invocation used up its max_outbound_requests",
            ))
        } else {
            None
        };
        if let Some((limit, why)) = denied {
            self.stats.limit_hits.hit(
                &self.function,
                limit,
                &format_args!("outbound request to {} denied: {why}", request.uri()),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        self.remaining -= 1;
        let cap =
            |asked: Option<Duration>| Some(asked.map_or(self.timeout, |t| t.min(self.timeout)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
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
    pub limits: StoreLimits,
}

impl CgiHost {
    /// Store data around an already configured WASI context.
    pub fn new(wasi: WasiP1Ctx, limits: &Limits) -> Self {
        Self {
            wasi,
            limits: store_limits(limits),
        }
    }
}

fn store_limits(limits: &Limits) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes as usize)
        // A failed `memory.grow` becomes a trap with a clear message instead of a -1 that the
        // guest's allocator turns into an abort somewhere else.
        .trap_on_grow_failure(true)
        .build()
}
