//! The authenticated caller as an extractor: `async fn handler(caller: Caller)` answers 401
//! unless the request carries a valid access token. This is the only code that reads
//! `Authorization`, the `?token=` query parameter or `X-User-Claim`.

use std::borrow::Cow;
use std::future::{Future, Ready, ready};
use std::pin::Pin;

use futures_util::future::Either;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, dev::Payload, web};
use serde::{Deserialize, Serialize};

use super::error::error_response;
use crate::platform::Platform;
use crate::platform::identity::{Claims, TokenError};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub client_id: String,
    /// The login session, absent when a trusted proxy vouched for the caller.
    pub session_id: Option<String>,
    /// When the access token expires (Unix seconds), absent for a proxy-vouched caller: a
    /// long-lived connection ends then (see `platform::sessions`).
    pub expires_at: Option<u64>,
}

/// The `X-User-Claim` header of the original forward-auth: compact JSON, `userid` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedClaim {
    pub userid: String,
    pub clientid: String,
}

pub const USER_CLAIM_HEADER: &str = "x-user-claim";

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRejection {
    #[error("an access token is required (Authorization: Bearer, or ?token=)")]
    Missing,
    #[error("{0}")]
    Token(TokenError),
    #[error("the X-User-Claim header is not valid")]
    BadForwardedClaim,
}

impl AuthRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Token(TokenError::Expired) => "token_expired",
            Self::Token(TokenError::Revoked) => "token_revoked",
            Self::Token(TokenError::Unavailable(_)) => "auth_unavailable",
            Self::Token(_) => "invalid_token",
            Self::BadForwardedClaim => "invalid_claim",
        }
    }
}

impl ResponseError for AuthRejection {
    fn status_code(&self) -> StatusCode {
        match self {
            // Revocation could not be checked: fail closed, but say it is our fault.
            Self::Token(TokenError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadForwardedClaim => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message: Cow<'_, str> = match self {
            Self::Token(TokenError::Unavailable(cause)) => {
                tracing::error!(error = %cause, "token revocation check failed");
                "cannot verify tokens right now".into()
            }
            other => other.to_string().into(),
        };
        let mut response = error_response(self.status_code(), self.code(), &message);
        if self.status_code() == StatusCode::UNAUTHORIZED {
            // RFC 6750 section 3.
            let challenge = match self {
                Self::Missing => r#"Bearer realm="beep""#.to_owned(),
                _ => format!(
                    r#"Bearer realm="beep", error="invalid_token", error_description="{message}""#
                ),
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// The bearer token of a request: the `Authorization` header wins over `?token=` (which exists
/// for EventSource and WebSocket clients that cannot set headers).
pub fn request_token(req: &HttpRequest) -> Option<Cow<'_, str>> {
    bearer_token(req)
        .map(Cow::Borrowed)
        .or_else(|| query_token(req.query_string()).map(Cow::Owned))
}

/// The token of an `Authorization: Bearer` header, borrowed from the request.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    // Plain UTF-8 validation (vectorised) rather than `to_str`'s byte-by-byte check: the JWT
    // parser rejects anything that is not base64url anyway.
    let value = std::str::from_utf8(req.headers().get(header::AUTHORIZATION)?.as_bytes()).ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `token` parameter of a query string.
pub fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|token| !token.is_empty())
}

type Answer = Result<Caller, AuthRejection>;

impl FromRequest for Caller {
    type Error = AuthRejection;
    /// Ready at once unless revocation must be asked of Redis: every request passes here.
    type Future = Either<Ready<Answer>, Pin<Box<dyn Future<Output = Answer>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(platform) = req.app_data::<web::Data<Platform>>() else {
            return Either::Left(ready(Err(AuthRejection::Token(TokenError::Unavailable(
                "no platform in app data".into(),
            )))));
        };
        let Some(token) = request_token(req) else {
            let forwarded = req.headers().get(USER_CLAIM_HEADER);
            return Either::Left(ready(forwarded_caller(platform, forwarded)));
        };
        let identity = &platform.identity;
        let claims = match identity.verify_signature(&token) {
            Ok(claims) => claims,
            Err(err) => return Either::Left(ready(Err(AuthRejection::Token(err)))),
        };
        match identity.is_revoked_in_process(&claims.sid) {
            Some(revoked) => Either::Left(ready(live_caller(&claims, revoked))),
            None => {
                let identity = identity.clone();
                Either::Right(Box::pin(async move {
                    let revoked = identity
                        .is_revoked(&claims.sid)
                        .await
                        .map_err(|err| AuthRejection::Token(err.into()))?;
                    live_caller(&claims, revoked)
                }))
            }
        }
    }
}

fn live_caller(claims: &Claims, revoked: bool) -> Answer {
    if revoked {
        return Err(AuthRejection::Token(TokenError::Revoked));
    }
    Ok(Caller {
        user_id: claims.userid.clone(),
        client_id: claims.clientid.clone(),
        session_id: Some(claims.sid.clone()),
        expires_at: Some(claims.exp),
    })
}

/// A caller vouched for by a forward-auth proxy, when the configuration trusts one.
fn forwarded_caller(platform: &Platform, forwarded: Option<&HeaderValue>) -> Answer {
    match forwarded {
        Some(value) if platform.config.auth.trust_forwarded_claim => {
            let claim: ForwardedClaim = value
                .to_str()
                .ok()
                .and_then(|text| serde_json::from_str(text).ok())
                .ok_or(AuthRejection::BadForwardedClaim)?;
            if claim.userid.is_empty() {
                return Err(AuthRejection::BadForwardedClaim);
            }
            Ok(Caller {
                user_id: claim.userid,
                client_id: claim.clientid,
                session_id: None,
                expires_at: None,
            })
        }
        _ => Err(AuthRejection::Missing),
    }
}
