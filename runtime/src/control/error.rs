//! Why a deploy, or a change of a function's versions, was refused.

use http::StatusCode;

/// Why a deploy, or a change of a function's versions, was refused. Every variant leaves the
/// previous version serving, except an [`DeployError::Internal`] that says the change was
/// committed but not applied here yet.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The request is wrong (bad name, spec, or not wasm at all).
    #[error("{0}")]
    BadRequest(String),
    /// The wasm does not compile or link: the message says why (invalid bytes, an import thaw
    /// does not offer, no wasi:http export).
    #[error("{0}")]
    InvalidModule(String),
    /// No such function, or no such version of it.
    #[error("{0}")]
    NotFound(String),
    /// Another function has the route.
    #[error(transparent)]
    RouteTaken(#[from] super::registry::RouteTaken),
    /// The upload (or its spec part) is over the admin API's limit.
    #[error("{0}")]
    TooLarge(String),
    /// The host has no room for the deploy's work now (every instance slot is busy while a
    /// pre-initialisation needs one); the deployer may retry.
    #[error("{0}")]
    Busy(String),
    /// A newer change replaced this one before it could be served (a cluster's concurrent
    /// deploys): it is committed, and its version kept, but another took its traffic.
    #[error("{0}")]
    Superseded(String),
    /// The cluster's shared registry (etcd) cannot be reached: nothing changed, the deployer
    /// may retry when it is back.
    #[error("{0}")]
    Unavailable(String),
    /// thaw could not persist or load it.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<super::versions::SetError> for DeployError {
    fn from(e: super::versions::SetError) -> Self {
        match e {
            super::versions::SetError::NoSuchVersion(m) => DeployError::NotFound(m),
            super::versions::SetError::Invalid(m) => DeployError::BadRequest(m),
        }
    }
}

impl DeployError {
    /// The admin API's code for it.
    pub fn code(&self) -> crate::api::ErrorCode {
        use crate::api::ErrorCode;
        match self {
            DeployError::BadRequest(_) => ErrorCode::BadRequest,
            DeployError::InvalidModule(_) => ErrorCode::InvalidModule,
            DeployError::NotFound(_) => ErrorCode::NotFound,
            DeployError::RouteTaken(_) => ErrorCode::RouteTaken,
            DeployError::Superseded(_) => ErrorCode::Superseded,
            DeployError::TooLarge(_) => ErrorCode::TooLarge,
            DeployError::Busy(_) => ErrorCode::Busy,
            DeployError::Unavailable(_) => ErrorCode::Unavailable,
            DeployError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The status the admin client gets: its code's.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }
}
