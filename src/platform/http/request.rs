//! Per-request telemetry: an `X-Request-ID` on every response (the caller's, when it sends a
//! sane one), a tracing span carrying it around every log line of the request, and the
//! Prometheus request count and latency per matched route.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, FromRequest, HttpMessage as _, HttpRequest};
use tracing::Instrument as _;

use crate::platform::ids::random_hex128;
use crate::platform::telemetry::Metrics;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served; handlers can extract it to pass it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl FromRequest for RequestId {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(random_hex128()));
        ready(Ok(id))
    }
}

/// An incoming id is kept only if it is short and plain, so it cannot forge log lines.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub struct RequestTelemetry {
    metrics: Option<Metrics>,
}

impl RequestTelemetry {
    /// `metrics: None` leaves Prometheus out (telemetry.metrics = false).
    pub fn new(metrics: Option<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestTelemetry
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = RequestTelemetryMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestTelemetryMiddleware {
            service: Rc::new(service),
            metrics: self.metrics.clone(),
        }))
    }
}

pub struct RequestTelemetryMiddleware<S> {
    service: Rc<S>,
    metrics: Option<Metrics>,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for RequestTelemetryMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = LocalBoxFuture<Result<ServiceResponse<B>, Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| acceptable(id))
            .map_or_else(random_hex128, str::to_owned);
        let header = HeaderValue::from_str(&id).ok();
        let method = req.method().clone();
        let span =
            tracing::info_span!("request", request_id = %id, method = %method, path = %req.path());
        req.extensions_mut().insert(RequestId(id));
        let service = Rc::clone(&self.service);
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let result = service.call(req).await;
                let elapsed = started.elapsed();
                let (status, route) = match &result {
                    Ok(res) => (res.status().as_u16(), res.request().match_pattern()),
                    Err(err) => (err.as_response_error().status_code().as_u16(), None),
                };
                if status >= 500 {
                    tracing::error!(
                        status,
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "request failed"
                    );
                } else {
                    tracing::debug!(
                        status,
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "request served"
                    );
                }
                if let Some(metrics) = metrics {
                    metrics.record_request(route, method_label(&method), status, elapsed);
                }
                let mut res = result?;
                if let Some(header) = header {
                    res.headers_mut().insert(X_REQUEST_ID, header);
                }
                Ok(res)
            }
            .instrument(span),
        )
    }
}

/// Known methods as static labels; anything else is one bucket, not one series per verb.
fn method_label(method: &actix_web::http::Method) -> &'static str {
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
