//! Lists in pages: the `?limit=` every list takes, and the `Link: <…>; rel="next"` header of a
//! full page. The body stays a bare JSON array, so the original clients still parse it.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};

use super::ApiError;

/// The `?limit=` of a list: `default` when absent, else within `1..=max`, or a 400
/// `invalid_limit`.
pub fn page_limit(limit: Option<u64>, default: u64, max: u64) -> Result<u64, ApiError> {
    match limit {
        None => Ok(default.clamp(1, max.max(1))),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit must be between 1 and {max}"),
        )),
    }
}

/// The `Link` header pointing at the next page: this request's path with `query`, encoded.
pub fn next_link(req: &HttpRequest, query: &[(&str, &str)]) -> (HeaderName, String) {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    (
        header::LINK,
        format!("<{}?{query}>; rel=\"next\"", req.path()),
    )
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn limits_default_and_refuse_out_of_range() {
        assert_eq!(page_limit(None, 100, 1000).ok(), Some(100));
        assert_eq!(page_limit(Some(1000), 100, 1000).ok(), Some(1000));
        assert!(page_limit(Some(0), 100, 1000).is_err());
        assert!(page_limit(Some(1001), 100, 1000).is_err());
    }

    #[test]
    fn next_links_keep_the_path_and_encode_the_query() {
        let req = TestRequest::get()
            .uri("/core/user/contact?limit=2")
            .to_http_request();
        let (name, value) = next_link(&req, &[("limit", "2"), ("after", "u-1&x")]);
        assert_eq!(name, header::LINK);
        assert_eq!(
            value,
            "</core/user/contact?limit=2&after=u-1%26x>; rel=\"next\""
        );
    }
}
