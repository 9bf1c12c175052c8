//! pictures: user and conversation pictures, stored as objects (`/pictures`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use crate::platform::service::Service;

pub struct Pictures;

impl Service for Pictures {
    fn name(&self) -> &'static str {
        "pictures"
    }
}
