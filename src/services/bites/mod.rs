//! bites: the WebRTC SFU routing audio per conversation, the bite store and transcription (`/webrtc`, `/store`).
//!
//! Its routes, tables and workers arrive with its own issue; until then it is hosted (its
//! migration table exists, it is listed in `beep`'s service set) and serves nothing.

use super::Service;

pub struct Bites;

impl Service for Bites {
    fn name(&self) -> &'static str {
        "bites"
    }
}
