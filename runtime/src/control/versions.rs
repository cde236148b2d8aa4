//! A function's versions and its traffic split: what `thaw versions`, `rollback`, `traffic`
//! and `promote` change, and what the data plane routes to.
//!
//! Every deploy makes an immutable version (`v1`, `v2`, …): its [`FunctionRecord`] (spec,
//! digest) and its code, content-addressed on disk. A function keeps its last N versions
//! (`--keep-versions`); older ones that take no traffic are dropped and their code collected.
//! Which versions serve, and what share each takes, is a [`TrafficSplit`]. So a rollback or a
//! split change is a new split over code already on disk: nothing is compiled, and the code
//! of a version that was not loaded is loaded before the change is committed.
//!
//! # One record per function, the commit point
//! All of a function's versions and its split are one file, `functions/<name>.json`, written
//! atomically (see [`crate::datadir`]). A change of split is one rename: a `kill -9` during
//! it leaves the old split or the new one, and a deploy's new version and the split that
//! serves it appear together. Records from before versions existed (a single
//! [`FunctionRecord`]) are read as one version taking all traffic.
//!
//! # Picking a version per request
//! A [`VersionSet`] is immutable and swapped as a whole, like the route table. For a split it
//! holds a table of one slot per percent, each naming a version, interleaved by smooth
//! weighted round-robin (the sequence nginx uses for upstream weights): request `n` takes
//! slot `n` modulo the table's length. Every run of that many consecutive requests is split
//! exactly as asked, and a canary's
//! requests are spread across them, not bunched. The cost per request is one relaxed
//! `fetch_add` on the set's counter, and none with a single serving version. A random pick
//! would need no shared counter but drifts from the split on small samples; with one atomic
//! increment next to a wasm instantiation, exactness is the better buy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::api::{FunctionInfo, VersionInfo, VersionsInfo};
use crate::function::{Function, FunctionRecord};
use crate::spec::LimitDefaults;
use crate::traffic::TrafficSplit;

/// The persisted form: `functions/<name>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsRecord {
    /// The function's name.
    pub name: String,
    /// The kept versions, oldest first.
    pub versions: Vec<FunctionRecord>,
    /// How requests are shared between them.
    pub traffic: TrafficSplit,
}

/// What a record file may hold: the current form, or a single version written before
/// versions existed.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredRecord {
    Versions(VersionsRecord),
    Single(Box<FunctionRecord>),
}

impl VersionsRecord {
    /// Parses a record file and checks it is coherent (one name, distinct versions, a split
    /// over kept versions).
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let record = match serde_json::from_slice::<StoredRecord>(bytes)? {
            StoredRecord::Versions(record) => record,
            StoredRecord::Single(single) => Self {
                name: single.name.clone(),
                traffic: TrafficSplit::single(single.generation),
                versions: vec![*single],
            },
        };
        anyhow::ensure!(!record.versions.is_empty(), "the record has no versions");
        for (i, version) in record.versions.iter().enumerate() {
            anyhow::ensure!(
                version.name == record.name,
                "version v{} is named {:?}, not {:?}",
                version.generation,
                version.name,
                record.name
            );
            anyhow::ensure!(
                i == 0 || record.versions[i - 1].generation < version.generation,
                "the versions are not in ascending order"
            );
        }
        for share in record.traffic.shares() {
            anyhow::ensure!(
                record
                    .versions
                    .iter()
                    .any(|v| v.generation == share.version),
                "the split names v{}, which the record does not keep",
                share.version
            );
        }
        Ok(record)
    }

    /// The route the function serves: its primary version's (see [`VersionSet::route`]).
    pub fn route(&self) -> Option<String> {
        let primary = self.traffic.primary();
        self.versions
            .iter()
            .find(|v| v.generation == primary)
            .map(|v| v.spec.route_or_default(&self.name))
    }

    /// A function's first record: `version` as v1, taking all traffic.
    pub fn first(mut version: FunctionRecord) -> Self {
        version.generation = 1;
        Self {
            name: version.name.clone(),
            traffic: TrafficSplit::single(1),
            versions: vec![version],
        }
    }

    /// The generation the next deployed version gets.
    pub fn next_generation(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.generation) + 1
    }

    /// This record with `version` added as the newest and `traffic` as the split, keeping at
    /// most `keep` versions: every version the split lists, then the newest of the rest.
    /// This is the one place the keep rule lives: a single host and a cluster node commit
    /// records built here.
    pub fn with_version(
        &self,
        version: FunctionRecord,
        traffic: TrafficSplit,
        keep: usize,
    ) -> Self {
        let mut all: Vec<_> = self.versions.iter().cloned().chain([version]).collect();
        let mut kept = Vec::with_capacity(all.len());
        // Newest first, so that the newest of the versions outside the split are the ones kept.
        while let Some(v) = all.pop() {
            if traffic.percent(v.generation).is_some() || kept.len() < keep {
                kept.push(v);
            }
        }
        kept.reverse();
        Self {
            name: self.name.clone(),
            versions: kept,
            traffic,
        }
    }

    /// Every digest the record's versions need on disk.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .flat_map(|v| {
                [
                    Some(v.digest.as_str()),
                    Some(v.code_digest()),
                    v.engine.as_deref(),
                    v.spec.assets.as_ref().and_then(|a| a.digest.as_deref()),
                ]
            })
            .flatten()
    }
}

