//! A deployed function: its record on disk and its loaded, linked, ready-to-instantiate form.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use wasmtime::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::artifact::{Compiled, Kind, Origin};
use crate::engine::ThawEngine;
use crate::host::{CgiHost, ProxyHost};
use crate::spec::{FunctionSpec, LimitDefaults, Limits};

/// What the data directory keeps about a function (`functions/<name>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// sha256 of the wasm, hex; names the stored wasm and the artifact.
    pub digest: String,
    /// Component or CGI module.
    pub kind: Kind,
    /// Size of the wasm in bytes.
    pub wasm_bytes: u64,
    /// What the user asked for.
    pub spec: FunctionSpec,
    /// 1 for the first deploy of this name, +1 for every redeploy.
    pub generation: u64,
    /// Unix time of the deploy, milliseconds.
    pub deployed_at_ms: u64,
}

/// The pre-instantiated form of a function's code: everything but the store.
pub enum Code {
    /// A `wasi:http` component, type-checked against the proxy world.
    Proxy(ProxyPre<ProxyHost>),
    /// A WASI preview1 command, run CGI-style.
    Cgi(InstancePre<CgiHost>),
}

/// Why a compiled function could not be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// An import thaw does not provide (the message names it).
    #[error("{0}")]
    Imports(String),
    /// The component is not a `wasi:http` proxy.
    #[error(
        "the component does not export wasi:http/incoming-handler (is it built for the wasi:http proxy world?): {0}"
    )]
    NotAProxy(String),
    /// The module is not a WASI command.
    #[error(
        "a preview1 module must be a WASI command exporting `_start` (a `bin` built for wasm32-wasip1)"
    )]
    NotACommand,
}

/// Request counters of one function (since it was loaded).
#[derive(Debug, Default, Serialize)]
pub struct FunctionStats {
    /// Requests that reached the function.
    pub requests: AtomicU64,
    /// Requests answered with an error produced by thaw (trap, timeout, limit, bad output).
    pub failures: AtomicU64,
}

/// A function ready to serve: shared as `Arc<Function>` by the registry and the requests
/// running on it, so a redeploy never pulls code out from under a request.
pub struct Function {
    /// The name, shared with every store's log stream.
    pub name: Arc<str>,
    /// The persisted record.
    pub record: FunctionRecord,
    /// The route prefix.
    pub route: String,
    /// Limits resolved against the host defaults.
    pub limits: Limits,
    /// Environment variables, in the form WASI takes them.
    pub env: Vec<(String, String)>,
    /// Epoch ticks for the timeout.
    pub deadline_ticks: u64,
    /// The linked code.
    pub code: Code,
    /// Where the code came from when this version was loaded.
    pub origin: Origin,
    /// Counters.
    pub stats: FunctionStats,
}

impl Function {
    /// Links compiled code against thaw's WASI and resolves the spec. Done once per load.
    pub fn link(
        engine: &ThawEngine,
        record: FunctionRecord,
        compiled: Compiled,
        origin: Origin,
        defaults: &LimitDefaults,
    ) -> Result<Self, LinkError> {
        let code = match compiled {
            Compiled::Component(component) => {
                let pre = engine
                    .proxy_linker()
                    .instantiate_pre(&component)
                    .map_err(|e| LinkError::Imports(format!("{e:#}")))?;
                Code::Proxy(ProxyPre::new(pre).map_err(|e| LinkError::NotAProxy(format!("{e:#}")))?)
            }
            Compiled::Module(module) => {
                if module.get_export("_start").is_none() {
                    return Err(LinkError::NotACommand);
                }
                Code::Cgi(
                    engine
                        .cgi_linker()
                        .instantiate_pre(&module)
                        .map_err(|e| LinkError::Imports(format!("{e:#}")))?,
                )
            }
        };
        let limits = record.spec.limits.resolve(defaults);
        Ok(Self {
            name: record.name.as_str().into(),
            route: record.spec.route_or_default(&record.name),
            env: record
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            deadline_ticks: ThawEngine::ticks_for(limits.timeout),
            limits,
            code,
            origin,
            record,
            stats: FunctionStats::default(),
        })
    }

    /// A JSON view for the admin API and `thaw list`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": &*self.name,
            "route": self.route,
            "kind": self.record.kind,
            "digest": self.record.digest,
            "wasm_bytes": self.record.wasm_bytes,
            "generation": self.record.generation,
            "deployed_at_ms": self.record.deployed_at_ms,
            "spec": self.record.spec,
            "limits": self.limits,
            "loaded_from": self.origin,
            "requests": self.stats.requests.load(Ordering::Relaxed),
            "failures": self.stats.failures.load(Ordering::Relaxed),
        })
    }
}
