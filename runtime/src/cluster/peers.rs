//! Code from peers: the client side of a node's peer endpoints (`GET /v1/cluster/wasm/<digest>`
//! and `/v1/cluster/artifacts/<digest>` on the admin listener, see [`crate::http::admin`]).
//!
//! A plain HTTP/1 request per blob over hyper's client connection: peers are few, fetches
//! are rare (once per version per node) and large, so neither pooling nor HTTP/2 buys
//! anything here. What is fetched is never trusted as is: the caller checks it against a
//! digest it got from etcd.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// Which blob of a version's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// The wasm, by its sha256.
    Wasm,
    /// The compiled artifact of the wasm of that sha256 (same engine key only).
    Artifact,
}

impl Blob {
    /// The path segment of the peer endpoint.
    pub fn segment(self) -> &'static str {
        match self {
            Blob::Wasm => "wasm",
            Blob::Artifact => "artifacts",
        }
    }
}

/// Largest blob a peer may send (the largest artifacts thaw makes are tens of MB).
pub const MAX_BLOB_BYTES: usize = 1 << 30;

/// Time a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time one fetch may take, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Fetches `blob` of `digest` from the peer whose admin listener is at `addr`.
pub async fn fetch(addr: &str, blob: Blob, digest: &str, token: &str) -> anyhow::Result<Bytes> {
    tokio::time::timeout(FETCH_TIMEOUT, async {
        // A peer that died within its lease's TTL is still listed: fail fast on it.
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                anyhow::anyhow!("no connection within {} s", CONNECT_TIMEOUT.as_secs())
            })??;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Its errors surface as the request's.
            let _ = connection.await;
        });
        let request = http::Request::get(format!("/v1/cluster/{}/{digest}", blob.segment()))
            .header(http::header::HOST, addr)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        anyhow::ensure!(status == http::StatusCode::OK, "the peer answered {status}");
        let body = http_body_util::Limited::new(response.into_body(), MAX_BLOB_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the blob: {e}"))?;
        Ok(body.to_bytes())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}