/// A function's kept versions and its split, as the data plane sees them. Immutable; a
/// change builds a new set (see the module docs).
pub struct VersionSet {
    /// The function's name.
    pub name: Arc<str>,
    /// The route: the primary version's.
    pub route: String,
    /// Oldest first.
    versions: Vec<Arc<Function>>,
    traffic: TrafficSplit,
    /// Index in `versions` of the primary version (the largest share).
    primary: usize,
    /// The version that takes every request, when one does: no counter needed.
    only: Option<usize>,
    /// [`SLOTS`] indices in `versions`, interleaved (see the module docs).
    table: Box<[u8]>,
    next: AtomicU64,
}

/// Most versions a set may hold (its table stores indices as bytes).
pub const MAX_VERSIONS: usize = 200;

/// Slots of the pick table: shares are whole percents.
const SLOTS: usize = 100;

/// Why a set cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The split names a version the function does not keep.
    #[error("{0}")]
    NoSuchVersion(String),
    /// The split cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
}

impl VersionSet {
    /// A set over `versions` (any order) with `traffic`, which must name only these versions,
    /// and whose versions that take a share must all have the same route (the route table
    /// has one route per function: a canary on another route would take its share of the
    /// old route's requests and leave its own unserved).
    pub fn new(mut versions: Vec<Arc<Function>>, traffic: TrafficSplit) -> Result<Self, SetError> {
        versions.sort_by_key(|f| f.record.generation);
        versions.dedup_by_key(|f| f.record.generation);
        let first = versions
            .first()
            .ok_or_else(|| SetError::Invalid("a function needs a version".into()))?;
        if versions.len() > MAX_VERSIONS {
            return Err(SetError::Invalid(format!(
                "more than {MAX_VERSIONS} versions"
            )));
        }
        let index = |version: u64| {
            versions
                .iter()
                .position(|f| f.record.generation == version)
                .ok_or_else(|| {
                    SetError::NoSuchVersion(format!(
                        "function {} has no version v{version} (it keeps {})",
                        first.name,
                        list(&versions)
                    ))
                })
        };
        let mut weights = Vec::new();
        for share in traffic.shares() {
            let i = index(share.version)?;
            if share.percent > 0 {
                weights.push((i, i64::from(share.percent)));
            }
        }
        let primary = index(traffic.primary())?;
        if let Some(&(other, _)) = weights
            .iter()
            .find(|(i, _)| versions[*i].route != versions[primary].route)
        {
            return Err(SetError::Invalid(format!(
                "v{} serves {} and v{} serves {}: versions that share traffic must have the same \
                 route (deploy the new route with all traffic, or keep the route for the canary)",
                versions[primary].record.generation,
                versions[primary].route,
                versions[other].record.generation,
                versions[other].route
            )));
        }
        let only = (weights.len() == 1).then(|| weights[0].0);
        Ok(Self {
            name: first.name.clone(),
            route: versions[primary].route.clone(),
            table: interleave(&weights),
            primary,
            only,
            versions,
            traffic,
            next: AtomicU64::new(0),
        })
    }

