//! The control plane driven directly, without a server: deploy, redeploy, refusals, splits,
//! rollback, promotion, the keep rule, route conflicts, a coordinator that fails in the
//! middle of a change, and a restart on the same data directory. The code is tiny core
//! modules (CGI commands) written as text, so each compiles in a millisecond; each test has
//! its own data directory and engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::coordinator::{Change, Coordinator};
use super::deploy::DeployOptions;
use super::local::LocalCoordinator;
use super::versions::VersionsRecord;
use super::{DeployError, KeyValueBackend, LoadMode, Platform, PlatformConfig};
use crate::engine::EngineOptions;
use crate::function::FunctionRecord;
use crate::function::pool::PoolOptions;
use crate::spec::{FunctionSpec, LimitDefaults};
use crate::traffic::{Share, TrafficSplit};

/// A platform on a fresh data directory (kept alive beside it).
struct Host {
    platform: Arc<Platform>,
    dir: tempfile::TempDir,
}

fn open(dir: tempfile::TempDir, keep_versions: usize) -> Host {
    let platform = Platform::open(PlatformConfig {
        data_dir: dir.path().to_path_buf(),
        engine: EngineOptions {
            instance_slots: 4,
            max_memory_bytes: 16 << 20,
            on_demand: true,
            keep_resident_bytes: 0,
            fuel_metering: false,
        },
        defaults: LimitDefaults {
            memory_mib: 16,
            ..LimitDefaults::default()
        },
        queue_timeout: Duration::from_secs(1),
        load: LoadMode::Lazy,
        pool: PoolOptions {
            max_per_function: 0,
            reserve_slots: 0,
            idle_timeout: Duration::from_secs(60),
            unload_after: None,
        },
        server_timing: false,
        fast_deploy: false,
        source_snapshots: false,
        compile_cache: false,
        traces: None,
        keep_versions,
        secrets: Default::default(),
        keyvalue: KeyValueBackend::Off,
        engines: None,
        trusted_proxies: Default::default(),
    })
    .expect("opening the platform");
    Host {
        platform: Arc::new(platform),
        dir,
    }
}

fn host() -> Host {
    open(tempfile::tempdir().expect("tempdir"), 10)
}

/// A CGI command that does nothing; `tag` makes its digest its own.
fn code(tag: &str) -> Bytes {
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 1) (func (export "_start")) (data (i32.const 0) "{tag}"))"#
    ))
    .expect("valid text")
    .into()
}

fn on(route: &str) -> FunctionSpec {
    FunctionSpec {
        route: Some(route.into()),
        ..FunctionSpec::default()
    }
}

fn split(shares: &[(u64, u8)]) -> TrafficSplit {
    TrafficSplit::new(
        shares
            .iter()
            .map(|&(version, percent)| Share { version, percent })
            .collect(),
    )
    .expect("a valid split")
}

impl Host {
    async fn deploy(&self, name: &str, route: &str, tag: &str) -> u64 {
        self.deploy_with(name, route, tag, DeployOptions::default())
            .await
            .expect("deploys")
    }

    async fn deploy_with(
        &self,
        name: &str,
        route: &str,
        tag: &str,
        options: DeployOptions,
    ) -> Result<u64, DeployError> {
        let deployed = self
            .platform
            .deploy_with(name, on(route), code(tag), options)
            .await?;
        Ok(deployed.version.record.generation)
    }

    /// The kept versions and the split of `name`, as served.
    fn served(&self, name: &str) -> (Vec<u64>, TrafficSplit) {
        let set = self.platform.versions(name).expect("deployed");
        let kept = set.versions().iter().map(|f| f.record.generation).collect();
        (kept, set.traffic().clone())
    }

    /// The record of `name` in the data directory (what a restart serves).
    fn on_disk(&self, name: &str) -> Option<VersionsRecord> {
        let path = self.platform.data_dir().function_record(name);
        let bytes = std::fs::read(path).ok()?;
        Some(VersionsRecord::from_json(&bytes).expect("a readable record"))
    }

    async fn promote(&self, name: &str) {
        self.platform.promote(name).await.expect("promotes");
    }

    /// The function that serves `path`.
    fn route(&self, path: &str) -> Option<String> {
        let set = self.platform.registry().route(None, path)?;
        Some(set.name.to_string())
    }
}

