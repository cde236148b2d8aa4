//! The admin API: deploy, list, get, remove, status. JSON in and out.
//!
//! | method and path             | does                                  | answers |
//! |-----------------------------|---------------------------------------|---------|
//! | `GET /v1/status`            | host summary (allocator, counters)    | 200 |
//! | `GET/PUT/DELETE /v1/functions/{name}/kv?bucket=B&key=K` | read, write, delete a function's state | 200/204, 404, 413 |
//! | `GET /v1/functions/{name}/kv?bucket=B[&cursor=N]` | a page of a bucket's keys ([`KvKeys`]) | 200, 404 |
//! | `GET /v1/history`           | counters over the last minutes ([`History`]) | 200 |
//! | `GET /v1/functions`         | every function                        | 200 |
//! | `GET /v1/functions/{name}`  | one function                          | 200, 404 |
//! | `PUT /v1/functions/{name}`  | deploy or redeploy                    | 201 new, 200 replaced, 400, 409, 413 |
//! | `DELETE /v1/functions/{name}` | remove                              | 204, 404 |
//! | `GET /v1/functions/{name}/logs` | its recent output, NDJSON ([`logs`]) | 200, 400, 404 |
//! | `GET /v1/functions/{name}/versions` | its kept versions and split | 200, 404 |
//! | `PUT /v1/functions/{name}/traffic` | a new split (JSON [`TrafficSplit`]) | 200, 400, 404 |
//! | `POST /v1/functions/{name}/rollback` | all traffic to `{"version": N}` or the previous one | 200, 404 |
//! | `POST /v1/functions/{name}/promote` | all traffic to the newest version | 200, 404 |
//! | `GET /metrics`              | Prometheus metrics ([`crate::metrics`]) | 200 |
//! | `GET /v1/cluster`           | this node, etcd's state, the members ([`ClusterStatus`](crate::api::ClusterStatus)) | 200, 404 without a cluster |
//! | `GET /v1/cluster/wasm/{sha256}`, `GET /v1/cluster/artifacts/{sha256}` | a peer's code (cluster token, not the admin token) | 200, 401, 404 |
//!
//! A deploy body is either `multipart/form-data` with a `wasm` part (the binary) and an
//! optional `spec` part (JSON, see [`FunctionSpec`]), or the raw wasm with any other content
//! type (the default spec). `?canary=P` makes the new version take P% beside the versions
//! already serving instead of all traffic (versions that were only pinnable, at 0%, leave
//! the split unless `&keep_pinned=true`). In a cluster, `?wait=N` answers once N nodes
//! report the new version ready (or after `wait_s`, default 60, with 504 and the count). Errors are `{"error": "..."}` with the reason.
//! The version operations answer with the function's versions ([`VersionsInfo`]).
//!
//! Every request needs `Authorization: Bearer <token>`, or the dashboard's session cookie
//! (see [`super::auth`]); without it the answer is 401 and nothing changes. The dashboard's
//! own paths (`/ui`, see [`super::ui`]) are served before that check. The listener binds to 127.0.0.1 by default.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::auth::AdminAuth;
use crate::api::{ErrorBody, FunctionInfo, KvKeys, RollbackRequest, VersionsInfo};
use crate::cluster::peers::Blob;
use crate::cluster::{Cluster, Readiness};
use crate::control::deploy::{DeployOptions, Deployed};
use crate::control::versions::VersionSet;
use crate::control::{DeployError, Platform};
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

