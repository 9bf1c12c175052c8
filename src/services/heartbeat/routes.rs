//! The original heartbeat's two routes under `/heartbeat`.

use actix_web::{HttpResponse, Responder, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::scope;

use super::service::HeartbeatService;
use crate::platform::Platform;
use crate::platform::http::error::ErrorBody;
use crate::platform::http::openapi::{SseEvent, StreamCap};
use crate::platform::http::{ApiError, Caller};
use crate::platform::service::Routes;

type State = web::Data<HeartbeatService>;

pub fn routes(cfg: &mut Routes<'_>, state: web::Data<HeartbeatService>) {
    cfg.service(
        scope("/heartbeat")
            .app_data(state)
            .service(ping)
            .service(subscribe),
    );
}

#[derive(Deserialize, ToSchema)]
struct PingRequest {
    /// Any string of 1 to 64 characters. Documented: `0` active, `1` away, `2` do not
    /// disturb, `3` invisible (stored, never shown to others). The Flutter client sends `a`.
    #[schema(example = "0", min_length = 1, max_length = 64)]
    status: String,
}

/// Records the caller's `{time, status}` and pushes it to their subscribers. A ping with the
/// same status within `heartbeat.write_interval_secs` of the last stored one changes nothing.
#[utoipa::path(
    tag = "heartbeat",
    request_body = PingRequest,
    responses(
        (status = 200, description = "Recorded (empty body, as the original)"),
        (status = 400, description = "`invalid_status`, or a body that is not the JSON above", body = ErrorBody),
        (status = 429, description = "More than `heartbeat.pings_per_minute`: `rate_limited`, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "The database or the cache does not answer: `heartbeat_unavailable`", body = ErrorBody),
    ),
)]
#[post("/ping")]
async fn ping(
    state: State,
    caller: Caller,
    body: web::Json<PingRequest>,
) -> Result<HttpResponse, ApiError> {
    state.ping(&caller.user_id, &body.status).await?;
    Ok(HttpResponse::Ok().finish())
}

/// A user's presence as Server-Sent Events: `data: {"time":<Unix seconds>,"status":"…"}`
/// with an `id:`, the last visible ping at once (none if they never pinged), then each new
/// one; a `:` keep-alive comment every 25 s. For their contacts and those who share a
/// conversation with them; the stream ends within a second of that relation ending. A client
/// reconnecting with `Last-Event-ID` gets the current state once, never a replay.
/// EventSource clients pass the token as `?token=`.
#[utoipa::path(
    tag = "heartbeat",
    params(("user" = String, Path, description = "A user id: `u-` and 32 lowercase hex digits", pattern = r"^u-[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Events `data: {\"time\":<int>,\"status\":\"<string>\"}`",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Not a user id: `invalid_id`", body = ErrorBody),
        (status = 403, description = "Neither a contact nor in a conversation with them: `not_related`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        StreamCap,
        (status = 503, description = "The database or core does not answer: `heartbeat_unavailable`", body = ErrorBody),
    ),
)]
#[get("/subscribe/{user}")]
async fn subscribe(
    state: State,
    platform: web::Data<Platform>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl Responder, ApiError> {
    let lease = platform.sessions.open(&caller)?;
    Ok(state.subscribe(lease, &path).await?)
}
