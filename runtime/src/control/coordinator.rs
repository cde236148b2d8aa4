//! Where function records are committed: the seam between the control plane and its
//! source of truth.
//!
//! Every change (deploy, remove, split, rollback, promote) is made the same way, whoever
//! the coordinator is: its record is computed from the committed one and committed by the
//! [`Coordinator`], as a compare-and-set on the record's revision (two changes of one name
//! are ordered, never lost; a route is claimed in the same step); then it is applied here by
//! [`super::Platform::apply_record`]: loaded, persisted into the data directory, swapped into
//! the registry. The local step is idempotent and ordered by the coordinator's revision, so
//! whichever of a change and a cluster node's own watch applies it first, the other does
//! nothing.
//!
//! The coordinators:
//! - [`super::local::LocalCoordinator`]: a single host, its records in its data directory
//!   (or in memory, for the control plane's unit tests);
//! - [`crate::cluster::Cluster`]: etcd, shared by the nodes of a cluster, each of which
//!   mirrors it into its own data directory and registry.
//!
//! The trait is defined here and implemented beside and above (the control plane must not
//! depend on etcd, and a test can drive the platform without one).

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
