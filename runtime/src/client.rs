//! A client for the admin API, used by the CLI (and usable from tests and scripts).

use anyhow::Context as _;
use bytes::Bytes;

use crate::spec::FunctionSpec;

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

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
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
        let text = response.text().await?;
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            anyhow::bail!("{status}: {message}");
        }
        Ok(value)
    }

    /// Deploys `wasm` as `name` with `spec`.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: Bytes,
    ) -> anyhow::Result<serde_json::Value> {
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
        self.send(
            self.http
                .put(format!("{}/v1/functions/{name}", self.base))
                .multipart(form),
        )
        .await
        .with_context(|| format!("deploying {name}"))
    }

    /// Every function.
    pub async fn list(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let value = self
            .send(self.http.get(format!("{}/v1/functions", self.base)))
            .await?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// One function.
    pub async fn get(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.get(format!("{}/v1/functions/{name}", self.base)))
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

    /// The host's status.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }
}
