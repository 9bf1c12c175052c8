//! Every way a heartbeat request fails, and the status and stable code each one answers.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::platform::http::ApiError;
use crate::platform::http::error::set_retry_after;

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
    #[error("who may see whom cannot be checked right now")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for HeartbeatError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Internal(err.into())
    }
}

impl HeartbeatError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidStatus(_) => (StatusCode::BAD_REQUEST, "invalid_status"),
            Self::InvalidId => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            Self::NotRelated => (StatusCode::FORBIDDEN, "not_related"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "heartbeat_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ResponseError for HeartbeatError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let api = match self {
            Self::Internal(cause) => ApiError::internal(cause.as_ref()),
            other => {
                if let Self::Unavailable(cause) = other {
                    tracing::error!(error = %cause, "relation check failed");
                }
                let (status, code) = other.status_and_code();
                ApiError::new(status, code, other.to_string())
            }
        };
        let mut response = api.error_response();
        if let Self::RateLimited { retry_after } = self {
            set_retry_after(&mut response, *retry_after);
        }
        response
    }
}
