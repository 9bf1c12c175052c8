//! The HTTP surface of auth: the original `login` routes under `/login` (plus refresh, logout,
//! sessions and email), the original forward-auth `/auth`, and the JWKS.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError as _, web};
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthService, TokenResponse};
use crate::platform::http::caller::{
    AuthRejection, ForwardedClaim, USER_CLAIM_HEADER, bearer_token, query_token,
};
use crate::platform::http::{ApiError, Caller, client_ip, text_or_json};
use crate::platform::identity::TokenError;
use crate::platform::users::{Email, Login, NewProfile, PhoneNumber};

type State = web::Data<AuthService>;

pub fn routes(cfg: &mut web::ServiceConfig, state: Arc<AuthService>) {
    cfg.app_data(web::Data::from(state))
        .service(
            web::scope("/login")
                .service(web::resource("/init").post(init_phone))
                .service(web::resource("/init/email").post(init_email))
                .service(web::resource("/init/bypass").post(init_bypass))
                .service(web::resource("/verify").post(verify))
                .service(web::resource("/register/{code}/{nonce}").post(register))
                .service(web::resource("/refresh").post(refresh))
                .service(web::resource("/logout").post(logout))
                .service(web::resource("/sessions").get(list_sessions))
                .service(web::resource("/sessions/{sid}").delete(end_session)),
        )
        .service(web::resource("/auth").to(forward_auth))
        .service(web::resource("/.well-known/jwks.json").get(jwks));
}

#[derive(Deserialize)]
struct PhoneLogin {
    phone_number: String,
}

#[derive(Deserialize)]
struct EmailLogin {
    email: String,
}

#[derive(Deserialize)]
struct VerifyRequest {
    code: String,
    nonce: String,
    clientid: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize)]
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

async fn init_phone(
    req: HttpRequest,
    state: State,
    body: web::Json<PhoneLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Phone(PhoneNumber::parse(&body.phone_number)?);
    send_code(&req, &state, login, false).await
}

async fn init_email(
    req: HttpRequest,
    state: State,
    body: web::Json<EmailLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Email(Email::parse(&body.email)?);
    send_code(&req, &state, login, false).await
}

/// The original development route: code 000000, nothing sent. 404 unless `auth.dev_bypass`.
async fn init_bypass(
    req: HttpRequest,
    state: State,
    body: web::Json<PhoneLogin>,
) -> Result<HttpResponse, AuthError> {
    let login = Login::Phone(PhoneNumber::parse(&body.phone_number)?);
    send_code(&req, &state, login, true).await
}

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

async fn logout(state: State, caller: Caller) -> Result<HttpResponse, AuthError> {
    state.logout(&caller, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize)]
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

async fn jwks(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(state.identity.jwks())
}
