//! The HTTP surface of auth: the original `login` routes under `/login` (plus refresh, logout,
//! sessions and email), the original forward-auth `/auth`, and the JWKS.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError as _, delete, get, post, route, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::scope;

use super::{AuthError, AuthService, TokenResponse};
use crate::platform::http::caller::{
    AuthRejection, ForwardedClaim, USER_CLAIM_HEADER, bearer_token, query_token,
};
use crate::platform::http::error::ErrorBody;
use crate::platform::http::{ApiError, Caller, client_ip, text_or_json};
use crate::platform::identity::TokenError;
use crate::platform::service::Routes;
use crate::platform::users::{Email, Login, NewProfile, PhoneNumber, UserRecord};

type State = web::Data<AuthService>;

pub fn routes(cfg: &mut Routes<'_>, state: Arc<AuthService>) {
    cfg.app_data(web::Data::from(state))
        .service(
            scope("/login")
                .service(init_phone)
                .service(init_email)
                .service(init_bypass)
                .service(verify)
                .service(register)
                .service(refresh)
                .service(logout)
                .service(list_sessions)
                .service(end_session),
        )
        .service(forward_auth)
        .service(jwks);
}

#[derive(Deserialize, ToSchema)]
struct PhoneLogin {
    /// International form with its country code.
    #[schema(example = "+6591234567")]
    phone_number: String,
}

#[derive(Deserialize, ToSchema)]
struct EmailLogin {
    #[schema(format = Email, example = "ada@example.com")]
    email: String,
}

#[derive(Deserialize, ToSchema)]
struct VerifyRequest {
    /// The six digits sent.
    #[schema(pattern = r"^[0-9]{6}$", example = "000000")]
    code: String,
    /// What `/login/init` answered.
    #[schema(pattern = r"^[0-9a-f]{32}$")]
    nonce: String,
    /// The device: 1 to 128 printable characters.
    clientid: String,
}

#[derive(Deserialize, ToSchema)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
struct NonceResponse<'a> {
    nonce: &'a str,
}

fn ip(req: &HttpRequest, state: &AuthService) -> String {
    client_ip(req, state.config.http.trust_forwarded_for)
}

/// Sends a code to `login` and answers the nonce to verify it with.
async fn send_code(
    req: &HttpRequest,
    state: &AuthService,
    login: Login,
    bypass: bool,
) -> Result<HttpResponse, AuthError> {
    let nonce = state.start_login(&login, &ip(req, state), bypass).await?;
    Ok(text_or_json(req, &nonce, &NonceResponse { nonce: &nonce }))
}

/// Sends a one-time code by SMS (in development: to the log).
#[utoipa::path(
    tag = "auth",
    security(),
    request_body = PhoneLogin,
    responses(
        (status = 200, description = "The nonce to verify the code with, as text (the original's answer), or JSON with `Accept: application/json`",
            content((String = "text/plain"), (NonceResponse = "application/json"))),
        (status = 400, description = "`invalid_phone_number`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
        (status = 502, description = "The code could not be sent: `delivery_failed`", body = ErrorBody),
    ),
)]
#[post("/init")]
async fn init_phone(
    req: HttpRequest,
    state: State,
    body: web::Json<PhoneLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Phone(PhoneNumber::parse(&body.phone_number)?);
    send_code(&req, &state, login, false).await
}

/// Sends a one-time code by email (in development: to the log).
#[utoipa::path(
    tag = "auth",
    security(),
    request_body = EmailLogin,
    responses(
        (status = 200, description = "The nonce to verify the code with, as text (the original's answer), or JSON with `Accept: application/json`",
            content((String = "text/plain"), (NonceResponse = "application/json"))),
        (status = 400, description = "`invalid_email`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
        (status = 502, description = "The code could not be sent: `delivery_failed`", body = ErrorBody),
    ),
)]
#[post("/init/email")]
async fn init_email(
    req: HttpRequest,
    state: State,
    body: web::Json<EmailLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Email(Email::parse(&body.email)?);
    send_code(&req, &state, login, false).await
}

