//! Every way a pictures request fails, and the status and stable code each one answers.

use std::time::Duration;

use actix_web::http::StatusCode;

use super::process::ProcessError;
use super::store::StoreError;
use crate::platform::http::ApiError;
use crate::platform::membership::AccessError;
use crate::platform::pictures::PictureLookupError;

#[derive(Debug, thiserror::Error)]
pub enum PicturesError {
    #[error("send the picture as multipart/form-data")]
    NotMultipart,
    #[error("{0}")]
    InvalidUpload(String),
    #[error("the upload is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body stopped arriving")]
    BodyTimeout,
    #[error("{0}")]
    Unsupported(String),
    /// Its header declares more pixels than allowed (a decompression bomb, or just huge).
    #[error("{0}")]
    PictureTooLarge(String),
    /// Truncated or corrupt.
    #[error("{0}")]
    Undecodable(String),
    #[error("too many uploads in progress; try again shortly")]
    Busy { retry_after: Duration },
    #[error("no such picture")]
    NotFound,
    #[error("this picture is shown only to the members of its conversations and its uploader")]
    Forbidden,
    #[error("the requested range is outside the picture ({length} bytes)")]
    RangeNotSatisfiable { length: u64 },
    /// The database, the blob store or core could not answer: worth a retry.
    #[error("pictures cannot be read or written right now")]
    Unavailable(#[source] anyhow::Error),
}

impl From<sea_orm::DbErr> for PicturesError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<StoreError> for PicturesError {
    fn from(err: StoreError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<PictureLookupError> for PicturesError {
    fn from(err: PictureLookupError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<AccessError> for PicturesError {
    fn from(err: AccessError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<crate::platform::blobs::BlobsError> for PicturesError {
    fn from(err: crate::platform::blobs::BlobsError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<ProcessError> for PicturesError {
    fn from(err: ProcessError) -> Self {
        match err {
            ProcessError::Unsupported => Self::Unsupported(err.to_string()),
            ProcessError::TooLarge(_) => Self::PictureTooLarge(err.to_string()),
            ProcessError::Invalid(_) => Self::Undecodable(err.to_string()),
            ProcessError::Encoding(_) => Self::Unavailable(err.into()),
        }
    }
}

impl From<PicturesError> for ApiError {
    fn from(err: PicturesError) -> Self {
        let (status, code) = match &err {
            PicturesError::NotMultipart => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_multipart"),
            PicturesError::InvalidUpload(_) => (StatusCode::BAD_REQUEST, "invalid_upload"),
            PicturesError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            PicturesError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            PicturesError::Unsupported(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_picture")
            }
            PicturesError::PictureTooLarge(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "picture_too_large")
            }
            PicturesError::Undecodable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_picture"),
            PicturesError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "pictures_busy"),
            PicturesError::NotFound => (StatusCode::NOT_FOUND, "picture_not_found"),
            PicturesError::Forbidden => (StatusCode::FORBIDDEN, "not_allowed"),
            PicturesError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            PicturesError::Unavailable(cause) => {
                tracing::error!(error = %crate::platform::http::error::ErrorChain(cause.as_ref()), "pictures backend failed");
                (StatusCode::SERVICE_UNAVAILABLE, "pictures_unavailable")
            }
        };
        let api = ApiError::new(status, code, err.to_string());
        match err {
            PicturesError::Busy { retry_after } => api.with_retry_after(retry_after),
            _ => api,
        }
    }
}
