//! `/store`: the original scan and fetch routes, a metadata list and a stream of new bites.
//! Only members of the conversation may read it.

use std::sync::Arc;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_web_lab::sse;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::scope;

use super::error::BitesError;
use super::store::{BiteId, BiteMeta, Scan, SharedStore, TranscriptState, blocking};
use super::transcription::search::MAX_QUERY_CHARS;
use super::transcription::{Hit, Transcript, TranscriptIndex};
use crate::config::BitesConfig;
use crate::platform::Platform;
use crate::platform::http::error::ErrorBody;
use crate::platform::http::openapi::{SseEvent, StreamCap};
use crate::platform::http::range::{ByteRange, byte_range};
use crate::platform::http::{ApiError, Caller, SSE_KEEP_ALIVE, next_link, page_limit};
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::SharedAccess;
use crate::platform::service::Routes;

pub struct StoreState {
    pub store: SharedStore,
    pub access: SharedAccess,
    pub config: BitesConfig,
    pub announce: broadcast::Sender<Arc<BiteMeta>>,
    pub transcripts: broadcast::Sender<(BiteId, Arc<Transcript>)>,
    pub index: Arc<TranscriptIndex>,
}

/// A bite as the list answers it: its metadata and, once there is one, its transcript's text.
#[derive(Serialize, ToSchema)]
struct ListedBite {
    #[serde(flatten)]
    meta: BiteMeta,
    /// The transcript's text; absent while there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<String>,
}

/// The text of a stored transcript, read without its words.
#[derive(Deserialize)]
struct TextOnly {
    text: String,
}

/// A transcript as the bite stream announces it (`event: transcript`).
#[derive(Serialize)]
struct AnnouncedTranscript<'a> {
    conversation: &'a str,
    start: u64,
    user: &'a str,
    client: &'a str,
    #[serde(flatten)]
    transcript: &'a Transcript,
}

type State = web::Data<StoreState>;

pub fn configure(cfg: &mut Routes<'_>, state: State) {
    cfg.service(
        scope("/store/bite/{conversation}")
            .app_data(state.clone())
            .service(list)
            .service(scan)
            .service(audio)
            .service(subscribe),
    );
    cfg.service(
        scope("/store/transcription/{conversation}")
            .app_data(state)
            .service(search)
            .service(bite_transcript),
    );
}

/// The conversation path parameter every `/store` route takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "documents the path; handlers read web::Path")]
struct ConversationPath {
    /// A conversation id: `c-` and 32 lowercase hex digits.
    #[param(pattern = r"^c-[0-9a-f]{32}$")]
    conversation: String,
}

