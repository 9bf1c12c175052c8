//! The HTTP surface of core: the original's 20 routes under `/core`, plus leaving or removing
//! a member. Every route needs a verified caller (behind traefik the original did too).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, Responder, web};
use serde::{Deserialize, Serialize};

use super::CoreState;
use super::contacts::{ContactError, ContactView};
use super::conversations::{ConversationPatch, MAX_TITLE_CHARS, Refusal, Removal};
use super::events::{
    ContactAdded, ConversationCreated, ConversationUpdated, MemberUpdated, UserUpdated,
};
use super::streams::Topic;
use super::users::{ProfilePatch, record};
use crate::config::CoreConfig;
use crate::platform::http::{ApiError, Caller, page_limit, text_or_json};
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::{ConversationDeleted, MemberAdded, MemberRemoved};
use crate::platform::users::{DirectoryError, Login, PhoneNumber, UserRecord};

type State = web::Data<CoreState>;

pub fn routes(cfg: &mut web::ServiceConfig, state: Arc<CoreState>) {
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

// ---- errors ----

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn user_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user")
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::Missing => {
                ApiError::new(StatusCode::NOT_FOUND, "conversation_not_found", message)
            }
            Refusal::NotMember => ApiError::new(StatusCode::FORBIDDEN, "not_a_member", message),
            Refusal::NoSuchMember => {
                ApiError::new(StatusCode::NOT_FOUND, "member_not_found", message)
            }
            Refusal::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_a_member", message)
            }
            Refusal::Db(err) => ApiError::internal(&err),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Invalid(message) => invalid("invalid_profile", message),
            DirectoryError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                "this username is taken",
            ),
            DirectoryError::Backend(err) => ApiError::internal(err.as_ref()),
        }
    }
}

impl From<ContactError> for ApiError {
    fn from(err: ContactError) -> Self {
        match err {
            ContactError::Duplicate => {
                ApiError::new(StatusCode::CONFLICT, "already_a_contact", err.to_string())
            }
            ContactError::Db(err) => ApiError::internal(&err),
        }
    }
}

/// Ids are the original's `u-`/`c-` + 32 hex; anything else is refused before a query.
fn checked_id<'a>(id: &'a str, prefix: &str, what: &str) -> Result<&'a str, ApiError> {
    if is_prefixed_id(id, prefix) {
        Ok(id)
    } else {
        Err(invalid(
            "invalid_id",
            format!("{what} ids are {prefix} followed by 32 lowercase hex digits"),
        ))
    }
}

fn user_id(id: &str) -> Result<&str, ApiError> {
    checked_id(id, "u-", "user")
}

fn conversation_id(id: &str) -> Result<&str, ApiError> {
    checked_id(id, "c-", "conversation")
}

fn parse_phone(text: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(text).map_err(|err| invalid("invalid_phone_number", err.to_string()))
}

// ---- pagination ----

/// `?limit=&after=`: `after` is the last id of the previous page.
#[derive(Deserialize)]
struct Page {
    limit: Option<u64>,
    after: Option<String>,
}

impl Page {
    fn limit(&self, config: &CoreConfig) -> Result<u64, ApiError> {
        page_limit(self.limit, config.page_size, config.max_page_size)
    }

    fn after(&self) -> Option<&str> {
        self.after.as_deref().filter(|after| !after.is_empty())
    }
}

/// A JSON array, as the original answered, with a `Link: <…>; rel="next"` header when the page
/// is full (so there may be more).
fn page<T: Serialize>(
    req: &HttpRequest,
    items: &[T],
    limit: u64,
    last_id: impl Fn(&T) -> &str,
) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if u64::try_from(items.len()).is_ok_and(|len| len == limit)
        && let Some(last) = items.last()
    {
        let cursor: String = form_urlencoded::byte_serialize(last_id(last).as_bytes()).collect();
        response.insert_header((
            header::LINK,
            format!(
                "<{}?limit={limit}&after={cursor}>; rel=\"next\"",
                req.path()
            ),
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
        Some(rest) if !rest.starts_with([' ', '+']) => parse_phone(&format!("+{rest}"))?,
        _ => parse_phone(&query.phone_number)?,
    };
    let found = state.users.by_login(&Login::Phone(phone)).await?;
    let user = found.ok_or_else(user_not_found)?;
    Ok(HttpResponse::Ok().json(record(user)))
}

async fn user_by_id(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let user = state.users.by_id(id).await?.ok_or_else(user_not_found)?;
    Ok(HttpResponse::Ok().json(record(user)))
}

async fn user_by_username(
    state: State,
    _caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if path.len() > 64 {
        return Err(user_not_found());
    }
    let user = state
        .users
        .by_username(&path)
        .await?
        .ok_or_else(user_not_found)?;
    Ok(HttpResponse::Ok().json(record(user)))
}

/// The original `POST /user` body.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NewUser {
    id: Option<String>,
    username: Option<String>,
    bio: String,
    profile_pic: String,
    first_name: String,
    last_name: String,
    phone_number: Option<String>,
}

