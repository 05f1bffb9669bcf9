//! The error every control-plane operation returns: a kind (mapped to an HTTP status and a gRPC
//! code) and a message for the operator that says what failed, why, and what to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Code {
    BadRequest,
    NotFound,
    /// The operation conflicts with the current state (FailedPrecondition in docker).
    Conflict,
    /// Not allowed on this node (a worker) or with these credentials.
    Forbidden,
    /// The swarm cannot do it now (no leader, no quorum, not in a swarm).
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Failure {
        Failure::new(Code::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> Failure {
        Failure::new(Code::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Failure {
        Failure::new(Code::Conflict, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Failure {
        Failure::new(Code::Forbidden, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Failure {
        Failure::new(Code::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Failure {
        Failure::new(Code::Internal, m)
    }

    pub fn http_status(&self) -> u16 {
        match self.code {
            Code::BadRequest => 400,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::Conflict => 409,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        let code = match self.code {
            Code::BadRequest => tonic::Code::InvalidArgument,
            Code::Forbidden => tonic::Code::PermissionDenied,
            Code::NotFound => tonic::Code::NotFound,
            Code::Conflict => tonic::Code::FailedPrecondition,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, self.message.clone())
    }

    pub fn from_status(s: &tonic::Status) -> Failure {
        let code = match s.code() {
            tonic::Code::InvalidArgument => Code::BadRequest,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Code::Forbidden,
            tonic::Code::NotFound => Code::NotFound,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => Code::Conflict,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Code::Unavailable
            }
            _ => Code::Internal,
        };
        Failure::new(code, s.message().to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<store::Error> for Failure {
    fn from(e: store::Error) -> Failure {
        Failure::internal(e.to_string())
    }
}

impl From<store::Conflict> for Failure {
    fn from(e: store::Conflict) -> Failure {
        match e {
            store::Conflict::NotFound { .. } => Failure::not_found(e.to_string()),
            store::Conflict::Invalid { .. } => Failure::bad_request(e.to_string()),
            store::Conflict::Deposed { .. } => Failure::unavailable(e.to_string()),
            _ => Failure::conflict(e.to_string()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::internal(format!("{e:#}"))
    }
}
