//! The admin API: deploy, list, get, remove, versions, state, status. JSON in and out.
//!
//! One table, [`ROUTES`], maps a method and a path pattern to a handler, one function per
//! route; docs/operations.md is the API's reference (every route, every error code). A known
//! path with another method is 405 with `Allow`; an unknown path is 404. Query strings are
//! typed structs of [`crate::api`] ([`DeployQuery`], [`LogQuery`], [`KvQuery`]), all decoded
//! by one parser ([`parse_query`]). Every error is [`ErrorBody`],
//! `{"error": {"code": ..., "message": ...}}`, with a stable [`ErrorCode`].
//!
//! A deploy body is either `multipart/form-data` with a `wasm` part (the binary) and an
//! optional `spec` part (JSON, see [`FunctionSpec`]), or the raw wasm with any other content
//! type (the default spec). `?canary=P` makes the new version take P% beside the versions
//! already serving instead of all traffic (versions that were only pinnable, at 0%, leave
//! the split unless `&keep_pinned=true`). In a cluster, `?wait=N` answers once N nodes
//! report the new version ready (or after `wait_s`, default 60, with 504 and the count).
//! The version operations answer with the function's versions ([`VersionsInfo`]).
//!
//! Every request needs `Authorization: Bearer <token>`, or the dashboard's session cookie
//! (see [`super::auth`]); without it the answer is 401 and nothing changes, whatever the
//! path. The peer endpoints (`/v1/cluster/wasm/{sha256}`, `/v1/cluster/artifacts/{sha256}`)
//! take the cluster token instead. The dashboard's own paths (`/ui`, see [`super::ui`]) are
//! served before that check. The listener binds to 127.0.0.1 by default.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::auth::AdminAuth;
use crate::api::{
    DeployQuery, EngineInfo, ErrorBody, ErrorCode, ErrorDetail, FunctionInfo, InvocationQuery,
    KvKeys, KvQuery, LogQuery, RollbackRequest, SqlAnswer, SqlQuery, parse_query,
};
use crate::cluster::peers::Blob;
use crate::cluster::{Cluster, Readiness};
use crate::control::deploy::{DeployOptions, Deployed};
use crate::control::versions::VersionSet;
use crate::control::{DeployError, Platform};
use crate::events::{Events, invocations};
use crate::history::History;
use crate::invoke::body::{ResponseBody, full};
use crate::spec::FunctionSpec;
use crate::traffic::TrafficSplit;

/// What the admin listener serves from.
pub struct AdminContext {
    /// The platform.
    pub platform: Arc<Platform>,
    /// Largest deploy upload, bytes.
    pub max_upload: u64,
    /// The token and the dashboard's sessions.
    pub auth: AdminAuth,
    /// The counters' recent history, for the dashboard.
    pub history: Arc<History>,
    /// The cluster this node is in, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// Log followers per client address.
    pub followers: ClientFollowers,
    /// `/metrics`, rendered at most once a second (shared with `--metrics-listen`).
    pub exposition: Arc<crate::metrics::Exposition>,
    /// Schedules and asynchronous invocations, if this host runs them.
    pub events: Option<Arc<Events>>,
}

/// Log followers one client address may have open at once, across functions; past it, 429.
/// (Each function also takes at most [`MAX_FOLLOWERS`](crate::guest::log::MAX_FOLLOWERS).)
pub const MAX_FOLLOWERS_PER_CLIENT: usize = 8;

/// Log followers per client address.
#[derive(Default)]
pub struct ClientFollowers(Arc<dashmap::DashMap<std::net::IpAddr, usize>>);

/// A client's place among its followers, given back when dropped.
struct ClientFollower(
    Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
    std::net::IpAddr,
);

impl ClientFollowers {
    fn enter(&self, client: std::net::IpAddr) -> Option<ClientFollower> {
        let mut count = self.0.entry(client).or_insert(0);
        if *count >= MAX_FOLLOWERS_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(ClientFollower(self.0.clone(), client))
    }
}

