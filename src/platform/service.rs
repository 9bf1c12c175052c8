//! The front door every service exposes, so `app.rs` hosts them as a list.

use actix_web::web;

use super::workers::Workers;

/// What `app.rs` needs to host a service.
pub trait Service: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Registers the service's HTTP routes (under `/<name>`, or the original's paths).
    /// Runs once per HTTP worker thread, so it must only clone handles.
    fn routes(&self, _cfg: &mut web::ServiceConfig) {}

    /// Spawns the service's background work (bus subscriptions, sweepers) once per process.
    fn start(&self, _workers: &mut Workers) {}
}
