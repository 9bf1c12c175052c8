//! `/webrtc`: the original signalling socket and join route, and the ICE servers for clients.
//!
//! Socket frames are text, `<tag>::<payload>`: `offer::<sdp>`, `answer::<sdp>` and
//! `ice::<candidate>` both ways. A candidate from the client may be a bare `candidate:` line
//! (the original clients) or `RTCIceCandidateInit` JSON; the server sends JSON. A message the
//! server cannot use is answered `error::{"code","message"}`; past a limit no honest client
//! reaches (a frame over `bites.sfu.max_message_bytes`, a candidate over
//! [`MAX_CANDIDATE_BYTES`], more messages waiting than the negotiator's queue holds, too many
//! candidates), the `error::` frame is followed by a close.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa_actix_web::scope;

use super::Sfu;
use super::negotiation::Negotiation;
use super::peer::{Frame, Participant};
use crate::config::IceServer;
use crate::platform::Platform;
use crate::platform::http::error::ErrorBody;
use crate::platform::http::openapi::StreamCap;
use crate::platform::http::{ApiError, Caller};
use crate::platform::membership::SharedAccess;
use crate::platform::service::Routes;
use crate::platform::sessions::Lease;
use crate::services::bites::error::BitesError;
use crate::services::bites::routes::member_of;

pub struct SignalState {
    pub sfu: Arc<Sfu>,
    pub access: SharedAccess,
    pub ice_servers: Vec<IceServer>,
    pub max_message_bytes: usize,
}

type State = web::Data<SignalState>;

/// Pings keep the socket open through proxies that close idle connections.
const PING_EVERY: Duration = Duration::from_secs(25);

/// Largest `ice::` payload: a candidate line is under 200 bytes, its JSON form a little more.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// A client message refused: answered with an `error::` frame, or also by closing the socket.
enum Refused {
    Message(serde_json::Value),
    Close(serde_json::Value),
}

pub fn configure(cfg: &mut Routes<'_>, state: State) {
    cfg.service(
        scope("/webrtc")
            .app_data(state)
            .service(connect)
            .service(join)
            .service(ice_config),
    );
}

/// `GET /webrtc/config`: `{"iceServers":[…]}`, as a browser's `RTCPeerConnection` takes it.
#[utoipa::path(
    tag = "bites",
    responses((status = 200, description = "`{\"iceServers\":[{\"urls\":[…],\"username\"?,\"credential\"?}]}`", body = Object)),
)]
#[get("/config")]
async fn ice_config(state: State, _caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "iceServers": state.ice_servers }))
}

/// `POST /webrtc/join/{conversation}`: members only; leaves the previous room.
#[utoipa::path(
    tag = "bites",
    params(("conversation" = String, Path, description = "A conversation id: `c-` and 32 lowercase hex digits", pattern = r"^c-[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "In the room"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 409, description = "`room_full`", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[post("/join/{conversation}")]
async fn join(
    state: State,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    member_of(&state.access, &caller, &path).await?;
    state.sfu.join(&caller.user_id, &caller.client_id, &path)?;
    // A removal between the check and the join found nobody in the room to take out: check
    // again now that one would find the client there.
    if let Err(err) = member_of(&state.access, &caller, &path).await {
        state.sfu.left(&caller.user_id, &caller.client_id, &path);
        return Err(err.into());
    }
    Ok(HttpResponse::Ok().finish())
}

/// `GET /webrtc/connect`: upgrades to the signalling socket and opens the media connection.
/// A WebSocket: frames `offer::<sdp>`, `answer::<sdp>`, `ice::<candidate>` both ways and
/// `error::{"code","message"}` from the server. When the caller's session ends (logout,
/// revocation, block, the token's expiry) the server sends `error::` with code
/// `session_ended` (`server_shutdown` when the server stops), closes the socket and tears
/// down the media connection.
#[utoipa::path(
    tag = "bites",
    params(
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, description = "The client's nonce"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the signalling socket"),
        (status = 400, description = "Not a WebSocket handshake: `websocket_required`", body = ErrorBody),
        StreamCap,
        (status = 503, description = "`media_unavailable`", body = ErrorBody),
    ),
    extensions(("x-websocket" = json!(true))),
)]
#[get("/connect")]
async fn connect(
    state: State,
    platform: web::Data<Platform>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let lease = platform.sessions.open(&caller)?;
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|err| BitesError::WebSocketRequired(err.to_string()))?;
    let (participant, frames) = state
        .sfu
        .connect(&caller.user_id, &caller.client_id)
        .await?;
    let stream = stream
        .max_frame_size(state.max_message_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.max_message_bytes);
    actix_web::rt::spawn(serve(
        Arc::clone(&state.sfu),
        participant,
        session,
        stream,
        frames,
        lease,
    ));
    Ok(response)
}

