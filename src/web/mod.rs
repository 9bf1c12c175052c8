//! Beep web: the browser client, served at `/` from files embedded in the binary (nothing is
//! fetched at run time, no build step: plain HTML, CSS and one ES module). Compiled out with
//! the `web` feature for API-only deployments.

use std::io::Write as _;
use std::sync::LazyLock;

use actix_web::http::header::{self, AcceptEncoding, Encoding, Header as _, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, web};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

use crate::platform::http::conditional::not_modified;
use crate::platform::http::error::{ErrorBody, error_response};
use crate::platform::ids::hex;
use crate::platform::service::Routes;

/// Only this origin's own files, no inline script or style, no framing; `blob:` for recorded
/// audio and picked pictures, `data:` for nothing but images.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file in the two forms served: as written, and gzipped (under a third of the
/// bytes).
struct Asset {
    content_type: &'static str,
    plain: Representation,
    /// `None` only if compressing failed, which writing to memory does not.
    gzipped: Option<Representation>,
}

/// The bytes of one form of a file, with its validator: a strong `ETag` names one
/// representation, so each form has its own.
struct Representation {
    bytes: Bytes,
    etag: String,
}

impl Representation {
    fn new(bytes: Bytes) -> Self {
        let digest = Sha256::digest(&bytes);
        let etag = format!("\"{}\"", hex(&digest[..16]));
        Self { bytes, etag }
    }
}

impl Asset {
    /// Gzipped once, when the routes are mounted, at the best level: the files are fixed.
    fn new(content_type: &'static str, bytes: &'static [u8]) -> Self {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::best());
        let gzipped = gzip.write_all(bytes).and_then(|()| gzip.finish());
        Self {
            content_type,
            plain: Representation::new(Bytes::from_static(bytes)),
            gzipped: gzipped
                .ok()
                .map(|gzipped| Representation::new(gzipped.into())),
        }
    }

    /// The file, gzipped when the client takes it, or 304 when the client's copy is this one.
    /// Revalidated on every use (no `max-age`), so a new binary's files are picked up at once.
    fn serve(&self, req: &HttpRequest) -> HttpResponse {
        let gzipped = self.gzipped.as_ref().filter(|_| {
            AcceptEncoding::parse(req).is_ok_and(|accepted| {
                accepted.negotiate([Encoding::identity(), Encoding::gzip()].iter())
                    == Some(Encoding::gzip())
            })
        });
        let form = gzipped.unwrap_or(&self.plain);
        let unchanged = not_modified(req, &form.etag);
        let mut response = if unchanged {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        response
            .insert_header((header::ETAG, form.etag.as_str()))
            .insert_header((header::VARY, HeaderValue::from_static("Accept-Encoding")))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ));
        if unchanged {
            return response.finish();
        }
        if gzipped.is_some() {
            response.insert_header((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")));
        }
        response
            .content_type(HeaderValue::from_static(self.content_type))
            .body(form.bytes.clone())
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/css; charset=utf-8", include_bytes!("assets/app.css")));

pub fn routes(cfg: &mut Routes<'_>) {
    // Compressed here, at start, rather than inside the first request.
    for asset in [&INDEX, &SCRIPT, &STYLE] {
        LazyLock::force(asset);
    }
    cfg.service(index).service(file);
}

/// The web client's page.
#[utoipa::path(
    tag = "web",
    security(),
    params(("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before")),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 304, description = "Unchanged since the `ETag` sent"),
    ),
)]
#[get("/")]
async fn index(req: HttpRequest) -> HttpResponse {
    INDEX.serve(&req)
}

/// The web client's script (`app.js`) and style sheet (`app.css`).
#[utoipa::path(
    tag = "web",
    security(),
    params(
        ("file" = String, Path, description = "`app.js` or `app.css`"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 304, description = "Unchanged since the `ETag` sent"),
        (status = 404, description = "No such file: `not_found`", body = ErrorBody),
    ),
)]
#[get("/web/{file}")]
async fn file(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    match file.as_str() {
        "app.js" => SCRIPT.serve(&req),
        "app.css" => STYLE.serve(&req),
        _ => error_response(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such file",
        ),
    }
}
