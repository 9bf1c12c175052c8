//! Every way a login or token request fails, and the status each one answers; and why auth
//! cannot start.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::keys::KeyError;
use crate::platform::cache::CacheError;
use crate::platform::http::ApiError;
use crate::platform::http::error::ErrorChain;
use crate::platform::users::{DirectoryError, InvalidLogin};

/// Why auth cannot start: reported before the server listens.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("signing keys: {0}")]
    Keys(#[source] KeyError),
    #[error("OTP secret: {0}")]
    OtpSecret(#[source] KeyError),
    #[error("{0}")]
    Setting(String),
    #[error(
        "auth.dev_bypass is on in a release build; set auth.dev_bypass_in_release = true if you really mean it"
    )]
    BypassInRelease,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    InvalidLogin(#[from] InvalidLogin),
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("too many requests ({limit}); try again later")]
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
    },
    #[error("the code is wrong or has expired")]
    InvalidCode,
    #[error("too many wrong codes for this login attempt; request a new code")]
    TooManyAttempts { retry_after: Duration },
    #[error("this account is blocked")]
    UserBlocked,
    #[error("the refresh token is unknown, expired or revoked")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session has been ended")]
    RefreshTokenReused,
    #[error("no such session")]
    SessionNotFound,
    #[error("the code could not be delivered")]
    Delivery(#[source] anyhow::Error),
    #[error("{0}")]
    Profile(String),
    #[error("{0}")]
    UserExists(String),
    #[error("not found")]
    BypassDisabled,
    /// core, in another process, does not answer.
    #[error("{0}")]
    UsersUnavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<CacheError> for AuthError {
    fn from(err: CacheError) -> Self {
        Self::Internal(err.into())
    }
}

impl From<sea_orm::DbErr> for AuthError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Internal(err.into())
    }
}

impl From<DirectoryError> for AuthError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Invalid(message) => Self::Profile(message),
            DirectoryError::Conflict(message) => Self::UserExists(message),
            DirectoryError::Backend(cause) => Self::Internal(cause),
            DirectoryError::Unavailable(why) => Self::UsersUnavailable(why),
        }
    }
}

impl AuthError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidLogin(InvalidLogin::Phone) => {
                (StatusCode::BAD_REQUEST, "invalid_phone_number")
            }
            Self::InvalidLogin(InvalidLogin::Email) => (StatusCode::BAD_REQUEST, "invalid_email"),
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::InvalidCode => (StatusCode::UNAUTHORIZED, "invalid_code"),
            Self::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Self::UserBlocked => (StatusCode::FORBIDDEN, "user_blocked"),
            Self::InvalidRefreshToken => (StatusCode::UNAUTHORIZED, "invalid_refresh_token"),
            Self::RefreshTokenReused => (StatusCode::UNAUTHORIZED, "refresh_token_reused"),
            Self::SessionNotFound => (StatusCode::NOT_FOUND, "session_not_found"),
            Self::Delivery(_) => (StatusCode::BAD_GATEWAY, "delivery_failed"),
            Self::Profile(_) => (StatusCode::BAD_REQUEST, "invalid_profile"),
            Self::UserExists(_) => (StatusCode::CONFLICT, "user_exists"),
            Self::BypassDisabled => (StatusCode::NOT_FOUND, "not_found"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::UsersUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "users_unavailable"),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::TooManyAttempts { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let api = match self {
            Self::Internal(cause) => ApiError::internal(cause.as_ref()),
            other => {
                if let Self::Delivery(cause) = other {
                    tracing::error!(error = %ErrorChain(cause.as_ref()), "OTP delivery failed");
                }
                let (status, code) = other.status_and_code();
                ApiError::new(status, code, other.to_string())
            }
        };
        match self.retry_after() {
            Some(wait) => api.with_retry_after(wait).error_response(),
            None => api.error_response(),
        }
    }
}
