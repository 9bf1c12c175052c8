//! Contacts, added by phone number.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{PageQuery, State, page_of, user_id};
use crate::platform::http::error::ErrorBody;
use crate::platform::http::{ApiError, Caller};
use crate::platform::users::{PhoneNumber, UserRecord};
use crate::services::core::error::CoreError;

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
pub(super) async fn add_contact(
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
pub(super) async fn list_contacts(
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

/// Removes a contact (it stays a user). The caller stops hearing of their profile and, unless
/// they share a conversation, stops seeing their presence: open heartbeat streams on them end.
#[utoipa::path(
    tag = "core",
    params(("user" = String, Path, description = "The contact's user id: `u-` and 32 lowercase hex digits",
        pattern = r"^u-[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Removed (empty body, as core's other removals)"),
        (status = 400, description = "Not a user id: `invalid_id`", body = ErrorBody),
        (status = 404, description = "`contact_not_found`", body = ErrorBody),
    ),
)]
#[delete("/user/contact/{user}")]
pub(super) async fn remove_contact(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let contact = user_id(&path)?;
    state.remove_contact(&caller.user_id, contact).await?;
    Ok(HttpResponse::Ok().finish())
}