/// The original created (or overwrote) the user of any phone number, unauthenticated. Here it
/// fills in the caller's own profile: a number is only ever claimed through an OTP login.
async fn create_user(
    state: State,
    caller: Caller,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let me = state
        .users
        .by_id(&caller.user_id)
        .await?
        .ok_or_else(user_not_found)?;
    if let Some(id) = body.id.as_deref().filter(|id| !id.is_empty())
        && id != me.id
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_user",
            "a profile can only be written by its own user",
        ));
    }
    if let Some(phone) = body.phone_number.as_deref().filter(|p| !p.is_empty()) {
        let phone = parse_phone(phone)?;
        if me.phone_number.as_deref() != Some(phone.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "phone_not_verified",
                "log in with this phone number to use it",
            ));
        }
    }
    if body.first_name.trim().is_empty() || body.last_name.trim().is_empty() {
        return Err(invalid(
            "invalid_profile",
            "first_name and last_name are required",
        ));
    }
    let patch = ProfilePatch {
        username: Some(body.username),
        bio: Some(body.bio),
        profile_pic: Some(body.profile_pic),
        first_name: Some(body.first_name),
        last_name: Some(body.last_name),
        ..ProfilePatch::default()
    };
    let user = record(state.users.update_profile(me, patch).await?);
    state.announce(UserUpdated { user: user.clone() }).await;
    Ok(HttpResponse::Ok().json(user))
}

async fn update_user(
    state: State,
    caller: Caller,
    body: web::Json<ProfilePatch>,
) -> Result<HttpResponse, ApiError> {
    let me = state
        .users
        .by_id(&caller.user_id)
        .await?
        .ok_or_else(user_not_found)?;
    let user = record(state.users.update_profile(me, body.into_inner()).await?);
    state.announce(UserUpdated { user: user.clone() }).await;
    Ok(HttpResponse::Ok().json(user))
}

// ---- conversations ----

