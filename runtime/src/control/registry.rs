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
//! Routing is by host, then by longest matching prefix on segment boundaries (the rules are
//! in [`thaw_spec::route`]). The table keeps the host-less routes, each exact host's and each
//! wildcard's apart, so a request's lookups are hash lookups of slices of its own host and
//! path: no allocation (but for a host sent with capitals, lowered once).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use thaw_spec::route::longest_prefix;

use super::versions::VersionSet;

/// Route → function, immutable once built, with its indexes by host.
#[derive(Clone, Default)]
struct RouteTable {
    /// Every route as written (`/api`, `api.example.com/v1`): what a new route is checked
    /// against.
    all: HashMap<String, Arc<VersionSet>>,
    /// Host-less routes, by path.
    paths: Paths,
    /// Exact host → its routes, by path.
    hosts: HashMap<String, Paths>,
    /// Wildcard (`*.example.com` kept as `.example.com`) → its routes, by path.
    wildcards: HashMap<String, Paths>,
}

type Paths = HashMap<String, Arc<VersionSet>>;

impl RouteTable {
    fn from_routes(all: HashMap<String, Arc<VersionSet>>) -> Self {
        let mut table = Self::default();
        for (route, set) in &all {
            let (host, path) = thaw_spec::route::split(route);
            let paths = match host {
                None => &mut table.paths,
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => table.wildcards.entry(suffix.to_owned()).or_default(),
                    None => table.hosts.entry(host.to_owned()).or_default(),
                },
            };
            paths.insert(path.to_owned(), set.clone());
        }
        table.all = all;
        table
    }

    fn get(&self, route: &str) -> Option<&Arc<VersionSet>> {
        self.all.get(route)
    }

    /// The function serving `host` (already without its port) and `path`.
    fn lookup(&self, host: Option<&str>, path: &str) -> Option<Arc<VersionSet>> {
        let in_paths = |paths: &Paths| longest_prefix(path, |prefix| paths.get(prefix).cloned());
        if let Some(host) = host
            && !(self.hosts.is_empty() && self.wildcards.is_empty())
        {
            // Routes are lower-case; most requests' hosts already are.
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(found) = self.hosts.get(host).and_then(in_paths) {
                return Some(found);
            }
            // `a.b.example.com`: `.b.example.com`, then `.example.com`, then `.com`. A host
            // with an empty label (`.example.com`, `a..example.com`) is no subdomain of
            // anything.
            let labels_ok = !host.starts_with('.') && !host.contains("..");
            for (dot, _) in host.match_indices('.').filter(|_| labels_ok) {
                if let Some(found) = self.wildcards.get(&host[dot..]).and_then(in_paths) {
                    return Some(found);
                }
            }
        }
        in_paths(&self.paths)
    }
}

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
        let mut routes = self.routes.load().all.clone();
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
        self.routes.store(Arc::new(RouteTable::from_routes(routes)));
        refused
    }

    /// Replaces functions' version sets by others of the same names and routes (an unload of
    /// idle versions), building the route table once for all of them: at 10,000 functions a
    /// rebuild per function would hold the writers for seconds. A set whose function is
    /// gone, or now has another route, is skipped. Returns how many were replaced.
    pub fn replace_all(&self, sets: impl IntoIterator<Item = Arc<VersionSet>>) -> usize {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = 0;
        for set in sets {
            if let Some(mut current) = self.by_name.get_mut(&*set.name)
                && current.route == set.route
            {
                *current = set;
                replaced += 1;
            }
        }
        if replaced > 0 {
            self.rebuild_routes();
        }
        replaced
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
        let all: HashMap<String, Arc<VersionSet>> = self
            .by_name
            .iter()
            .map(|entry| (entry.route.clone(), entry.value().clone()))
            .collect();
        self.routes.store(Arc::new(RouteTable::from_routes(all)));
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

    /// The function serving a request for `path` on `host` (its `Host` without the port;
    /// `None` when it named none): see [`thaw_spec::route`] for the order.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Arc<VersionSet>> {
        self.routes.load().lookup(host, path)
    }
}
