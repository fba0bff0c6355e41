//! The control plane's errors, and the one place they become gRPC statuses.

use prost::Message as _;
use sluice_bundle::ConfigErrors;
use sluice_proto::v1 as pb;
use tonic::{Code, Status};

/// What went wrong, as a caller needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidConfig(ConfigErrors),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the fleet's head is version {actual}, not the expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    /// Refused in the current state, e.g. an apply while a rollout is unfinished.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<Error> for Status {
    /// Config errors travel as a `ValidateResponse` in the status details, so clients can show
    /// every error with its path.
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidConfig(errors) => {
                let details = pb::ValidateResponse { errors: to_proto(errors) }.encode_to_vec();
                Status::with_details(Code::InvalidArgument, e.to_string(), details.into())
            }
            Error::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::Conflict { .. } => Status::aborted(e.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::Unavailable(_) => Status::unavailable(e.to_string()),
            Error::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

pub fn to_proto(errors: &ConfigErrors) -> Vec<pb::ConfigError> {
    errors.iter().map(|e| pb::ConfigError { path: e.path.clone(), message: e.message.clone() }).collect()
}