impl Drop for ClientFollower {
    fn drop(&mut self) {
        self.0.remove_if_mut(&self.1, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

/// Handles one admin request from `client`. Every answer carries `Cache-Control: no-store`
/// (nothing the admin API says belongs in a shared or browser cache) and
/// `X-Content-Type-Options: nosniff` (a browser never reads JSON or logs as a page).
pub async fn handle(
    cx: Arc<AdminContext>,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    let mut response = route(cx, req, client).await;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// The admin token or the dashboard's session.
    Admin,
    /// The cluster token only: a peer reads code, it cannot deploy.
    Peer,
}

/// What a handler gets: the context, the request, the client's address, and the path's
/// `{...}` segment (empty for routes without one).
struct Call {
    cx: Arc<AdminContext>,
    req: Request<Incoming>,
    client: std::net::IpAddr,
    param: String,
}

type Handler = fn(Call) -> futures::future::BoxFuture<'static, Response<ResponseBody>>;

/// One admin route: a method, a path pattern (`{name}` matches one segment), who may call
/// it, and its handler.
struct Route {
    method: Method,
    path: &'static str,
    access: Access,
    handler: Handler,
}

/// Every admin route (docs/operations.md says what each does and answers).
static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/v1/status",
        access: Access::Admin,
        handler: |c| Box::pin(status(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/history",
        access: Access::Admin,
        handler: |c| Box::pin(history(c)),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        access: Access::Admin,
        handler: |c| Box::pin(admin_metrics(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/cluster",
        access: Access::Admin,
        handler: |c| Box::pin(cluster(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/cluster/wasm/{sha256}",
        access: Access::Peer,
        handler: |c| Box::pin(peer(c, Blob::Wasm)),
    },
    Route {
        method: Method::GET,
        path: "/v1/cluster/artifacts/{sha256}",
        access: Access::Peer,
        handler: |c| Box::pin(peer(c, Blob::Artifact)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions",
        access: Access::Admin,
        handler: |c| Box::pin(list(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/engines",
        access: Access::Admin,
        handler: |c| Box::pin(engines(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}",
        access: Access::Admin,
        handler: |c| Box::pin(get(c)),
    },
    Route {
        method: Method::PUT,
        path: "/v1/functions/{name}",
        access: Access::Admin,
        handler: |c| Box::pin(deploy(c)),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/functions/{name}",
        access: Access::Admin,
        handler: |c| Box::pin(remove(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}/versions",
        access: Access::Admin,
        handler: |c| Box::pin(versions(c)),
    },
    Route {
        method: Method::PUT,
        path: "/v1/functions/{name}/traffic",
        access: Access::Admin,
        handler: |c| Box::pin(traffic(c)),
    },
    Route {
        method: Method::POST,
        path: "/v1/functions/{name}/rollback",
        access: Access::Admin,
        handler: |c| Box::pin(rollback(c)),
    },
    Route {
        method: Method::POST,
        path: "/v1/functions/{name}/promote",
        access: Access::Admin,
        handler: |c| Box::pin(promote(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}/logs",
        access: Access::Admin,
        handler: |c| Box::pin(logs(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}/invocations",
        access: Access::Admin,
        handler: |c| Box::pin(invocation_list(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/invocations/{id}",
        access: Access::Admin,
        handler: |c| Box::pin(invocation(c)),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/invocations/{id}",
        access: Access::Admin,
        handler: |c| Box::pin(invocation_discard(c)),
    },
    Route {
        method: Method::POST,
        path: "/v1/invocations/{id}/retry",
        access: Access::Admin,
        handler: |c| Box::pin(invocation_retry(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/events",
        access: Access::Admin,
        handler: |c| Box::pin(events_status(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/schedules",
        access: Access::Admin,
        handler: |c| Box::pin(schedules(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}/kv",
        access: Access::Admin,
        handler: |c| Box::pin(keyvalue(c)),
    },
    Route {
        method: Method::PUT,
        path: "/v1/functions/{name}/kv",
        access: Access::Admin,
        handler: |c| Box::pin(keyvalue(c)),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/functions/{name}/kv",
        access: Access::Admin,
        handler: |c| Box::pin(keyvalue(c)),
    },
    Route {
        method: Method::POST,
        path: "/v1/functions/{name}/sql",
        access: Access::Admin,
        handler: |c| Box::pin(sql(c)),
    },
    Route {
        method: Method::GET,
        path: "/v1/functions/{name}/sql/dump",
        access: Access::Admin,
        handler: |c| Box::pin(sql_dump(c)),
    },
];

/// `path` against `pattern`: `Some(segment)` when it matches (the `{...}` segment's value,
/// empty without one). A trailing `/` is ignored.
fn match_path<'p>(pattern: &str, path: &'p str) -> Option<&'p str> {
    let mut wanted = pattern.trim_start_matches('/').split('/');
    let mut given = path.trim_matches('/').split('/');
    let mut param = "";
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(param),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => param = g,
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// What the table has for a request: its route, or the methods its path allows (none: no
/// such path).
enum Found {
    Route(&'static Route, String),
    Allowed(Vec<&'static Route>),
}

fn find(method: &Method, path: &str) -> Found {
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(param) = match_path(route.path, path) {
            if route.method == *method {
                return Found::Route(route, param.to_owned());
            }
            allowed.push(route);
        }
    }
    Found::Allowed(allowed)
}

async fn route(
    cx: Arc<AdminContext>,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    if super::ui::is_ui(req.uri().path()) {
        return super::ui::handle(&cx.auth, req, client).await;
    }
    let found = find(req.method(), req.uri().path());
    let access = match &found {
        Found::Route(route, _) => route.access,
        Found::Allowed(routes) => routes.first().map_or(Access::Admin, |r| r.access),
    };
    let refused = match access {
        Access::Admin => admit_admin(&cx, &req, client).await,
        Access::Peer => admit_peer(&cx, &req, client).await,
    };
    if let Some(refused) = refused {
        return refused;
    }
    match found {
        Found::Route(route, param) => {
            let call = Call {
                cx,
                req,
                client,
                param,
            };
            (route.handler)(call).await
        }
        Found::Allowed(routes) if routes.is_empty() => {
            error(ErrorCode::NoSuchRoute, "no such admin route")
        }
        Found::Allowed(routes) => {
            let allow = routes
                .iter()
                .map(|r| r.method.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut response = error(
                ErrorCode::MethodNotAllowed,
                &format!(
                    "{} is not served here; this path allows {allow}",
                    req.method()
                ),
            );
            if let Ok(allow) = http::HeaderValue::from_str(&allow) {
                response.headers_mut().insert(http::header::ALLOW, allow);
            }
            response
        }
    }
}

/// `None` when the request carries the admin token (or the dashboard's session), else the
/// refusal. Guesses are counted per address (see [`super::auth`]).
async fn admit_admin(
    cx: &AdminContext,
    req: &Request<Incoming>,
    client: std::net::IpAddr,
) -> Option<Response<ResponseBody>> {
    let presented = AdminAuth::presents_token(req.headers());
    let turn = match presented {
        true => cx.auth.failures.wait_turn(client).await,
        false => None,
    };
    if cx.auth.allows(req.headers(), req.method()) {
        return None;
    }
    // A guess is a token that did not match; a request with none (a browser before its
    // login, or with a session that ended) is refused without counting.
    if presented {
        cx.auth.failures.failed(client, "admin request");
        if let Some((_turn, left)) = turn {
            return Some(super::auth::too_many_failures(left));
        }
    } else {
        tracing::debug!(%client, "admin request refused: no token");
    }
    let mut response = error(
        ErrorCode::Unauthorized,
        "missing or wrong admin token (Authorization: Bearer <token>)",
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    Some(response)
}

/// [`admit_admin`] for the peer endpoints: the cluster token only (the admin token would let
/// a peer deploy; this lets it read code).
async fn admit_peer(
    cx: &AdminContext,
    req: &Request<Incoming>,
    client: std::net::IpAddr,
) -> Option<Response<ResponseBody>> {
    let Some(cluster) = &cx.cluster else {
        return Some(error(
            ErrorCode::NotConfigured,
            "this host is not in a cluster",
        ));
    };
    let turn = cx.auth.failures.wait_turn(client).await;
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if token.is_some_and(|t| cluster.peer_token_matches(t)) {
        return None;
    }
    // Counted, and logged once per address and minute (`FailedAttempts`).
    tracing::debug!(path = %req.uri().path(), "peer request refused: missing or wrong cluster token");
    cx.auth.failures.failed(client, "cluster peer request");
    if let Some((_turn, left)) = turn {
        return Some(super::auth::too_many_failures(left));
    }
    Some(error(
        ErrorCode::Unauthorized,
        "missing or wrong cluster token",
    ))
}

async fn status(call: Call) -> Response<ResponseBody> {
    json(StatusCode::OK, &call.cx.platform.status())
}

async fn history(call: Call) -> Response<ResponseBody> {
    json(StatusCode::OK, &call.cx.history.view(&call.cx.platform))
}

async fn admin_metrics(call: Call) -> Response<ResponseBody> {
    metrics(&call.cx.platform, &call.cx.exposition, &call.req).await
}

async fn cluster(call: Call) -> Response<ResponseBody> {
    match &call.cx.cluster {
        Some(cluster) => json(StatusCode::OK, &cluster.status().await),
        None => error(
            ErrorCode::NotConfigured,
            "this host is not in a cluster (thaw serve --cluster)",
        ),
    }
}

async fn list(call: Call) -> Response<ResponseBody> {
    let all: Vec<FunctionInfo> = call
        .cx
        .platform
        .registry()
        .all()
        .iter()
        .map(|set| set.info())
        .collect();
    json(StatusCode::OK, &all)
}

/// The language engines: the current ones and any a deployed version still runs on, each
/// with those versions.
async fn engines(call: Call) -> Response<ResponseBody> {
    let platform = &call.cx.platform;
    let engines = platform.loader().engines();
    let mut all: BTreeMap<String, EngineInfo> = engines
        .current_all()
        .map(|(language, digest)| {
            let info = EngineInfo {
                language: Some(language),
                digest: digest.to_owned(),
                current: true,
                loaded: false,
                functions: Vec::new(),
            };
            (digest.to_owned(), info)
        })
        .collect();
    for set in platform.registry().all() {
        for version in set.versions() {
            let Some(digest) = &version.record.engine else {
                continue;
            };
            all.entry(digest.clone())
                .or_insert_with(|| EngineInfo {
                    language: None,
                    digest: digest.clone(),
                    current: false,
                    loaded: false,
                    functions: Vec::new(),
                })
                .functions
                .push(format!("{}@v{}", version.name, version.record.generation));
        }
    }
    let mut all: Vec<EngineInfo> = all.into_values().collect();
    for engine in &mut all {
        engine.loaded = engines.loaded(&engine.digest).is_some();
    }
    json(StatusCode::OK, &all)
}

/// The function named by the path.
fn function(call: &Call) -> Option<Arc<VersionSet>> {
    call.cx.platform.registry().get(&call.param)
}

fn no_function(name: &str) -> Response<ResponseBody> {
    error(ErrorCode::NotFound, &format!("no function named {name:?}"))
}

async fn get(call: Call) -> Response<ResponseBody> {
    match function(&call) {
        Some(set) => json(StatusCode::OK, &set.info()),
        None => no_function(&call.param),
    }
}

async fn remove(call: Call) -> Response<ResponseBody> {
    match call.cx.platform.remove(&call.param).await {
        Ok(true) => empty(StatusCode::NO_CONTENT),
        Ok(false) => no_function(&call.param),
        Err(e) => deploy_error(&e),
    }
}

async fn deploy(call: Call) -> Response<ResponseBody> {
    let Call {
        cx,
        req,
        param: name,
        ..
    } = call;
    let query = match parse_query::<DeployQuery>(req.uri().query().unwrap_or(""))
        .and_then(|q| q.check().map(|()| q))
    {
        Ok(query) => query,
        Err(e) => return error(ErrorCode::BadRequest, &e),
    };
    // Refused before anything is deployed.
    if query.wait.is_some() {
        if cx.cluster.is_none() {
            return error(
                ErrorCode::BadRequest,
                "wait=N counts cluster nodes; this host is not in a cluster",
            );
        }
        if query.canary == Some(0) {
            return error(
                ErrorCode::BadRequest,
                "wait=N counts nodes serving the version, and canary=0 gives it no traffic",
            );
        }
    }
    let options = DeployOptions {
        canary: query.canary,
        keep_pinned: query.keep_pinned,
    };
    let deployed = match read_upload(
        &cx.platform,
        cx.events.as_ref(),
        &name,
        req,
        cx.max_upload,
        options,
    )
    .await
    {
        Ok(deployed) => deployed,
        Err(e) => {
            tracing::info!(function = %name, "deploy refused: {e}");
            return deploy_error(&e);
        }
    };
    let status = match (query.wait, &cx.cluster) {
        (Some(nodes), Some(cluster)) => {
            let wait_s = query.wait_s.unwrap_or(DeployQuery::DEFAULT_WAIT_S);
            match wait_for_nodes(cluster, &deployed, nodes, wait_s).await {
                Ok(status) => status,
                Err(response) => return response,
            }
        }
        _ if deployed.replaced => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    // The new version (a canary's, not the primary's), with the split it joined.
    json(
        status,
        &deployed.version.info(deployed.set.traffic().clone()),
    )
}

/// A deploy's `wait=N`: the status to answer once `nodes` nodes serve the new version, or
/// the error when they do not within `wait_s` seconds.
async fn wait_for_nodes(
    cluster: &Cluster,
    deployed: &Deployed,
    nodes: usize,
    wait_s: u64,
) -> Result<StatusCode, Response<ResponseBody>> {
    let name = &deployed.version.name;
    let version = deployed.version.record.generation;
    let wait_for = std::time::Duration::from_secs(wait_s);
    match cluster.wait_ready(name, version, nodes, wait_for).await {
        Ok(Readiness::Ready(_)) if deployed.replaced => Ok(StatusCode::OK),
        Ok(Readiness::Ready(_)) => Ok(StatusCode::CREATED),
        Ok(Readiness::TimedOut(ready)) => Err(error(
            ErrorCode::WaitTimedOut,
            &format!(
                "v{version} is deployed, but only {ready} of {nodes} nodes could serve it \
                 within {wait_s} s"
            ),
        )),
        Ok(Readiness::Superseded(ready)) => Err(error(
            ErrorCode::Superseded,
            &format!(
                "v{version} is deployed, but a newer change took its traffic when {ready} of \
                 {nodes} nodes could serve it"
            ),
        )),
        Err(e) => {
            tracing::warn!(function = %name, "deployed, readiness unknown: {e}");
            Ok(StatusCode::ACCEPTED)
        }
    }
}

async fn versions(call: Call) -> Response<ResponseBody> {
    versions_answer(call.cx.platform.versions(&call.param))
}

async fn traffic(call: Call) -> Response<ResponseBody> {
    let Call { cx, req, param, .. } = call;
    let result = match read_json::<TrafficSplit>(req).await {
        Ok(split) => cx.platform.set_traffic(&param, split).await,
        Err(e) => Err(e),
    };
    versions_answer(result)
}

async fn rollback(call: Call) -> Response<ResponseBody> {
    let Call { cx, req, param, .. } = call;
    let result = match read_json::<RollbackRequest>(req).await {
        Ok(rollback) => cx.platform.rollback(&param, rollback.version).await,
        Err(e) => Err(e),
    };
    versions_answer(result)
}

async fn promote(call: Call) -> Response<ResponseBody> {
    versions_answer(call.cx.platform.promote(&call.param).await)
}

/// How long one following response stays open; the client reconnects with `after=` the
/// last line it got (`thaw logs -f` does). Bounded so that a shutdown's drain never waits
/// on a follower for longer.
const FOLLOW_WINDOW: std::time::Duration = std::time::Duration::from_secs(25);

/// A function's recent output as NDJSON ([`crate::api::LogEntry`] per line); with
/// `follow`, lines written later are sent as they come, for [`FOLLOW_WINDOW`]. The
/// `x-thaw-log-dropped` header says how many old lines the bounded buffer has evicted, and
/// `x-thaw-log-seq` the last line's `seq` when the response began (resume after it).
/// Followers are capped per function and per client (429 past either).
async fn logs(call: Call) -> Response<ResponseBody> {
    let Some(set) = function(&call) else {
        return no_function(&call.param);
    };
    match parse_query::<LogQuery>(call.req.uri().query().unwrap_or("")) {
        Ok(query) => log_stream(set, query, &call.cx.followers, call.client),
        Err(e) => error(ErrorCode::BadRequest, &e),
    }
}

/// [`logs`], once the function and the query are known.
fn log_stream(
    set: Arc<VersionSet>,
    query: LogQuery,
    followers: &ClientFollowers,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    let log = set.primary().log.clone();
    let places = if query.follow {
        let Some(function_place) = log.follow() else {
            return error(
                ErrorCode::TooManyRequests,
                &format!(
                    "{} followers already follow this function",
                    crate::guest::log::MAX_FOLLOWERS
                ),
            );
        };
        let Some(client_place) = followers.enter(client) else {
            return error(
                ErrorCode::TooManyRequests,
                &format!("this address already follows {MAX_FOLLOWERS_PER_CLIENT} logs"),
            );
        };
        Some((function_place, client_place))
    } else {
        None
    };
    let dropped = log.dropped();
    let deadline = tokio::time::Instant::now() + FOLLOW_WINDOW;
    let (first, last_seq) = log.read(query.after, query.since_ms, query.tail);
    // A follower resumes after what exists now, whether `tail` let it print it or not.
    let state = (
        log,
        LogQuery {
            after: last_seq,
            ..query
        },
        first,
        true,
        // The follower's places, held for as long as the response streams.
        places,
    );
    let stream = futures::stream::unfold(
        state,
        move |(log, query, lines, first, places)| async move {
            if !first && !query.follow {
                return None;
            }
            let mut lines = lines;
            let after = query.after;
            if !first {
                loop {
                    // Registered before reading: a line written in between still wakes us.
                    let changed = log.changed();
                    lines = log.read(after, query.since_ms, None).0;
                    if !lines.is_empty() {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return None;
                    }
                    // Let the burst that woke us gather: one read for many lines.
                    let batch = tokio::time::Instant::now() + crate::guest::log::FOLLOW_BATCH;
                    tokio::time::sleep_until(batch.min(deadline)).await;
                }
            }
            let chunk = ndjson(&lines);
            let after = lines.last().map_or(after, |l| l.seq.max(after));
            let query = LogQuery { after, ..query };
            Some((
                Ok::<_, wasmtime_wasi_http::Error>(hyper::body::Frame::data(chunk)),
                (log, query, Vec::new(), false, places),
            ))
        },
    );
    let mut response = Response::new(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
        stream,
    )));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert("x-thaw-log-dropped", http::HeaderValue::from(dropped));
    headers.insert("x-thaw-log-seq", http::HeaderValue::from(last_seq));
    response
}

/// Log lines as NDJSON, one [`crate::api::LogEntry`] per line.
fn ndjson(lines: &[crate::guest::log::LogLine]) -> Bytes {
    let mut chunk = Vec::with_capacity(lines.len() * 96);
    for line in lines {
        let structured = crate::guest::log::structured(&line.text);
        let (level, message, fields) = match structured {
            Some(s) => (Some(s.level.to_owned()), Some(s.message), s.fields),
            None => (None, None, Vec::new()),
        };
        let entry = crate::api::LogEntry {
            seq: line.seq,
            time_ms: line.unix_ms,
            version: line.version,
            request: line.request,
            stream: line.stream.to_owned(),
            text: line.text.to_string(),
            level,
            message,
            fields,
        };
        if serde_json::to_writer(&mut chunk, &entry).is_ok() {
            chunk.push(b'\n');
        }
    }
    Bytes::from(chunk)
}

/// The `--metrics-listen` listener: `GET /metrics` without a token (for a Prometheus that
/// cannot send one), and nothing else (404). The metrics say what runs and how much, not
/// what it holds: no spec, environment or code.
pub async fn handle_metrics_only(
    platform: Arc<Platform>,
    exposition: Arc<crate::metrics::Exposition>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        metrics(&platform, &exposition, &req).await
    } else {
        error(ErrorCode::NoSuchRoute, "only GET /metrics is served here")
    }
}

/// The Prometheus exposition, for the admin listener and `--metrics-listen`: OpenMetrics
/// when the scraper asks for it (Prometheus does), the classic text format otherwise.
pub async fn metrics(
    platform: &Arc<Platform>,
    exposition: &crate::metrics::Exposition,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let openmetrics = crate::metrics::wants_openmetrics(
        req.headers()
            .get(http::header::ACCEPT)
            .map(|v| v.as_bytes()),
    );
    let Some(body) = exposition.get(platform, openmetrics).await else {
        return error(
            ErrorCode::Internal,
            "rendering the metrics failed (see the host's log)",
        );
    };
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(if openmetrics {
            crate::metrics::OPENMETRICS
        } else {
            crate::metrics::TEXT
        }),
    );
    response
}

/// `/v1/functions/{name}/kv`: operators read and seed a function's state, in the
/// function's scope and under its quota, as its guest would.
/// This host's events, or the answer that it has none. (The error is a whole response, as
/// every handler's: boxing it would only move the allocation.)
#[allow(clippy::result_large_err)]
fn events(call: &Call) -> Result<&Arc<Events>, Response<ResponseBody>> {
    call.cx.events.as_ref().ok_or_else(|| {
        error(
            ErrorCode::NotConfigured,
            "this host runs no events (schedules, asynchronous invocations)",
        )
    })
}

async fn schedules(call: Call) -> Response<ResponseBody> {
    match events(&call) {
        Ok(events) => json(StatusCode::OK, &events.schedules.list()),
        Err(refused) => refused,
    }
}

async fn events_status(call: Call) -> Response<ResponseBody> {
    match events(&call) {
        Ok(events) => json(
            StatusCode::OK,
            &crate::api::EventsStatus {
                queues: events.queue_stats(),
                schedules: events.schedules.list().schedules,
                triggers: events.triggers.list(events.nats_reconnects()),
            },
        ),
        Err(refused) => refused,
    }
}

async fn invocation_list(call: Call) -> Response<ResponseBody> {
    let events = match events(&call) {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    let query: InvocationQuery = match parse_query(call.req.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return error(ErrorCode::BadRequest, &e),
    };
    // Not looked up in the registry: a function that was removed may still have
    // invocations (dead letters, results) to read.
    if let Err(e) = crate::spec::validate_name(&call.param) {
        return error(ErrorCode::BadRequest, &e.to_string());
    }
    let limit = query.limit.unwrap_or(1000).min(1000);
    match invocations::list(events, &call.param, query.failed, limit).await {
        Ok(list) => json(StatusCode::OK, &list),
        Err(e) => error(ErrorCode::Internal, &format!("{e:#}")),
    }
}

async fn invocation(call: Call) -> Response<ResponseBody> {
    let events = match events(&call) {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    match invocations::info(events, &call.param).await {
        Ok(Some(info)) => json(StatusCode::OK, &info),
        Ok(None) => error(
            ErrorCode::NotFound,
            &format!("no invocation {:?}", call.param),
        ),
        Err(e) => error(ErrorCode::Internal, &format!("{e:#}")),
    }
}

fn change_error(e: invocations::ChangeError) -> Response<ResponseBody> {
    match e {
        invocations::ChangeError::NotFound(_) => error(ErrorCode::NotFound, &e.to_string()),
        invocations::ChangeError::Conflict(_) => error(ErrorCode::WrongState, &e.to_string()),
        invocations::ChangeError::Store(e) => error(ErrorCode::Internal, &format!("{e:#}")),
    }
}

async fn invocation_retry(call: Call) -> Response<ResponseBody> {
    let events = match events(&call) {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    match invocations::retry(events, &call.param).await {
        Ok(info) => json(StatusCode::OK, &info),
        Err(e) => change_error(e),
    }
}

async fn invocation_discard(call: Call) -> Response<ResponseBody> {
    let events = match events(&call) {
        Ok(events) => events,
        Err(refused) => return refused,
    };
    match invocations::discard(events, &call.param).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "discarded": call.param }),
        ),
        Err(e) => change_error(e),
    }
}

async fn keyvalue(call: Call) -> Response<ResponseBody> {
    let Some(set) = function(&call) else {
        return no_function(&call.param);
    };
    let Call {
        cx,
        req,
        param: name,
        ..
    } = call;
    let platform = &cx.platform;
    let Some(store) = platform.keyvalue() else {
        return error(ErrorCode::NotConfigured, "this host has no key-value store");
    };
    let KvQuery {
        bucket,
        key,
        cursor,
    } = match parse_query(req.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return error(ErrorCode::BadRequest, &e),
    };
    let (name, method) = (name.as_str(), req.method().clone());
    let quota = crate::keyvalue::Quota::of(&set.primary().limits);
    let answer = match (method, key) {
        (Method::GET, None) => store
            .list(name, &bucket, cursor)
            .await
            .map(|(keys, cursor)| json(StatusCode::OK, &KvKeys { keys, cursor })),
        (Method::GET, Some(key)) => store
            .get(name, &bucket, &key)
            .await
            .map(|value| match value {
                Some(value) => {
                    let mut response = Response::new(full(Bytes::from(value)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    response
                }
                None => error(ErrorCode::NoSuchKey, &format!("no key {key:?}")),
            }),
        (Method::PUT, Some(key)) => {
            let limit = quota.max_value_bytes.min(usize::MAX as u64) as usize;
            let value = match http_body_util::Limited::new(req.into_body(), limit)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes().to_vec(),
                Err(_) => {
                    return error(
                        ErrorCode::TooLarge,
                        &format!("a value is at most {limit} bytes for this function"),
                    );
                }
            };
            store
                .set(name, &bucket, &key, value, quota)
                .await
                .map(|()| empty(StatusCode::NO_CONTENT))
        }
        (Method::DELETE, Some(key)) => store
            .delete(name, &bucket, &key)
            .await
            .map(|()| empty(StatusCode::NO_CONTENT)),
        (_, None) => {
            return error(ErrorCode::BadRequest, "which key? (?key=...)");
        }
        // The table routes only GET, PUT and DELETE here.
        (_, Some(_)) => unreachable!("kv is routed for GET, PUT and DELETE only"),
    };
    answer.unwrap_or_else(|e| {
        let code = match e {
            crate::keyvalue::KvError::Limit(..) => ErrorCode::TooLarge,
            crate::keyvalue::KvError::NoSuchBucket(_) | crate::keyvalue::KvError::Invalid(_) => {
                ErrorCode::BadRequest
            }
            crate::keyvalue::KvError::Backend(_) => ErrorCode::Unavailable,
        };
        error(code, &e.to_string())
    })
}

/// A connection to function `call.param`'s database `?db=` (default `default`), for an
/// operator: the function's scope, names and quota, as its guest would have them.
async fn sql_lease(
    call: &Call,
) -> Result<(crate::sql::Lease, crate::sql::SqlQuota), Response<ResponseBody>> {
    let Some(set) = function(call) else {
        return Err(no_function(&call.param));
    };
    let query: SqlQuery = parse_query(call.req.uri().query().unwrap_or(""))
        .map_err(|e| error(ErrorCode::BadRequest, &e))?;
    let primary = set.primary();
    let quota = crate::sql::SqlQuota::of(&primary.limits);
    let allowed = primary.record.spec.sqlite_databases.clone();
    let (host, name) = (call.cx.platform.sql().clone(), primary.name.clone());
    let db = query
        .db
        .unwrap_or_else(|| crate::sql::DEFAULT_DATABASE.to_owned());
    let lease = tokio::task::spawn_blocking(move || host.database(&name, &db, &allowed)?.connect())
        .await
        .map_err(|e| error(ErrorCode::Internal, &e.to_string()))?
        .map_err(sql_error)?;
    Ok((lease, quota))
}

fn sql_error(e: crate::sql::SqlError) -> Response<ResponseBody> {
    let code = match e {
        crate::sql::SqlError::NoSuchDatabase(_) => ErrorCode::NotFound,
        crate::sql::SqlError::AccessDenied => ErrorCode::NotConfigured,
        crate::sql::SqlError::DatabaseFull(_) => ErrorCode::TooLarge,
        crate::sql::SqlError::Io(_) => ErrorCode::BadRequest,
    };
    error(code, &e.to_string())
}

/// `POST /v1/functions/{name}/sql?db=D`: runs the body, one statement, on the function's
/// database, under its quota and confinement (an operator gets no more than the guest).
async fn sql(call: Call) -> Response<ResponseBody> {
    let (mut lease, quota) = match sql_lease(&call).await {
        Ok(lease) => lease,
        Err(refused) => return refused,
    };
    let statement =
        match http_body_util::Limited::new(call.req.into_body(), crate::sql::MAX_STATEMENT_BYTES)
            .collect()
            .await
        {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(_) => {
                return error(
                    ErrorCode::TooLarge,
                    &format!(
                        "a statement is at most {} bytes",
                        crate::sql::MAX_STATEMENT_BYTES
                    ),
                );
            }
        };
    let ran = tokio::task::spawn_blocking(move || lease.execute(&statement, &[], &quota)).await;
    match ran {
        Ok(Ok((result, effects))) => json(
            StatusCode::OK,
            &SqlAnswer {
                columns: result.columns,
                rows: result
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(json_value).collect())
                    .collect(),
                changes: effects.changes,
                last_insert_rowid: effects.last_insert_rowid,
            },
        ),
        Ok(Err(e)) => sql_error(e),
        Err(e) => error(ErrorCode::Internal, &e.to_string()),
    }
}

fn json_value(value: crate::sql::Value) -> serde_json::Value {
    use crate::sql::Value;
    match value {
        Value::Integer(i) => i.into(),
        Value::Real(r) => {
            serde_json::Number::from_f64(r).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(t) => t.into(),
        Value::Blob(b) => serde_json::json!({ "hex": hex::encode(b) }),
        Value::Null => serde_json::Value::Null,
    }
}

/// `GET /v1/functions/{name}/sql/dump?db=D`: the database as SQL text (`text/plain`).
async fn sql_dump(call: Call) -> Response<ResponseBody> {
    let (mut lease, _) = match sql_lease(&call).await {
        Ok(lease) => lease,
        Err(refused) => return refused,
    };
    match tokio::task::spawn_blocking(move || lease.dump()).await {
        Ok(Ok(text)) => {
            let mut response = Response::new(full(Bytes::from(text)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/sql; charset=utf-8"),
            );
            response
        }
        Ok(Err(e)) => sql_error(e),
        Err(e) => error(ErrorCode::Internal, &e.to_string()),
    }
}

/// The answer to a version operation: the function's versions, or why not.
fn versions_answer(result: Result<Arc<VersionSet>, DeployError>) -> Response<ResponseBody> {
    match result {
        Ok(set) => json(StatusCode::OK, &set.versions_info()),
        Err(e) => {
            tracing::info!("version change refused: {e}");
            deploy_error(&e)
        }
    }
}

/// Largest JSON body of a version operation (a split lists at most a few versions).
const MAX_JSON_BYTES: usize = 64 << 10;

/// A small JSON body; an empty body reads as `{}`.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, DeployError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_JSON_BYTES)
        .collect()
        .await
        .map_err(|e| DeployError::BadRequest(format!("reading the body: {e}")))?
        .to_bytes();
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|e| DeployError::BadRequest(format!("invalid JSON: {e}")))
}

/// Reads a deploy's upload (the wasm, and the spec if it is multipart) and deploys it.
async fn read_upload(
    platform: &Arc<Platform>,
    events: Option<&Arc<Events>>,
    name: &str,
    req: Request<Incoming>,
    max_upload: u64,
    options: DeployOptions,
) -> Result<Deployed, DeployError> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = http_body_util::Limited::new(req.into_body(), max_upload as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                DeployError::TooLarge(format!("upload over the limit of {max_upload} bytes"))
            } else {
                DeployError::BadRequest(format!("reading the upload: {e}"))
            }
        })?
        .to_bytes();

    let (spec, wasm, assets) = if content_type.starts_with("multipart/form-data") {
        read_multipart(&content_type, body).await?
    } else {
        (FunctionSpec::default(), body, None)
    };
    // A queue trigger's broker and stream are checked here, where the events are: a
    // trigger this host cannot consume is refused before anything changes.
    if let Some(trigger) = &spec.trigger {
        trigger
            .validate()
            .map_err(|e| DeployError::BadRequest(e.to_string()))?;
        let events = events
            .ok_or_else(|| DeployError::BadRequest("trigger: this host runs no events".into()))?;
        events
            .check_trigger(trigger)
            .await
            .map_err(DeployError::BadRequest)?;
    }
    platform
        .deploy_with_assets(name, spec, wasm, assets, options)
        .await
}

/// A peer endpoint: a node's code, for another node of its cluster, by sha256 (the caller
/// presented the cluster token).
async fn peer(call: Call, blob: Blob) -> Response<ResponseBody> {
    let Some(cluster) = &call.cx.cluster else {
        return error(ErrorCode::NotConfigured, "this host is not in a cluster");
    };
    let digest = call.param;
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return error(ErrorCode::BadRequest, "not a sha256 digest");
    }
    let platform = cluster.platform().clone();
    let read = tokio::task::spawn_blocking(move || match blob {
        Blob::Wasm => std::fs::read(platform.data_dir().wasm(&digest)).map_err(|e| e.to_string()),
        // Checked against its checksum first: a damaged artifact is never handed out.
        Blob::Artifact => platform
            .cache()
            .artifact_bytes(&digest)
            .map_err(|e| format!("{e:#}")),
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            let mut response = Response::new(full(Bytes::from(bytes)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Ok(Err(reason)) => error(
            ErrorCode::NotFound,
            &format!("no such {}: {reason}", blob.segment()),
        ),
        Err(e) => error(ErrorCode::Internal, &e.to_string()),
    }
}

/// Largest `spec` part of a deploy. A spec is settings, a few kilobytes even with many
/// variables and grants; a bound keeps a hostile or broken client from making the host parse,
/// store and serve back hundreds of megabytes of JSON (the wasm part has its own, larger
/// bound, `--max-upload-mib`).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// A multipart deploy's parts: `spec` (JSON), `wasm`, and `assets` (a tar archive of the
/// function's static files, see [`crate::asset_spec`]). With `assets` and no `wasm`, the
/// function is its files only.
async fn read_multipart(
    content_type: &str,
    body: Bytes,
) -> Result<(FunctionSpec, Bytes, Option<Bytes>), DeployError> {
    let bad = |e: multer::Error| DeployError::BadRequest(format!("malformed multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let (mut spec, mut wasm, mut assets) = (None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("spec") => {
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if bytes.len() + chunk.len() > MAX_SPEC_BYTES {
                        return Err(DeployError::TooLarge(format!(
                            "the spec part is over the limit of {MAX_SPEC_BYTES} bytes"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                let json = &mut serde_json::Deserializer::from_slice(&bytes);
                spec = Some(serde_path_to_error::deserialize(json).map_err(|e| {
                    DeployError::BadRequest(format!("invalid spec: {}: {}", e.path(), e.inner()))
                })?);
            }
            Some("wasm") => wasm = Some(field.bytes().await.map_err(bad)?),
            Some("assets") => assets = Some(field.bytes().await.map_err(bad)?),
            other => {
                return Err(DeployError::BadRequest(format!(
                    "unexpected multipart field {other:?}; expected `wasm` and optionally `spec` and `assets`"
                )));
            }
        }
    }
    let wasm = match (wasm, &assets) {
        (Some(wasm), _) => wasm,
        // A function of static assets only (see `thaw_spec::assets::ASSETS_ONLY_WASM`).
        (None, Some(_)) => Bytes::from_static(thaw_spec::assets::ASSETS_ONLY_WASM),
        (None, None) => {
            return Err(DeployError::BadRequest(
                "the multipart body has no `wasm` field (nor `assets`, for a function of \
                 static files only)"
                    .into(),
            ));
        }
    };
    Ok((spec.unwrap_or_default(), wasm, assets))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

/// An error answer: `{"error": {"code": ..., "message": ...}}` ([`ErrorBody`]).
pub(super) fn error(code: ErrorCode, message: &str) -> Response<ResponseBody> {
    json(
        code.status(),
        &ErrorBody {
            error: ErrorDetail {
                code,
                message: message.to_owned(),
            },
        },
    )
}

/// A refused change's answer.
fn deploy_error(e: &DeployError) -> Response<ResponseBody> {
    error(e.code(), &e.to_string())
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}