async fn serve(
    sfu: Arc<Sfu>,
    participant: Arc<Participant>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut frames: mpsc::Receiver<Frame>,
    lease: Lease,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let reason = loop {
        tokio::select! {
            () = lease.ended() => {
                if lease.ended_by_shutdown() {
                    let error = json!({"code": "server_shutdown", "message": "the server is shutting down; reconnect"});
                    let _gone = session.text(format!("error::{error}")).await;
                    break Some(CloseReason { code: CloseCode::Restart, description: Some("server shutting down".into()) });
                }
                let error = json!({"code": "session_ended", "message": "the session was ended or its token expired"});
                let _gone = session.text(format!("error::{error}")).await;
                break Some(CloseReason { code: CloseCode::Policy, description: Some("session ended".into()) });
            }
            () = participant.closed.cancelled() => {
                break Some(CloseReason { code: CloseCode::Normal, description: Some("replaced by a newer connection".into()) });
            }
            frame = frames.recv() => match frame {
                None => break None,
                Some(Frame::Text(text)) => {
                    if session.text(text).await.is_err() {
                        break None;
                    }
                }
                Some(Frame::Refuse(error)) => break refuse(&mut session, error).await,
            },
            message = stream.recv() => match message {
                None => break None,
                Some(Err(err)) => {
                    break Some(CloseReason { code: CloseCode::Size, description: Some(err.to_string()) });
                }
                Some(Ok(AggregatedMessage::Text(text))) => match read(&participant, &text) {
                    Ok(()) => {}
                    Err(Refused::Message(error)) => {
                        if session.text(format!("error::{error}")).await.is_err() {
                            break None;
                        }
                    }
                    Err(Refused::Close(error)) => {
                        break refuse(&mut session, error.to_string()).await;
                    }
                },
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Close(_))) => break None,
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    let error = json!({"code": "text_only", "message": "messages are text frames"});
                    if session.text(format!("error::{error}")).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {}
            },
            _ = ping.tick() => {
                if session.ping(b"").await.is_err() {
                    break None;
                }
            }
        }
    };
    sfu.disconnect(&participant);
    let _already_closed = session.close(reason).await;
}

/// Sends the `error::` frame of a client past a limit; the socket then closes.
async fn refuse(session: &mut actix_ws::Session, error: String) -> Option<CloseReason> {
    let _gone = session.text(format!("error::{error}")).await;
    Some(CloseReason {
        code: CloseCode::Policy,
        description: Some("signalling limit exceeded".into()),
    })
}

/// Hands one client message to the negotiator, or says what is wrong with it.
fn read(participant: &Participant, text: &str) -> Result<(), Refused> {
    let Some((tag, payload)) = text.split_once("::") else {
        return Err(Refused::Message(
            json!({"code": "unknown_message", "message": "expected <tag>::<payload>"}),
        ));
    };
    let work = match tag {
        "offer" => Negotiation::Offer(payload.to_owned()),
        "answer" => Negotiation::Answer(payload.to_owned()),
        "ice" if payload.len() > MAX_CANDIDATE_BYTES => {
            return Err(Refused::Close(json!({
                "code": "candidate_too_large",
                "message": format!("a candidate is at most {MAX_CANDIDATE_BYTES} bytes"),
            })));
        }
        "ice" => Negotiation::Candidate(candidate(payload).map_err(Refused::Message)?),
        _ => {
            return Err(Refused::Message(json!({
                "code": "unknown_message",
                "message": format!("unknown tag {tag:?}: expected offer, answer or ice"),
            })));
        }
    };
    // Waiting here would stop this socket's loop, the one reader of the negotiator's frames,
    // while the negotiator may be waiting for room among them: a full queue closes instead.
    match participant.negotiate.try_send(work) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::Close(json!({
            "code": "too_many_messages",
            "message": "too many signalling messages waiting; send fewer at a time",
        }))),
    }
}

/// A candidate as JSON (`RTCIceCandidateInit`) or as the bare line the original clients send.
fn candidate(payload: &str) -> Result<RTCIceCandidateInit, serde_json::Value> {
    let payload = payload.trim();
    if payload.starts_with('{') {
        return serde_json::from_str(payload)
            .map_err(|err| json!({"code": "invalid_candidate", "message": err.to_string()}));
    }
    // A bare line, an SDP attribute (`a=candidate:…`), or Android's `IceCandidate.toString()`
    // (`<mid>:<index>:candidate:…`), which the original Kotlin client sent.
    let line = match payload.find("candidate:") {
        Some(at) => &payload[at..],
        None if payload.is_empty() => payload,
        None => {
            return Err(json!({
                "code": "invalid_candidate",
                "message": "expected a candidate: line or RTCIceCandidateInit JSON",
            }));
        }
    };
    Ok(RTCIceCandidateInit {
        candidate: line.to_owned(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
        username_fragment: None,
        url: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_in_both_forms() {
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host";
        assert_eq!(candidate(line).map(|c| c.candidate), Ok(line.to_owned()));
        assert_eq!(
            candidate(&format!("a={line}")).map(|c| c.candidate),
            Ok(line.to_owned())
        );
        let json = format!(r#"{{"candidate":"{line}","sdpMid":"0","sdpMLineIndex":0}}"#);
        let parsed = candidate(&json).map_err(|e| e.to_string());
        assert_eq!(
            parsed.as_ref().map(|c| c.sdp_mid.clone()),
            Ok(Some("0".into()))
        );
        assert_eq!(
            candidate(&format!("0:0:{line}")).map(|c| c.candidate),
            Ok(line.to_owned())
        );
        assert!(candidate("udp4 host 1.2.3.4:5000").is_err());
        assert!(candidate("{not json").is_err());
        // An empty candidate is the browser's end of candidates.
        assert_eq!(candidate("").map(|c| c.candidate), Ok(String::new()));
    }
}