#[tokio::test]
async fn deploy_redeploy_and_a_refused_deploy() {
    let host = host();
    let first = host.platform.deploy("f", on("/f"), code("one")).await;
    let (version, replaced) = first.expect("deploys");
    assert_eq!((version.record.generation, replaced), (1, false));
    assert_eq!(host.route("/f/x").as_deref(), Some("f"));

    let (version, replaced) = host
        .platform
        .deploy("f", on("/f"), code("two"))
        .await
        .expect("redeploys");
    assert_eq!((version.record.generation, replaced), (2, true));
    assert_eq!(host.served("f"), (vec![1, 2], TrafficSplit::single(2)));
    assert_eq!(
        host.on_disk("f").map(|r| r.traffic),
        Some(TrafficSplit::single(2))
    );

    // Refused: bytes that are not wasm, a spec the host cannot serve, a canary over 100%.
    let before = host.on_disk("f");
    let not_wasm = host
        .platform
        .deploy("f", on("/f"), Bytes::from_static(b"not wasm"))
        .await;
    assert!(matches!(not_wasm, Err(DeployError::InvalidModule(_))));
    let mut too_big = on("/f");
    too_big.limits.memory_mib = Some(1 << 20);
    let bad_spec = host.platform.deploy("f", too_big, code("three")).await;
    assert!(matches!(bad_spec, Err(DeployError::BadRequest(_))));
    let canary = DeployOptions {
        canary: Some(101),
        keep_pinned: false,
    };
    let bad_canary = host.deploy_with("f", "/f", "three", canary).await;
    assert!(matches!(bad_canary, Err(DeployError::BadRequest(_))));
    assert_eq!(host.served("f"), (vec![1, 2], TrafficSplit::single(2)));
    assert_eq!(host.on_disk("f"), before);
    assert_eq!(host.platform.deploys(), (2, 3));

    // The next version number is not used up by the refusals.
    assert_eq!(host.deploy("f", "/f", "three").await, 3);
}

#[tokio::test]
async fn splits_rollback_and_promote() {
    let host = host();
    host.deploy("f", "/f", "one").await;
    let canary = DeployOptions {
        canary: Some(20),
        keep_pinned: false,
    };
    assert_eq!(
        host.deploy_with("f", "/f", "two", canary)
            .await
            .expect("deploys"),
        2
    );
    assert_eq!(host.served("f").1, split(&[(1, 80), (2, 20)]));

    // Without a version, a rollback goes to the canary's predecessor.
    let set = host.platform.rollback("f", None).await.expect("rolls back");
    assert_eq!(set.traffic(), &TrafficSplit::single(1));
    // Both versions stay kept: v2 can take traffic again without a deploy.
    assert_eq!(host.served("f").0, vec![1, 2]);

    let set = host
        .platform
        .set_traffic("f", split(&[(1, 50), (2, 50)]))
        .await
        .expect("splits");
    assert_eq!(set.traffic(), &split(&[(1, 50), (2, 50)]));
    let set = host.platform.promote("f").await.expect("promotes");
    assert_eq!(set.traffic(), &TrafficSplit::single(2));
    assert_eq!(
        host.on_disk("f").map(|r| r.traffic),
        Some(TrafficSplit::single(2))
    );

    let set = host
        .platform
        .rollback("f", Some(1))
        .await
        .expect("rolls back");
    assert_eq!(set.traffic(), &TrafficSplit::single(1));
    // A version the function does not keep, and a function that does not exist.
    let missing = host.platform.rollback("f", Some(9)).await;
    assert!(matches!(missing, Err(DeployError::NotFound(_))));
    let nobody = host.platform.promote("nobody").await;
    assert!(matches!(nobody, Err(DeployError::NotFound(_))));
    assert_eq!(host.served("f").1, TrafficSplit::single(1));
}

#[tokio::test]
async fn a_canary_on_another_route_is_refused_before_it_is_committed() {
    let host = host();
    host.deploy("f", "/f", "one").await;
    let before = host.on_disk("f");
    let canary = DeployOptions {
        canary: Some(10),
        keep_pinned: false,
    };
    let moved = host.deploy_with("f", "/elsewhere", "two", canary).await;
    assert!(
        matches!(moved, Err(DeployError::BadRequest(_))),
        "{moved:?}"
    );
    assert_eq!(host.on_disk("f"), before);
    assert_eq!(host.served("f"), (vec![1], TrafficSplit::single(1)));
    // Nothing half-committed is left in the way: changes and a restart go on as before.
    host.promote("f").await;
    let Host { platform, dir } = host;
    drop(platform);
    let host = open(dir, 10);
    assert_eq!(host.served("f"), (vec![1], TrafficSplit::single(1)));
    assert_eq!(host.deploy("f", "/elsewhere", "two").await, 2);
}