    /// The version that serves the next request, by the split.
    pub fn pick(&self) -> &Arc<Function> {
        let index = match self.only {
            Some(only) => only,
            None => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                usize::from(self.table[(n % SLOTS as u64) as usize])
            }
        };
        &self.versions[index]
    }

    /// Version `version` if the split lists it (at any share, 0 included): what a request
    /// that pins it gets.
    pub fn pinned(&self, version: u64) -> Option<&Arc<Function>> {
        self.traffic.percent(version)?;
        self.version(version)
    }

    /// Kept version `version`, whether it serves or not.
    pub fn version(&self, version: u64) -> Option<&Arc<Function>> {
        self.versions
            .iter()
            .find(|f| f.record.generation == version)
    }

    /// The version with the largest share: its route and settings speak for the function.
    pub fn primary(&self) -> &Arc<Function> {
        &self.versions[self.primary]
    }

    /// The newest kept version.
    pub fn newest(&self) -> &Arc<Function> {
        self.versions.last().expect("a set has a version")
    }

    /// Every kept version, oldest first.
    pub fn versions(&self) -> &[Arc<Function>] {
        &self.versions
    }

    /// The versions the split lists (those a request can reach).
    pub fn reachable(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.versions
            .iter()
            .filter(|f| self.traffic.percent(f.record.generation).is_some())
    }

    /// The split.
    pub fn traffic(&self) -> &TrafficSplit {
        &self.traffic
    }

    /// The persisted form.
    pub fn record(&self) -> VersionsRecord {
        VersionsRecord {
            name: self.name.to_string(),
            versions: self.versions.iter().map(|f| f.record.clone()).collect(),
            traffic: self.traffic.clone(),
        }
    }

    /// The admin API's view of the function: its primary version, with the split.
    pub fn info(&self) -> FunctionInfo {
        self.primary().info(self.traffic.clone())
    }

    /// The admin API's view of the versions.
    pub fn versions_info(&self) -> VersionsInfo {
        VersionsInfo {
            name: self.name.to_string(),
            versions: self
                .versions
                .iter()
                .map(|f| VersionInfo {
                    version: f.record.generation,
                    digest: f.record.digest.clone(),
                    kind: f.record.kind,
                    wasm_bytes: f.record.wasm_bytes,
                    deployed_at_ms: f.record.deployed_at_ms,
                    percent: self.traffic.percent(f.record.generation),
                    route: f.route.clone(),
                    loaded: f.loaded().is_some(),
                    requests: f.stats.requests.load(Ordering::Relaxed),
                    failures: f.stats.failures.load(Ordering::Relaxed),
                    origin: f.record.spec.origin.clone(),
                })
                .collect(),
            traffic: self.traffic.clone(),
        }
    }

    /// The same versions with another split.
    pub fn with_traffic(&self, traffic: TrafficSplit) -> Result<Self, SetError> {
        Self::new(self.versions.clone(), traffic)
    }

    /// The same set with one version's [`Function`] replaced (a tier-up swaps in Cranelift's
    /// code); `None` if `old` is no longer in the set.
    pub fn with_replaced(&self, old: &Arc<Function>, new: Arc<Function>) -> Option<Self> {
        let at = self.versions.iter().position(|f| Arc::ptr_eq(f, old))?;
        let mut versions = self.versions.clone();
        versions[at] = new;
        Self::new(versions, self.traffic.clone()).ok()
    }

    /// This set with every version that the split does not list and that holds code
    /// replaced by an unloaded copy (same record, same log): its code, its warm instances
    /// (and the instance slots they hold) go once the requests still running on it end. A
    /// later split that lists it again loads it from its artifact.
    pub fn unload_unreachable(mut self, defaults: &LimitDefaults) -> Self {
        for version in &mut self.versions {
            let listed = self.traffic.percent(version.record.generation).is_some();
            if !listed && (version.loaded().is_some() || !version.pool.is_empty()) {
                let unloaded = Function::unloaded(version.record.clone(), defaults);
                *version = Arc::new(unloaded.with_state_of(version));
            }
        }
        self
    }

    /// What `rollback` without a version goes back to. During a split, the version with the
    /// largest share other than the newest serving one (a canary's predecessor, not a version
    /// that was only pinnable); otherwise the newest kept version older than the one serving.
    pub fn previous(&self) -> Option<u64> {
        let newest_serving = self.traffic.newest_serving();
        let others = self
            .traffic
            .shares()
            .iter()
            .filter(|s| s.percent > 0 && s.version != newest_serving);
        if let Some(share) = others.max_by_key(|s| (s.percent, s.version)) {
            return Some(share.version);
        }
        self.versions
            .iter()
            .rev()
            .map(|f| f.record.generation)
            .find(|v| *v < newest_serving)
    }
}

