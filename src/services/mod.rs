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

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service {0:?} is not compiled into this binary")]
    Unknown(String),
    #[error("{service}: {reason}")]
    Service {
        service: &'static str,
        reason: String,
    },
}

/// Refuses a service name that is not compiled into this binary.
pub fn check_compiled(names: &[&str]) -> Result<(), BuildError> {
    match names.iter().find(|name| !COMPILED.contains(name)) {
        Some(unknown) => Err(BuildError::Unknown((*unknown).to_owned())),
        None => Ok(()),
    }
}

/// Builds the named services over the platform, wiring the narrow traits one service answers
/// for another (core's user directory for auth, core's memberships for permissions,
/// permissions' access check for bites).
// Services that need nothing from the platform yet leave it unused in some feature sets.
#[cfg_attr(not(feature = "core"), allow(unused_variables))]
pub fn build(names: &[&str], platform: &Platform) -> Result<Vec<Arc<dyn Service>>, BuildError> {
    check_compiled(names)?;
    let hosted = |name: &str| names.contains(&name);
    #[cfg(feature = "core")]
    let core = hosted("core").then(|| Arc::new(core::Core::new(platform)));
    #[cfg(feature = "permissions")]
    let permissions = if hosted("permissions") {
        #[cfg(feature = "core")]
        let source: Option<crate::platform::membership::SharedMembership> = core
            .as_ref()
            .map(|core| Arc::clone(&core.conversations) as _);
        #[cfg(not(feature = "core"))]
        let source: Option<crate::platform::membership::SharedMembership> = None;
        let source = source.ok_or(BuildError::Service {
            service: "permissions",
            reason: "needs core in the same process to read memberships".into(),
        })?;
        Some(Arc::new(permissions::Permissions::new(platform, source)))
    } else {
        None
    };

    let mut services: Vec<Arc<dyn Service>> = Vec::with_capacity(names.len());
    for name in COMPILED.iter().filter(|name| hosted(name)) {
        let service: Arc<dyn Service> = match *name {
            #[cfg(feature = "auth")]
            "auth" => {
                #[cfg(feature = "core")]
                let users: Option<crate::platform::users::SharedDirectory> =
                    core.as_ref().map(|core| Arc::clone(&core.users) as _);
                #[cfg(not(feature = "core"))]
                let users: Option<crate::platform::users::SharedDirectory> = None;
                let users = users.ok_or(BuildError::Service {
                    service: "auth",
                    reason: "needs core in the same process to find and create users".into(),
                })?;
                let auth =
                    auth::Auth::new(platform, users).map_err(|reason| BuildError::Service {
                        service: "auth",
                        reason,
                    })?;
                Arc::new(auth)
            }
            #[cfg(feature = "core")]
            "core" => match &core {
                Some(core) => Arc::clone(core) as Arc<dyn Service>,
                None => continue,
            },
            #[cfg(feature = "permissions")]
            "permissions" => match &permissions {
                Some(permissions) => Arc::clone(permissions) as Arc<dyn Service>,
                None => continue,
            },
            #[cfg(feature = "heartbeat")]
            "heartbeat" => Arc::new(heartbeat::Heartbeat),
            #[cfg(feature = "pictures")]
            "pictures" => Arc::new(pictures::Pictures),
            #[cfg(feature = "bites")]
            "bites" => {
                #[cfg(feature = "permissions")]
                let access: Option<crate::platform::membership::SharedAccess> = permissions
                    .as_ref()
                    .map(|permissions| Arc::clone(&permissions.checker) as _);
                #[cfg(not(feature = "permissions"))]
                let access: Option<crate::platform::membership::SharedAccess> = None;
                let access = access.ok_or(BuildError::Service {
                    service: "bites",
                    reason: "needs permissions in the same process to check memberships".into(),
                })?;
                let bites =
                    bites::Bites::new(platform, access).map_err(|err| BuildError::Service {
                        service: "bites",
                        reason: err.to_string(),
                    })?;
                Arc::new(bites)
            }
            other => return Err(BuildError::Unknown(other.to_owned())),
        };
        services.push(service);
    }
    Ok(services)
}
