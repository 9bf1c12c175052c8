//! The original pictures service's two routes under `/pictures`.

use std::ops::Range;
use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use bytes::BytesMut;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::scope;

use super::error::PicturesError;
use super::process::Stored;
use super::service::{Body, PicturesService};
use super::store::Size;
use crate::config::PictureServing;
use crate::platform::http::body::timed_out;
use crate::platform::http::conditional::not_modified;
use crate::platform::http::error::ErrorBody;
use crate::platform::http::range::{ByteRange, byte_range};
use crate::platform::http::{ApiError, Caller};
use crate::platform::service::Routes;

type State = web::Data<PicturesService>;

/// Room for the multipart framing (boundaries, part headers) around the file itself.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// Parts a form may have: empty parts would otherwise be free to send forever (they add no
/// bytes to either budget) until the upload's deadline.
const MAX_FORM_PARTS: usize = 16;

/// Content-addressed bytes never change: a client may keep them for a year, privately (they
/// are not for everyone).
const CACHE_FOREVER: &str = "private, max-age=31536000, immutable";

pub fn routes(cfg: &mut Routes<'_>, state: State) {
    cfg.service(
        scope("/pictures")
            .app_data(state)
            .service(upload)
            .service(download),
    );
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code, reason = "documents the form; the handler streams it")]
struct UploadForm {
    /// A JPEG, PNG, WebP or GIF picture (decided from its bytes, not its name).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[derive(Serialize, ToSchema)]
struct Uploaded {
    /// The stored name: 32 hex digits (the hash of the stored bytes) and `.jpg` or `.png`.
    #[schema(example = "3f2a9c0d1e4b5a697887766554433221.jpg")]
    name: String,
}

/// Stores a picture and answers its name, which clients put in a user's `profile_pic` or a
/// conversation's `picture`: as plain text (the original's answer) or, with
/// `Accept: application/json`, as `{"name": …}`. The picture is re-encoded (JPEG, or PNG when
/// it has transparency) without its metadata, turned upright, scaled down to
/// `pictures.max_side`, with a thumbnail; the same picture uploaded twice is stored once.
#[utoipa::path(
    tag = "pictures",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored: its name", content(
            (String = "text/plain", example = "0123456789abcdef0123456789abcdef.jpg"),
            (Uploaded = "application/json"),
        )),
        (status = 400, description = "No single `file` field, more than 16 parts, or a broken form: `invalid_upload`", body = ErrorBody),
        (status = 408, description = "The body stopped arriving, or took longer than `pictures.upload_timeout_secs`: `body_timeout`", body = ErrorBody),
        (status = 413, description = "Larger than `pictures.max_upload_bytes`: `payload_too_large`", body = ErrorBody),
        (status = 415, description = "Not JPEG, PNG, WebP or GIF: `unsupported_picture`; not multipart/form-data: `not_multipart`", body = ErrorBody),
        (status = 422, description = "Too many pixels declared: `picture_too_large`; truncated or corrupt: `invalid_picture`", body = ErrorBody),
        (status = 503, description = "Too many uploads at once: `pictures_busy` (with `Retry-After`); storage down: `pictures_unavailable`", body = ErrorBody),
    ),
)]
#[post("/upload")]
async fn upload(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limit = state.config.max_upload_bytes;
    // A declared length over the limit is refused before a byte is read.
    if declared_length(&req).is_some_and(|length| length > limit.saturating_add(MULTIPART_OVERHEAD))
    {
        return Err(PicturesError::TooLarge(limit).into());
    }
    let slot = state.upload_slot()?;
    // A client trickling bytes just under the idle timeout would hold its slot forever.
    let deadline = Duration::from_secs(state.config.upload_timeout_secs);
    let file = tokio::time::timeout(
        deadline,
        read_file(Multipart::new(req.headers(), payload), limit),
    )
    .await
    .map_err(|_| PicturesError::BodyTimeout)??;
    let name = state.store_upload(&caller.user_id, file, slot).await?;
    Ok(if wants_json(&req) {
        HttpResponse::Ok().json(Uploaded { name })
    } else {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(name)
    })
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}

/// The one `file` field's bytes, refused once more than `limit` have arrived (other fields
/// are read past, and count towards the framing allowance).
async fn read_file(mut form: Multipart, limit: usize) -> Result<bytes::Bytes, PicturesError> {
    let mut file: Option<BytesMut> = None;
    let mut other_bytes = 0usize;
    let mut parts = 0usize;
    while let Some(field) = form.next().await {
        parts += 1;
        if parts > MAX_FORM_PARTS {
            return Err(PicturesError::InvalidUpload(format!(
                "a form of more than {MAX_FORM_PARTS} parts"
            )));
        }
        let mut field = field.map_err(form_error)?;
        let is_file = field.name() == Some("file");
        if is_file && file.is_some() {
            return Err(PicturesError::InvalidUpload(
                "send exactly one field named file".into(),
            ));
        }
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(form_error)?;
            if is_file {
                if bytes.len() + chunk.len() > limit {
                    return Err(PicturesError::TooLarge(limit));
                }
                bytes.extend_from_slice(&chunk);
            } else {
                other_bytes += chunk.len();
                if other_bytes > MULTIPART_OVERHEAD {
                    return Err(PicturesError::TooLarge(limit));
                }
            }
        }
        if is_file {
            file = Some(bytes);
        }
    }
    file.map(BytesMut::freeze)
        .ok_or_else(|| PicturesError::InvalidUpload("the form has no field named file".into()))
}

