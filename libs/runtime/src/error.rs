//! The one mapping from service errors to `tonic::Status`.
//!
//! Services return [`ServiceError`] from their handlers and convert at the
//! edge with `?`/`into()`. Client mistakes get a precise code (and, for
//! `INVALID_ARGUMENT`, a `google.rpc.BadRequest` with one violation per
//! field). Internal causes are logged here, once, and the caller only learns
//! that something went wrong on our side.

use std::fmt;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(FieldViolations),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The resource the caller tried to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's credentials are missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The call's deadline passed while waiting on a dependency.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A dependency (the database, an upstream) does not answer; retrying
    /// later may succeed.
    #[error("dependency unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// The service is at a limit it keeps to stay healthy (hashes queued,
    /// connections busy): refused before any work, to be retried after
    /// `retry_after`.
    #[error("overloaded: {message}")]
    Overloaded {
        /// What is at its limit, for the caller.
        message: String,
        /// When a retry has a chance.
        retry_after: std::time::Duration,
    },
    /// A bug or an unexpected failure on our side.
    #[error("internal error: {0:#}")]
    Internal(#[source] anyhow::Error),
}

impl ServiceError {
    /// `INVALID_ARGUMENT` for a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = FieldViolations::default();
        v.add(field, description);
        ServiceError::InvalidArgument(v)
    }

    /// `NOT_FOUND` for `kind` with `id`.
    pub fn not_found(kind: &str, id: impl fmt::Display) -> Self {
        ServiceError::NotFound(format!("{kind} {id} not found"))
    }
}

/// When a call refused for want of a database connection may come back.
const POOL_BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        // Every connection busy while the database answers its probe: the
        // service is overloaded, not its database down.
        if matches!(e, sqlx::Error::PoolTimedOut)
            && crate::db::reachability::current() == Some(true)
        {
            return ServiceError::Overloaded {
                message: "every database connection of this service is busy".into(),
                retry_after: POOL_BUSY_RETRY_AFTER,
            };
        }
        if is_unavailable(&e) {
            ServiceError::Unavailable(e.into())
        } else {
            ServiceError::Internal(e.into())
        }
    }
}

/// Whether a database error means "the database cannot be reached right now"
/// rather than "this statement is wrong".
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // Class 08: connection exception; 57P01..57P03: admin shutdown,
            // crash shutdown, cannot connect now.
            db.code().is_some_and(|c| {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
            })
        }
        _ => false,
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(violations) => {
                let message = violations.to_string();
                let details = ErrorDetails::with_bad_request(violations.0);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ServiceError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
                Status::unavailable("a dependency of this service is unavailable; retry later")
            }
            ServiceError::Overloaded {
                message,
                retry_after,
            } => overloaded(&message, retry_after),
            ServiceError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` and the mesh's
/// `grpc-retry-pushback-ms`, so both people and mesh clients know when to
/// come back.
pub fn overloaded(message: &str, retry_after: std::time::Duration) -> Status {
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        format!("{message}; retry later"),
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    if let Ok(ms) = retry_after.as_millis().to_string().parse() {
        status.metadata_mut().insert("grpc-retry-pushback-ms", ms);
    }
    status
}

/// Per-field problems with a request, gathered before anything is written.
#[derive(Debug, Default, Clone)]
pub struct FieldViolations(Vec<FieldViolation>);

impl FieldViolations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` (a protobuf field path, `price.currency_code`) is
    /// wrong, and why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Whether no violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when empty, else `INVALID_ARGUMENT` with every violation.
    pub fn into_result(self) -> Result<(), ServiceError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self))
        }
    }

    /// The violations, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
    }
}

impl fmt::Display for FieldViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut v = FieldViolations::new();
        v.add("email", "must contain one @");
        v.check(false, "password", "must be at least 12 characters");
        v.check(true, "display_name", "unused");
        let status: Status = v.into_result().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status
            .get_details_bad_request()
            .expect("bad request details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["email", "password"]);
        assert!(status.message().contains("email: must contain one @"));
    }

    #[test]
    fn overload_is_resource_exhausted_with_retry_info_and_pushback() {
        let status: Status = ServiceError::Overloaded {
            message: "too many password checks at once".into(),
            retry_after: std::time::Duration::from_millis(250),
        }
        .into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
    }

    #[test]
    fn internal_causes_never_reach_the_caller() {
        let status: Status =
            ServiceError::Internal(anyhow::anyhow!("password hash column is null")).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("password"));
    }

    #[tokio::test]
    async fn a_busy_pool_is_overload_while_the_database_answers_and_unavailable_when_not() {
        use crate::db::reachability::{Reachability, ReachabilityLayer};
        use tower::{Layer as _, ServiceExt as _};
        let reachability = Reachability::default();
        let call = ReachabilityLayer(reachability.clone()).layer(tower::service_fn(|()| async {
            Ok::<_, ()>(Status::from(ServiceError::from(sqlx::Error::PoolTimedOut)))
        }));
        let status = call.clone().oneshot(()).await.unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
        reachability.set(false);
        let status = call.oneshot(()).await.unwrap();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    #[test]
    fn lost_database_connections_are_unavailable() {
        let status: Status = ServiceError::from(sqlx::Error::PoolTimedOut).into();
        assert_eq!(status.code(), Code::Unavailable);
        let status: Status = ServiceError::from(sqlx::Error::RowNotFound).into();
        assert_eq!(status.code(), Code::Internal);
    }
}
