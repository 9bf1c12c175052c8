//! The front door every service exposes, so `app.rs` hosts them as a list.

use futures_util::future::BoxFuture;

use super::workers::Workers;

/// Why a service could not get ready to serve.
pub type PrepareError = Box<dyn std::error::Error + Send + Sync>;

/// Where a service mounts its routes: each `.service(handler)` both serves the handler and
/// adds its `#[utoipa::path]` to the OpenAPI document.
pub type Routes<'a> = utoipa_actix_web::service_config::ServiceConfig<'a>;

/// What `app.rs` needs to host a service.
pub trait Service: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Registers the service's HTTP routes (under `/<name>`, or the original's paths).
    /// Runs once per HTTP worker thread, so it must only clone handles.
    fn routes(&self, _cfg: &mut Routes<'_>) {}

    /// Loads what the service's answers depend on before the port opens (auth: the revoked
    /// sessions and configured blocks, so no request is served by a verifier that has not
    /// heard of them yet). An error stops the start.
    fn prepare(&self) -> BoxFuture<'_, Result<(), PrepareError>> {
        Box::pin(async { Ok(()) })
    }

    /// Spawns the service's background work (bus subscriptions, sweepers) once per process.
    fn start(&self, _workers: &mut Workers) {}
}
