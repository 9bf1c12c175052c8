//! The platform's wrapper around every request, in one layer because each layer costs every
//! request: an `X-Request-ID` on every response (the caller's, when it sends a sane one), a
//! tracing span carrying it around every log line of the request, Prometheus count and
//! latency per matched route, security headers, CORS, and error bodies made JSON.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::HttpMessage as _;
use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpResponse};
use tracing::Instrument as _;

use super::body::IdleTimeout;
use super::cors::CorsPolicy;
use super::error::{error_response, into_json_error};
use crate::platform::ids::random_hex128;
use crate::platform::telemetry::Metrics;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming id is kept only if it is short and plain, so it cannot forge log lines.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// What the wrapper adds, decided once at start.
pub struct RequestPolicy {
    /// How long a request body may stop arriving (`http.body_timeout_secs`).
    pub body_timeout: std::time::Duration,
    /// `None` when `telemetry.metrics = false`.
    pub metrics: Option<Metrics>,
    /// `None` when `http.cors.enabled = false`.
    pub cors: Option<CorsPolicy>,
    /// Set on every response that does not set them itself.
    pub security_headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestPolicy {
    pub fn security_headers(tls: bool) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        if tls {
            headers.push((
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            ));
        }
        headers
    }
}

/// The middleware factory: `App::wrap(PlatformLayer(Arc::new(policy)))`.
pub struct PlatformLayer(pub Arc<RequestPolicy>);

impl<S, B> Transform<S, ServiceRequest> for PlatformLayer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = PlatformMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PlatformMiddleware {
            service: Rc::new(service),
            policy: Arc::clone(&self.0),
        }))
    }
}

pub struct PlatformMiddleware<S> {
    service: Rc<S>,
    policy: Arc<RequestPolicy>,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;
type BodyStream = Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, PayloadError>>>>;

impl<S, B> Service<ServiceRequest> for PlatformMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<Result<Self::Response, Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        // Only requests with a body pay for the timer.
        if has_body(req.headers()) {
            let body = req.take_payload();
            let timed = IdleTimeout::new(body, self.policy.body_timeout);
            let timed: BodyStream = Box::pin(timed);
            req.set_payload(Payload::from(timed));
        }
        let id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| acceptable(id))
            .map_or_else(random_hex128, str::to_owned);
        let id_header = HeaderValue::from_str(&id).ok();
        // Only the id: it is what ties the request's log lines together, and span fields are
        // formatted on every request; method, path and status go on the closing event.
        let span = tracing::info_span!("request", request_id = %id);
        let method = method_label(req.method());
        let policy = Arc::clone(&self.policy);
        // Browsers send Origin on every cross-origin request; without one there is no CORS
        // to answer. A preflight is answered here, before routing and authentication.
        let origin = policy
            .cors
            .as_ref()
            .and_then(|_| req.headers().get(header::ORIGIN).cloned());
        let preflight = origin.is_some() && req.method() == Method::OPTIONS;
        // A NUL decoded from the path or query would reach a lookup that PostgreSQL refuses
        // (a 500) and SQLite answers: refused here once, for every route.
        let nul = req
            .uri()
            .path_and_query()
            .is_some_and(|target| target.as_str().contains("%00"));
        let service = Rc::clone(&self.service);
        Box::pin(
            async move {
                let result = if preflight {
                    let response = HttpResponse::new(StatusCode::NO_CONTENT);
                    Ok(req.into_response(response).map_into_right_body())
                } else if nul {
                    let response = error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the URL carries a NUL byte (%00)",
                    );
                    Ok(req.into_response(response).map_into_right_body())
                } else {
                    service.call(req).await.map(into_json_error)
                };
                let elapsed = started.elapsed();
                let elapsed_ms = elapsed.as_secs_f64() * 1e3;
                let mut res = match result {
                    Ok(res) => res,
                    Err(err) => {
                        let status = err.as_response_error().status_code().as_u16();
                        tracing::error!(method, status, elapsed_ms, error = %err, "request failed");
                        return Err(err);
                    }
                };
                let status = res.status().as_u16();
                let path = res.request().path();
                if status >= 500 {
                    tracing::error!(method, path, status, elapsed_ms, "request failed");
                } else {
                    tracing::debug!(method, path, status, elapsed_ms, "request served");
                }
                if let Some(metrics) = &policy.metrics {
                    metrics.record_request(res.request().match_pattern(), method, status, elapsed);
                }
                let headers = res.headers_mut();
                for (name, value) in &policy.security_headers {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                if let (Some(cors), Some(origin)) = (&policy.cors, &origin) {
                    cors.apply(origin, headers, preflight);
                }
                if let Some(id_header) = id_header {
                    headers.insert(X_REQUEST_ID, id_header);
                }
                Ok(res)
            }
            .instrument(span),
        )
    }
}

fn has_body(headers: &header::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// Known methods as static labels; anything else is one bucket, not one series per verb.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn request_ids_that_could_forge_logs_are_refused() {
        assert!(acceptable("abc-123_x.y:z"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("a\nb"));
        assert!(!acceptable(&"a".repeat(129)));
    }
}
