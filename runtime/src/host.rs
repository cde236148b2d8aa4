//! Per-request store data: one struct per kind of function, one field per capability.
//!
//! A store lives for exactly one request (isolation by default: no state survives between
//! requests), so these structs are built on the request path and must stay cheap: no
//! filesystem preopens, no sockets, environment variables copied from a list prepared at load
//! time. Building a WASI context, an HTTP context and a resource table is a few allocations.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guest_log::GuestLog;
use crate::spec::Limits;

/// Store data for a `wasi:http` component.
pub struct ProxyHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    /// The store's resource limiter (install it with `Store::limiter`).
    pub limits: StoreLimits,
}

impl ProxyHost {
    /// The store data for one request to the function `name`.
    pub fn new(name: &Arc<str>, env: &[(String, String)], limits: &Limits) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(env)
            .args(&[&**name])
            // Guest output is the function's log, not the host's stdout: each line goes to
            // `tracing` tagged with the function's name.
            .stdout(GuestLog::new(name.clone(), "stdout"))
            .stderr(GuestLog::new(name.clone(), "stderr"));
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            limits: store_limits(limits),
        }
    }
}

/// Outbound HTTP is denied: `wasi:http/outgoing-handler` is linked (components built for the
/// proxy world import it, and must link), but every request a guest sends fails inside the
/// guest with `HTTP-request-denied`. A per-function allow-list is future work; until then no
/// function can reach the network, which is the safe default for other people's code.
struct DenyOutbound;

impl wasmtime_wasi_http::WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        tracing::info!(target: "guest", uri = %request.uri(), "outbound HTTP request denied");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
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
            hooks: &mut self.hooks,
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
