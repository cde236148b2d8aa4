//! The CGI executor: a WASI preview1 command run as RFC 3875 describes, the request's
//! metadata in the environment, the buffered body on stdin, stdout parsed as a CGI response
//! once `_start` returns ([`crate::cgi`] parses; this runs).

use std::time::{Duration, Instant};

use http::Response;
use wasmtime::InstancePre;

use super::body::{ResponseBody, full};
use super::error::{InvokeError, classify};
use super::{Call, Peer, admit};
use crate::cgi::{self, CgiRequest};
use crate::function::Function;
use crate::function::timing::StartKind;
use crate::guest::cgi_store;
use crate::guest::host::CgiHost;
use crate::guest::stdout::{CgiStdout, StdoutOverLimit};

/// A WASI preview1 command run CGI-style: metadata in the environment, the buffered body on
/// stdin, stdout parsed as a CGI response once `_start` returns.
pub(super) async fn call(
    call: Call<'_>,
    pre: &InstancePre<CgiHost>,
    parts: http::request::Parts,
    body: bytes::Bytes,
    peer: Peer,
) -> Result<Response<ResponseBody>, InvokeError> {
    let Call { cx, function, .. } = call;
    let engine = pre.module().engine();
    let env = environment(function, &parts, body.len() as u64, peer);
    let response_limit = function.limits.max_response_body_bytes;
    // The body's limit plus room for the header section; the body alone is checked after
    // parsing. A write past this traps the guest at once (see crate::guest::stdout).
    let stdout = CgiStdout::new(response_limit as usize + cgi::MAX_HEADER_BYTES);
    // The store (WASI context, preopens) is built before a slot is taken, so the slot is
    // held only while an instance exists.
    let mut store = cgi_store(
        engine,
        &function.guest(),
        &env,
        body,
        stdout.clone(),
        super::next_request_id(),
    );
    let permit = admit(cx).await?;

    let admitted = call.admitted;
    let mut start = call.start(StartKind::Fresh, Duration::ZERO, Duration::ZERO);
    let mut call_started = None;
    let run = async {
        let instantiating = Instant::now();
        let instance = pre.instantiate_async(&mut store).await?;
        start.instantiate = instantiating.elapsed();
        start.total = admitted.elapsed();
        call_started = Some(Instant::now());
        let entry = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        entry.call_async(&mut store, ()).await
    };
    // The whole run is the guest's (a CGI response is complete only when it exits), so its
    // CPU is metered from instantiation on.
    let cpu = crate::function::cost::CpuMeter::default();
    let result = tokio::time::timeout(
        function.limits.timeout,
        crate::function::cost::metered(run, &cpu),
    )
    .await;
    let handler = call_started.map_or(Duration::ZERO, |t| t.elapsed());
    function
        .cost
        .record(Some(cpu.total()), store.data().limiter.peak_memory_bytes());
    drop(store);
    drop(permit);
    match result {
        Err(_) => return Err(InvokeError::Timeout),
        Ok(Ok(())) => {}
        Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(wasmtime_wasi::I32Exit(0)) => {}
            Some(wasmtime_wasi::I32Exit(code)) => return Err(InvokeError::Exit(*code)),
            None if e.downcast_ref::<StdoutOverLimit>().is_some() => {
                return Err(InvokeError::ResponseTooLarge(response_limit));
            }
            None => return Err(classify(e)),
        },
    }

    let parsed = cgi::parse_response(stdout.into_bytes())
        .map_err(|e| InvokeError::BadResponse(e.to_string()))?;
    if parsed.body.len() as u64 > response_limit {
        return Err(InvokeError::ResponseTooLarge(response_limit));
    }
    let mut response = Response::new(full(parsed.body));
    *response.status_mut() = parsed.status;
    *response.headers_mut() = parsed.headers;
    call.record(&start, handler, Some(cpu.total()), response.headers_mut());
    Ok(response)
}

/// The CGI meta-variables of the request (RFC 3875), then the function's own variables,
/// except where they would shadow one.
fn environment(
    function: &Function,
    parts: &http::request::Parts,
    content_length: u64,
    peer: Peer,
) -> Vec<(String, String)> {
    let path = parts.uri.path();
    // A host route's script name is its path (`api.example.com/v1` is `/v1`).
    let route = thaw_spec::route::split(&function.route).1;
    let path_info = if route == "/" {
        path
    } else {
        path.get(route.len()..).unwrap_or("")
    };
    let mut env = Vec::with_capacity(16 + parts.headers.len() + function.env.len());
    let underscored = cgi::request_env(
        &CgiRequest {
            method: &parts.method,
            script_name: if route == "/" { "" } else { route },
            path_info,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            content_length: Some(content_length),
            remote_addr: peer.remote,
            server_addr: peer.local,
            authority: parts.uri.authority().map(|a| a.as_str()),
            version: parts.version,
            https: peer.tls,
        },
        &mut env,
    );
    if underscored > 0 {
        tracing::debug!(function = %function.name, underscored, "dropped request headers with '_' in their names (CGI would merge them with their '-' twins)");
    }
    // The spec's environment, then its configuration as variables (a CGI function imports no
    // wasi:config); neither replaces a request variable, and `env` wins over `config`.
    for (key, value) in function.env.iter().chain(function.config.env.iter()) {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.clone(), value.clone()));
        }
    }
    env
}
