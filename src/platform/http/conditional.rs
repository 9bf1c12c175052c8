//! Conditional requests (RFC 9110 §13): whether a client's cached copy is still good.

use actix_web::HttpRequest;
use actix_web::http::header;

/// `If-None-Match` names `etag` (or is `*`); weak comparison, as RFC 9110 asks for it.
pub fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}
