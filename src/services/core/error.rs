//! Every way a core request fails, and the status and stable code each one answers.

use actix_web::http::StatusCode;
use sea_orm::DbErr;

use crate::platform::http::ApiError;
use crate::platform::users::{DirectoryError, InvalidLogin};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A picture name cannot be checked: pictures, in another process, does not answer.
    #[error("{0}")]
    PicturesUnavailable(String),
    #[error("{what} ids are {prefix} followed by 32 lowercase hex digits")]
    InvalidId {
        what: &'static str,
        prefix: &'static str,
    },
    #[error(transparent)]
    InvalidPhoneNumber(#[from] InvalidLogin),
    #[error("{0}")]
    InvalidProfile(String),
    #[error("{0}")]
    InvalidConversation(String),
    #[error("{0}")]
    InvalidContact(&'static str),
    #[error("no such user")]
    UserNotFound,
    #[error("a profile can only be written by its own user")]
    NotYourUser,
    #[error("log in with this phone number to use it")]
    PhoneNotVerified,
    #[error("no such conversation")]
    ConversationNotFound,
    #[error("not a member of this conversation")]
    NotAMember,
    #[error("that user is not a member of this conversation")]
    MemberNotFound,
    #[error("already a member of this conversation")]
    AlreadyAMember,
    #[error("already a contact")]
    AlreadyAContact,
    #[error("not one of your contacts")]
    ContactNotFound,
    #[error("this username is taken")]
    UsernameTaken,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<DbErr> for CoreError {
    fn from(err: DbErr) -> Self {
        Self::Internal(err.into())
    }
}

impl From<DirectoryError> for CoreError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Invalid(message) => Self::InvalidProfile(message),
            DirectoryError::Conflict(_) => Self::UsernameTaken,
            DirectoryError::Backend(cause) => Self::Internal(cause),
            // Core's own directory is unavailable only when pictures cannot be asked.
            DirectoryError::Unavailable(why) => Self::PicturesUnavailable(why),
        }
    }
}

impl CoreError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidId { .. } => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::InvalidPhoneNumber(_) => (StatusCode::BAD_REQUEST, "invalid_phone_number"),
            Self::InvalidProfile(_) => (StatusCode::BAD_REQUEST, "invalid_profile"),
            Self::InvalidConversation(_) => (StatusCode::BAD_REQUEST, "invalid_conversation"),
            Self::InvalidContact(_) => (StatusCode::BAD_REQUEST, "invalid_contact"),
            Self::UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            Self::NotYourUser => (StatusCode::FORBIDDEN, "not_your_user"),
            Self::PhoneNotVerified => (StatusCode::FORBIDDEN, "phone_not_verified"),
            Self::ConversationNotFound => (StatusCode::NOT_FOUND, "conversation_not_found"),
            Self::NotAMember => (StatusCode::FORBIDDEN, "not_a_member"),
            Self::MemberNotFound => (StatusCode::NOT_FOUND, "member_not_found"),
            Self::AlreadyAMember => (StatusCode::CONFLICT, "already_a_member"),
            Self::AlreadyAContact => (StatusCode::CONFLICT, "already_a_contact"),
            Self::ContactNotFound => (StatusCode::NOT_FOUND, "contact_not_found"),
            Self::UsernameTaken => (StatusCode::CONFLICT, "username_taken"),
            Self::PicturesUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "pictures_unavailable")
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        match err {
            CoreError::Internal(cause) => ApiError::internal(cause.as_ref()),
            other => {
                let (status, code) = other.status_and_code();
                ApiError::new(status, code, other.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_answer_their_status_and_code() {
        let cases = [
            (CoreError::NotAMember, 403, "not_a_member"),
            (
                CoreError::ConversationNotFound,
                404,
                "conversation_not_found",
            ),
            (CoreError::AlreadyAContact, 409, "already_a_contact"),
            (
                CoreError::InvalidId {
                    what: "user",
                    prefix: "u-",
                },
                400,
                "invalid_id",
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code, code);
        }
    }
}