/// Refuses anyone but a member, and malformed ids before any lookup.
pub async fn member_of(
    access: &SharedAccess,
    caller: &Caller,
    conversation: &str,
) -> Result<(), BitesError> {
    if !is_prefixed_id(conversation, "c-") {
        return Err(BitesError::InvalidId);
    }
    match access.may_access(&caller.user_id, conversation).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(BitesError::NotAMember),
        Err(err) => Err(BitesError::MembershipUnavailable(err)),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Range {
    /// Unix milliseconds, inclusive; 0 when absent.
    #[param(value_type = Option<i64>, minimum = 0)]
    from: Option<u64>,
    /// Unix milliseconds, inclusive; the end of time when absent.
    #[param(value_type = Option<i64>, minimum = 0)]
    to: Option<u64>,
    /// Bites per page (the list only): `bites.page_size` when absent.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<u64>,
}

impl Range {
    fn bounds(&self) -> Result<(u64, u64), BitesError> {
        let (from, to) = (self.from.unwrap_or(0), self.to.unwrap_or(u64::MAX));
        if from > to {
            return Err(BitesError::InvalidRange);
        }
        Ok((from, to))
    }
}

/// `GET /store/bite/{conversation}/scan?from=&to=`: the original answer,
/// `{"previous","starts","next"}`, with starts in Unix milliseconds and never `null`.
#[utoipa::path(
    tag = "bites",
    params(ConversationPath, Range),
    responses(
        (status = 200, description = "The starts in the range and the pages either side", body = Scan),
        (status = 400, description = "`invalid_id`, `invalid_range` (from after to)", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[get("/scan")]
async fn scan(
    state: State,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<Range>,
) -> Result<HttpResponse, ApiError> {
    member_of(&state.access, &caller, &path).await?;
    let (from, to) = query.bounds()?;
    let limit = state.config.scan_limit.max(1);
    let conversation = path.into_inner();
    let scan = blocking(&state.store, move |store| {
        store.scan(&conversation, from, to, limit)
    })
    .await?;
    Ok(HttpResponse::Ok().json(scan))
}

/// `GET /store/bite/{conversation}?from=&to=&limit=`: metadata, oldest first, with a
/// `Link: <…?from=…>; rel="next"` header when the page is full.
#[utoipa::path(
    tag = "bites",
    params(ConversationPath, Range),
    responses(
        (status = 200, description = "A page, oldest first, each with its transcript's text once there is one", body = Vec<ListedBite>,
            headers(("link" = String, description = "The next page, when this one is full"))),
        (status = 400, description = "`invalid_id`, `invalid_range`, `invalid_limit`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[get("")]
async fn list(
    state: State,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Range>,
) -> Result<HttpResponse, ApiError> {
    member_of(&state.access, &caller, &path).await?;
    let (from, to) = query.bounds()?;
    let query_to = query.to;
    let config = &state.config;
    let limit = page_limit(query.limit, config.page_size, config.max_page_size)?;
    // Bounded by `max_page_size`.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let conversation = path.into_inner();
    let bites = blocking(&state.store, move |store| {
        let bites = store.list(&conversation, from, to, limit)?;
        bites
            .into_iter()
            .map(|meta| {
                let speaker = Some((meta.user.as_str(), meta.client.as_str()));
                let transcript = match store.transcript(&meta.conversation, meta.start, speaker)? {
                    // Only the text: the word timings are not built for a list.
                    TranscriptState::Done(json) => serde_json::from_slice::<TextOnly>(&json)
                        .ok()
                        .map(|transcript| transcript.text),
                    _ => None,
                };
                Ok(ListedBite { meta, transcript })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let mut response = HttpResponse::Ok();
    // A page never ends inside a run of equal starts, so the next one starts just after.
    if bites.len() >= limit
        && let Some(next) = bites.last().and_then(|last| last.meta.start.checked_add(1))
        && next <= to
    {
        let (next, limit, to) = (next.to_string(), limit.to_string(), to.to_string());
        let mut query = vec![("from", next.as_str()), ("limit", limit.as_str())];
        // An open end stays open rather than becoming the largest number.
        if query_to.is_some() {
            query.push(("to", to.as_str()));
        }
        response.insert_header(next_link(&req, &query));
    }
    Ok(response.json(bites))
}

/// An Ogg Opus file, as bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code, reason = "a schema only: the body is the stored file")]
struct OggOpus(Vec<u8>);

/// Picks one speaker's bite when two started in the same millisecond: both or neither.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Speaker {
    /// The speaker's user id.
    user: Option<String>,
    /// The speaker's client id.
    client: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Words to find (1 to 256 characters); word forms match ("meeting" finds "meetings").
    #[param(min_length = 1, max_length = 256)]
    q: String,
    /// Only bites that started before this, Unix milliseconds (the next page).
    #[param(value_type = Option<i64>, minimum = 0)]
    before: Option<u64>,
    /// Hits per page: `bites.page_size` when absent.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<u64>,
}

/// `GET /store/transcription/{conversation}/search?q=`: the conversation's bites whose
/// transcripts match, newest first, each with a snippet (matches in `<mark>`) and the offset
/// of the first matching word in the audio. A full page has a `Link: …; rel="next"`.
#[utoipa::path(
    tag = "bites",
    params(ConversationPath, SearchQuery),
    responses(
        (status = 200, description = "Matching bites, newest first", body = Vec<Hit>,
            headers(("link" = String, description = "The next page, when this one is full"))),
        (status = 400, description = "`invalid_id`, `invalid_query` (no word to look for, or too long), `invalid_limit`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 503, description = "Memberships or the index cannot be read: `membership_unavailable`, `search_unavailable`", body = ErrorBody),
    ),
)]
#[get("/search")]
async fn search(
    state: State,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    member_of(&state.access, &caller, &path).await?;
    if query.q.chars().count() > MAX_QUERY_CHARS {
        return Err(BitesError::InvalidQuery.into());
    }
    let config = &state.config;
    let limit = page_limit(query.limit, config.page_size, config.max_page_size)?;
    let before = query.before.unwrap_or(u64::MAX);
    let mut hits = state
        .index
        .search(&path, &query.q, before, limit)
        .await
        .map_err(BitesError::SearchUnavailable)?
        .ok_or(BitesError::InvalidQuery)?;
    let mut response = HttpResponse::Ok();
    if hits.len() as u64 >= limit
        && let Some(last) = hits.last().map(|hit| hit.start)
    {
        // A page never ends inside a run of equal starts (two speakers in one millisecond):
        // the run moves to the next page whole.
        let next = if hits.iter().any(|hit| hit.start != last) {
            hits.retain(|hit| hit.start != last);
            last.saturating_add(1)
        } else {
            last
        };
        let (before, limit) = (next.to_string(), limit.to_string());
        response.insert_header(next_link(
            &req,
            &[
                ("q", query.q.as_str()),
                ("before", before.as_str()),
                ("limit", limit.as_str()),
            ],
        ));
    }
    Ok(response.json(hits))
}

/// The speaker of a bite, from the query: both or neither.
fn speaker_of(query: &Speaker) -> Result<Option<(String, String)>, BitesError> {
    match (&query.user, &query.client) {
        (Some(user), Some(client)) => Ok(Some((user.clone(), client.clone()))),
        (None, None) => Ok(None),
        _ => Err(BitesError::InvalidSpeaker),
    }
}

/// `GET /store/transcription/{conversation}/start/{start}`: the transcript of a bite, with
/// each word's time from the start of the bite (to jump into the audio). 404 with
/// `transcript_pending` while it waits for the engine, `transcript_failed` once given up on.
#[utoipa::path(
    tag = "bites",
    params(
        ConversationPath,
        ("start" = i64, Path, minimum = 0, description = "The bite's start, Unix milliseconds"),
        Speaker,
    ),
    responses(
        (status = 200, description = "The transcript", body = Transcript),
        (status = 400, description = "`invalid_id`, `invalid_speaker` (user without client or the reverse)", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`transcript_pending` (queued), `transcript_failed` (given up on), `transcript_not_found` (no such bite, or stored with transcription off)", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[get("/start/{start}")]
async fn bite_transcript(
    state: State,
    caller: Caller,
    path: web::Path<(String, u64)>,
    query: web::Query<Speaker>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, start) = path.into_inner();
    member_of(&state.access, &caller, &conversation).await?;
    let speaker = speaker_of(&query)?;
    let state_of = blocking(&state.store, move |store| {
        let speaker = speaker.as_ref().map(|(u, c)| (u.as_str(), c.as_str()));
        store.transcript(&conversation, start, speaker)
    })
    .await?;
    match state_of {
        TranscriptState::Done(json) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(json)),
        TranscriptState::Pending => Err(BitesError::TranscriptPending.into()),
        // The engine's reason (its address, its error body) stays in the logs and the dead
        // letters, for the operator.
        TranscriptState::Failed(_) => Err(BitesError::TranscriptFailed.into()),
        TranscriptState::Unknown => Err(BitesError::TranscriptNotFound.into()),
    }
}

/// `GET /store/bite/{conversation}/start/{start}`: the Ogg Opus file, with range requests.
#[utoipa::path(
    tag = "bites",
    params(
        ConversationPath,
        ("start" = i64, Path, minimum = 0, description = "The bite's start, Unix milliseconds"),
        Speaker,
    ),
    responses(
        (status = 200, description = "The whole file", body = OggOpus, content_type = "audio/ogg"),
        (status = 206, description = "The requested range", body = OggOpus, content_type = "audio/ogg"),
        (status = 400, description = "`invalid_id`, `invalid_speaker` (user without client or the reverse)", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "No bite starts then: `bite_not_found`", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable`", body = ErrorBody),
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[get("/start/{start}")]
async fn audio(
    state: State,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, u64)>,
    query: web::Query<Speaker>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, start) = path.into_inner();
    member_of(&state.access, &caller, &conversation).await?;
    let speaker = speaker_of(&query)?;
    let found = blocking(&state.store, move |store| {
        let speaker = speaker.as_ref().map(|(u, c)| (u.as_str(), c.as_str()));
        store.get(&conversation, start, speaker)
    })
    .await?;
    let Some((_meta, bytes)) = found else {
        return Err(BitesError::BiteNotFound.into());
    };
    let total = bytes.len() as u64;
    let mut response = HttpResponse::Ok();
    response
        .content_type("audio/ogg")
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        // A stored bite never changes.
        .insert_header((
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ));
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    match range.map(|range| byte_range(range, total)) {
        None | Some(ByteRange::Whole) => Ok(response.body(bytes)),
        Some(ByteRange::Part(part)) => {
            let (first, last) = (part.start, part.end - 1);
            let part = bytes.slice(part.start as usize..part.end as usize);
            Ok(response
                .status(StatusCode::PARTIAL_CONTENT)
                .insert_header((
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{total}"),
                ))
                .body(part))
        }
        Some(ByteRange::Unsatisfiable) => {
            Ok(HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((header::CONTENT_RANGE, format!("bytes */{total}")))
                .json(serde_json::json!({"error": {
                    "code": "range_not_satisfiable",
                    "message": format!("the bite has {total} bytes"),
                }})))
        }
    }
}

/// `GET /store/bite/{conversation}/subscribe`: an `event: bite` with the metadata of each new
/// bite of the conversation, as it is stored, and an `event: transcript` as each of their
/// transcripts is. The stream ends when the caller stops being a
/// member (checked at each bite), falls too far behind (a client reconnects), or when the
/// caller's session ends (logout, revocation, block, the token's expiry).
#[utoipa::path(
    tag = "bites",
    params(ConversationPath),
    responses(
        (status = 200, description = "`event: bite` with a bite's metadata as each is stored; `event: transcript` with the bite's `conversation`, `start`, `user`, `client` and its transcript as each is stored", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        StreamCap,
        (status = 503, description = "Memberships cannot be read: `membership_unavailable`", body = ErrorBody),
    ),
)]
#[get("/subscribe")]
async fn subscribe(
    state: State,
    platform: web::Data<Platform>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl actix_web::Responder, ApiError> {
    member_of(&state.access, &caller, &path).await?;
    let lease = platform.sessions.open(&caller)?;
    let conversation = path.into_inner();
    let mut bites = state.announce.subscribe();
    let mut transcripts = state.transcripts.subscribe();
    let access = Arc::clone(&state.access);
    let (sender, mut receiver) = mpsc::channel::<sse::Event>(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = sender.closed() => break,
                bite = bites.recv() => match bite {
                    Ok(bite) if bite.conversation == conversation => sse::Data::new_json(bite.as_ref())
                        .map(|data| data.event("bite").id(bite.start.to_string())),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => break,
                },
                transcript = transcripts.recv() => match transcript {
                    Ok((bite, transcript)) if bite.conversation == conversation => {
                        sse::Data::new_json(AnnouncedTranscript {
                            conversation: &bite.conversation,
                            start: bite.start,
                            user: &bite.user,
                            client: &bite.client,
                            transcript: &transcript,
                        })
                        .map(|data| data.event("transcript"))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => break,
                },
            };
            if !matches!(
                access.may_access(&caller.user_id, &conversation).await,
                Ok(true)
            ) {
                break;
            }
            let Ok(event) = event else {
                continue;
            };
            if sender.send(event.into()).await.is_err() {
                break;
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    Ok(sse::Sse::from_infallible_stream(lease.until_ended(events)).with_keep_alive(SSE_KEEP_ALIVE))
}

/// Bites buffered per stream before the stream is dropped.
const STREAM_BUFFER: usize = 64;
