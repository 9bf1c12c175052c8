//! The OpenAPI 3.1 document of every route this process serves, served at `/openapi.json`.
//!
//! It is generated, never written: each handler carries a `#[utoipa::path]` beside its actix
//! route macro, and utoipa-actix-web mounts and documents a handler in one call, so a route
//! cannot be served undocumented or documented unserved (clippy refuses the calls that mount
//! around it, see `clippy.toml`). What every route shares is added here once: the security
//! schemes, the error body, and the failures any authenticated, parameterised or JSON-bodied
//! route can answer. The same document answers a known path asked with another method: 405
//! with `Allow`.

use actix_web::dev::ResourceDef;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, web};
use bytes::Bytes;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::{PartialSchema as _, ToSchema};

use super::error::ErrorBody;

/// Name of the bearer-token security scheme (`Authorization: Bearer …`).
pub const BEARER: &str = "bearer";
/// Name of the `?token=` security scheme, for EventSource and WebSocket clients.
pub const TOKEN_QUERY: &str = "token";

/// The error body's schema name in `components/schemas`.
const ERROR_SCHEMA: &str = "ErrorBody";

/// What every long-lived connection (an SSE stream, the signalling socket) may answer besides
/// its own responses: the per-user cap of `platform::sessions`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "documents the response; handlers answer ApiError")]
pub enum StreamCap {
    #[response(
        status = 429,
        description = "The user has `http.max_streams_per_user` streams open: `too_many_streams`"
    )]
    TooManyStreams(ErrorBody<'static>),
}

/// The Server-Sent Events body of a stream route, one event as OpenAPI 3.1 describes it.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "a schema only: events are written by actix-web-lab"
)]
pub struct SseEvent {
    /// The event's JSON.
    #[schema(content_media_type = "application/json")]
    pub data: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// The document, rendered once, and what it says about methods.
pub struct ApiDocument {
    json: Bytes,
    /// Each documented path and the methods it is served with.
    methods: Vec<(ResourceDef, Vec<Method>)>,
}

impl ApiDocument {
    /// Completes the collected document with what every route shares, and renders it.
    pub fn new(mut doc: OpenApi) -> Result<Self, serde_json::Error> {
        complete(&mut doc);
        let methods = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| (ResourceDef::new(path.as_str()), methods_of(item)))
            .collect();
        Ok(Self {
            json: Bytes::from(doc.to_json()?),
            methods,
        })
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The methods a documented path is served with, or `None` for a path nobody serves.
    pub fn allowed(&self, path: &str) -> Option<&[Method]> {
        self.methods
            .iter()
            .find(|(pattern, _)| pattern.is_match(path))
            .map(|(_, methods)| methods.as_slice())
    }
}

/// The document's skeleton: what the routes add their paths to.
pub fn skeleton() -> OpenApi {
    let mut doc = OpenApi::new(
        InfoBuilder::new()
            .title("Beep")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(
                "Self-hostable backend for the Beep voice-messaging app. Errors are \
                 `{\"error\":{\"code\",\"message\"}}` with a stable code; routes that answered \
                 plain text in the original answer JSON when asked with \
                 `Accept: application/json`.",
            ))
            .build(),
        utoipa::openapi::Paths::new(),
    );
    doc.components = Some(
        ComponentsBuilder::new()
            .schema(ERROR_SCHEMA, ErrorBody::schema())
            .security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            )
            .security_scheme(
                TOKEN_QUERY,
                SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))),
            )
            .build(),
    );
    // Either scheme; a route that needs none says `security()`.
    doc.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(TOKEN_QUERY, Vec::<String>::new()),
    ]);
    doc
}

/// The failures shared by whole classes of routes, added where a route does not describe
/// them itself.
fn complete(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            dedupe_parameters(operation);
            let authenticated = operation.security.as_ref().is_none_or(|s| {
                !s.is_empty() && s.iter().all(|r| r != &SecurityRequirement::default())
            });
            if authenticated {
                add_error(
                    operation,
                    "401",
                    "No valid token: `missing_token`, `invalid_token`, `token_expired`, \
                     `token_revoked`",
                );
                add_error(
                    operation,
                    "503",
                    "Tokens cannot be checked right now: `auth_unavailable`",
                );
            }
            // Any URL can carry a NUL (`%00`), refused before routing.
            add_error(
                operation,
                "400",
                "The request is malformed: `invalid_query`, `invalid_path`, \
                 `invalid_request` (a NUL in the URL), `invalid_claim` (a forged \
                 `X-User-Claim` behind a proxy), or the route's own code",
            );
            if operation.request_body.is_some() {
                add_error(
                    operation,
                    "400",
                    "The body is malformed: `invalid_json`, or the route's own code",
                );
                add_error(
                    operation,
                    "413",
                    "The body is too large: `payload_too_large`",
                );
                add_error(
                    operation,
                    "415",
                    "The body is not JSON: `unsupported_media_type`",
                );
            }
        }
    }
}

/// utoipa infers path parameters from `web::Path` besides the ones a handler describes; the
/// described one (listed first) is kept.
fn dedupe_parameters(operation: &mut Operation) {
    let Some(parameters) = operation.parameters.as_mut() else {
        return;
    };
    let mut seen = Vec::new();
    parameters.retain(|parameter| match parameter {
        RefOr::T(parameter) => {
            let key = (parameter.name.clone(), parameter.parameter_in.clone());
            let first = !seen.contains(&key);
            seen.push(key);
            first
        }
        RefOr::Ref(_) => true,
    });
}

fn add_error(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::T(error_response(description)));
}

/// A response with the JSON error body.
pub fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ERROR_SCHEMA))),
        )
        .build()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

fn methods_of(item: &PathItem) -> Vec<Method> {
    [
        (&item.get, Method::GET),
        (&item.put, Method::PUT),
        (&item.post, Method::POST),
        (&item.delete, Method::DELETE),
        (&item.options, Method::OPTIONS),
        (&item.head, Method::HEAD),
        (&item.patch, Method::PATCH),
        (&item.trace, Method::TRACE),
    ]
    .into_iter()
    .filter(|(operation, _)| operation.is_some())
    .map(|(_, method)| method)
    .collect()
}

/// This document.
#[utoipa::path(
    tag = "platform",
    security(),
    responses((status = 200, description = "The OpenAPI 3.1 document of every route served", content_type = "application/json")),
)]
#[get("/openapi.json")]
async fn openapi_json(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.json().clone())
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(openapi_json);
}

/// What no route matched: 405 with `Allow` for a documented path, else 404 (both made JSON
/// by the request wrapper).
pub async fn unrouted(req: HttpRequest, doc: web::Data<ApiDocument>) -> HttpResponse {
    // The path as the router matched it (percent-decoded), not as sent.
    match doc.allowed(req.match_info().as_str()) {
        Some(methods) if !methods.is_empty() => {
            let allow = methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut response = HttpResponse::MethodNotAllowed();
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                response.insert_header((header::ALLOW, allow));
            }
            response.finish()
        }
        _ => HttpResponse::NotFound().finish(),
    }
}
