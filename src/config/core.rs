//! `[core]`.

use serde::{Deserialize, Serialize};

/// Users, contacts, conversations and members.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Items per page of a list when the request gives no `limit`, and the largest `limit`.
    pub page_size: u64,
    pub max_page_size: u64,
    /// How long an answer to "may V see U's presence" stays cached; contact and membership
    /// events clear it at once.
    pub relation_cache_ttl_secs: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            page_size: 100,
            max_page_size: 1000,
            relation_cache_ttl_secs: 300,
        }
    }
}
