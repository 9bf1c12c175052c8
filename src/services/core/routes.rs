//! The HTTP surface of core: the original's 20 routes under `/core`, plus leaving or removing
//! a member. Every route needs a verified caller (behind traefik the original did too).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, Responder, delete, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::scope;

use super::conversations::{ConversationPatch, ConversationView};
use super::error::CoreError;
use super::service::{CoreService, Page};
use super::streams::Topic;
use super::users::{NewUser, ProfilePatch};
use crate::platform::http::error::ErrorBody;
use crate::platform::http::openapi::SseEvent;
use crate::platform::http::{ApiError, Caller, next_link, page_limit, text_or_json};
use crate::platform::ids::is_prefixed_id;
use crate::platform::service::Routes;
use crate::platform::users::{PhoneNumber, UserRecord};

type State = web::Data<CoreService>;

pub fn routes(cfg: &mut Routes<'_>, state: Arc<CoreService>) {
    cfg.service(
        scope("/core")
            .app_data(web::Data::from(state))
            .service(user_by_phone)
            .service(create_user)
            .service(update_user)
            .service(user_by_id)
            .service(user_by_username)
            .service(list_conversations)
            .service(create_conversation)
            .service(get_conversation)
            .service(update_conversation)
            .service(delete_conversation)
            .service(pin)
            .service(unpin)
            .service(list_members)
            .service(add_member)
            .service(remove_member)
            .service(list_contacts)
            .service(add_contact)
            .service(subscribe_users)
            // The original README's name for the same stream.
            .service(subscribe_users_by_old_name)
            .service(subscribe_contacts)
            .service(subscribe_conversations)
            .service(subscribe_members),
    );
}

/// Path parameters, with the id shapes checked before any query.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documents the path; handlers read web::Path")]
struct ConversationPath {
    /// A conversation id: `c-` and 32 lowercase hex digits.
    #[param(pattern = r"^c-[0-9a-f]{32}$")]
    conversation: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documents the path; handlers read web::Path")]
struct MemberPath {
    /// A conversation id: `c-` and 32 lowercase hex digits.
    #[param(pattern = r"^c-[0-9a-f]{32}$")]
    conversation: String,
    /// A user id: `u-` and 32 lowercase hex digits.
    #[param(pattern = r"^u-[0-9a-f]{32}$")]
    user: String,
}

// ---- parsing ----

/// Ids are the original's `u-`/`c-` + 32 hex; anything else is refused before a query.
fn checked_id<'a>(
    id: &'a str,
    prefix: &'static str,
    what: &'static str,
) -> Result<&'a str, CoreError> {
    if is_prefixed_id(id, prefix) {
        Ok(id)
    } else {
        Err(CoreError::InvalidId { what, prefix })
    }
}

fn user_id(id: &str) -> Result<&str, CoreError> {
    checked_id(id, "u-", "user")
}

fn conversation_id(id: &str) -> Result<&str, CoreError> {
    checked_id(id, "c-", "conversation")
}

/// `?limit=&after=`: `after` is the last id of the previous page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Items per page: `core.page_size` when absent, at most `core.max_page_size`.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<u64>,
    /// The last id of the previous page (the `Link: rel="next"` header carries it).
    after: Option<String>,
}

impl PageQuery {
    fn page(&self, state: &CoreService) -> Result<Page<'_>, ApiError> {
        let config = &state.config;
        Ok(Page {
            limit: page_limit(self.limit, config.page_size, config.max_page_size)?,
            after: self.after.as_deref().filter(|after| !after.is_empty()),
        })
    }
}

/// A JSON array, as the original answered, with a `Link: <…>; rel="next"` header when the page
/// is full (so there may be more).
fn page_of<T: Serialize>(
    req: &HttpRequest,
    items: &[T],
    limit: u64,
    last_id: impl Fn(&T) -> &str,
) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if u64::try_from(items.len()).is_ok_and(|len| len == limit)
        && let Some(last) = items.last()
    {
        response.insert_header(next_link(
            req,
            &[("limit", &limit.to_string()), ("after", last_id(last))],
        ));
    }
    response.json(items)
}

// ---- users ----

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PhoneQuery {
    /// International form with its country code (a `+` sent unencoded, which arrives as a
    /// space, is accepted too).
    #[param(example = "+6591234567")]
    phone_number: String,
}

/// The user holding a phone number.
#[utoipa::path(
    tag = "core",
    params(PhoneQuery),
    responses(
        (status = 200, description = "The user", body = UserRecord),
        (status = 400, description = "Not a valid number: `invalid_phone_number`", body = ErrorBody),
        (status = 404, description = "Nobody holds this number: `user_not_found`", body = ErrorBody),
    ),
)]
#[get("/user")]
async fn user_by_phone(
    state: State,
    _caller: Caller,
    query: web::Query<PhoneQuery>,
) -> Result<HttpResponse, ApiError> {
    // A client that did not encode `+65…` sends a space in its place.
    let phone = match query.phone_number.strip_prefix(' ') {
        Some(rest) if !rest.starts_with([' ', '+']) => PhoneNumber::parse(&format!("+{rest}")),
        _ => PhoneNumber::parse(&query.phone_number),
    }
    .map_err(CoreError::from)?;
    Ok(HttpResponse::Ok().json(state.user_by_phone(phone).await?))
}

#[utoipa::path(
    tag = "core",
    params(("user" = String, Path, description = "A user id: `u-` and 32 lowercase hex digits", pattern = r"^u-[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "The user", body = UserRecord),
        (status = 400, description = "Not a user id: `invalid_id`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ),
)]
#[get("/user/id/{user}")]
async fn user_by_id(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    Ok(HttpResponse::Ok().json(state.user_by_id(id).await?))
}

#[utoipa::path(
    tag = "core",
    params(("username" = String, Path, description = "A username, any case")),
    responses(
        (status = 200, description = "The user", body = UserRecord),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ),
)]
#[get("/user/username/{username}")]
async fn user_by_username(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.user_by_username(&path).await?))
}

