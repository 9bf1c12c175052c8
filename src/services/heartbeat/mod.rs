//! heartbeat: "last seen" pings, pushed to subscribers over Server-Sent Events (`/heartbeat`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use crate::platform::service::Service;

pub struct Heartbeat;

impl Service for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }
}