/// The original development route: code 000000, nothing sent. 404 unless `auth.dev_bypass`.
#[utoipa::path(
    tag = "auth",
    security(),
    request_body = PhoneLogin,
    responses(
        (status = 200, description = "The nonce to verify the code with, as text (the original's answer), or JSON with `Accept: application/json`",
            content((String = "text/plain"), (NonceResponse = "application/json"))),
        (status = 400, description = "`invalid_phone_number`", body = ErrorBody),
        (status = 404, description = "`auth.dev_bypass` is off: `not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
    ),
)]
#[post("/init/bypass")]
async fn init_bypass(
    req: HttpRequest,
    state: State,
    body: web::Json<PhoneLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Phone(PhoneNumber::parse(&body.phone_number)?);
    send_code(&req, &state, login, true).await
}

/// Checks the code and logs in, creating the user on a first login.
#[utoipa::path(
    tag = "auth",
    security(),
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The access token as text (the original's answer), or the whole token response with `Accept: application/json`",
            content((String = "text/plain"), (TokenResponse = "application/json"))),
        (status = 400, description = "`invalid_request` (client id)", body = ErrorBody),
        (status = 401, description = "`invalid_code` (wrong or expired)", body = ErrorBody),
        (status = 403, description = "`user_blocked`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `too_many_attempts`, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`users_unavailable`: core, in another process, does not answer", body = ErrorBody),
    ),
)]
#[post("/verify")]
async fn verify(
    req: HttpRequest,
    state: State,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse, AuthError> {
    let tokens = state
        .finish_login(&body.nonce, &body.code, &body.clientid, &ip(&req, &state))
        .await?;
    Ok(text_or_json(&req, &tokens.access_token, &tokens))
}

/// `POST /login/register/{code}/{nonce}` with core's user fields: creates the user holding the
/// verified login. The login comes from the code, never from the body.
#[utoipa::path(
    tag = "auth",
    security(),
    params(
        ("code" = String, Path, description = "The six digits sent"),
        ("nonce" = String, Path, description = "What `/login/init` answered"),
    ),
    request_body = NewProfile,
    responses(
        (status = 200, description = "The new user", body = UserRecord),
        (status = 400, description = "`invalid_profile`", body = ErrorBody),
        (status = 401, description = "`invalid_code`", body = ErrorBody),
        (status = 409, description = "`user_exists`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `too_many_attempts`, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`users_unavailable`: core, in another process, does not answer", body = ErrorBody),
    ),
)]
#[post("/register/{code}/{nonce}")]
async fn register(
    req: HttpRequest,
    state: State,
    path: web::Path<(String, String)>,
    profile: web::Json<NewProfile>,
) -> Result<HttpResponse, AuthError> {
    let (code, nonce) = path.into_inner();
    let user = state
        .register(&nonce, &code, profile.into_inner(), &ip(&req, &state))
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Spends a refresh token for a new pair; a spent one presented again ends its session.
#[utoipa::path(
    tag = "auth",
    security(),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access and refresh token", body = TokenResponse),
        (status = 401, description = "`invalid_refresh_token`, `refresh_token_reused`", body = ErrorBody),
        (status = 403, description = "`user_blocked`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = ErrorBody),
    ),
)]
#[post("/refresh")]
async fn refresh(
    req: HttpRequest,
    state: State,
    body: web::Json<RefreshRequest>,
) -> Result<web::Json<TokenResponse>, AuthError> {
    let tokens = state
        .refresh(&body.refresh_token, &ip(&req, &state))
        .await?;
    Ok(web::Json(tokens))
}