async fn route(
    cx: Arc<AdminContext>,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    if super::ui::is_ui(req.uri().path()) {
        return super::ui::handle(&cx.auth, req, client).await;
    }
    if let Some(blob) = peer_blob(req.uri().path()) {
        let turn = cx.auth.failures.wait_turn(client).await;
        let response = peer(cx.cluster.as_deref(), &req, blob).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            cx.auth.failures.failed(client, "cluster peer request");
            if let Some((_turn, left)) = turn {
                return super::auth::too_many_failures(left);
            }
        }
        return response;
    }
    let presented = AdminAuth::presents_token(req.headers());
    let turn = match presented {
        true => cx.auth.failures.wait_turn(client).await,
        false => None,
    };
    if !cx.auth.allows(req.headers(), req.method()) {
        // A guess is a token that did not match; a request with none (a browser before its
        // login, or with a session that ended) is refused without counting.
        if presented {
            cx.auth.failures.failed(client, "admin request");
            if let Some((_turn, left)) = turn {
                return super::auth::too_many_failures(left);
            }
        } else {
            tracing::debug!(%client, "admin request refused: no token");
        }
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <token>)",
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let platform = &cx.platform;
    let max_upload = cx.max_upload;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &platform.status()),
        (Method::GET, ["v1", "history"]) => json(StatusCode::OK, &cx.history.view(platform)),
        (Method::GET, ["metrics"]) => metrics(platform, &cx.exposition, &req).await,
        (Method::GET, ["v1", "functions"]) => {
            let all: Vec<FunctionInfo> = platform
                .registry()
                .all()
                .iter()
                .map(|set| set.info())
                .collect();
            json(StatusCode::OK, &all)
        }
        (Method::GET, ["v1", "functions", name]) => match platform.registry().get(name) {
            Some(set) => json(StatusCode::OK, &set.info()),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no function named {name:?}"),
            ),
        },
        (Method::GET, ["v1", "cluster"]) => match &cx.cluster {
            Some(cluster) => json(StatusCode::OK, &cluster.status().await),
            None => error(
                StatusCode::NOT_FOUND,
                "this host is not in a cluster (thaw serve --cluster)",
            ),
        },
        (Method::PUT, ["v1", "functions", name]) => {
            let name = name.to_string();
            let query = match DeployQuery::parse(req.uri().query().unwrap_or("")) {
                Ok(query) => query,
                Err(e) => return error(e.status(), &e.to_string()),
            };
            // Refused before anything is deployed.
            if query.wait.is_some() {
                if cx.cluster.is_none() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "wait=N counts cluster nodes; this host is not in a cluster",
                    );
                }
                if query.canary == Some(0) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "wait=N counts nodes serving the version, and canary=0 gives it no traffic",
                    );
                }
            }
            let options = DeployOptions {
                canary: query.canary,
                keep_pinned: query.keep_pinned,
            };
            match deploy(platform, &name, req, max_upload, options).await {
                Ok(deployed) => {
                    let mut status = if deployed.replaced {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    };
                    if let (Some(nodes), Some(cluster)) = (query.wait, &cx.cluster) {
                        let version = deployed.version.record.generation;
                        match cluster
                            .wait_ready(&name, version, nodes, query.wait_for)
                            .await
                        {
                            Ok(Readiness::Ready(_)) => {}
                            Ok(Readiness::TimedOut(ready)) => {
                                return error(
                                    StatusCode::GATEWAY_TIMEOUT,
                                    &format!(
                                        "v{version} is deployed, but only {ready} of {nodes} \
                                         nodes could serve it within {} s",
                                        query.wait_for.as_secs()
                                    ),
                                );
                            }
                            Ok(Readiness::Superseded(ready)) => {
                                return error(
                                    StatusCode::CONFLICT,
                                    &format!(
                                        "v{version} is deployed, but a newer change took its \
                                         traffic when {ready} of {nodes} nodes could serve it"
                                    ),
                                );
                            }
                            Err(e) => {
                                status = StatusCode::ACCEPTED;
                                tracing::warn!(function = %name, "deployed, readiness unknown: {e}");
                            }
                        }
                    }
                    // The new version (a canary's, not the primary's), with the split it
                    // joined.
                    json(
                        status,
                        &deployed.version.info(deployed.set.traffic().clone()),
                    )
                }
                Err(e) => {
                    tracing::info!(function = %name, "deploy refused: {e}");
                    error(e.status(), &e.to_string())
                }
            }
        }
        (Method::GET, ["v1", "functions", name, "versions"]) => {
            versions(platform.versions(name).map(|set| set.versions_info()))
        }
        (Method::PUT, ["v1", "functions", name, "traffic"]) => {
            let name = name.to_string();
            let result = match read_json::<TrafficSplit>(req).await {
                Ok(split) => platform.set_traffic(&name, split).await,
                Err(e) => Err(e),
            };
            versions(result.map(|set| set.versions_info()))
        }
        (Method::POST, ["v1", "functions", name, "rollback"]) => {
            let name = name.to_string();
            let result = match read_json::<RollbackRequest>(req).await {
                Ok(rollback) => platform.rollback(&name, rollback.version).await,
                Err(e) => Err(e),
            };
            versions(result.map(|set| set.versions_info()))
        }
        (Method::POST, ["v1", "functions", name, "promote"]) => {
            versions(platform.promote(name).await.map(|set| set.versions_info()))
        }
        (method, ["v1", "functions", name, "kv"]) => {
            let name = name.to_string();
            keyvalue(platform, &name, method, req).await
        }
        (Method::GET, ["v1", "functions", name, "logs"]) => match platform.registry().get(name) {
            Some(set) => match LogQuery::parse(req.uri().query().unwrap_or("")) {
                Ok(query) => logs(set, query, &cx.followers, client),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            },
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no function named {name:?}"),
            ),
        },
        (Method::DELETE, ["v1", "functions", name]) => match platform.remove(name).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                &format!("no function named {name:?}"),
            ),
            Err(e) => error(e.status(), &e.to_string()),
        },
        (_, ["v1", "status"] | ["v1", "functions"] | ["v1", "functions", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin route"),
    }
}

