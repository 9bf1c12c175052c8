//! The services. Each folder is one service of the original Beep backend; its name is the Cargo
//! feature, the URL prefix, the migration table prefix and the split binary's suffix.
//!
//! Services never import each other: they talk through the bus, or through narrow traits in
//! `platform/` that `app.rs` wires to the owning service.

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

/// The services compiled into this binary, in the order `app.rs` builds and starts them: an
/// owner of a seam before the services that ask it.
pub const COMPILED: &[&str] = &[
    #[cfg(feature = "core")]
    "core",
    #[cfg(feature = "permissions")]
    "permissions",
    #[cfg(feature = "auth")]
    "auth",
    #[cfg(feature = "heartbeat")]
    "heartbeat",
    #[cfg(feature = "pictures")]
    "pictures",
    #[cfg(feature = "bites")]
    "bites",
];
