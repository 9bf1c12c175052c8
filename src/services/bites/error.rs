//! Every way bites fails: starting up (the store, the media runtime, the SFU settings), opening
//! a media connection, and answering a request; and the status and code each one answers.
//!
//! Messages inside an open signalling socket (`error::{"code","message"}` frames) are not
//! here: they answer one message on a connection that carries on, not a request.

use std::net::AddrParseError;
use std::path::PathBuf;

use actix_web::http::StatusCode;

use super::store::StoreError;
use crate::platform::http::ApiError;
use crate::platform::membership::AccessError;

#[derive(Debug, thiserror::Error)]
pub enum BitesError {
    // Starting up: the service is not built.
    #[error("opening {}: {source}", .path.display())]
    StoreOpenFailed { path: PathBuf, source: StoreError },
    #[error("media runtime: {0}")]
    MediaRuntimeFailed(#[source] std::io::Error),
    #[error("bites.sfu.public_ip {value:?}: {source}")]
    InvalidPublicIp {
        value: String,
        source: AddrParseError,
    },
    #[error("bites.sfu.port_min is above port_max")]
    InvalidPortRange,
    #[error(
        "bites.sfu.ip is unspecified (0.0.0.0 or ::): set bites.sfu.public_ip to the address clients reach"
    )]
    UnspecifiedMediaAddress,
    #[error("{0}")]
    TranscriptionSetup(String),

    // Opening a media connection: a 503 whose cause is logged, not shown.
    #[error("no free UDP port in bites.sfu.port_min..=port_max")]
    NoFreePort,
    #[error("media connection: {0:#}")]
    Connection(#[source] anyhow::Error),
    #[error("the media thread has stopped")]
    MediaThreadGone,

    // Answering a request.
    #[error("conversation ids are c- followed by 32 lowercase hex digits")]
    InvalidId,
    #[error("you are not a member of this conversation")]
    NotAMember,
    #[error("membership cannot be checked right now")]
    MembershipUnavailable(#[source] AccessError),
    #[error("from must not be after to")]
    InvalidRange,
    #[error("give both user and client, or neither")]
    InvalidSpeaker,
    #[error("no bite starts at that time")]
    BiteNotFound,
    #[error("this bite's transcript is not ready yet")]
    TranscriptPending,
    #[error("this bite could not be transcribed (the operator's dead letters say why)")]
    TranscriptFailed,
    #[error("this bite has no transcript (no such bite, or stored while transcription was off)")]
    TranscriptNotFound,
    #[error("q must hold a word to look for, in at most 256 characters")]
    InvalidQuery,
    #[error("transcripts cannot be searched right now")]
    SearchUnavailable(#[source] sea_orm::DbErr),
    #[error("the room of this conversation is full ({capacity} participants)")]
    RoomFull { capacity: usize },
    #[error("this route speaks WebSocket: {0}")]
    WebSocketRequired(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BitesError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidId => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::NotAMember => (StatusCode::FORBIDDEN, "not_a_member"),
            Self::MembershipUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "membership_unavailable")
            }
            Self::InvalidRange => (StatusCode::BAD_REQUEST, "invalid_range"),
            Self::InvalidSpeaker => (StatusCode::BAD_REQUEST, "invalid_speaker"),
            Self::BiteNotFound => (StatusCode::NOT_FOUND, "bite_not_found"),
            Self::TranscriptPending => (StatusCode::NOT_FOUND, "transcript_pending"),
            Self::TranscriptFailed => (StatusCode::NOT_FOUND, "transcript_failed"),
            Self::TranscriptNotFound => (StatusCode::NOT_FOUND, "transcript_not_found"),
            Self::InvalidQuery => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::SearchUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "search_unavailable"),
            Self::RoomFull { .. } => (StatusCode::CONFLICT, "room_full"),
            Self::WebSocketRequired(_) => (StatusCode::BAD_REQUEST, "websocket_required"),
            Self::NoFreePort | Self::Connection(_) | Self::MediaThreadGone => {
                (StatusCode::SERVICE_UNAVAILABLE, "media_unavailable")
            }
            Self::StoreOpenFailed { .. }
            | Self::MediaRuntimeFailed(_)
            | Self::InvalidPublicIp { .. }
            | Self::InvalidPortRange
            | Self::UnspecifiedMediaAddress
            | Self::TranscriptionSetup(_)
            | Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<BitesError> for ApiError {
    fn from(err: BitesError) -> Self {
        let (status, code) = err.status_and_code();
        match &err {
            BitesError::MembershipUnavailable(cause) => {
                tracing::warn!(error = %cause, "membership check failed");
            }
            BitesError::SearchUnavailable(cause) => {
                tracing::error!(error = %cause, "the transcript index cannot be read");
            }
            BitesError::NoFreePort | BitesError::Connection(_) | BitesError::MediaThreadGone => {
                tracing::warn!(error = %err, "a media connection could not be opened");
                // The cause is ours (the media threads), not the client's to read.
                return ApiError::new(
                    status,
                    code,
                    "the media connection cannot be opened right now",
                );
            }
            BitesError::Store(cause) => return ApiError::internal(cause),
            BitesError::StoreOpenFailed { .. }
            | BitesError::MediaRuntimeFailed(_)
            | BitesError::InvalidPublicIp { .. }
            | BitesError::InvalidPortRange
            | BitesError::UnspecifiedMediaAddress
            | BitesError::TranscriptionSetup(_) => return ApiError::internal(&err),
            _ => {}
        }
        ApiError::new(status, code, err.to_string())
    }
}

/// Lets a handler use `?` on a store call: a 500 through the match above.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        BitesError::from(err).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes and statuses clients (and the original apps) rely on.
    #[test]
    fn conditions_keep_their_status_and_code() {
        let cases = [
            (BitesError::InvalidId, 400, "invalid_id"),
            (BitesError::NotAMember, 403, "not_a_member"),
            (BitesError::InvalidRange, 400, "invalid_range"),
            (BitesError::InvalidSpeaker, 400, "invalid_speaker"),
            (BitesError::BiteNotFound, 404, "bite_not_found"),
            (BitesError::RoomFull { capacity: 8 }, 409, "room_full"),
            (
                BitesError::WebSocketRequired("no upgrade".into()),
                400,
                "websocket_required",
            ),
            (BitesError::NoFreePort, 503, "media_unavailable"),
            (BitesError::InvalidPortRange, 500, "internal"),
        ];
        for (err, status, code) in cases {
            let message = err.to_string();
            let api = ApiError::from(err);
            assert_eq!((api.status.as_u16(), api.code.as_ref()), (status, code));
            if status < 500 {
                assert_eq!(api.message, message);
            }
        }
    }

    #[test]
    fn causes_on_our_side_do_not_reach_the_client() {
        let api = ApiError::from(BitesError::NoFreePort);
        assert_eq!(
            api.message,
            "the media connection cannot be opened right now"
        );
        let down = AccessError(anyhow::anyhow!("permissions database is down"));
        let api = ApiError::from(BitesError::MembershipUnavailable(down));
        assert_eq!(
            (api.status.as_u16(), api.code.as_ref(), api.message.as_str()),
            (
                503,
                "membership_unavailable",
                "membership cannot be checked right now"
            )
        );
    }
}
