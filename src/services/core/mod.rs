//! core: users, contacts, conversations and members (`/core`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use super::Service;

pub struct Core;

impl Service for Core {
    fn name(&self) -> &'static str {
        "core"
    }
}
