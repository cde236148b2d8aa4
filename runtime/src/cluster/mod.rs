//! Several thaw nodes serving the same functions, coordinated by etcd.
//!
//! thaw does not grow a coordination layer of its own: etcd is the source of truth for the
//! function registry, membership and readiness, and every node mirrors it.
//!
//! # Keys (under `--cluster-prefix`, default `/thaw/`)
//! - `functions/<name>`: the function's record (its kept versions with their specs and
//!   digests, and the traffic split), the JSON a single host keeps in
//!   `functions/<name>.json`. A change is a transaction on the key's `mod_revision`
//!   ([`Coordinator::commit`]): two deploys of one name through two nodes are ordered by
//!   etcd, the second computed on top of the first, never lost.
//! - `members/<node>`: a node's address, capacity and engine compatibility key, under the
//!   node's lease; a node that dies leaves the list when its lease expires (`--cluster-ttl`).
//! - `ready/<name>/v<version>/<node>`: the node can serve that version (its code is loaded, or
//!   was and was unloaded for idleness), under the node's lease. `thaw deploy --wait N` waits
//!   for N of them.
//! - `artifacts/<engine key>/<digest>`: the sha256 of the compiled artifact of that code,
//!   published by the node that compiled it before the record that needs it is committed.
//!
//! # Code distribution
//! Every node serves every function, so any load balancer works in front of them. A node
//! that sees a version whose code it lacks fetches the wasm from a peer (by digest, from the
//! peer's admin listener, with the cluster token) and checks its sha256; bytes that do not
//! match are refused and the next peer is tried. If the artifact of that code was published
//! for this node's engine key, the node fetches the compiled artifact instead of compiling
//! again (seconds for a 13 MB JavaScript component) and checks it against the published
//! sha256: a peer cannot hand out code that the compiling node did not publish. The fetched
//! code is loaded before the node moves any traffic to it, then the node reports the
//! version ready.
//!
//! Trust: an artifact is native code, run outside the wasm sandbox, and a node accepts one
//! whose sha256 is published in etcd. So with artifact sharing on, whoever can write thaw's
//! keys in etcd (or holds a node) can run native code on every node with the same engine
//! key; without it, they can only deploy wasm, which runs sandboxed. That is the price of
//! not compiling a 13 MB component once per node; `--artifact-sharing=false` declines it,
//! and etcd's own authentication and TLS (`--etcd-*`) are what keep other writers out.
//!
//! # Faults
//! etcd unreachable: the node keeps serving what it last mirrored (its data directory holds
//! it across restarts), refuses changes with 503 and the reason, and `GET /healthz` says
//! degraded. When etcd is back the node reads every record again (changes it missed
//! included), applies what differs and watches from there; a watch that finds its history
//! compacted does the same. A node restarted with an old data directory converges the same
//! way at start. Trade-off: a full read per reconnect is O(functions), cheap at the scale of
//! a registry and simpler than replaying a change log that etcd may have compacted.

mod mirror;
pub mod peers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use tokio_util::sync::CancellationToken;

use crate::api::{ClusterMember, ClusterStatus};
use crate::control::coordinator::{Change, Coordinator};
use crate::control::registry::RouteTaken;
use crate::control::versions::VersionsRecord;
use crate::control::{DeployError, Platform};
use crate::engine::artifact::sha256_hex;
use crate::function::FunctionRecord;

/// What [`Cluster::wait_ready`] saw, with how many nodes reported the version ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// As many nodes as asked for.
    Ready(usize),
    /// Fewer when the wait ran out.
    TimedOut(usize),
    /// A newer change took the version's traffic first.
    Superseded(usize),
}

/// How a node joins a cluster (`thaw serve --cluster etcd=...`).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// etcd's client URLs (`http://host:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// etcd user and password, if etcd has authentication on.
    pub user: Option<(String, String)>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), if etcd asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Prefix of every key thaw writes (several clusters may share one etcd).
    pub prefix: String,
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// How long a dead node stays in the member list.
    pub lease_ttl: Duration,
    /// The secret peers present to fetch code from each other.
    pub token: String,
    /// Fetch peers' compiled artifacts instead of compiling (same engine key only).
    pub share_artifacts: bool,
}