/// What `GET /v1/functions/{name}/logs` was asked for.
#[derive(Debug, Default)]
struct LogQuery {
    /// Only lines after this `seq`.
    after: u64,
    /// Only lines written at or after this time (ms since the epoch).
    since_ms: u64,
    /// Only the last this many of them.
    tail: Option<usize>,
    /// Keep the response open and send lines as they are written.
    follow: bool,
}

impl LogQuery {
    fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?} is not a number"))
            };
            match key {
                "after" => parsed.after = number()?,
                "since_ms" => parsed.since_ms = number()?,
                "tail" => parsed.tail = Some(number()? as usize),
                "follow" => parsed.follow = matches!(value, "" | "1" | "true"),
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?} (after, since_ms, tail, follow)"
                    ));
                }
            }
        }
        Ok(parsed)
    }
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
fn logs(
    set: Arc<VersionSet>,
    query: LogQuery,
    followers: &ClientFollowers,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    let log = set.primary().log.clone();
    let places = if query.follow {
        let Some(function_place) = log.follow() else {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "{} followers already follow this function",
                    crate::guest::log::MAX_FOLLOWERS
                ),
            );
        };
        let Some(client_place) = followers.enter(client) else {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
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
            let mut chunk = Vec::with_capacity(lines.len() * 96);
            for line in &lines {
                let entry = crate::api::LogEntry {
                    seq: line.seq,
                    time_ms: line.unix_ms,
                    version: line.version,
                    request: line.request,
                    stream: line.stream.to_owned(),
                    text: line.text.to_string(),
                };
                if serde_json::to_writer(&mut chunk, &entry).is_ok() {
                    chunk.push(b'\n');
                }
            }
            let after = lines.last().map_or(after, |l| l.seq.max(after));
            let query = LogQuery { after, ..query };
            Some((
                Ok::<_, wasmtime_wasi_http::Error>(hyper::body::Frame::data(Bytes::from(chunk))),
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
        error(StatusCode::NOT_FOUND, "only GET /metrics is served here")
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
            StatusCode::INTERNAL_SERVER_ERROR,
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
async fn keyvalue(
    platform: &Arc<Platform>,
    name: &str,
    method: Method,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let Some(set) = platform.registry().get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no function named {name:?}"),
        );
    };
    let Some(store) = platform.keyvalue() else {
        return error(StatusCode::NOT_FOUND, "this host has no key-value store");
    };
    let (mut bucket, mut key, mut cursor) = (String::new(), None, None);
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "bucket" => bucket = v.into_owned(),
            "key" => key = Some(v.into_owned()),
            "cursor" => match v.parse() {
                Ok(c) => cursor = Some(c),
                Err(_) => return error(StatusCode::BAD_REQUEST, "cursor is not a number"),
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {other:?} (bucket, key, cursor)"),
                );
            }
        }
    }
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
                None => error(StatusCode::NOT_FOUND, &format!("no key {key:?}")),
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
                        StatusCode::PAYLOAD_TOO_LARGE,
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
        (Method::PUT | Method::DELETE, None) => {
            return error(StatusCode::BAD_REQUEST, "which key? (?key=...)");
        }
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    answer.unwrap_or_else(|e| {
        let status = match e {
            crate::keyvalue::KvError::Limit(..) => StatusCode::PAYLOAD_TOO_LARGE,
            crate::keyvalue::KvError::NoSuchBucket(_) | crate::keyvalue::KvError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            crate::keyvalue::KvError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, &e.to_string())
    })
}

