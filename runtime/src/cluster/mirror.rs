//! The node's two background tasks: mirroring etcd's registry into the platform, and keeping
//! the node's lease (membership, readiness) alive.

use std::collections::{HashMap, HashSet};
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

/// How long a change that could not be applied waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Why a round of mirroring ended.
enum Ended {
    /// etcd could not be reached: the node is degraded until it can.
    Etcd(etcd_client::Error),
    /// The watch's history was compacted, or etcd cancelled it: read everything again.
    Resync(String),
}

impl From<etcd_client::Error> for Ended {
    fn from(e: etcd_client::Error) -> Self {
        Ended::Etcd(e)
    }
}

/// A change from etcd not applied here yet (its code could not be fetched or loaded, say),
/// tried again every [`RETRY`] until it applies or a newer change of the function comes.
enum Pending {
    Apply(VersionsRecord, u64),
    Remove(u64),
}

type PendingChanges = HashMap<String, Pending>;

impl Cluster {
    /// Mirrors etcd's registry until the node leaves: a full read, then a watch from the
    /// revision of that read; losing etcd, or a compacted history, starts over with a full
    /// read (see the module docs of [`super`]).
    pub(super) async fn mirror(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ended = tokio::select! {
                _ = self.stop.cancelled() => return,
                ended = self.mirror_round(&mut backoff) => ended,
            };
            match ended {
                Ended::Etcd(e) => self.mark_down(e.to_string()),
                Ended::Resync(reason) => {
                    tracing::info!("reading the registry again: {reason}");
                    continue;
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn mirror_round(&self, backoff: &mut Duration) -> Ended {
        let (revision, mut pending) = match self.resync().await {
            Ok(read) => read,
            Err(ended) => return ended,
        };
        // Synced once etcd was read, whatever a single function's fate: one version whose
        // code no peer has must not keep the node out of service for all the others.
        self.mark_up();
        self.synced.store(true, Ordering::Release);
        *backoff = Duration::from_millis(100);
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
        // One deadline for the retries, not a timer per message: a function that changes more
        // often than RETRY must not starve another's retry.
        let mut next_retry = tokio::time::Instant::now() + RETRY;
        loop {
            let message = if pending.is_empty() {
                next_retry = tokio::time::Instant::now() + RETRY;
                stream.message().await
            } else {
                tokio::select! {
                    message = stream.message() => message,
                    _ = tokio::time::sleep_until(next_retry) => {
                        self.retry(&mut pending).await;
                        next_retry = tokio::time::Instant::now() + RETRY;
                        continue;
                    }
                }
            };
            let response = match message {
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
                // A newer change of the function replaces whatever was pending for it, but a
                // removal still pending goes first: a function re-created under the same name
                // must not keep the old one's state.
                if let Some(Pending::Remove(removed)) = pending.remove(&name) {
                    self.try_change(name.clone(), Pending::Remove(removed), &mut pending)
                        .await;
                }
                let change = match event.event_type() {
                    EventType::Put => match VersionsRecord::from_json(kv.value()) {
                        Ok(record) => Pending::Apply(record, revision),
                        Err(e) => {
                            tracing::error!(function = %name, "ignoring a damaged record in etcd: {e:#}");
                            continue;
                        }
                    },
                    EventType::Delete => Pending::Remove(revision),
                };
                self.try_change(name, change, &mut pending).await;
            }
        }
    }

    /// Applies `change` of function `name`; if that fails, keeps it in `pending`.
    async fn try_change(&self, name: String, change: Pending, pending: &mut PendingChanges) {
        let result = match &change {
            Pending::Apply(record, revision) => self.apply(record, *revision).await,
            Pending::Remove(revision) => self.remove(&name, *revision).await,
        };
        if let Err(e) = result {
            tracing::warn!(function = %name, "a change from etcd is not applied yet (retried): {e:#}");
            pending.insert(name, change);
        }
    }

    async fn retry(&self, pending: &mut PendingChanges) {
        for (name, change) in std::mem::take(pending) {
            self.try_change(name, change, pending).await;
        }
    }

    /// Reads every record and makes this node serve exactly them: applies what differs,
    /// removes what etcd no longer has. Returns the revision read at, and the changes that
    /// could not be applied yet.
    async fn resync(&self) -> Result<(u64, PendingChanges), Ended> {
        // Taken before the read: a deploy through this node may commit (and apply) a newer
        // revision while the read runs, which must not look like a store gone backwards.
        let applied_before = self.platform.max_applied_revision();
        let response = self
            .client
            .clone()
            .get(
                self.key("functions/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision()) as u64;
        if applied_before > revision {
            // A new or restored etcd whose revisions started again: what it holds is the
            // truth, whatever its revisions.
            tracing::warn!(
                revision,
                applied_before,
                "etcd's revision is behind what this node applied (a new or restored etcd?)"
            );
            self.platform.forget_applied_revisions();
        }
        let mut pending = PendingChanges::new();
        let records: Vec<(VersionsRecord, u64)> = response
            .kvs()
            .iter()
            .filter_map(|kv| match VersionsRecord::from_json(kv.value()) {
                Ok(record) => Some((record, kv.mod_revision() as u64)),
                Err(e) => {
                    tracing::error!(
                        key = %String::from_utf8_lossy(kv.key()),
                        "ignoring a damaged record in etcd: {e:#}"
                    );
                    None
                }
            })
            .collect();
        let names: HashSet<&str> = records.iter().map(|(r, _)| r.name.as_str()).collect();
        // Removals first: the routes of functions etcd no longer has are free for the rest.
        for set in self.platform.registry().all() {
            if !names.contains(&*set.name) {
                let name = set.name.to_string();
                self.try_change(name, Pending::Remove(revision), &mut pending)
                    .await;
            }
        }
        for (record, mod_revision) in records {
            let name = record.name.clone();
            self.try_change(name, Pending::Apply(record, mod_revision), &mut pending)
                .await;
        }
        Ok((revision, pending))
    }

    /// Makes this node serve `record`: fetches the code it lacks, applies the record
    /// (which loads every version with traffic first), then reports readiness.
    async fn apply(&self, record: &VersionsRecord, revision: u64) -> anyhow::Result<()> {
        let current = self.platform.registry().get(&record.name);
        if current.is_none_or(|set| set.record() != *record) {
            // The collector must not take the code fetched for the record before the record
            // is on disk.
            let _claim = self.platform.claim_code(record.digests());
            self.fetch(record).await?;
            let set = self
                .platform
                .apply_record(record.clone(), revision, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(function = %record.name, revision, traffic = %set.traffic(), "applied the cluster's record");
        }
        self.announce(&record.name).await?;
        Ok(())
    }

    async fn remove(&self, name: &str, revision: u64) -> anyhow::Result<()> {
        self.platform.apply_removal(name, revision).await?;
        self.announce(name).await?;
        Ok(())
    }

    /// Fetches from peers the wasm of every kept version and, with artifact sharing, the
    /// artifacts of the versions that take traffic, whatever this node lacks. Only the code
    /// of versions with traffic is required; a kept version's that no peer has is logged
    /// (a rollback to it is refused by the node it is asked of, which loads the version
    /// before committing, until some node has the code again).
    pub(super) async fn fetch(&self, record: &VersionsRecord) -> anyhow::Result<()> {
        let mut missing: Vec<(&str, bool)> = Vec::new();
        for version in &record.versions {
            let required = record
                .traffic
                .percent(version.generation)
                .is_some_and(|p| p > 0);
            // A source function's engine too: a node without it (no --engines, another
            // build) runs the function on the engine it was deployed with.
            let engine = version.engine.as_deref();
            // Static assets travel as a blob of their own, by digest, like the code.
            let assets = version
                .spec
                .assets
                .as_ref()
                .and_then(|a| a.digest.as_deref());
            for digest in [
                Some(version.digest.as_str()),
                Some(version.code_digest()),
                engine,
                assets,
            ]
            .into_iter()
            .flatten()
            {
                if self.platform.has_wasm(digest) {
                    continue;
                }
                match missing.iter_mut().find(|(d, _)| *d == digest) {
                    Some((_, r)) => *r |= required,
                    None => missing.push((digest, required)),
                }
            }
        }
        if missing.is_empty() && !self.options.share_artifacts {
            return Ok(());
        }
        let peers = self.members().await?;
        let peers: Vec<_> = peers
            .into_iter()
            .filter(|m| m.id != self.options.node_id)
            .collect();
        for (digest, required) in missing {
            let addrs = peers.iter().map(|p| p.admin.as_str());
            let bytes = match self.fetch_verified(addrs, Blob::Wasm, digest, digest).await {
                Ok(bytes) => bytes,
                Err(e) if !required => {
                    tracing::warn!(function = %record.name, "a kept version's code is missing here: {e:#}");
                    continue;
                }
                Err(e) => return Err(e),
            };
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
