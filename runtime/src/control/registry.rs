//! Name → function, and path → function.
//!
//! The registry is a `DashMap` from name to `Arc<Function>` for the admin side, and a route
//! table for the data plane. The route table is an immutable map from route prefix to
//! `Arc<Function>`, replaced as a whole (`ArcSwap`) on every deploy or removal: a request
//! does one atomic load and a few hash lookups, never takes a lock, and keeps the `Arc` it
//! found for as long as it runs. That is what makes a redeploy atomic: requests that already
//! hold the old `Arc` finish on the old code, the next load sees the new one.
//!
//! Routing is by longest matching prefix on segment boundaries ([`longest_prefix`]).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use thaw_spec::route::longest_prefix;

use crate::function::Function;

/// Route prefix → function, immutable once built.
type RouteTable = HashMap<String, Arc<Function>>;

/// The deployed functions.
#[derive(Default)]
pub struct Registry {
    by_name: DashMap<String, Arc<Function>>,
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

    /// Checks that `function` could be inserted without taking another function's route.
    pub fn check_route(&self, name: &str, route: &str) -> Result<(), RouteTaken> {
        match self.routes.load().get(route) {
            Some(owner) if &*owner.name != name => Err(RouteTaken {
                route: route.to_owned(),
                owner: owner.name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Inserts or replaces a function; returns the version it replaced.
    pub fn insert(&self, function: Arc<Function>) -> Result<Option<Arc<Function>>, RouteTaken> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.check_route(&function.name, &function.route)?;
        let old = self.by_name.insert(function.name.to_string(), function);
        self.rebuild_routes();
        Ok(old)
    }

    /// Inserts many functions at once (start-up), building the route table once instead of
    /// once per function. Functions whose route is taken (by an earlier one) are returned.
    pub fn insert_all(&self, functions: Vec<Arc<Function>>) -> Vec<(Arc<Function>, RouteTaken)> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes: RouteTable = (**self.routes.load()).clone();
        let mut refused = Vec::new();
        for function in functions {
            match routes.get(&function.route) {
                Some(owner) if owner.name != function.name => {
                    let taken = RouteTaken {
                        route: function.route.clone(),
                        owner: owner.name.to_string(),
                    };
                    refused.push((function, taken));
                }
                _ => {
                    routes.insert(function.route.clone(), function.clone());
                    self.by_name.insert(function.name.to_string(), function);
                }
            }
        }
        self.routes.store(Arc::new(routes));
        refused
    }

    /// Removes a function; returns it if it existed.
    pub fn remove(&self, name: &str) -> Option<Arc<Function>> {
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
    pub fn get(&self, name: &str) -> Option<Arc<Function>> {
        self.by_name.get(name).map(|f| f.clone())
    }

    /// Every function, sorted by name.
    pub fn all(&self) -> Vec<Arc<Function>> {
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
    pub fn route(&self, path: &str) -> Option<Arc<Function>> {
        let table = self.routes.load();
        longest_prefix(path, |prefix| table.get(prefix).cloned())
    }
}
