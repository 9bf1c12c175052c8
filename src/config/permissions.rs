//! `[permissions]`.

use serde::{Deserialize, Serialize};

/// Membership checks and their cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsConfig {
    /// How long an answer stays cached. Membership events clear it at once; after a gap in
    /// the events the in-process answers are dropped and the shared ones go unused this long.
    pub cache_ttl_secs: u64,
    /// Who may call `GET /permissions/user/{user}/conversation/{conversation}`.
    pub route: PermissionsRoute,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 300,
            route: PermissionsRoute::Off,
        }
    }
}

/// Exposure of the original internal permissions route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionsRoute {
    /// Not served (404); services in this process ask in-process.
    #[default]
    Off,
    /// Served to peers on loopback or private networks only (split deployments).
    Private,
    /// Served to anyone who can reach it.
    Public,
}
