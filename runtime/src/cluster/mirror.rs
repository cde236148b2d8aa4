//! The node's two background tasks: mirroring etcd's registry into the platform, and keeping
//! the node's lease (membership, readiness) alive.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};

use super::Cluster;
use super::peers::{self, Blob};
use crate::control::versions::VersionsRecord;
use crate::engine::artifact::sha256_hex;

/// Longest wait between two attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a round of mirroring ended.
enum Ended {
    /// etcd could not be reached: the node is degraded until it can.
    Etcd(etcd_client::Error),
    /// The watch's history was compacted, or etcd cancelled it: read everything again.
    Resync(String),
    /// A change could not be applied here (no peer had its code, say): read everything
    /// again after a pause, which retries it.
    Apply(anyhow::Error),
}

impl From<etcd_client::Error> for Ended {
    fn from(e: etcd_client::Error) -> Self {
        Ended::Etcd(e)
    }
}

impl Cluster {
    /// Mirrors etcd's registry until the node leaves: a full read, then a watch from the
    /// revision of that read; any failure starts over with a full read (see the module docs
    /// of [`super`]).
    pub(super) async fn mirror(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ended = tokio::select! {
                _ = self.stop.cancelled() => return,
                ended = self.mirror_round() => ended,
            };
            match ended {
                Ended::Etcd(e) => self.mark_down(e.to_string()),
                Ended::Resync(reason) => {
                    tracing::info!("reading the registry again: {reason}");
                    continue;
                }
                Ended::Apply(e) => {
                    tracing::warn!("a change from etcd could not be applied yet: {e:#}")
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn mirror_round(&self) -> Ended {
        let revision = match self.resync().await {
            Ok(revision) => revision,
            Err(ended) => return ended,
        };
        self.mark_up();
        self.synced.store(true, Ordering::Release);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision as i64 + 1);
        let mut stream = match self
            .client
            .clone()
            .watch(self.key("functions/"), Some(options))
            .await
        {
            Ok(stream) => stream,
            Err(e) => return Ended::Etcd(e),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ended::Resync("the watch ended".into()),
                Err(e) => return Ended::Etcd(e),
            };
            if response.compact_revision() > 0 {
                return Ended::Resync(format!(
                    "etcd compacted the history up to revision {}",
                    response.compact_revision()
                ));
            }
            if response.canceled() {
                return Ended::Resync(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision() as u64;
                let Some(name) = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(&self.key("functions/")))
                    .map(str::to_owned)
                else {
                    continue;
                };
                let applied = match event.event_type() {
                    EventType::Put => match VersionsRecord::from_json(kv.value()) {
                        Ok(record) => self.apply(record, revision).await,
                        Err(e) => {
                            tracing::error!(function = %name, "ignoring a damaged record in etcd: {e:#}");
                            Ok(())
                        }
                    },
                    EventType::Delete => self.remove(&name, revision).await,
                };
                if let Err(e) = applied {
                    return Ended::Apply(e);
                }
            }
        }
    }

    /// Reads every record and makes this node serve exactly them: applies what differs,
    /// removes what etcd no longer has. Returns the revision read at.
    async fn resync(&self) -> Result<u64, Ended> {
        let response = self
            .client
            .clone()
            .get(
                self.key("functions/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision()) as u64;
        // What is read now is the whole truth; revisions applied before may be from another
        // etcd (a restored or new one) whose revisions started again.
        self.platform.forget_applied_revisions_above(revision);
        let mut names = HashSet::new();
        let mut failed = None;
        for kv in response.kvs() {
            match VersionsRecord::from_json(kv.value()) {
                Ok(record) => {
                    names.insert(record.name.clone());
                    if let Err(e) = self.apply(record, kv.mod_revision() as u64).await {
                        // The others are still applied; this one is retried.
                        failed = Some(e);
                    }
                }
                Err(e) => tracing::error!(
                    key = %String::from_utf8_lossy(kv.key()),
                    "ignoring a damaged record in etcd: {e:#}"
                ),
            }
        }
        for set in self.platform.registry().all() {
            if !names.contains(&*set.name)
                && let Err(e) = self.remove(&set.name, revision).await
            {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(Ended::Apply(e)),
            None => Ok(revision),
        }
    }

    /// Makes this node serve `record`: fetches the code it lacks, applies the record
    /// (which loads every version with traffic first), then reports readiness.
    async fn apply(&self, record: VersionsRecord, revision: u64) -> anyhow::Result<()> {
        let current = self.platform.registry().get(&record.name);
        let before: Vec<u64> = current
            .as_ref()
            .map(|set| set.versions().iter().map(|v| v.record.generation).collect())
            .unwrap_or_default();
        if current.is_none_or(|set| set.record() != record) {
            self.fetch_code(&record).await?;
            self.platform
                .apply_record(record.clone(), revision, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let gone: Vec<u64> = before
            .into_iter()
            .filter(|g| !record.versions.iter().any(|v| v.generation == *g))
            .collect();
        self.announce(&record.name, &gone).await?;
        Ok(())
    }

    async fn remove(&self, name: &str, revision: u64) -> anyhow::Result<()> {
        let before: Vec<u64> = self
            .platform
            .registry()
            .get(name)
            .map(|set| set.versions().iter().map(|v| v.record.generation).collect())
            .unwrap_or_default();
        self.platform.apply_removal(name, revision).await?;
        self.announce(name, &before).await?;
        Ok(())
    }

    /// Fetches from peers the wasm of every kept version and, with artifact sharing, the
    /// artifacts of the versions that take traffic, whatever this node lacks.
    async fn fetch_code(&self, record: &VersionsRecord) -> anyhow::Result<()> {
        let mut digests: Vec<&str> = record.digests().collect();
        digests.sort_unstable();
        digests.dedup();
        let missing: Vec<&str> = digests
            .into_iter()
            .filter(|d| !self.platform.has_wasm(d))
            .collect();
        if missing.is_empty() && !self.options.share_artifacts {
            return Ok(());
        }
        let peers = self.members().await?;
        let peers: Vec<_> = peers
            .into_iter()
            .filter(|m| m.id != self.options.node_id)
            .collect();
        for digest in missing {
            let addrs = peers.iter().map(|p| p.admin.as_str());
            let bytes = self
                .fetch_verified(addrs, Blob::Wasm, digest, digest)
                .await?;
            let platform = self.platform.clone();
            let digest = digest.to_owned();
            tokio::task::spawn_blocking(move || platform.store_wasm(&digest, &bytes)).await??;
        }
        if !self.options.share_artifacts {
            return Ok(());
        }
        for version in &record.versions {
            let listed = record
                .traffic
                .percent(version.generation)
                .is_some_and(|p| p > 0);
            let digest = version.code_digest();
            if !listed || self.has_artifact(digest).await {
                continue;
            }
            let published = self
                .client
                .clone()
                .get(self.artifact_key(digest), None)
                .await?;
            let Some(expected) = published
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_owned)
            else {
                continue; // Nobody published one: this node compiles it when it loads.
            };
            let addrs = peers
                .iter()
                .filter(|p| p.engine == self.member.engine)
                .map(|p| p.admin.as_str());
            match self
                .fetch_verified(addrs, Blob::Artifact, digest, &expected)
                .await
            {
                Ok(bytes) => {
                    let platform = self.platform.clone();
                    let digest = digest.to_owned();
                    tokio::task::spawn_blocking(move || {
                        platform.cache().store_artifact(&digest, &bytes)
                    })
                    .await??;
                }
                // Not fatal: the node compiles the code itself.
                Err(e) => tracing::warn!(
                    digest = %&digest[..12],
                    "compiling instead of fetching the artifact: {e:#}"
                ),
            }
        }
        Ok(())
    }

    async fn has_artifact(&self, digest: &str) -> bool {
        let platform = self.platform.clone();
        let digest = digest.to_owned();
        tokio::task::spawn_blocking(move || platform.cache().check(&digest).is_ok())
            .await
            .unwrap_or(false)
    }

    /// The blob from the first peer in `addrs` whose bytes have sha256 `expected`; a peer
    /// that sends other bytes is refused (and logged) and the next one is tried.
    async fn fetch_verified<'a>(
        &self,
        addrs: impl Iterator<Item = &'a str>,
        blob: Blob,
        digest: &str,
        expected: &str,
    ) -> anyhow::Result<bytes::Bytes> {
        let mut errors = Vec::new();
        for addr in addrs {
            match peers::fetch(addr, blob, digest, &self.options.token).await {
                Ok(bytes) => {
                    let (bytes, actual) = tokio::task::spawn_blocking(move || {
                        let actual = sha256_hex(&bytes);
                        (bytes, actual)
                    })
                    .await?;
                    if actual == expected {
                        return Ok(bytes);
                    }
                    tracing::warn!(
                        peer = addr,
                        blob = blob.segment(),
                        digest = %&digest[..12.min(digest.len())],
                        "refused a corrupt blob from a peer: its sha256 is {actual}, not {expected}"
                    );
                    errors.push(format!("{addr}: corrupt (sha256 {actual})"));
                }
                Err(e) => errors.push(format!("{addr}: {e:#}")),
            }
        }
        anyhow::bail!(
            "no peer had the {} of {digest}: {}",
            blob.segment(),
            if errors.is_empty() {
                "no peers".to_owned()
            } else {
                errors.join("; ")
            }
        )
    }

    /// Keeps the node's lease alive until the node leaves; when it is lost (etcd was down
    /// for longer than the TTL), registers again under a new one.
    pub(super) async fn keep_lease(self: Arc<Self>) {
        let period = (self.options.lease_ttl / 3).max(Duration::from_millis(200));
        loop {
            let lease = self.lease.load(Ordering::Acquire);
            let kept = if lease == 0 {
                self.register().await.map_err(|e| e.to_string())
            } else {
                self.keep_alive_until_lost(lease, period).await
            };
            if let Err(reason) = kept {
                tracing::warn!("the node's lease: {reason}");
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Renews `lease` every `period` until that fails; returns why. A lease etcd no longer
    /// knows is dropped, so the caller registers again.
    async fn keep_alive_until_lost(&self, lease: i64, period: Duration) -> Result<(), String> {
        let (mut keeper, mut responses) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match responses.message().await {
                Ok(Some(response)) if response.ttl() > 0 => {}
                Ok(_) => {
                    // Expired while etcd was out of reach: the member and readiness keys
                    // went with it.
                    let _ =
                        self.lease
                            .compare_exchange(lease, 0, Ordering::AcqRel, Ordering::Acquire);
                    return Err("expired; registering again".into());
                }
                Err(e) => return Err(e.to_string()),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}
