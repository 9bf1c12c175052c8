//! HTTP plumbing shared by every service: the JSON error body, the per-request wrapper
//! (request ids, telemetry, security headers, CORS) and body limits.

pub mod body;
pub mod caller;
pub mod conditional;
pub mod cors;
pub mod error;
pub mod openapi;
pub mod paging;
pub mod range;
pub mod request;
pub mod tls;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError, UrlencodedError};
use actix_web::http::StatusCode;
use actix_web::web::{self, FormConfig, JsonConfig, PathConfig, PayloadConfig, QueryConfig};

pub use caller::Caller;
pub use error::ApiError;
pub use paging::{next_link, page_limit};

use crate::config::HttpConfig;

/// Keep-alive comment period of every Server-Sent Events stream: the original's 25 s, which
/// also bounds how long a gone client's stream lingers (actix notices on a failed write).
pub const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(25);

/// Body limits, and extractor failures answered with the JSON error body and a precise status.
pub fn configure_extractors(config: &HttpConfig, cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        JsonConfig::default()
            .limit(config.json_limit_bytes)
            .error_handler(|err, _| json_error(err).into()),
    )
    .app_data(PayloadConfig::new(config.body_limit_bytes))
    .app_data(
        FormConfig::default()
            .limit(config.body_limit_bytes)
            .error_handler(|err, _| form_error(err).into()),
    )
    .app_data(QueryConfig::default().error_handler(|err, _| query_error(err).into()))
    .app_data(PathConfig::default().error_handler(|err, _| path_error(err).into()));
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => too_large(limit),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(err) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", err.to_string())
        }
        JsonPayloadError::Payload(err) => body::timed_out(&err).unwrap_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", err.to_string())
        }),
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", other.to_string()),
    }
}

fn form_error(err: UrlencodedError) -> ApiError {
    match err {
        UrlencodedError::Overflow { limit, .. } => too_large(limit),
        UrlencodedError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/x-www-form-urlencoded",
        ),
        UrlencodedError::Payload(err) => body::timed_out(&err).unwrap_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_form", err.to_string())
        }),
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_form", other.to_string()),
    }
}

fn query_error(err: QueryPayloadError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", err.to_string())
}

fn path_error(err: PathError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", err.to_string())
}

/// The client's address, for rate limits: the peer, or the first `X-Forwarded-For`/`Forwarded`
/// hop when `http.trust_forwarded_for` says a proxy sets it.
pub fn client_ip(req: &actix_web::HttpRequest, trust_forwarded_for: bool) -> String {
    let info = req.connection_info();
    let address = if trust_forwarded_for {
        info.realip_remote_addr()
    } else {
        info.peer_addr()
    };
    let address = address.unwrap_or("unknown");
    // Drop the port: "1.2.3.4:5678" and "[::1]:5678" become the bare address.
    match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => socket.ip().to_string(),
        Err(_) => address.to_owned(),
    }
}

/// Where the original answered plain text (a nonce, a token, an id): plain text for its
/// clients, `json` when the request says `Accept: application/json`.
pub fn text_or_json<T: serde::Serialize>(
    req: &actix_web::HttpRequest,
    text: &str,
    json: &T,
) -> actix_web::HttpResponse {
    let wants_json = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        actix_web::HttpResponse::Ok().json(json)
    } else {
        actix_web::HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(text.to_owned())
    }
}
