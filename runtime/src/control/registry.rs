//! Name → function, and path → function.
//!
//! The registry is a `DashMap` from name to `Arc<VersionSet>` (a function's kept versions and
//! its traffic split, see [`super::versions`]) for the admin side, and a route table for the
//! data plane. The route table is an immutable map from route prefix to `Arc<VersionSet>`,
//! replaced as a whole (`ArcSwap`) on every change: a request does one atomic load and a few
//! hash lookups, never takes a lock, and keeps the `Arc` of the version it was given for as
//! long as it runs. That is what makes a redeploy, a rollback or a split change atomic:
//! requests that already hold the old version finish on it, the next load sees the new set.
//!
//! Routing is by longest matching prefix on segment boundaries ([`longest_prefix`]).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use thaw_spec::route::longest_prefix;

use super::versions::VersionSet;

/// Route prefix → function, immutable once built.
type RouteTable = HashMap<String, Arc<VersionSet>>;

/// The deployed functions.
#[derive(Default)]
pub struct Registry {
    by_name: DashMap<String, Arc<VersionSet>>,
    routes: ArcSwap<RouteTable>,
    /// Serialises writers so two route-table rebuilds cannot interleave.
    write: std::sync::Mutex<()>,
}

/// Why a function cannot take its route.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route {route} is already served by function {owner}")]
pub struct RouteTaken {
    /// The contested route.
    pub route: String,
    /// The function that has it.
    pub owner: String,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that function `name` could serve `route` without taking another's.
    pub fn check_route(&self, name: &str, route: &str) -> Result<(), RouteTaken> {
        match self.routes.load().get(route) {
            Some(owner) if &*owner.name != name => Err(RouteTaken {
                route: route.to_owned(),
                owner: owner.name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Inserts or replaces a function's versions; returns what it replaced.
    pub fn insert(&self, set: Arc<VersionSet>) -> Result<Option<Arc<VersionSet>>, RouteTaken> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.check_route(&set.name, &set.route)?;
        let old = self.by_name.insert(set.name.to_string(), set);
        self.rebuild_routes();
        Ok(old)
    }

    /// Inserts many functions at once (start-up), building the route table once instead of
    /// once per function. Functions whose route is taken (by an earlier one) are returned.
    pub fn insert_all(&self, sets: Vec<Arc<VersionSet>>) -> Vec<(Arc<VersionSet>, RouteTaken)> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes: RouteTable = (**self.routes.load()).clone();
        let mut refused = Vec::new();
        for set in sets {
            match routes.get(&set.route) {
                Some(owner) if owner.name != set.name => {
                    let taken = RouteTaken {
                        route: set.route.clone(),
                        owner: owner.name.to_string(),
                    };
                    refused.push((set, taken));
                }
                _ => {
                    routes.insert(set.route.clone(), set.clone());
                    self.by_name.insert(set.name.to_string(), set);
                }
            }
        }
        self.routes.store(Arc::new(routes));
        refused
    }

    /// Removes a function; returns it if it existed.
    pub fn remove(&self, name: &str) -> Option<Arc<VersionSet>> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.by_name.remove(name).map(|(_, f)| f);
        if old.is_some() {
            self.rebuild_routes();
        }
        old
    }

    fn rebuild_routes(&self) {
        let table: RouteTable = self
            .by_name
            .iter()
            .map(|entry| (entry.route.clone(), entry.value().clone()))
            .collect();
        self.routes.store(Arc::new(table));
    }

    /// The function called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<VersionSet>> {
        self.by_name.get(name).map(|f| f.clone())
    }

    /// Every function, sorted by name.
    pub fn all(&self) -> Vec<Arc<VersionSet>> {
        let mut all: Vec<_> = self.by_name.iter().map(|f| f.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when nothing is deployed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The function whose route is the longest prefix of `path` (on a segment boundary).
    pub fn route(&self, path: &str) -> Option<Arc<VersionSet>> {
        let table = self.routes.load();
        longest_prefix(path, |prefix| table.get(prefix).cloned())
    }
}
