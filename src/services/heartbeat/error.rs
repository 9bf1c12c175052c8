//! Every way a heartbeat request fails, and the status and stable code each one answers.

use std::time::Duration;

use actix_web::http::StatusCode;

use crate::platform::http::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{0}")]
    InvalidStatus(String),
    #[error("user ids are u- followed by 32 lowercase hex digits")]
    InvalidId,
    #[error("no such user")]
    UserNotFound,
    #[error(
        "only their contacts and those who share a conversation with them see a user's presence"
    )]
    NotRelated,
    #[error("too many pings; try again later")]
    RateLimited { retry_after: Duration },
    /// The database, the cache or core could not answer: worth a retry.
    #[error("presence cannot be read or written right now")]
    Unavailable(#[source] anyhow::Error),
}

impl From<sea_orm::DbErr> for HeartbeatError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<HeartbeatError> for ApiError {
    fn from(err: HeartbeatError) -> Self {
        let (status, code) = match &err {
            HeartbeatError::InvalidStatus(_) => (StatusCode::BAD_REQUEST, "invalid_status"),
            HeartbeatError::InvalidId => (StatusCode::BAD_REQUEST, "invalid_id"),
            HeartbeatError::UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            HeartbeatError::NotRelated => (StatusCode::FORBIDDEN, "not_related"),
            HeartbeatError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            HeartbeatError::Unavailable(cause) => {
                tracing::error!(error = %crate::platform::http::error::ErrorChain(cause.as_ref()), "heartbeat backend failed");
                (StatusCode::SERVICE_UNAVAILABLE, "heartbeat_unavailable")
            }
        };
        let api = ApiError::new(status, code, err.to_string());
        match err {
            HeartbeatError::RateLimited { retry_after } => api.with_retry_after(retry_after),
            _ => api,
        }
    }
}
