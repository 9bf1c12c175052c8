//! Liveness, readiness and metrics endpoints, at the root of the URL space.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::Platform;

pub fn routes(cfg: &mut web::ServiceConfig, metrics: bool) {
    // Resources (not bare routes) so another method on these paths is a 405, not a 404.
    cfg.service(web::resource("/healthz").get(healthz))
        .service(web::resource("/readyz").get(readyz));
    if metrics {
        cfg.service(web::resource("/metrics").get(prometheus));
    }
}

/// The process is alive and serving; touches no backend.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// Every configured backend answers: 200, else 503; the body names each backend's state.
async fn readyz(platform: web::Data<Platform>) -> HttpResponse {
    let readiness = platform.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(readiness)
}

async fn prometheus(platform: web::Data<Platform>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(platform.metrics.render())
}
