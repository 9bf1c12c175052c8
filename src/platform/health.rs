//! Liveness, readiness and metrics endpoints, at the root of the URL space.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};

use super::service::Routes;
use super::{Platform, Readiness};

pub fn routes(cfg: &mut Routes<'_>, metrics: bool) {
    cfg.service(healthz).service(readyz);
    if metrics {
        cfg.service(prometheus);
    }
}

/// `{"status":"ok"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is a constant")]
struct Alive {
    status: String,
}

/// The process is alive and serving; touches no backend.
#[utoipa::path(
    tag = "platform",
    security(),
    responses((status = 200, description = "Alive", body = Alive)),
)]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// Every configured backend answers: 200, else 503; the body names each backend's state.
#[utoipa::path(
    tag = "platform",
    security(),
    responses(
        (status = 200, description = "Every backend answers", body = Readiness),
        (status = 503, description = "A backend does not answer", body = Readiness),
    ),
)]
#[get("/readyz")]
async fn readyz(platform: web::Data<Platform>) -> HttpResponse {
    let readiness = platform.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(readiness)
}

/// Prometheus metrics (when `telemetry.metrics` is on).
#[utoipa::path(
    tag = "platform",
    security(),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
#[get("/metrics")]
async fn prometheus(platform: web::Data<Platform>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(platform.metrics.render())
}
