//! A client for thaw's admin API, used by the CLI, the cold-start suite and the tests.
//!
//! It speaks the wire types of [`thaw_spec::api`], the same ones the server serialises, so a
//! change on one side that the other does not follow fails to compile (or, across versions,
//! fails with a clear decoding error) instead of reading `null`.

#![deny(missing_docs)]

use anyhow::Context as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use thaw_spec::api::{
    ErrorBody, FunctionInfo, HostStatus, KvKeys, LogEntry, RollbackRequest, VersionsInfo,
};
use thaw_spec::spec::FunctionSpec;
use thaw_spec::traffic::TrafficSplit;

/// Talks to one host's admin API.
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

    /// Sends a request with the token; a non-2xx answer becomes an error with the server's
    /// reason. The body of a 2xx answer is left to the caller (it may stream).
    async fn respond(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the thaw admin API at {} (is `thaw serve` running?)",
                self.base
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await?;
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("{status}: {message}");
        }
        Ok(response)
    }

    /// [`AdminClient::respond`], then the whole body.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Bytes> {
        Ok(self.respond(request).await?.bytes().await?)
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let body = self.send(request).await?;
        serde_json::from_slice(&body).context("decoding the admin API's answer")
    }

    /// Deploys `wasm` as `name` with `spec`; the new version takes all traffic.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
    ) -> anyhow::Result<FunctionInfo> {
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
    ) -> anyhow::Result<FunctionInfo> {
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
    ) -> anyhow::Result<FunctionInfo> {
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
    ) -> anyhow::Result<FunctionInfo> {
        let DeployParams {
            canary,
            wait,
            keep_pinned,
        } = params;
        let form = reqwest::multipart::Form::new()
            .part(
                "spec",
                reqwest::multipart::Part::text(serde_json::to_string(spec)?)
                    .mime_str("application/json")?,
            )
            .part(
                "wasm",
                reqwest::multipart::Part::stream(wasm).mime_str("application/wasm")?,
            );
        let mut request = self
            .http
            .put(format!("{}/v1/functions/{name}", self.base))
            .multipart(form);
        if let Some(canary) = canary {
            request = request.query(&[("canary", canary)]);
            if keep_pinned {
                request = request.query(&[("keep_pinned", "true")]);
            }
        }
        if let Some(wait) = wait {
            request = request.query(&[("wait", wait)]);
        }
        self.send_json(request)
            .await
            .with_context(|| format!("deploying {name}"))
    }

    /// This node's view of its cluster (`GET /v1/cluster`).
    pub async fn cluster(&self) -> anyhow::Result<thaw_spec::api::ClusterStatus> {
        self.send_json(self.http.get(format!("{}/v1/cluster", self.base)))
            .await
    }

    /// A function's kept versions and traffic split.
    pub async fn versions(&self, name: &str) -> anyhow::Result<VersionsInfo> {
        self.send_json(
            self.http
                .get(format!("{}/v1/functions/{name}/versions", self.base)),
        )
        .await
        .with_context(|| format!("listing the versions of {name}"))
    }

    /// Sets a function's traffic split.
    pub async fn set_traffic(
        &self,
        name: &str,
        split: &TrafficSplit,
    ) -> anyhow::Result<VersionsInfo> {
        self.send_json(
            self.http
                .put(format!("{}/v1/functions/{name}/traffic", self.base))
                .json(split),
        )
        .await
        .with_context(|| format!("setting the traffic of {name} to {split}"))
    }

    /// Sends all of a function's traffic to `version`, or to the previous version.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> anyhow::Result<VersionsInfo> {
        self.send_json(
            self.http
                .post(format!("{}/v1/functions/{name}/rollback", self.base))
                .json(&RollbackRequest { version }),
        )
        .await
        .with_context(|| format!("rolling back {name}"))
    }

    /// Sends all of a function's traffic to its newest version.
    pub async fn promote(&self, name: &str) -> anyhow::Result<VersionsInfo> {
        self.send_json(
            self.http
                .post(format!("{}/v1/functions/{name}/promote", self.base)),
        )
        .await
        .with_context(|| format!("promoting the newest version of {name}"))
    }

    /// Every function.
    pub async fn list(&self) -> anyhow::Result<Vec<FunctionInfo>> {
        self.send_json(self.http.get(format!("{}/v1/functions", self.base)))
            .await
    }

    /// One function.
    pub async fn get(&self, name: &str) -> anyhow::Result<FunctionInfo> {
        self.send_json(self.http.get(format!("{}/v1/functions/{name}", self.base)))
            .await
            .with_context(|| format!("looking up {name}"))
    }

    /// Removes a function.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        self.send(
            self.http
                .delete(format!("{}/v1/functions/{name}", self.base)),
        )
        .await
        .with_context(|| format!("removing {name}"))?;
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
    ) -> anyhow::Result<(u64, u64)> {
        let mut query = vec![
            ("after", after.to_string()),
            ("since_ms", since_ms.to_string()),
        ];
        if let Some(tail) = tail {
            query.push(("tail", tail.to_string()));
        }
        if follow {
            query.push(("follow", "1".into()));
        }
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
                let entry: LogEntry =
                    serde_json::from_slice(&line).context("decoding a log line")?;
                last = last.max(entry.seq);
                each(entry);
            }
        }
        Ok((last, dropped))
    }

    fn kv_url(&self, name: &str) -> String {
        format!("{}/v1/functions/{name}/kv", self.base)
    }

    /// A value of function `name`'s key-value store, `None` if the key is not set.
    pub async fn kv_get(
        &self,
        name: &str,
        bucket: &str,
        key: &str,
    ) -> anyhow::Result<Option<Bytes>> {
        let request = self
            .http
            .get(self.kv_url(name))
            .query(&[("bucket", bucket), ("key", key)]);
        match self.send(request).await {
            Ok(value) => Ok(Some(value)),
            // A missing key is an answer; a missing function stays an error.
            Err(e)
                if e.to_string().starts_with("404")
                    && e.to_string().contains(&format!("no key {key:?}")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.context(format!("reading {key:?} of {name}"))),
        }
    }

    /// Sets a value in function `name`'s key-value store.
    pub async fn kv_set(
        &self,
        name: &str,
        bucket: &str,
        key: &str,
        value: Bytes,
    ) -> anyhow::Result<()> {
        self.send(
            self.http
                .put(self.kv_url(name))
                .query(&[("bucket", bucket), ("key", key)])
                .body(value),
        )
        .await
        .with_context(|| format!("setting {key:?} of {name}"))?;
        Ok(())
    }

    /// Deletes a key of function `name`'s key-value store.
    pub async fn kv_delete(&self, name: &str, bucket: &str, key: &str) -> anyhow::Result<()> {
        self.send(
            self.http
                .delete(self.kv_url(name))
                .query(&[("bucket", bucket), ("key", key)]),
        )
        .await
        .with_context(|| format!("deleting {key:?} of {name}"))?;
        Ok(())
    }

    /// Every key of a bucket of function `name`'s key-value store (all pages).
    pub async fn kv_list(&self, name: &str, bucket: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: Option<u64> = None;
        loop {
            let mut query = vec![("bucket", bucket.to_owned())];
            if let Some(cursor) = cursor {
                query.push(("cursor", cursor.to_string()));
            }
            let page: KvKeys = self
                .send_json(self.http.get(self.kv_url(name)).query(&query))
                .await
                .with_context(|| format!("listing the keys of {name}"))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The host's status.
    pub async fn status(&self) -> anyhow::Result<HostStatus> {
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
