//! Conversations and their members.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    ConversationPath, MemberPath, MembersOnly, PageQuery, State, conversation_id, page_of, user_id,
};
use crate::platform::http::error::ErrorBody;
use crate::platform::http::{ApiError, Caller, text_or_json};
use crate::platform::users::UserRecord;
use crate::services::core::conversations::{ConversationPatch, ConversationView};

/// Creates a conversation with the caller as its only member.
#[utoipa::path(
    tag = "core",
    request_body = ConversationPatch,
    responses(
        (status = 200, description = "The new conversation", body = ConversationView),
        (status = 400, description = "`invalid_conversation` (a field too long)", body = ErrorBody),
        (status = 503, description = "`pictures_unavailable`: pictures, in another process, does not answer", body = ErrorBody),
    ),
)]
#[post("/user/conversation")]
pub(super) async fn create_conversation(
    state: State,
    caller: Caller,
    body: web::Json<ConversationPatch>,
) -> Result<HttpResponse, ApiError> {
    let view = state
        .create_conversation(&caller.user_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// The caller's conversations, in id order, with their pin flags.
#[utoipa::path(
    tag = "core",
    params(PageQuery),
    responses(
        (status = 200, description = "A page; `Link: <…>; rel=\"next\"` when full", body = Vec<ConversationView>,
            headers(("link" = String, description = "The next page, when this one is full"))),
        (status = 400, description = "`invalid_limit`", body = ErrorBody),
    ),
)]
#[get("/user/conversation")]
pub(super) async fn list_conversations(
    state: State,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page(&state)?;
    let limit = page.limit;
    let conversations = state.conversations(&caller.user_id, page).await?;
    Ok(page_of(&req, &conversations, limit, |c| &c.id))
}

#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        MembersOnly,
    ),
)]
#[get("/user/conversation/{conversation}")]
pub(super) async fn get_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    Ok(HttpResponse::Ok().json(state.conversation(&caller.user_id, id).await?))
}

/// Changes the fields sent.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    request_body = ConversationPatch,
    responses(
        (status = 200, description = "The conversation as stored", body = ConversationView),
        (status = 400, description = "`invalid_id`, `invalid_conversation`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 503, description = "`pictures_unavailable`: pictures, in another process, does not answer", body = ErrorBody),
    ),
)]
#[patch("/user/conversation/{conversation}")]
pub(super) async fn update_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<ConversationPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let view = state
        .update_conversation(&caller.user_id, id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Deletes a conversation and every membership of it.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Deleted"),
        MembersOnly,
    ),
)]
#[delete("/user/conversation/{conversation}")]
pub(super) async fn delete_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.delete_conversation(&caller.user_id, id).await?;
    Ok(HttpResponse::Ok().finish())
}

/// Pins a conversation for the caller.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Pinned"),
        MembersOnly,
    ),
)]
#[post("/user/conversation/{conversation}/pin")]
pub(super) async fn pin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.set_pinned(&caller.user_id, id, true).await?;
    Ok(HttpResponse::Ok().finish())
}

/// Unpins a conversation for the caller.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Unpinned"),
        MembersOnly,
    ),
)]
#[delete("/user/conversation/{conversation}/pin")]
pub(super) async fn unpin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.set_pinned(&caller.user_id, id, false).await?;
    Ok(HttpResponse::Ok().finish())
}

/// The original decoded a whole `User` and used its `id`; other fields are ignored.
#[derive(Deserialize, ToSchema)]
struct MemberRequest {
    /// The user to add: `u-` and 32 lowercase hex digits.
    #[schema(pattern = r"^u-[0-9a-f]{32}$")]
    id: String,
}

#[derive(Serialize, ToSchema)]
struct MemberAddedBody<'a> {
    conversation: &'a str,
    user: &'a str,
}

/// Adds a user to a conversation the caller is in.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    request_body = MemberRequest,
    responses(
        (status = 200, description = "The conversation id as text (the original's answer), or JSON with `Accept: application/json`",
            content((String = "text/plain"), (MemberAddedBody = "application/json"))),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`, `user_not_found`", body = ErrorBody),
        (status = 409, description = "`already_a_member`", body = ErrorBody),
    ),
)]
#[post("/user/conversation/{conversation}/member")]
pub(super) async fn add_member(
    state: State,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<MemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let new_member = user_id(&body.id)?;
    state.add_member(&caller.user_id, id, new_member).await?;
    // The original answered the conversation id as text.
    Ok(text_or_json(
        &req,
        id,
        &MemberAddedBody {
            conversation: id,
            user: new_member,
        },
    ))
}

/// The other members of a conversation the caller is in, in id order.
#[utoipa::path(
    tag = "core",
    params(ConversationPath, PageQuery),
    responses(
        (status = 200, description = "A page; `Link: <…>; rel=\"next\"` when full", body = Vec<UserRecord>,
            headers(("link" = String, description = "The next page, when this one is full"))),
        (status = 400, description = "`invalid_id`, `invalid_limit`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[get("/user/conversation/{conversation}/member")]
pub(super) async fn list_members(
    state: State,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let page = query.page(&state)?;
    let limit = page.limit;
    let members = state.members(&caller.user_id, id, page).await?;
    Ok(page_of(&req, &members, limit, |user| &user.id))
}

/// Leaves (the caller's own id) or removes a member; the last member leaving deletes the
/// conversation.
#[utoipa::path(
    tag = "core",
    params(MemberPath),
    responses(
        (status = 200, description = "Removed"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`, `member_not_found`", body = ErrorBody),
    ),
)]
#[delete("/user/conversation/{conversation}/member/{user}")]
pub(super) async fn remove_member(
    state: State,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, member) = path.into_inner();
    let id = conversation_id(&conversation)?;
    let member = user_id(&member)?;
    state.remove_member(&caller.user_id, id, member).await?;
    Ok(HttpResponse::Ok().finish())
}
