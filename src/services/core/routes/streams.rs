//! The four Server-Sent Events streams of the original core. Each belongs to the caller's
//! session: it ends within a second of a logout, a revocation, a block or the token's expiry,
//! and counts against `http.max_streams_per_user`.

use actix_web::{Responder, get, web};
use utoipa::IntoResponses;

use super::{ConversationPath, MembersOnly, State, conversation_id};
use crate::platform::Platform;
use crate::platform::http::openapi::{SseEvent, StreamCap};
use crate::platform::http::{ApiError, Caller};
use crate::services::core::streams::Topic;

type Watch = web::Data<Platform>;

/// What each of the caller's own streams answers.
#[derive(IntoResponses)]
#[allow(
    dead_code,
    reason = "documents the responses; handlers answer an Sse stream"
)]
enum UserStream {
    #[response(
        status = 200,
        description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s; ends when the session does",
        content_type = "text/event-stream"
    )]
    Events(SseEvent),
}

/// Profile changes of the caller and of their contacts.
#[utoipa::path(tag = "core", responses(UserStream, StreamCap))]
#[get("/user/subscribe")]
pub(super) async fn subscribe_users(
    state: State,
    watch: Watch,
    caller: Caller,
) -> Result<impl Responder, ApiError> {
    Ok(state.subscribe(watch.sessions.open(&caller)?, Topic::Users))
}

/// `/user/subscribe` by the original README's name.
#[utoipa::path(tag = "core", responses(UserStream, StreamCap))]
#[get("/user/subscribe/user")]
pub(super) async fn subscribe_users_by_old_name(
    state: State,
    watch: Watch,
    caller: Caller,
) -> Result<impl Responder, ApiError> {
    Ok(state.subscribe(watch.sessions.open(&caller)?, Topic::Users))
}

/// Contacts the caller adds (`add`) and removes (`delete`).
#[utoipa::path(tag = "core", responses(UserStream, StreamCap))]
#[get("/user/subscribe/contact")]
pub(super) async fn subscribe_contacts(
    state: State,
    watch: Watch,
    caller: Caller,
) -> Result<impl Responder, ApiError> {
    Ok(state.subscribe(watch.sessions.open(&caller)?, Topic::Contacts))
}

/// The caller's conversations appearing, changing and going.
#[utoipa::path(tag = "core", responses(UserStream, StreamCap))]
#[get("/user/subscribe/conversation")]
pub(super) async fn subscribe_conversations(
    state: State,
    watch: Watch,
    caller: Caller,
) -> Result<impl Responder, ApiError> {
    Ok(state.subscribe(watch.sessions.open(&caller)?, Topic::Conversations))
}

/// A conversation's members joining, changing and leaving; members only.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Events as on the other streams; ends when the caller is removed",
            content_type = "text/event-stream", body = SseEvent),
        MembersOnly,
        StreamCap,
    ),
)]
#[get("/user/subscribe/conversation/{conversation}/member")]
pub(super) async fn subscribe_members(
    state: State,
    watch: Watch,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let id = conversation_id(&path)?;
    let lease = watch.sessions.open(&caller)?;
    Ok(state.subscribe_members(lease, id).await?)
}
