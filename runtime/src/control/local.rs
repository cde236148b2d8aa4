//! The coordinator of a host that is its own source of truth: the records live in the data
//! directory, `functions/<name>.json`, and this host is the only writer.
//!
//! It keeps the same promises as the cluster's etcd coordinator, so that deploy, remove,
//! split, rollback and promote are one code path whichever coordinator the platform was
//! given (see [`super::coordinator`]):
//! - changes of all functions are ordered, each computed on top of the one before (a mutex
//!   plays the part of etcd's compare-and-set on the record's revision);
//! - a route is claimed in the same step as the record that takes it, so two functions
//!   deployed at once cannot both take one route;
//! - the commit point is the record's atomic write (see [`crate::datadir`]): a `kill -9`
//!   leaves the change done or not done.
//!
//! Revisions count changes since this host started; [`super::Platform`] only compares them
//! with each other, never across restarts.
//!
//! [`LocalCoordinator::in_memory`] keeps the records in memory only: the control plane's
//! unit tests drive the platform through it, in milliseconds and without a server.

use std::collections::HashMap;

use super::coordinator::{Change, Coordinator};
use super::error::DeployError;
use super::registry::RouteTaken;
use super::versions::VersionsRecord;
use crate::datadir::{DataDir, remove_durable};
use crate::function::FunctionRecord;

/// A single host's records (see the module docs).
pub struct LocalCoordinator {
    /// Where committed records are written; `None`: memory only.
    store: Option<DataDir>,
    records: tokio::sync::Mutex<Records>,
}

/// The committed records, the routes they claim, and the count of changes.
#[derive(Default)]
struct Records {
    by_name: HashMap<String, VersionsRecord>,
    /// Route → the function that has it.
    routes: HashMap<String, String>,
    revision: u64,
}

impl Records {
    fn insert(&mut self, record: VersionsRecord) {
        if let Some(route) = record.route() {
            self.routes.insert(route, record.name.clone());
        }
        self.by_name.insert(record.name.clone(), record);
    }

    fn remove(&mut self, name: &str) {
        if let Some(route) = self.by_name.remove(name).and_then(|r| r.route())
            && self.routes.get(&route).is_some_and(|owner| owner == name)
        {
            self.routes.remove(&route);
        }
    }
}

impl LocalCoordinator {
    /// The coordinator of a data directory whose records are `records` (what the platform
    /// registered from it at start-up: a damaged record it skipped is not one of them, so a
    /// deploy of that name starts it again).
    pub fn in_data_dir(data: DataDir, records: impl IntoIterator<Item = VersionsRecord>) -> Self {
        Self::with_store(Some(data), records)
    }

    /// A coordinator that keeps records in memory only, starting empty.
    pub fn in_memory() -> Self {
        Self::with_store(None, [])
    }

    fn with_store(
        store: Option<DataDir>,
        records: impl IntoIterator<Item = VersionsRecord>,
    ) -> Self {
        let mut committed = Records::default();
        for record in records {
            committed.insert(record);
        }
        Self {
            store,
            records: tokio::sync::Mutex::new(committed),
        }
    }

    /// Writes `next` as function `name`'s record (or removes it): the commit point.
    fn persist(&self, name: &str, next: Option<&VersionsRecord>) -> Result<(), DeployError> {
        let Some(data) = &self.store else {
            return Ok(());
        };
        let path = data.function_record(name);
        match next {
            Some(record) => {
                let json = serde_json::to_vec_pretty(record)
                    .map_err(|e| DeployError::Internal(e.into()))?;
                data.write_atomic(&path, &json)
            }
            None => remove_durable(&path),
        }
        .map_err(DeployError::Internal)
    }
}

#[async_trait::async_trait]
impl Coordinator for LocalCoordinator {
    async fn commit(
        &self,
        name: &str,
        change: &mut Change<'_>,
    ) -> Result<(Option<VersionsRecord>, u64), DeployError> {
        let mut records = self.records.lock().await;
        let current = records.by_name.get(name);
        let next = change(current)?;
        if current.is_none() && next.is_none() {
            return Ok((None, records.revision));
        }
        if let Some(route) = next.as_ref().and_then(VersionsRecord::route)
            && let Some(owner) = records.routes.get(&route).filter(|owner| *owner != name)
        {
            return Err(DeployError::RouteTaken(RouteTaken {
                route,
                owner: owner.clone(),
            }));
        }
        self.persist(name, next.as_ref())?;
        records.remove(name);
        if let Some(record) = &next {
            records.insert(record.clone());
        }
        records.revision += 1;
        Ok((next, records.revision))
    }

    /// Nothing to fetch: every version's code was written here before its record.
    async fn fetch_code(&self, _record: &VersionsRecord) -> Result<(), DeployError> {
        Ok(())
    }

    /// Nobody to publish to.
    async fn publish_code(&self, _version: &FunctionRecord) -> Result<(), DeployError> {
        Ok(())
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn synced(&self) -> Result<(), &'static str> {
        Ok(())
    }
}
