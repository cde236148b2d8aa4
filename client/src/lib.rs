//! A client for thaw's admin API, used by the CLI, the cold-start suite and the tests.
//!
//! It speaks the wire types of [`thaw_spec::api`], the same ones the server serialises, so a
//! change on one side that the other does not follow fails to compile (or, across versions,
//! fails with a clear decoding error) instead of reading `null`.

#![deny(missing_docs)]

use bytes::Bytes;
use serde::de::DeserializeOwned;
use thaw_spec::api::{
    DeployQuery, EngineInfo, ErrorBody, ErrorCode, FunctionInfo, HostStatus, KvKeys, KvQuery,
    LogEntry, LogQuery, RollbackRequest, SqlAnswer, SqlQuery, VersionsInfo,
};
use thaw_spec::spec::FunctionSpec;
use thaw_spec::traffic::TrafficSplit;

/// Why a call failed: the admin API's answer ([`ApiError`]: match on its code), or the
/// exchange itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin API answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The admin API could not be reached.
    #[error("cannot reach the thaw admin API at {base} (is `thaw serve` running?): {source}")]
    Unreachable {
        /// The address the client was given.
        base: String,
        /// What the connection attempt said.
        #[source]
        source: reqwest::Error,
    },
    /// The exchange broke off, or its request could not be built.
    #[error("talking to the admin API: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer is not what this client understands (a different thaw version?).
    #[error("decoding the admin API's answer: {0}")]
    Decode(String),
}

impl Error {
    /// The admin API's code, if it answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

/// An error answer of the admin API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// What kind of error ([`ErrorCode::Unknown`] for a body that is not the API's).
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// What every call returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Talks to one host's admin API. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the admin API at `base` (e.g. `http://127.0.0.1:8081`), sending `token`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The admin API's address, as given to [`AdminClient::new`].
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request with the token; a non-2xx answer becomes an [`ApiError`]. The body
    /// of a 2xx answer is left to the caller (it may stream).
    async fn respond(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|source| {
            if source.is_connect() {
                Error::Unreachable {
                    base: self.base.clone(),
                    source,
                }
            } else {
                Error::Transport(source)
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await?;
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(body) => (body.error.code, body.error.message),
                // Not the API's answer (a proxy's, say): its text, as it is.
                Err(_) => (
                    ErrorCode::Unknown,
                    String::from_utf8_lossy(&body).into_owned(),
                ),
            };
            return Err(ApiError {
                status,
                code,
                message,
            }
            .into());
        }
        Ok(response)
    }