/// Time an etcd request may take before the node counts etcd as unreachable.
const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// A cluster node's view of etcd; the platform's [`Coordinator`].
pub struct Cluster {
    platform: Arc<Platform>,
    client: Client,
    options: ClusterOptions,
    member: ClusterMember,
    /// The lease the member and readiness keys live under; 0 while there is none.
    lease: AtomicI64,
    /// `Some((since, reason))` while etcd cannot be reached.
    down: Mutex<Option<(Instant, String)>>,
    /// The registry was mirrored once since start-up.
    synced: AtomicBool,
    /// Cancelled when the node leaves: the mirror and lease tasks end.
    stop: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.options.node_id)
            .field("endpoints", &self.options.endpoints)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to etcd, registers this node (`functions` and `admin` are the addresses
    /// peers and load balancers reach it at), makes the cluster the platform's source of
    /// truth, and starts mirroring the registry in the background (`GET /readyz` answers
    /// 503 until the first mirror is done).
    pub async fn join(
        platform: Arc<Platform>,
        options: ClusterOptions,
        functions: String,
        admin: String,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            !options.endpoints.is_empty(),
            "--cluster needs etcd's endpoints"
        );
        anyhow::ensure!(
            options.token.len() >= 16,
            "the cluster token must be at least 16 characters"
        );
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), ETCD_TIMEOUT);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if options.ca_file.is_some() || options.client_cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &options.client_cert {
                let cert = std::fs::read(cert)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?;
                let key = std::fs::read(key)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| {
                anyhow::anyhow!("connecting to etcd at {}: {e}", options.endpoints.join(","))
            })?;
        let engine = platform.engine();
        let member = ClusterMember {
            id: options.node_id.clone(),
            functions,
            admin,
            instance_slots: engine.options().instance_slots,
            engine: platform.cache().engines().compatibility_key(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let cluster = Arc::new(Self {
            platform: platform.clone(),
            client,
            options,
            member,
            lease: AtomicI64::new(0),
            down: Mutex::new(None),
            synced: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        // A node that cannot reach etcd at start serves its data directory's registry (not
        // ready until it has mirrored etcd's once) and registers when etcd answers.
        if let Err(e) = cluster.register().await {
            cluster.mark_down(format!("{e:#}"));
        }
        platform.attach_coordinator(cluster.clone())?;
        tokio::spawn(cluster.clone().mirror());
        tokio::spawn(cluster.clone().keep_lease());
        tracing::info!(
            node = %cluster.options.node_id,
            etcd = %cluster.options.endpoints.join(","),
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// Leaves the cluster (SIGTERM, before draining): the member and readiness keys go with
    /// the lease, so load balancers and `--wait` stop counting this node at once.
    pub async fn leave(&self) {
        self.stop.cancel();
        let lease = self.lease.swap(0, Ordering::AcqRel);
        if lease != 0 {
            match tokio::time::timeout(ETCD_TIMEOUT, self.client.clone().lease_revoke(lease)).await
            {
                Ok(Ok(_)) => tracing::info!("left the cluster"),
                Ok(Err(e)) => tracing::warn!("leaving the cluster: {e}; the lease expires"),
                Err(_) => tracing::warn!("leaving the cluster timed out; the lease expires"),
            }
        }
    }

    /// Waits until the node has mirrored etcd's registry once, at most `timeout`; returns
    /// whether it has.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.synced.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Whether `token` is the cluster's peer token: constant time, on SHA-256 digests (a
    /// comparison of the raw bytes stops early on a length mismatch, and tells the length).
    pub fn peer_token_matches(&self, token: &[u8]) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let presented = sha2::Sha256::digest(token);
        let expected = sha2::Sha256::digest(self.options.token.as_bytes());
        bool::from(presented.as_slice().ct_eq(expected.as_slice()))
    }

    /// The platform this node runs.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.options.prefix)
    }

    fn function_key(&self, name: &str) -> String {
        self.key(&format!("functions/{name}"))
    }

    fn ready_key(&self, name: &str, version: u64) -> String {
        self.key(&format!("ready/{name}/v{version}/{}", self.options.node_id))
    }

    fn artifact_key(&self, digest: &str) -> String {
        self.key(&format!("artifacts/{}/{digest}", self.member.engine))
    }

    /// `GET /v1/cluster`.
    pub async fn status(&self) -> ClusterStatus {
        let members = self.members().await;
        let etcd = match (&members, self.health()) {
            (Err(e), _) => format!("unreachable: {e}"),
            (Ok(_), Err(reason)) => reason,
            (Ok(_), Ok(())) => "ok".to_owned(),
        };
        ClusterStatus {
            node: self.options.node_id.clone(),
            etcd,
            synced: self.synced.load(Ordering::Acquire),
            members: members.unwrap_or_default(),
        }
    }

    /// The registered members, sorted by name.
    pub async fn members(&self) -> Result<Vec<ClusterMember>, etcd_client::Error> {
        let response = self
            .client
            .clone()
            .get(self.key("members/"), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut members: Vec<ClusterMember> = response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// Waits until `nodes` nodes report function `name`'s `version` ready, or `timeout`
    /// passes, or a newer change takes all of the version's traffic (it will never be
    /// ready then).
    pub async fn wait_ready(
        &self,
        name: &str,
        version: u64,
        nodes: usize,
        timeout: Duration,
    ) -> Result<Readiness, DeployError> {
        let prefix = self.key(&format!("ready/{name}/v{version}/"));
        let deadline = Instant::now() + timeout;
        loop {
            let mut client = self.client.clone();
            let record = client
                .get(self.function_key(name), None)
                .await
                .map_err(|e| self.unavailable(e))?;
            let record = record
                .kvs()
                .first()
                .and_then(|kv| VersionsRecord::from_json(kv.value()).ok());
            let digest = record
                .as_ref()
                .and_then(|r| r.versions.iter().find(|v| v.generation == version))
                .map(|v| v.digest.clone());
            let response = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| self.unavailable(e))?;
            let ready = response
                .kvs()
                .iter()
                .filter(|kv| Some(kv.value()) == digest.as_deref().map(str::as_bytes))
                .count();
            if ready >= nodes {
                return Ok(Readiness::Ready(ready));
            }
            let serving = record.is_some_and(|r| r.traffic.percent(version).is_some_and(|p| p > 0));
            if !serving {
                return Ok(Readiness::Superseded(ready));
            }
            if Instant::now() >= deadline {
                return Ok(Readiness::TimedOut(ready));
            }
            // Polling, not a watch: a deploy waits once, and on loopback a 20 ms period
            // is below what a node takes to fetch and load code.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Registers this node under a new lease, with a readiness key for every version it
    /// serves now.
    async fn register(&self) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        let ttl = self.options.lease_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        let member = serde_json::to_vec(&self.member)?;
        client
            .put(
                self.key(&format!("members/{}", self.options.node_id)),
                member,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        self.lease.store(lease, Ordering::Release);
        if self.stop.is_cancelled() {
            // The node left while this registration ran: it must not stay listed until the
            // TTL runs out.
            self.lease.store(0, Ordering::Release);
            client.lease_revoke(lease).await?;
            return Ok(());
        }
        if self.synced.load(Ordering::Acquire) {
            // Before the first mirror the local registry may be stale; the mirror announces.
            for set in self.platform.registry().all() {
                self.announce(&set.name).await?;
            }
        }
        Ok(())
    }

    /// Publishes which of function `name`'s versions this node can serve (loaded, with a
    /// share of its traffic), and withdraws its other readiness keys of the function (of
    /// versions dropped or moved away from, or of the function removed).
    async fn announce(&self, name: &str) -> Result<(), etcd_client::Error> {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            return Ok(()); // Announced when the lease is back (`register`).
        }
        let mut ready = Vec::new();
        if let Some(set) = self.platform.registry().get(name) {
            for version in set.versions() {
                let generation = version.record.generation;
                let serving = set.traffic().percent(generation).is_some_and(|p| p > 0);
                if serving && version.ready() {
                    ready.push((
                        self.ready_key(name, generation),
                        version.record.digest.clone(),
                    ));
                }
            }
        }
        let mut client = self.client.clone();
        let listed = client
            .get(
                self.key(&format!("ready/{name}/")),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let mine = format!("/{}", self.options.node_id);
        let mut ops: Vec<TxnOp> = listed
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter(|key| key.ends_with(&mine) && !ready.iter().any(|(r, _)| r == key))
            .map(|key| TxnOp::delete(key, None))
            .collect();
        // The value is the version's digest: a function removed and deployed again starts
        // at v1 again, and a lagging node's key of the old v1 must not count for the new.
        ops.extend(ready.into_iter().map(|(key, digest)| {
            TxnOp::put(key, digest, Some(PutOptions::new().with_lease(lease)))
        }));
        if !ops.is_empty() {
            client.txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    fn mark_down(&self, reason: String) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *down {
            Some((_, last)) => *last = reason,
            None => {
                tracing::warn!("etcd is unreachable: {reason}; serving the last known registry");
                *down = Some((Instant::now(), reason));
            }
        }
    }

    fn mark_up(&self) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((since, _)) = down.take() {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "etcd is reachable again"
            );
        }
    }

    fn unavailable(&self, e: etcd_client::Error) -> DeployError {
        let reason = e.to_string();
        self.mark_down(reason.clone());
        DeployError::Unavailable(format!(
            "the cluster registry (etcd at {}) cannot be reached, so nothing changed: {reason}",
            self.options.endpoints.join(",")
        ))
    }
}

#[async_trait::async_trait]
impl Coordinator for Cluster {
    async fn commit(
        &self,
        name: &str,
        change: &mut Change<'_>,
    ) -> Result<(Option<VersionsRecord>, u64), DeployError> {
        let key = self.function_key(name);
        let mut client = self.client.clone();
        // Each round reads the record and writes the change only if nobody wrote it since
        // (the compare on `mod_revision`, 0 for a missing key). Losing a round means another
        // change committed: the next round computes on top of it. Bounded, because a change
        // must end, but far above what concurrent deploys of one name produce.
        //
        // Routes are claimed the same way, in the same transaction (`routes<route>` names its
        // function): two functions deployed at once through two nodes cannot both take one
        // route, which every node would then refuse to apply.
        for _ in 0..64 {
            let response = client
                .get(key.clone(), None)
                .await
                .map_err(|e| self.unavailable(e))?;
            let (current, revision) = match response.kvs().first() {
                Some(kv) => (
                    Some(VersionsRecord::from_json(kv.value()).map_err(|e| {
                        DeployError::Internal(e.context(format!("etcd's record of {name}")))
                    })?),
                    kv.mod_revision(),
                ),
                None => (None, 0),
            };
            let next = change(current.as_ref())?;
            let old_route = current.as_ref().and_then(VersionsRecord::route);
            let new_route = next.as_ref().and_then(VersionsRecord::route);
            let mut compares = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )];
            let mut writes = Vec::new();
            match &next {
                Some(record) => writes.push(TxnOp::put(
                    key.clone(),
                    serde_json::to_vec(record).map_err(|e| DeployError::Internal(e.into()))?,
                    None,
                )),
                None if current.is_none() => {
                    let revision = response.header().map_or(0, |h| h.revision());
                    return Ok((None, revision as u64));
                }
                None => writes.push(TxnOp::delete(key.clone(), None)),
            }
            if let Some(route) = &new_route {
                let route_key = self.key(&format!("routes{route}"));
                let claimed = client
                    .get(route_key.clone(), None)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                let (owner, route_revision) = match claimed.kvs().first() {
                    Some(kv) => (kv.value_str().unwrap_or("").to_owned(), kv.mod_revision()),
                    None => (String::new(), 0),
                };
                if !owner.is_empty() && owner != name {
                    return Err(DeployError::RouteTaken(RouteTaken {
                        route: route.clone(),
                        owner,
                    }));
                }
                compares.push(Compare::mod_revision(
                    route_key.clone(),
                    CompareOp::Equal,
                    route_revision,
                ));
                writes.push(TxnOp::put(route_key, name, None));
            }
            if let Some(route) = old_route.filter(|old| Some(old) != new_route.as_ref()) {
                // Only if it still names this function.
                let route_key = self.key(&format!("routes{route}"));
                writes.push(TxnOp::txn(
                    Txn::new()
                        .when([Compare::value(route_key.clone(), CompareOp::Equal, name)])
                        .and_then([TxnOp::delete(route_key, None)]),
                ));
            }
            let txn = Txn::new().when(compares).and_then(writes);
            let response = client.txn(txn).await.map_err(|e| self.unavailable(e))?;
            if response.succeeded() {
                self.mark_up();
                let revision = response.header().map_or(0, |h| h.revision());
                return Ok((next, revision as u64));
            }
        }
        Err(DeployError::Busy(format!(
            "function {name} changed 64 times while this change was computed; retry"
        )))
    }

    async fn fetch_code(&self, record: &VersionsRecord) -> Result<(), DeployError> {
        self.fetch(record)
            .await
            .map_err(|e| DeployError::Internal(e.context("fetching the code from peers")))
    }

    async fn publish_code(&self, version: &FunctionRecord) -> Result<(), DeployError> {
        if !self.options.share_artifacts {
            return Ok(());
        }
        let digest = version.code_digest().to_owned();
        let platform = self.platform.clone();
        let artifact = {
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || {
                platform
                    .cache()
                    .artifact_bytes(&digest)
                    .map(|bytes| sha256_hex(&bytes))
            })
        };
        let sha = match artifact.await {
            Ok(Ok(sha)) => sha,
            // Compiled by the fast tier (no artifact yet): peers compile themselves.
            _ => return Ok(()),
        };
        let key = self.artifact_key(&digest);
        // First writer wins: an artifact is the same for the same code and engine key.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, sha, None)]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    fn health(&self) -> Result<(), String> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match &*down {
            None => Ok(()),
            Some((since, reason)) => Err(format!(
                "degraded: etcd unreachable for {} s ({reason}); serving the last known \
                 registry, refusing changes",
                since.elapsed().as_secs()
            )),
        }
    }

    fn synced(&self) -> Result<(), &'static str> {
        if self.synced.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("mirroring the cluster's registry from etcd")
        }
    }
}