/// Ends the caller's current session at once.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 204, description = "Logged out"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ),
)]
#[post("/logout")]
async fn logout(state: State, caller: Caller) -> Result<HttpResponse, AuthError> {
    state.logout(&caller, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
struct SessionView {
    sid: String,
    client_id: String,
    /// Unix milliseconds.
    created_at: i64,
    /// Unix milliseconds of the login or the last refresh.
    last_used_at: i64,
    expires_at: i64,
    current: bool,
}

/// The caller's live sessions (devices).
#[utoipa::path(
    tag = "auth",
    responses((status = 200, description = "Sessions", body = Vec<SessionView>)),
)]
#[get("/sessions")]
async fn list_sessions(state: State, caller: Caller) -> Result<HttpResponse, AuthError> {
    let sessions = state.list_sessions(&caller).await?;
    let views: Vec<SessionView> = sessions
        .into_iter()
        .map(|s| SessionView {
            current: caller.session_id.as_deref() == Some(s.id.as_str()),
            sid: s.id,
            client_id: s.client_id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// Ends one of the caller's sessions.
#[utoipa::path(
    tag = "auth",
    params(("sid" = String, Path, description = "A session id from `/login/sessions`")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ),
)]
#[delete("/sessions/{sid}")]
async fn end_session(
    state: State,
    caller: Caller,
    sid: web::Path<String>,
) -> Result<HttpResponse, AuthError> {
    state.logout(&caller, Some(&sid)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Forward-auth for reverse proxies, as the original `auth` service answered: the token from
/// `Authorization: Bearer`, else from the `token` query parameter of `X-Forwarded-Uri`;
/// 200 with `X-User-Claim`, 400 without a token, 401 for a bad one.
#[utoipa::path(
    tag = "auth",
    security((), ("bearer" = [])),
    params(("X-Forwarded-Uri" = Option<String>, Header, description = "The original URI; its `token` parameter is read when there is no `Authorization`")),
    responses(
        (status = 200, description = "Verified", headers(("x-user-claim" = String, description = "`{\"userid\",\"clientid\"}`"))),
        (status = 400, description = "No token: `missing_token`", body = ErrorBody),
        (status = 401, description = "`invalid_token`, `token_expired`, `token_revoked`", body = ErrorBody),
        (status = 503, description = "Tokens cannot be checked right now: `auth_unavailable`", body = ErrorBody),
    ),
)]
#[route(
    "/auth",
    method = "GET",
    method = "POST",
    method = "PUT",
    method = "PATCH",
    method = "DELETE",
    method = "HEAD",
    method = "OPTIONS"
)]
async fn forward_auth(req: HttpRequest, state: State) -> HttpResponse {
    if req.method() == Method::OPTIONS {
        return HttpResponse::Ok().finish();
    }
    let forwarded_query = req
        .headers()
        .get("x-forwarded-uri")
        .and_then(|uri| uri.to_str().ok())
        .and_then(|uri| uri.split_once('?'))
        .and_then(|(_, query)| query_token(query));
    let Some(token) = bearer_token(&req).map(str::to_owned).or(forwarded_query) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_token",
            "no token in Authorization or in the token parameter of X-Forwarded-Uri",
        )
        .error_response();
    };
    let claims = match state.identity.verify(&token).await {
        Ok(claims) => claims,
        Err(err) => return AuthRejection::Token(err).error_response(),
    };
    let claim = ForwardedClaim {
        userid: claims.userid.clone(),
        clientid: claims.clientid.clone(),
    };
    match serde_json::to_string(&claim)
        .ok()
        .and_then(|json| HeaderValue::from_str(&json).ok())
    {
        Some(value) => {
            let mut response = HttpResponse::Ok().finish();
            response
                .headers_mut()
                .insert(header::HeaderName::from_static(USER_CLAIM_HEADER), value);
            response
        }
        // Ids are ASCII; a client id that cannot be a header value is refused.
        None => AuthRejection::Token(TokenError::Invalid).error_response(),
    }
}

/// The public keys tokens are signed with, for processes that verify tokens themselves.
#[utoipa::path(
    tag = "auth",
    security(),
    responses((status = 200, description = "A JSON Web Key Set", body = Object)),
)]
#[get("/.well-known/jwks.json")]
async fn jwks(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(state.identity.jwks())
}