fn form_error(err: MultipartError) -> PicturesError {
    match err {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => PicturesError::NotMultipart,
        MultipartError::Payload(payload) => match timed_out(&payload) {
            Some(_) => PicturesError::BodyTimeout,
            None => PicturesError::InvalidUpload(payload.to_string()),
        },
        other => PicturesError::InvalidUpload(format!("invalid multipart form: {other}")),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    /// `thumb` for the thumbnail (`pictures.thumb_side` on its longest side); the picture
    /// itself otherwise.
    #[param(inline)]
    size: Option<SizeParam>,
}

#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SizeParam {
    Full,
    Thumb,
}

/// A stored picture, for its uploaders, for every signed-in user if it is someone's profile
/// picture, and for the members of the conversations it is the picture of. `ETag` and
/// `If-None-Match` (304), one `Range` (206); with `pictures.serve = "redirect"`, a 302 to a
/// short-lived presigned URL of the bytes.
#[utoipa::path(
    tag = "pictures",
    params(
        ("name" = String, Path, description = "A name `/pictures/upload` answered"),
        DownloadQuery,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The picture", content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
        ), headers(
            ("ETag" = String, description = "Strong: the picture never changes"),
            ("Cache-Control" = String),
        )),
        (status = 206, description = "The requested range, with `Content-Range`", content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
        )),
        (status = 302, description = "`pictures.serve = \"redirect\"`: `Location` is a presigned URL of the bytes"),
        (status = 304, description = "Unchanged since the `ETag` sent"),
        (status = 400, description = "`size` is not `full` or `thumb`: `invalid_query`", body = ErrorBody),
        (status = 403, description = "Not shown to the caller: `not_allowed`", body = ErrorBody),
        (status = 404, description = "No such picture: `picture_not_found`", body = ErrorBody),
        (status = 416, description = "The range is outside the picture: `range_not_satisfiable`", body = ErrorBody),
        (status = 503, description = "Storage or core does not answer: `pictures_unavailable`", body = ErrorBody),
    ),
)]
#[get("/picture/{name}")]
async fn download(
    state: State,
    caller: Caller,
    req: HttpRequest,
    name: web::Path<String>,
    query: web::Query<DownloadQuery>,
) -> Result<HttpResponse, ApiError> {
    let size = match query.size {
        Some(SizeParam::Thumb) => Size::Thumb,
        Some(SizeParam::Full) | None => Size::Full,
    };
    let picture = state.authorize(&caller.user_id, &name).await?;
    let etag = etag(&picture.name, size);
    if not_modified(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_FOREVER),
            ))
            .finish());
    }
    if state.config.serve == PictureServing::Redirect
        && let Some(url) = state.presigned(&picture.name, size).await?
    {
        // Cached no longer than the URL stays valid.
        let ttl = state.config.redirect_ttl_secs / 2;
        return Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, format!("private, max-age={ttl}")))
            .finish());
    }
    let length = picture.length(size);
    let range = match requested_range(&req, &etag, length) {
        Ok(range) => range,
        Err(()) => {
            let refused: ApiError = PicturesError::RangeNotSatisfiable { length }.into();
            let mut response = actix_web::ResponseError::error_response(&refused);
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let body = state.read(&picture, size, range.clone()).await?;
    let mut response = match &range {
        Some(range) => {
            let mut partial = HttpResponse::PartialContent();
            partial.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{length}", range.start, range.end - 1),
            ));
            partial
        }
        None => HttpResponse::Ok(),
    };
    // Static values: no copy or validation per response.
    response
        .content_type(HeaderValue::from_static(
            Stored::from_name(&picture.name).content_type(),
        ))
        .insert_header((header::ETAG, etag))
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_FOREVER),
        ))
        .insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")))
        .insert_header((
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline"),
        ));
    Ok(match body {
        Body::Whole(bytes) => response.body(bytes),
        Body::Streamed(stream) => {
            let sent = range.map_or(length, |range| range.end - range.start);
            response.no_chunking(sent).streaming(stream)
        }
    })
}

/// Strong: a picture's bytes never change. Built without `format!`, on every download.
fn etag(name: &str, size: Size) -> String {
    let hash = name.split_once('.').map_or(name, |(hash, _)| hash);
    let mut etag = String::with_capacity(hash.len() + 8);
    etag.push('"');
    etag.push_str(hash);
    if size == Size::Thumb {
        etag.push_str("-thumb");
    }
    etag.push('"');
    etag
}

/// The one range asked for, `None` for the whole picture (no `Range`, one this server does
/// not serve such as several ranges, or an `If-Range` that is not this `etag`), `Err` when it
/// lies outside the picture.
fn requested_range(req: &HttpRequest, etag: &str, length: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(range) = req
        .headers()
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(None);
    };
    if let Some(if_range) = req.headers().get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return Ok(None);
    }
    match byte_range(range, length) {
        ByteRange::Whole => Ok(None),
        ByteRange::Part(part) => Ok(Some(part)),
        ByteRange::Unsatisfiable => Err(()),
    }
}
