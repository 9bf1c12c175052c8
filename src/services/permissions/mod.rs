//! permissions: "may user U touch conversation C?", cached and invalidated by core's events (`/permissions`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use super::Service;

pub struct Permissions;

impl Service for Permissions {
    fn name(&self) -> &'static str {
        "permissions"
    }
}
