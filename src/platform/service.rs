//! The front door every service exposes, so `app.rs` hosts them as a list.

use super::workers::Workers;

/// Where a service mounts its routes: each `.service(handler)` both serves the handler and
/// adds its `#[utoipa::path]` to the OpenAPI document.
pub type Routes<'a> = utoipa_actix_web::service_config::ServiceConfig<'a>;

/// What `app.rs` needs to host a service.
pub trait Service: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Registers the service's HTTP routes (under `/<name>`, or the original's paths).
    /// Runs once per HTTP worker thread, so it must only clone handles.
    fn routes(&self, _cfg: &mut Routes<'_>) {}

    /// Spawns the service's background work (bus subscriptions, sweepers) once per process.
    fn start(&self, _workers: &mut Workers) {}
}
