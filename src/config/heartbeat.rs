//! `[heartbeat]`.

use serde::{Deserialize, Serialize};

/// "Last seen": pings and who hears them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// A ping with the same status as the last one, sooner than this after it, is neither
    /// stored nor pushed: subscribers see a user's time move at most this often.
    pub write_interval_secs: u64,
    /// Pings one user may send per minute; past it, 429 `rate_limited` with `Retry-After`.
    pub pings_per_minute: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            write_interval_secs: 30,
            pings_per_minute: 30,
        }
    }
}