/// The answer to a version operation: the function's versions, or why not.
fn versions(result: Result<VersionsInfo, DeployError>) -> Response<ResponseBody> {
    match result {
        Ok(info) => json(StatusCode::OK, &info),
        Err(e) => {
            tracing::info!("version change refused: {e}");
            error(e.status(), &e.to_string())
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

async fn deploy(
    platform: &Arc<Platform>,
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

    let (spec, wasm) = if content_type.starts_with("multipart/form-data") {
        read_multipart(&content_type, body).await?
    } else {
        (FunctionSpec::default(), body)
    };
    platform.deploy_with(name, spec, wasm, options).await
}

/// A deploy's query: `canary=P`, `keep_pinned=true`, `wait=N`, `wait_s=S`.
struct DeployQuery {
    canary: Option<u8>,
    keep_pinned: bool,
    wait: Option<usize>,
    wait_for: std::time::Duration,
}

impl DeployQuery {
    fn parse(query: &str) -> Result<Self, DeployError> {
        let mut parsed = Self {
            canary: None,
            keep_pinned: false,
            wait: None,
            wait_for: std::time::Duration::from_secs(60),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("canary", value)) => {
                    parsed.canary = Some(
                        value
                            .parse::<u8>()
                            .ok()
                            .filter(|p| *p <= 100)
                            .ok_or_else(|| {
                                DeployError::BadRequest(format!(
                                    "canary={value:?} is not a percent (0-100)"
                                ))
                            })?,
                    )
                }
                Some(("keep_pinned", value)) => {
                    parsed.keep_pinned = match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(DeployError::BadRequest(format!(
                                "keep_pinned={value:?} is not true or false"
                            )));
                        }
                    }
                }
                Some(("wait", value)) => {
                    parsed.wait = Some(value.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(
                        || DeployError::BadRequest(format!("wait={value:?} is not a node count")),
                    )?)
                }
                Some(("wait_s", value)) => {
                    parsed.wait_for = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .map(std::time::Duration::from_secs)
                        .ok_or_else(|| {
                            DeployError::BadRequest(format!(
                                "wait_s={value:?} is not 1 to 3600 seconds"
                            ))
                        })?
                }
                _ => {
                    return Err(DeployError::BadRequest(format!(
                        "unknown deploy parameter {pair:?} (canary=PERCENT, keep_pinned=BOOL, wait=NODES, wait_s=SECONDS)"
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

/// The blob a peer endpoint path asks for: `/v1/cluster/{wasm|artifacts}/{sha256}`.
fn peer_blob(path: &str) -> Option<(Blob, &str)> {
    let rest = path.strip_prefix("/v1/cluster/")?;
    let (kind, digest) = rest.split_once('/')?;
    let blob = match kind {
        "wasm" => Blob::Wasm,
        "artifacts" => Blob::Artifact,
        _ => return None,
    };
    Some((blob, digest))
}

/// A peer endpoint: a node's code, for another node of its cluster. Authenticated with the
/// cluster token only (the admin token would let a peer deploy; this lets it read code).
async fn peer(
    cluster: Option<&Cluster>,
    req: &Request<Incoming>,
    (blob, digest): (Blob, &str),
) -> Response<ResponseBody> {
    let Some(cluster) = cluster else {
        return error(StatusCode::NOT_FOUND, "this host is not in a cluster");
    };
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if !token.is_some_and(|t| cluster.peer_token_matches(t)) {
        // Counted, and logged once per address and minute, by the caller (`FailedAttempts`).
        tracing::debug!(path = %req.uri().path(), "peer request refused: missing or wrong cluster token");
        return error(StatusCode::UNAUTHORIZED, "missing or wrong cluster token");
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "peer endpoints are GET only",
        );
    }
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return error(StatusCode::BAD_REQUEST, "not a sha256 digest");
    }
    let platform = cluster.platform().clone();
    let digest = digest.to_owned();
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
            StatusCode::NOT_FOUND,
            &format!("no such {}: {reason}", blob.segment()),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Largest `spec` part of a deploy. A spec is settings, a few kilobytes even with many
/// variables and grants; a bound keeps a hostile or broken client from making the host parse,
/// store and serve back hundreds of megabytes of JSON (the wasm part has its own, larger
/// bound, `--max-upload-mib`).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

async fn read_multipart(
    content_type: &str,
    body: Bytes,
) -> Result<(FunctionSpec, Bytes), DeployError> {
    let bad = |e: multer::Error| DeployError::BadRequest(format!("malformed multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let (mut spec, mut wasm) = (None, None);
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
                spec = Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| DeployError::BadRequest(format!("invalid spec: {e}")))?,
                );
            }
            Some("wasm") => wasm = Some(field.bytes().await.map_err(bad)?),
            other => {
                return Err(DeployError::BadRequest(format!(
                    "unexpected multipart field {other:?}; expected `wasm` and optionally `spec`"
                )));
            }
        }
    }
    let wasm = wasm
        .ok_or_else(|| DeployError::BadRequest("the multipart body has no `wasm` field".into()))?;
    Ok((spec.unwrap_or_default(), wasm))
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

fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(
        status,
        &ErrorBody {
            error: message.to_owned(),
        },
    )
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}
