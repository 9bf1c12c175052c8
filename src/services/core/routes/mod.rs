//! The HTTP surface of core: the original's 20 routes under `/core`, plus leaving or removing
//! a member and removing a contact. Every route needs a verified caller (behind traefik the original did too).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses};

use crate::platform::http::error::ErrorBody;
use utoipa_actix_web::scope;

use super::error::CoreError;
use super::service::{CoreService, Page};
use crate::platform::http::{ApiError, next_link, page_limit};
use crate::platform::ids::is_prefixed_id;
use crate::platform::service::Routes;

mod contacts;
mod conversations;
mod streams;
mod users;

pub(super) type State = web::Data<CoreService>;

pub fn routes(cfg: &mut Routes<'_>, state: Arc<CoreService>) {
    cfg.service(
        scope("/core")
            .app_data(web::Data::from(state))
            .service(users::user_by_phone)
            .service(users::create_user)
            .service(users::update_user)
            .service(users::user_by_id)
            .service(users::user_by_username)
            .service(conversations::list_conversations)
            .service(conversations::create_conversation)
            .service(conversations::get_conversation)
            .service(conversations::update_conversation)
            .service(conversations::delete_conversation)
            .service(conversations::pin)
            .service(conversations::unpin)
            .service(conversations::list_members)
            .service(conversations::add_member)
            .service(conversations::remove_member)
            .service(contacts::list_contacts)
            .service(contacts::add_contact)
            .service(contacts::remove_contact)
            .service(streams::subscribe_users)
            // The original README's name for the same stream.
            .service(streams::subscribe_users_by_old_name)
            .service(streams::subscribe_contacts)
            .service(streams::subscribe_conversations)
            .service(streams::subscribe_members),
    );
}

/// Path parameters, with the id shapes checked before any query.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documents the path; handlers read web::Path")]
pub(super) struct ConversationPath {
    /// A conversation id: `c-` and 32 lowercase hex digits.
    #[param(pattern = r"^c-[0-9a-f]{32}$")]
    conversation: String,
}

/// What every route of a conversation the caller must be in may answer besides its own.
#[derive(IntoResponses)]
#[allow(
    dead_code,
    reason = "documents the responses; handlers answer CoreError"
)]
pub(super) enum MembersOnly {
    #[response(status = 400, description = "Not a conversation id: `invalid_id`")]
    InvalidId(ErrorBody<'static>),
    #[response(status = 403, description = "`not_a_member`")]
    NotAMember(ErrorBody<'static>),
    #[response(status = 404, description = "`conversation_not_found`")]
    ConversationNotFound(ErrorBody<'static>),
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documents the path; handlers read web::Path")]
pub(super) struct MemberPath {
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

pub(super) fn user_id(id: &str) -> Result<&str, CoreError> {
    checked_id(id, "u-", "user")
}

pub(super) fn conversation_id(id: &str) -> Result<&str, CoreError> {
    checked_id(id, "c-", "conversation")
}

/// `?limit=&after=`: `after` is the last id of the previous page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Items per page: `core.page_size` when absent, at most `core.max_page_size`.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<u64>,
    /// The last id of the previous page (the `Link: rel="next"` header carries it).
    after: Option<String>,
}

impl PageQuery {
    pub(super) fn page(&self, state: &CoreService) -> Result<Page<'_>, ApiError> {
        let config = &state.config;
        Ok(Page {
            limit: page_limit(self.limit, config.page_size, config.max_page_size)?,
            after: self.after.as_deref().filter(|after| !after.is_empty()),
        })
    }
}

/// A JSON array, as the original answered, with a `Link: <…>; rel="next"` header when the page
/// is full (so there may be more).
pub(super) fn page_of<T: Serialize>(
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