#[tokio::test]
async fn keep_versions_keeps_the_split_then_the_newest() {
    let host = open(tempfile::tempdir().expect("tempdir"), 2);
    for tag in ["a", "b", "c"] {
        host.deploy("f", "/f", tag).await;
    }
    assert_eq!(host.served("f").0, vec![2, 3]);
    // v2 keeps a share, so it stays beyond the limit; v3 is the newest of the rest.
    host.platform
        .set_traffic("f", split(&[(2, 90), (3, 10)]))
        .await
        .expect("splits");
    let canary = DeployOptions {
        canary: Some(10),
        keep_pinned: false,
    };
    assert_eq!(
        host.deploy_with("f", "/f", "d", canary)
            .await
            .expect("deploys"),
        4
    );
    let (kept, traffic) = host.served("f");
    // The canary's share is taken from the others in proportion.
    assert_eq!(traffic, split(&[(2, 81), (3, 9), (4, 10)]));
    assert_eq!(kept, vec![2, 3, 4]);
    // All traffic to a new version: the limit holds again, and v1's code is collected.
    assert_eq!(host.deploy("f", "/f", "e").await, 5);
    assert_eq!(host.served("f").0, vec![4, 5]);
    let digests: Vec<String> = host
        .on_disk("f")
        .expect("a record")
        .digests()
        .map(str::to_owned)
        .collect();
    let wasm: Vec<_> = std::fs::read_dir(host.platform.data_dir().wasm_dir())
        .expect("the wasm directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(wasm.len(), 2, "{wasm:?}");
    assert!(
        wasm.iter()
            .all(|file| digests.iter().any(|d| file.starts_with(d.as_str())))
    );
}

#[tokio::test]
async fn route_conflicts_are_refused_and_freed_by_removal() {
    let host = host();
    host.deploy("a", "/shop", "a").await;
    let taken = host
        .deploy_with("b", "/shop", "b", DeployOptions::default())
        .await;
    let Err(DeployError::RouteTaken(taken)) = taken else {
        panic!("expected the route to be taken, got {taken:?}");
    };
    assert_eq!((taken.route.as_str(), taken.owner.as_str()), ("/shop", "a"));
    assert!(host.platform.versions("b").is_err());
    assert!(host.on_disk("b").is_none());

    // A redeploy may move its own route, and free the old one.
    host.deploy("a", "/store", "a2").await;
    assert_eq!(host.route("/store").as_deref(), Some("a"));
    assert_eq!(host.deploy("b", "/shop", "b").await, 1);
    assert!(host.platform.remove("a").await.expect("removes"));
    assert!(!host.platform.remove("a").await.expect("removes nothing"));
    assert!(host.route("/store").is_none());
    assert!(host.on_disk("a").is_none());
    assert_eq!(host.deploy("c", "/store", "c").await, 1);
}

/// A coordinator that computes each change and then, while `failing`, loses its store
/// before committing it.
struct Flaky {
    inner: LocalCoordinator,
    failing: AtomicBool,
}

#[async_trait::async_trait]
impl Coordinator for Flaky {
    async fn commit(
        &self,
        name: &str,
        change: &mut Change<'_>,
    ) -> Result<(Option<VersionsRecord>, u64), DeployError> {
        if !self.failing.load(Ordering::Relaxed) {
            return self.inner.commit(name, change).await;
        }
        let mut computed = |current: Option<&VersionsRecord>| {
            change(current)?;
            Err(DeployError::Unavailable("the store went away".into()))
        };
        self.inner.commit(name, &mut computed).await
    }

    async fn fetch_code(&self, record: &VersionsRecord) -> Result<(), DeployError> {
        self.inner.fetch_code(record).await
    }

    async fn publish_code(&self, version: &FunctionRecord) -> Result<(), DeployError> {
        self.inner.publish_code(version).await
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health()
    }

    fn synced(&self) -> Result<(), &'static str> {
        self.inner.synced()
    }
}

#[tokio::test]
async fn a_coordinator_that_fails_mid_change_changes_nothing() {
    let host = host();
    let flaky = Arc::new(Flaky {
        inner: LocalCoordinator::in_memory(),
        failing: AtomicBool::new(false),
    });
    host.platform
        .attach_coordinator(flaky.clone())
        .expect("attaches");
    assert!(host.platform.attach_coordinator(flaky.clone()).is_err());
    host.deploy("f", "/f", "one").await;
    host.deploy("f", "/f", "two").await;

    flaky.failing.store(true, Ordering::Relaxed);
    let before = host.on_disk("f");
    let deploy = host
        .deploy_with("f", "/f", "three", DeployOptions::default())
        .await;
    assert!(
        matches!(deploy, Err(DeployError::Unavailable(_))),
        "{deploy:?}"
    );
    let rollback = host.platform.rollback("f", None).await;
    assert!(matches!(rollback, Err(DeployError::Unavailable(_))));
    let remove = host.platform.remove("f").await;
    assert!(matches!(remove, Err(DeployError::Unavailable(_))));
    assert_eq!(host.served("f"), (vec![1, 2], TrafficSplit::single(2)));
    assert_eq!(host.on_disk("f"), before);
    assert_eq!(host.route("/f").as_deref(), Some("f"));

    flaky.failing.store(false, Ordering::Relaxed);
    assert_eq!(host.deploy("f", "/f", "three").await, 3);
}

