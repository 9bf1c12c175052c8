//! The services. Each folder is one service of the original Beep backend; its name is the Cargo
//! feature, the URL prefix, the migration table prefix and the split binary's suffix.
//!
//! Services never import each other: they talk through the bus, or through narrow traits in
//! `platform/` that `app.rs` wires to the owning service.

use std::sync::Arc;

use actix_web::web;

use crate::platform::Platform;
use crate::platform::workers::Workers;

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "bites")]
pub mod bites;
#[cfg(feature = "core")]
pub mod core;
#[cfg(feature = "heartbeat")]
pub mod heartbeat;
#[cfg(feature = "permissions")]
pub mod permissions;
#[cfg(feature = "pictures")]
pub mod pictures;

#[cfg(not(any(
    feature = "auth",
    feature = "core",
    feature = "heartbeat",
    feature = "pictures",
    feature = "permissions",
    feature = "bites"
)))]
compile_error!(
    "enable at least one service feature: auth, core, heartbeat, pictures, permissions, bites"
);

/// The front door of a service: what `app.rs` needs to host it.
pub trait Service: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Registers the service's HTTP routes (under `/<name>`, or the original's paths).
    /// Runs once per HTTP worker thread, so it must only clone handles.
    fn routes(&self, _cfg: &mut web::ServiceConfig) {}

    /// Spawns the service's background work (bus subscriptions, sweepers) once per process.
    fn start(&self, _workers: &mut Workers) {}
}

/// The services compiled into this binary, in start order.
pub const COMPILED: &[&str] = &[
    #[cfg(feature = "auth")]
    "auth",
    #[cfg(feature = "core")]
    "core",
    #[cfg(feature = "permissions")]
    "permissions",
    #[cfg(feature = "heartbeat")]
    "heartbeat",
    #[cfg(feature = "pictures")]
    "pictures",
    #[cfg(feature = "bites")]
    "bites",
];

/// Builds the named service over the platform; `None` if it is not compiled in.
pub fn build(name: &str, _platform: &Platform) -> Option<Arc<dyn Service>> {
    let service: Arc<dyn Service> = match name {
        #[cfg(feature = "auth")]
        "auth" => Arc::new(auth::Auth),
        #[cfg(feature = "core")]
        "core" => Arc::new(core::Core),
        #[cfg(feature = "permissions")]
        "permissions" => Arc::new(permissions::Permissions),
        #[cfg(feature = "heartbeat")]
        "heartbeat" => Arc::new(heartbeat::Heartbeat),
        #[cfg(feature = "pictures")]
        "pictures" => Arc::new(pictures::Pictures),
        #[cfg(feature = "bites")]
        "bites" => Arc::new(bites::Bites),
        _ => return None,
    };
    Some(service)
}