/// `v1, v2, v5`, for messages.
fn list(versions: &[Arc<Function>]) -> String {
    versions
        .iter()
        .map(|f| format!("v{}", f.record.generation))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`SLOTS`] slots for weights that add up to [`SLOTS`], by smooth weighted round-robin:
/// each step every entry gains its weight, the largest current value takes the slot and loses
/// the total.
fn interleave(weights: &[(usize, i64)]) -> Box<[u8]> {
    let total: i64 = weights.iter().map(|(_, w)| w).sum();
    if weights.is_empty() || total == 0 {
        return vec![0u8; SLOTS].into();
    }
    let mut current = vec![0i64; weights.len()];
    (0..SLOTS)
        .map(|_| {
            for (c, (_, w)) in current.iter_mut().zip(weights) {
                *c += w;
            }
            let best = (0..weights.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .expect("not empty");
            current[best] -= total;
            weights[best].0 as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_exact_and_spread() {
        let table = interleave(&[(0, 80), (1, 20)]);
        assert_eq!(table.iter().filter(|&&i| i == 1).count(), 20);
        // Spread: never more than four of the larger share in a row.
        let longest = table.split(|&i| i == 1).map(<[u8]>::len).max().unwrap_or(0);
        assert!(longest <= 4, "{table:?}");
        let three = interleave(&[(0, 34), (2, 33), (5, 33)]);
        for (index, count) in [(0, 34), (2, 33), (5, 33)] {
            assert_eq!(three.iter().filter(|&&i| i == index).count(), count);
        }
    }

    #[test]
    fn old_single_records_read_as_one_version() {
        let single = FunctionRecord {
            name: "f".into(),
            digest: "ab".repeat(32),
            kind: crate::engine::artifact::Kind::Component,
            engine: None,
            wasm_bytes: 1,
            code_digest: None,
            spec: Default::default(),
            generation: 3,
            deployed_at_ms: 0,
        };
        let record = VersionsRecord::from_json(&serde_json::to_vec(&single).unwrap()).unwrap();
        assert_eq!(record.traffic, TrafficSplit::single(3));
        assert_eq!(record.versions, vec![single.clone()]);

        let mut wrong = record.clone();
        wrong.traffic = TrafficSplit::single(4);
        let e = VersionsRecord::from_json(&serde_json::to_vec(&wrong).unwrap()).unwrap_err();
        assert!(e.to_string().contains("v4"), "{e}");
    }
}