    /// [`AdminClient::respond`], then the whole body.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Bytes> {
        Ok(self.respond(request).await?.bytes().await?)
    }

    async fn send_json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let body = self.send(request).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Deploys `wasm` as `name` with `spec`; the new version takes all traffic.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
    ) -> Result<FunctionInfo> {
        self.deploy_canary(name, spec, wasm, None).await
    }

    /// Deploys `wasm` as `name` with `spec`; with `canary`, the new version takes that
    /// percent of the traffic beside the versions already serving.
    pub async fn deploy_canary(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
        canary: Option<u8>,
    ) -> Result<FunctionInfo> {
        self.deploy_waiting(name, spec, wasm, canary, None).await
    }

    /// [`AdminClient::deploy_canary`] that, in a cluster, answers once `wait` nodes can
    /// serve the new version (an error if they cannot within the host's wait, 60 s).
    pub async fn deploy_waiting(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
        canary: Option<u8>,
        wait: Option<usize>,
    ) -> Result<FunctionInfo> {
        let params = DeployParams {
            canary,
            wait,
            keep_pinned: false,
        };
        self.deploy_with(name, spec, wasm, params).await
    }

    /// Deploys `wasm` as `name` with `spec` and every option of a deploy.
    pub async fn deploy_with(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
        params: DeployParams,
    ) -> Result<FunctionInfo> {
        self.deploy_with_assets(name, spec, Some(wasm), None, params)
            .await
    }

    /// [`AdminClient::deploy_with`] with the function's static assets: a tar archive of
    /// its files (see `thaw_spec::assets`).
    pub async fn deploy_with_assets(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Option<Bytes>,
        assets: Option<Bytes>,
        params: DeployParams,
    ) -> Result<FunctionInfo> {
        let DeployParams {
            canary,
            wait,
            keep_pinned,
        } = params;
        let spec = serde_json::to_string(spec).map_err(|e| Error::Decode(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part(
            "spec",
            reqwest::multipart::Part::text(spec).mime_str("application/json")?,
        );
        // No code: a function of its static files only.
        let form = match wasm {
            Some(wasm) => form.part(
                "wasm",
                reqwest::multipart::Part::stream(wasm).mime_str("application/wasm")?,
            ),
            None => form,
        };
        let form = match assets {
            Some(assets) => form.part(
                "assets",
                reqwest::multipart::Part::stream(assets).mime_str("application/x-tar")?,
            ),
            None => form,
        };
        let query = DeployQuery {
            canary,
            keep_pinned: keep_pinned && canary.is_some(),
            wait,
            wait_s: None,
        };
        let request = self
            .http
            .put(format!("{}/v1/functions/{name}", self.base))
            .query(&query)
            .multipart(form);
        self.send_json(request).await
    }

    /// This node's view of its cluster (`GET /v1/cluster`).
    pub async fn cluster(&self) -> Result<thaw_spec::api::ClusterStatus> {
        self.send_json(self.http.get(format!("{}/v1/cluster", self.base)))
            .await
    }

    /// A function's kept versions and traffic split.
    pub async fn versions(&self, name: &str) -> Result<VersionsInfo> {
        self.send_json(
            self.http
                .get(format!("{}/v1/functions/{name}/versions", self.base)),
        )
        .await
    }

    /// Sets a function's traffic split.
    pub async fn set_traffic(&self, name: &str, split: &TrafficSplit) -> Result<VersionsInfo> {
        self.send_json(
            self.http
                .put(format!("{}/v1/functions/{name}/traffic", self.base))
                .json(split),
        )
        .await
    }

    /// Sends all of a function's traffic to `version`, or to the previous version.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> Result<VersionsInfo> {
        self.send_json(
            self.http
                .post(format!("{}/v1/functions/{name}/rollback", self.base))
                .json(&RollbackRequest { version }),
        )
        .await
    }

    /// Sends all of a function's traffic to its newest version.
    pub async fn promote(&self, name: &str) -> Result<VersionsInfo> {
        self.send_json(
            self.http
                .post(format!("{}/v1/functions/{name}/promote", self.base)),
        )
        .await
    }

    /// Every function.
    pub async fn list(&self) -> Result<Vec<FunctionInfo>> {
        self.send_json(self.http.get(format!("{}/v1/functions", self.base)))
            .await
    }

    /// The host's language engines and the function versions on each.
    pub async fn engines(&self) -> Result<Vec<EngineInfo>> {
        self.send_json(self.http.get(format!("{}/v1/engines", self.base)))
            .await
    }

    /// One function.
    pub async fn get(&self, name: &str) -> Result<FunctionInfo> {
        self.send_json(self.http.get(format!("{}/v1/functions/{name}", self.base)))
            .await
    }

    /// A function's asynchronous invocations, newest first (only dead letters if `failed`).
    pub async fn invocations(
        &self,
        name: &str,
        query: &thaw_spec::api::InvocationQuery,
    ) -> Result<thaw_spec::api::InvocationList> {
        self.send_json(
            self.http
                .get(format!("{}/v1/functions/{name}/invocations", self.base))
                .query(query),
        )
        .await
    }

    /// One asynchronous invocation.
    pub async fn invocation(&self, id: &str) -> Result<thaw_spec::api::InvocationInfo> {
        self.send_json(self.http.get(format!("{}/v1/invocations/{id}", self.base)))
            .await
    }

    /// Queues a dead-lettered invocation again.
    pub async fn retry_invocation(&self, id: &str) -> Result<thaw_spec::api::InvocationInfo> {
        self.send_json(
            self.http
                .post(format!("{}/v1/invocations/{id}/retry", self.base)),
        )
        .await
    }

    /// Removes an invocation that is not running.
    pub async fn discard_invocation(&self, id: &str) -> Result<()> {
        self.send(
            self.http
                .delete(format!("{}/v1/invocations/{id}", self.base)),
        )
        .await?;
        Ok(())
    }

    /// Every queue and schedule on the host.
    pub async fn events(&self) -> Result<thaw_spec::api::EventsStatus> {
        self.send_json(self.http.get(format!("{}/v1/events", self.base)))
            .await
    }

    /// Every schedule on the host.
    pub async fn schedules(&self) -> Result<thaw_spec::api::ScheduleList> {
        self.send_json(self.http.get(format!("{}/v1/schedules", self.base)))
            .await
    }

    /// Removes a function.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.send(
            self.http
                .delete(format!("{}/v1/functions/{name}", self.base)),
        )
        .await?;
        Ok(())
    }

    /// A function's recent output: lines after `after` (a `seq`), written at or after
    /// `since_ms`, the last `tail` of them; with `follow`, also the lines written while the
    /// server keeps the response open (it closes it after a while: call again with the last
    /// `seq` to go on). Calls `each` per line as it arrives; returns the last `seq` seen
    /// (`after` if none) and how many old lines the host's bounded buffer has dropped.
    pub async fn logs(
        &self,
        name: &str,
        after: u64,
        since_ms: u64,
        tail: Option<usize>,
        follow: bool,
        mut each: impl FnMut(LogEntry),
    ) -> Result<(u64, u64)> {
        let query = LogQuery {
            after,
            since_ms,
            tail,
            follow,
        };
        let mut response = self
            .respond(
                self.http
                    .get(format!("{}/v1/functions/{name}/logs", self.base))
                    .query(&query),
            )
            .await?;
        let dropped = response
            .headers()
            .get("x-thaw-log-dropped")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        // Resume after what existed when the response began, even if `tail` skipped it.
        let mut last = response
            .headers()
            .get("x-thaw-log-seq")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(after)
            .max(after);
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let entry: LogEntry = serde_json::from_slice(&line)
                    .map_err(|e| Error::Decode(format!("a log line: {e}")))?;
                last = last.max(entry.seq);
                each(entry);
            }
        }
        Ok((last, dropped))
    }

    fn kv(&self, method: reqwest::Method, name: &str, query: &KvQuery) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/v1/functions/{name}/kv", self.base))
            .query(query)
    }

    fn kv_key(bucket: &str, key: &str) -> KvQuery {
        KvQuery {
            bucket: bucket.to_owned(),
            key: Some(key.to_owned()),
            cursor: None,
        }
    }

    /// A value of function `name`'s key-value store, `None` if the key is not set.
    pub async fn kv_get(&self, name: &str, bucket: &str, key: &str) -> Result<Option<Bytes>> {
        let request = self.kv(reqwest::Method::GET, name, &Self::kv_key(bucket, key));
        match self.send(request).await {
            Ok(value) => Ok(Some(value)),
            // A missing key is an answer; a missing function stays an error.
            Err(e) if e.code() == Some(ErrorCode::NoSuchKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets a value in function `name`'s key-value store.
    pub async fn kv_set(&self, name: &str, bucket: &str, key: &str, value: Bytes) -> Result<()> {
        let request = self.kv(reqwest::Method::PUT, name, &Self::kv_key(bucket, key));
        self.send(request.body(value)).await?;
        Ok(())
    }

    /// Deletes a key of function `name`'s key-value store.
    pub async fn kv_delete(&self, name: &str, bucket: &str, key: &str) -> Result<()> {
        let request = self.kv(reqwest::Method::DELETE, name, &Self::kv_key(bucket, key));
        self.send(request).await?;
        Ok(())
    }

    /// Every key of a bucket of function `name`'s key-value store (all pages).
    pub async fn kv_list(&self, name: &str, bucket: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut query = KvQuery {
            bucket: bucket.to_owned(),
            key: None,
            cursor: None,
        };
        loop {
            let page: KvKeys = self
                .send_json(self.kv(reqwest::Method::GET, name, &query))
                .await?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => query.cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Runs one SQL statement on function `name`'s database `db` (`default` when `None`),
    /// in its scope and under its quota.
    pub async fn sql(&self, name: &str, db: Option<&str>, statement: &str) -> Result<SqlAnswer> {
        let request = self
            .http
            .post(format!("{}/v1/functions/{name}/sql", self.base))
            .query(&SqlQuery {
                db: db.map(str::to_owned),
            })
            .body(statement.to_owned());
        self.send_json(request).await
    }

    /// Function `name`'s database `db` as SQL text that rebuilds it.
    pub async fn sql_dump(&self, name: &str, db: Option<&str>) -> Result<Bytes> {
        let request = self
            .http
            .get(format!("{}/v1/functions/{name}/sql/dump", self.base))
            .query(&SqlQuery {
                db: db.map(str::to_owned),
            });
        self.send(request).await
    }

    /// The host's status.
    pub async fn status(&self) -> Result<HostStatus> {
        self.send_json(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }
}

/// How a deploy's new version takes traffic, and when the deploy answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeployParams {
    /// Take this percent beside the versions serving, instead of all traffic.
    pub canary: Option<u8>,
    /// With a canary: keep versions that were only pinnable (0%) in the split.
    pub keep_pinned: bool,
    /// In a cluster: answer once this many nodes serve the new version.
    pub wait: Option<usize>,
}
