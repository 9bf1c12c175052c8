//! Users: looked up by phone, id or username; the caller's own profile written.

use actix_web::{HttpResponse, get, patch, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{State, user_id};
use crate::platform::http::error::ErrorBody;
use crate::platform::http::{ApiError, Caller};
use crate::platform::users::{PhoneNumber, UserRecord};
use crate::services::core::error::CoreError;
use crate::services::core::users::{NewUser, ProfilePatch};

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
pub(super) async fn user_by_phone(
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
pub(super) async fn user_by_id(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    Ok(HttpResponse::Ok().json(state.user_by_id(&caller.user_id, id).await?))
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
pub(super) async fn user_by_username(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.user_by_username(&caller.user_id, &path).await?))
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
        (status = 503, description = "`pictures_unavailable`: pictures, in another process, does not answer", body = ErrorBody),
    ),
)]
#[post("/user")]
pub(super) async fn create_user(
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
        (status = 503, description = "`pictures_unavailable`: pictures, in another process, does not answer", body = ErrorBody),
    ),
)]
#[patch("/user")]
pub(super) async fn update_user(
    state: State,
    caller: Caller,
    body: web::Json<ProfilePatch>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .update_profile(&caller.user_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(user))
}