/// Ticks of schedules, each claimed by one node: the key `ticks/<function>/<index>` holds the
/// last tick claimed, as 20 digits (so etcd's byte comparison orders them as numbers). A
/// node claims a tick with a transaction that writes it only if the key is absent or holds
/// an earlier tick; of the nodes that reach one tick, exactly one transaction succeeds. One
/// key per schedule, overwritten, so nothing accumulates and no lease is needed.
impl crate::events::TickClaims for Cluster {
    fn claim<'a>(
        &'a self,
        function: &'a str,
        index: usize,
        tick_ms: u64,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let key = self.key(&format!("ticks/{function}/{index}"));
            let value = format!("{tick_ms:020}");
            let mut client = self.client.clone();
            let put = || TxnOp::put(key.clone(), value.clone(), None);
            let first = Txn::new()
                .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![put()]);
            let claimed = tokio::time::timeout(ETCD_TIMEOUT, client.txn(first)).await??;
            if claimed.succeeded() {
                return Ok(true);
            }
            let later = Txn::new()
                .when(vec![Compare::value(
                    key.clone(),
                    CompareOp::Less,
                    value.clone(),
                )])
                .and_then(vec![put()]);
            let claimed = tokio::time::timeout(ETCD_TIMEOUT, client.txn(later)).await??;
            Ok(claimed.succeeded())
        })
    }
}
