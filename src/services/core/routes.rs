//! The HTTP surface of core: the original's 20 routes under `/core`, plus leaving or removing
//! a member. Every route needs a verified caller (behind traefik the original did too).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, Responder, web};
use serde::{Deserialize, Serialize};

use super::conversations::ConversationPatch;
use super::error::CoreError;
use super::service::{CoreService, Page};
use super::streams::Topic;
use super::users::{NewUser, ProfilePatch};
use crate::platform::http::{ApiError, Caller, next_link, page_limit, text_or_json};
use crate::platform::ids::is_prefixed_id;
use crate::platform::users::PhoneNumber;

type State = web::Data<CoreService>;

pub fn routes(cfg: &mut web::ServiceConfig, state: Arc<CoreService>) {
    cfg.service(
        web::scope("/core")
            .app_data(web::Data::from(state))
            .service(
                web::resource("/user")
                    .get(user_by_phone)
                    .post(create_user)
                    .patch(update_user),
            )
            .service(web::resource("/user/id/{user}").get(user_by_id))
            .service(web::resource("/user/username/{username}").get(user_by_username))
            .service(
                web::resource("/user/conversation")
                    .get(list_conversations)
                    .post(create_conversation),
            )
            .service(
                web::resource("/user/conversation/{conversation}")
                    .get(get_conversation)
                    .patch(update_conversation)
                    .delete(delete_conversation),
            )
            .service(
                web::resource("/user/conversation/{conversation}/pin")
                    .post(pin)
                    .delete(unpin),
            )
            .service(
                web::resource("/user/conversation/{conversation}/member")
                    .get(list_members)
                    .post(add_member),
            )
            .service(
                web::resource("/user/conversation/{conversation}/member/{user}")
                    .delete(remove_member),
            )
            .service(
                web::resource("/user/contact")
                    .get(list_contacts)
                    .post(add_contact),
            )
            .service(web::resource("/user/subscribe").get(subscribe_users))
            // The original README's name for the same stream.
            .service(web::resource("/user/subscribe/user").get(subscribe_users))
            .service(web::resource("/user/subscribe/contact").get(subscribe_contacts))
            .service(web::resource("/user/subscribe/conversation").get(subscribe_conversations))
            .service(
                web::resource("/user/subscribe/conversation/{conversation}/member")
                    .get(subscribe_members),
            ),
    );
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
#[derive(Deserialize)]
struct PageQuery {
    limit: Option<u64>,
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

#[derive(Deserialize)]
struct PhoneQuery {
    phone_number: String,
}

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

async fn user_by_id(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    Ok(HttpResponse::Ok().json(state.user_by_id(id).await?))
}

async fn user_by_username(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.user_by_username(&path).await?))
}

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

async fn get_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    Ok(HttpResponse::Ok().json(state.conversation(&caller.user_id, id).await?))
}

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

async fn delete_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.delete_conversation(&caller.user_id, id).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn pin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state.set_pinned(&caller.user_id, id, true).await?;
    Ok(HttpResponse::Ok().finish())
}

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

/// The original decoded a whole `User` and used its `id`.
#[derive(Deserialize)]
struct MemberRequest {
    id: String,
}

#[derive(Serialize)]
struct MemberAddedBody<'a> {
    conversation: &'a str,
    user: &'a str,
}

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

#[derive(Deserialize)]
struct ContactRequest {
    phone_number: String,
}

async fn add_contact(
    state: State,
    caller: Caller,
    body: web::Json<ContactRequest>,
) -> Result<HttpResponse, ApiError> {
    let phone = PhoneNumber::parse(&body.phone_number).map_err(CoreError::from)?;
    Ok(HttpResponse::Ok().json(state.add_contact(&caller.user_id, phone).await?))
}

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

async fn subscribe_users(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Users)
}

async fn subscribe_contacts(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Contacts)
}

async fn subscribe_conversations(state: State, caller: Caller) -> impl Responder {
    state.subscribe(&caller.user_id, Topic::Conversations)
}

async fn subscribe_members(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let id = conversation_id(&path)?;
    Ok(state.subscribe_members(&caller.user_id, id).await?)
}