#[tokio::test]
async fn a_restart_serves_what_was_committed() {
    let host = host();
    host.deploy("f", "/f", "one").await;
    let canary = DeployOptions {
        canary: Some(30),
        keep_pinned: false,
    };
    host.deploy_with("f", "/f", "two", canary)
        .await
        .expect("deploys");
    host.deploy("g", "/g", "g").await;
    host.platform.remove("g").await.expect("removes");
    let served = host.served("f");
    let Host { platform, dir } = host;
    drop(platform);

    let host = open(dir, 10);
    assert_eq!(host.served("f"), served);
    assert!(host.platform.versions("g").is_err());
    // The reopened host's coordinator holds the same records: the route is still taken,
    // and the next version follows the kept ones.
    let taken = host
        .deploy_with("h", "/f", "h", DeployOptions::default())
        .await;
    assert!(matches!(taken, Err(DeployError::RouteTaken(_))));
    assert_eq!(host.deploy("f", "/f", "three").await, 3);
}

#[tokio::test]
async fn an_older_revision_changes_nothing() {
    let host = host();
    host.deploy("f", "/f", "one").await;
    host.deploy("f", "/f", "two").await;
    let newest = host.platform.versions("f").expect("deployed").record();
    let mut older = newest.clone();
    older.traffic = TrafficSplit::single(1);
    // The revision of the second deploy is 2: a record at revision 1 is stale.
    let set = host
        .platform
        .apply_record(older, 1, None)
        .await
        .expect("answers what serves");
    assert_eq!(set.traffic(), &TrafficSplit::single(2));
}

/// Idle versions are unloaded in one change of the registry: every version of a split, each
/// keeping its counters and its concurrency gate, still routed and still announced as ready;
/// a version a request holds is left loaded.
#[tokio::test]
async fn idle_versions_are_unloaded_together_keeping_their_state() {
    let host = host();
    let mut gated = on("/f");
    gated.limits.max_concurrency = Some(2);
    host.platform
        .deploy("f", gated.clone(), code("one"))
        .await
        .expect("deploys");
    host.platform
        .deploy("f", gated, code("two"))
        .await
        .expect("redeploys");
    host.platform
        .set_traffic("f", split(&[(1, 50), (2, 50)]))
        .await
        .expect("splits");
    host.deploy("g", "/g", "three").await;
    host.deploy("busy", "/busy", "four").await;

    let before = host.platform.versions("f").expect("deployed");
    assert!(before.versions().iter().all(|v| v.loaded().is_some()));
    // What the versions' copies must share, held apart from the versions themselves (a
    // version held by anything but the registry and the batch is not unloaded).
    let shared: Vec<_> = before
        .versions()
        .iter()
        .map(|v| (v.stats.clone(), v.gate.clone().expect("a gate")))
        .collect();
    let mut idle: Vec<_> = before.versions().to_vec();
    drop(before);
    idle.push(
        host.platform
            .versions("g")
            .expect("deployed")
            .primary()
            .clone(),
    );
    // As a request running on it holds its version.
    let running = host
        .platform
        .versions("busy")
        .expect("deployed")
        .primary()
        .clone();
    idle.push(running.clone());
    host.platform.unload_idle(idle).await;

    let after = host.platform.versions("f").expect("still deployed");
    assert_eq!(host.served("f").1, split(&[(1, 50), (2, 50)]));
    for (new, (stats, gate)) in after.versions().iter().zip(&shared) {
        assert!(
            new.loaded().is_none(),
            "v{} unloaded",
            new.record.generation
        );
        assert!(new.ready(), "an idle-unloaded version is still ready");
        assert!(Arc::ptr_eq(stats, &new.stats), "one set of counters");
        assert!(
            Arc::ptr_eq(gate, new.gate.as_ref().unwrap()),
            "one concurrency gate"
        );
    }
    assert!(
        host.platform
            .versions("g")
            .unwrap()
            .primary()
            .loaded()
            .is_none()
    );
    let busy = host.platform.versions("busy").unwrap();
    assert!(
        Arc::ptr_eq(busy.primary(), &running),
        "a held version stays"
    );
    // The route table was rebuilt with the new sets.
    let routed = host.platform.registry().route(None, "/f").expect("routed");
    assert!(Arc::ptr_eq(&routed, &after));
    // A version that was never loaded is not ready.
    let record = after.versions()[0].record.clone();
    let fresh = crate::function::Function::unloaded(record, &LimitDefaults::default());
    assert!(!fresh.ready());
}