/// Fills in the caller's own profile (the original wrote any number's user, unauthenticated).
#[utoipa::path(
    tag = "core",
    request_body = NewUser,
    responses(
        (status = 200, description = "The profile as stored", body = UserRecord),
        (status = 400, description = "`invalid_profile` (both names are required), `invalid_phone_number`", body = ErrorBody),
        (status = 403, description = "Another user's id (`not_your_user`) or a number not logged in with (`phone_not_verified`)", body = ErrorBody),
        (status = 404, description = "The caller's user is gone: `user_not_found`", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
    ),
)]
#[post("/user")]
async fn create_user(
    state: State,
    caller: Caller,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .fill_profile(&caller.user_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Changes the fields sent; `"username": null` clears the username.
#[utoipa::path(
    tag = "core",
    request_body = ProfilePatch,
    responses(
        (status = 200, description = "The profile as stored", body = UserRecord),
        (status = 400, description = "`invalid_profile`, or an unknown field (`invalid_json`)", body = ErrorBody),
        (status = 404, description = "The caller's user is gone: `user_not_found`", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
    ),
)]
#[patch("/user")]
async fn update_user(
    state: State,
    caller: Caller,
    body: web::Json<ProfilePatch>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .update_profile(&caller.user_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

// ---- conversations ----

/// Creates a conversation with the caller as its only member.
#[utoipa::path(
    tag = "core",
    request_body = ConversationPatch,
    responses(
        (status = 200, description = "The new conversation", body = ConversationView),
        (status = 400, description = "`invalid_conversation` (a field too long)", body = ErrorBody),
    ),
)]
#[post("/user/conversation")]
async fn create_conversation(
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
async fn list_conversations(
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
        (status = 400, description = "Not a conversation id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[get("/user/conversation/{conversation}")]
async fn get_conversation(
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
    ),
)]
#[patch("/user/conversation/{conversation}")]
async fn update_conversation(
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
        (status = 400, description = "Not a conversation id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[delete("/user/conversation/{conversation}")]
async fn delete_conversation(
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
        (status = 400, description = "Not a conversation id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[post("/user/conversation/{conversation}/pin")]
async fn pin(
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
        (status = 400, description = "Not a conversation id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[delete("/user/conversation/{conversation}/pin")]
async fn unpin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.set_pinned(&caller.user_id, id, false).await?;
    Ok(HttpResponse::Ok().finish())
}

// ---- members ----

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
async fn add_member(
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
async fn list_members(
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
async fn remove_member(
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

// ---- contacts ----

#[derive(Deserialize, ToSchema)]
struct ContactRequest {
    /// International form with its country code.
    #[schema(example = "+6591234568")]
    phone_number: String,
}

/// Adds the user holding a phone number as a contact (a blank user for a number not yet
/// joined, as the original did).
#[utoipa::path(
    tag = "core",
    request_body = ContactRequest,
    responses(
        (status = 200, description = "The contact", body = UserRecord),
        (status = 400, description = "`invalid_phone_number`, `invalid_contact` (yourself)", body = ErrorBody),
        (status = 409, description = "`already_a_contact`", body = ErrorBody),
    ),
)]
#[post("/user/contact")]
async fn add_contact(
    state: State,
    caller: Caller,
    body: web::Json<ContactRequest>,
) -> Result<HttpResponse, ApiError> {
    let phone = PhoneNumber::parse(&body.phone_number).map_err(CoreError::from)?;
    Ok(HttpResponse::Ok().json(state.add_contact(&caller.user_id, phone).await?))
}

/// The caller's contacts, in id order.
#[utoipa::path(
    tag = "core",
    params(PageQuery),
    responses(
        (status = 200, description = "A page; `Link: <…>; rel=\"next\"` when full", body = Vec<UserRecord>,
            headers(("link" = String, description = "The next page, when this one is full"))),
        (status = 400, description = "`invalid_limit`", body = ErrorBody),
    ),
)]
#[get("/user/contact")]
async fn list_contacts(
    state: State,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page(&state)?;
    let limit = page.limit;
    let contacts = state.contacts(&caller.user_id, page).await?;
    Ok(page_of(&req, &contacts, limit, |user| &user.id))
}

// ---- streams ----

/// Profile changes of the caller and of their contacts.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe")]
async fn subscribe_users(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Users)
}

/// `/user/subscribe` by the original README's name.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/user")]
async fn subscribe_users_by_old_name(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Users)
}

/// Contacts the caller adds.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/contact")]
async fn subscribe_contacts(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Contacts)
}

/// The caller's conversations appearing, changing and going.
#[utoipa::path(
    tag = "core",
    responses((status = 200, description = "Events `data: {\"type\":\"add|update|delete\",\"data\":\"<JSON>\"}`, a keep-alive comment every 25 s",
        content_type = "text/event-stream", body = SseEvent)),
)]
#[get("/user/subscribe/conversation")]
async fn subscribe_conversations(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Conversations)
}

/// A conversation's members joining, changing and leaving; members only.
#[utoipa::path(
    tag = "core",
    params(ConversationPath),
    responses(
        (status = 200, description = "Events as on the other streams; ends when the caller is removed",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Not a conversation id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ),
)]
#[get("/user/subscribe/conversation/{conversation}/member")]
async fn subscribe_members(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let id = conversation_id(&path)?;
    Ok(state.subscribe_members(&caller.user_id, id).await?)
}
