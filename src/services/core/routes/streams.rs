//! The four Server-Sent Events streams of the original core.

use actix_web::{Responder, get, web};

use super::{ConversationPath, MembersOnly, State, conversation_id};
use crate::platform::http::openapi::SseEvent;
use crate::platform::http::{ApiError, Caller};
use crate::services::core::streams::Topic;

/// Profile changes of the caller and of their contacts.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe")]
pub(super) async fn subscribe_users(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Users)
}

/// `/user/subscribe` by the original README's name.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/user")]
pub(super) async fn subscribe_users_by_old_name(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Users)
}

/// Contacts the caller adds.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/contact")]
pub(super) async fn subscribe_contacts(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Contacts)
}

/// The caller's conversations appearing, changing and going.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/conversation")]
pub(super) async fn subscribe_conversations(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Conversations)
}

/// A conversation's members joining, changing and leaving; members only.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Events as on the other streams; ends when the caller is removed",
            content_type = "text/event-stream", body = SseEvent),
        MembersOnly,
    ),
)]
#[get("/user/subscribe/conversation/{conversation}/member")]
pub(super) async fn subscribe_members(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let id = conversation_id(&path)?;
    Ok(state.subscribe_members(&caller.user_id, id).await?)
}
