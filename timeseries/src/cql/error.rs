//! Driver errors as [`Error`]s (moved here from the old store crate's CQL engine): what
//! may pass on a retry (a node down or overloaded, a timeout, no connection) is
//! [`Error::Unavailable`], a bad setting [`Error::Config`], anything else
//! [`Error::Internal`].

use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};

use crate::Error;

fn attempt_is_unavailable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
        ),
        _ => false,
    }
}

fn prepare_is_unavailable(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_unavailable(first_attempt),
        _ => false,
    }
}

fn execution_is_unavailable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_is_unavailable(a),
        ExecutionError::PrepareError(p) => prepare_is_unavailable(p),
        _ => false,
    }
}

fn next_page_is_unavailable(e: &NextPageError) -> bool {
    match e {
        NextPageError::RequestFailure(r) => {
            execution_is_unavailable(&r.clone().into_execution_error())
        }
        _ => false,
    }
}

fn classify(unavailable: bool, what: &str, e: impl std::fmt::Display) -> Error {
    if unavailable {
        Error::Unavailable(format!("cql: {what}: {e}"))
    } else {
        Error::Internal(format!("cql: {what}: {e}"))
    }
}

/// Maps a failed request.
pub(super) fn exec_err(what: &str) -> impl Fn(ExecutionError) -> Error + '_ {
    move |e| classify(execution_is_unavailable(&e), what, e)
}

/// Maps a failed prepare.
pub(super) fn prepare_err(what: &str) -> impl Fn(PrepareError) -> Error + '_ {
    move |e| classify(prepare_is_unavailable(&e), what, e)
}

/// Maps a failed paged request.
pub(super) fn pager_err(what: &str) -> impl Fn(PagerExecutionError) -> Error + '_ {
    move |e| {
        let unavailable = match &e {
            PagerExecutionError::PrepareError(p) => prepare_is_unavailable(p),
            PagerExecutionError::NextPageError(n) => next_page_is_unavailable(n),
            PagerExecutionError::SchemaAgreementError(_)
            | PagerExecutionError::MetadataError(_) => true,
            _ => false,
        };
        classify(unavailable, what, e)
    }
}

/// Maps a failure while reading the rows of a paged request.
pub(super) fn row_err(what: &str) -> impl Fn(NextRowError) -> Error + '_ {
    move |e| {
        let unavailable = match &e {
            NextRowError::NextPageError(n) => next_page_is_unavailable(n),
            _ => false,
        };
        classify(unavailable, what, e)
    }
}

/// Maps a failure to open a session with `nodes`.
pub(super) fn session_err(nodes: &[String], e: NewSessionError) -> Error {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            Error::Config(format!("cql: {e}"))
        }
        e => Error::Unavailable(format!("cql: cannot connect to {}: {e}", nodes.join(","))),
    }
}
