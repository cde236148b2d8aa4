//! Where function records live when this host is one of several: the seam between the
//! control plane and a cluster (see [`crate::cluster`]).
//!
//! A single host is its own source of truth: a deploy commits to the data directory. In a
//! cluster the source of truth is shared (etcd), and every node mirrors it into its own data
//! directory and registry. So a change made through a node is committed twice, in that
//! order: first to the shared store, by a [`Coordinator`], as a compare-and-set on the
//! record's revision (two changes of one name through two nodes are ordered, never lost);
//! then locally, by [`super::Platform::apply_record`], which is also what every other node
//! runs when it sees the change. The local step is idempotent and ordered by the shared
//! store's revision, so whichever of the deploy and the node's own watch applies a change
//! first, the other does nothing.
//!
//! The trait is defined here and implemented above (the control plane must not depend on
//! etcd, and a test can drive the platform without one).

use super::error::DeployError;
use super::versions::VersionsRecord;
use crate::function::FunctionRecord;

/// A change to one function's record: computed from the current record (`None`: no such
/// function) into the next one (`None`: remove it). It may run more than once: when another
/// change commits first, the coordinator calls it again with that one's result.
pub type Change<'a> =
    dyn FnMut(Option<&VersionsRecord>) -> Result<Option<VersionsRecord>, DeployError> + Send + 'a;

/// The shared source of truth for function records.
#[async_trait::async_trait]
pub trait Coordinator: Send + Sync {
    /// Commits `change` to function `name`'s record. Returns what was committed and its
    /// revision (the order of changes across the cluster). Unreachable store: a
    /// [`DeployError::Unavailable`], and nothing changed.
    async fn commit(
        &self,
        name: &str,
        change: &mut Change<'_>,
    ) -> Result<(Option<VersionsRecord>, u64), DeployError>;

    /// Fetches what this host lacks of the code of `record`'s versions (from the other
    /// nodes), so that [`super::Platform::apply_record`] can load it.
    async fn fetch_code(&self, record: &VersionsRecord) -> Result<(), DeployError>;

    /// Makes a new version's code available to the other nodes before its record is
    /// committed (so that a node that sees the record can fetch what it needs).
    async fn publish_code(&self, version: &FunctionRecord) -> Result<(), DeployError>;

    /// `Err(reason)` when the host serves but cannot take changes (`GET /healthz` says
    /// degraded).
    fn health(&self) -> Result<(), String>;

    /// `Err(reason)` until the host has mirrored the shared records once (`GET /readyz`).
    fn synced(&self) -> Result<(), &'static str>;
}