fn checked_patch(patch: &ConversationPatch) -> Result<(), ApiError> {
    for (name, value) in [("title", &patch.title), ("picture", &patch.picture)] {
        if let Some(Some(value)) = value
            && value.chars().count() > MAX_TITLE_CHARS
        {
            return Err(invalid(
                "invalid_conversation",
                format!("{name} is longer than {MAX_TITLE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

async fn create_conversation(
    state: State,
    caller: Caller,
    body: web::Json<ConversationPatch>,
) -> Result<HttpResponse, ApiError> {
    checked_patch(&body)?;
    let created = state
        .conversations
        .create(&caller.user_id, body.into_inner())
        .await?;
    let view = super::conversations::ConversationView::new(created, false);
    state
        .announce(ConversationCreated {
            conversation: view.clone(),
            by: caller.user_id.clone(),
        })
        .await;
    state
        .announce(MemberAdded {
            conversation: view.id.clone(),
            user: caller.user_id,
        })
        .await;
    Ok(HttpResponse::Ok().json(view))
}

async fn list_conversations(
    state: State,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit(&state.config)?;
    let conversations = state
        .conversations
        .list_for(&caller.user_id, query.after(), limit)
        .await?;
    Ok(page(&req, &conversations, limit, |c| &c.id))
}

async fn get_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let view = state.conversations.get_for(&caller.user_id, id).await?;
    Ok(HttpResponse::Ok().json(view))
}

async fn update_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<ConversationPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    checked_patch(&body)?;
    let view = state
        .conversations
        .update(&caller.user_id, id, body.into_inner())
        .await?;
    state
        .announce(ConversationUpdated {
            conversation: view.clone(),
        })
        .await;
    Ok(HttpResponse::Ok().json(view))
}

async fn delete_conversation(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let members = state.conversations.delete(&caller.user_id, id).await?;
    state
        .announce(ConversationDeleted {
            conversation: id.to_owned(),
            members,
        })
        .await;
    Ok(HttpResponse::Ok().finish())
}

async fn set_pinned(
    state: State,
    caller: Caller,
    path: web::Path<String>,
    pinned: bool,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    state
        .conversations
        .set_pinned(&caller.user_id, id, pinned)
        .await?;
    state
        .announce(MemberUpdated {
            user: caller.user_id,
            conversation: id.to_owned(),
            pinned,
        })
        .await;
    Ok(HttpResponse::Ok().finish())
}

async fn pin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_pinned(state, caller, path, true).await
}

async fn unpin(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_pinned(state, caller, path, false).await
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
    if state.users.by_id(new_member).await?.is_none() {
        return Err(user_not_found());
    }
    state
        .conversations
        .add_member(&caller.user_id, id, new_member)
        .await?;
    state
        .announce(MemberAdded {
            conversation: id.to_owned(),
            user: new_member.to_owned(),
        })
        .await;
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
    query: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let id = conversation_id(&path)?;
    let limit = query.limit(&state.config)?;
    let members: Vec<UserRecord> = state
        .conversations
        .members(&caller.user_id, id, query.after(), limit)
        .await?
        .into_iter()
        .map(record)
        .collect();
    Ok(page(&req, &members, limit, |user| &user.id))
}

async fn remove_member(
    state: State,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, member) = path.into_inner();
    let id = conversation_id(&conversation)?;
    let member = user_id(&member)?;
    let removal = state
        .conversations
        .remove_member(&caller.user_id, id, member)
        .await?;
    state
        .announce(MemberRemoved {
            conversation: id.to_owned(),
            user: member.to_owned(),
        })
        .await;
    if removal == Removal::ConversationDeleted {
        state
            .announce(ConversationDeleted {
                conversation: id.to_owned(),
                members: vec![member.to_owned()],
            })
            .await;
    }
    Ok(HttpResponse::Ok().finish())
}

// ---- contacts ----

#[derive(Deserialize)]
struct ContactRequest {
    phone_number: String,
}

/// Adds the user holding a phone number as a contact, creating a blank user for a number that
/// has not joined yet, as the original did.
async fn add_contact(
    state: State,
    caller: Caller,
    body: web::Json<ContactRequest>,
) -> Result<HttpResponse, ApiError> {
    let login = Login::Phone(parse_phone(&body.phone_number)?);
    let (contact, _) = state.users.ensure(&login).await?;
    if contact.id == caller.user_id {
        return Err(invalid("invalid_contact", "you cannot add yourself"));
    }
    state.contacts.add(&caller.user_id, &contact.id).await?;
    state
        .announce(ContactAdded {
            contact: ContactView {
                usera: caller.user_id,
                userb: contact.id.clone(),
            },
        })
        .await;
    Ok(HttpResponse::Ok().json(record(contact)))
}

async fn list_contacts(
    state: State,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit(&state.config)?;
    let contacts: Vec<UserRecord> = state
        .contacts
        .list(&caller.user_id, query.after(), limit)
        .await?
        .into_iter()
        .map(record)
        .collect();
    Ok(page(&req, &contacts, limit, |user| &user.id))
}

// ---- streams ----

async fn subscribe_users(state: State, caller: Caller) -> impl Responder {
    state.hub.subscribe(&caller.user_id, Topic::Users)
}

async fn subscribe_contacts(state: State, caller: Caller) -> impl Responder {
    state.hub.subscribe(&caller.user_id, Topic::Contacts)
}

async fn subscribe_conversations(state: State, caller: Caller) -> impl Responder {
    state.hub.subscribe(&caller.user_id, Topic::Conversations)
}

async fn subscribe_members(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let id = conversation_id(&path)?;
    state
        .conversations
        .check_member(&caller.user_id, id)
        .await?;
    Ok(state
        .hub
        .subscribe(&caller.user_id, Topic::Members(id.to_owned())))
}
