//! permissions: "may user U touch conversation C?" (`/permissions`), the original
//! `permissions` service.
//!
//! Answers come from a cache filled on a miss from core's memberships and cleared by core's
//! membership events, so a removed member loses access as soon as the event arrives. Every
//! replica hears every event, so each keeps its answers in-process; with Redis they are also
//! shared, so one replica's read serves the others. Other services ask through
//! [`AccessCheck`]; split deployments can ask the original internal route.

mod checker;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{CacheConfig, PermissionsRoute};
use crate::platform::Platform;
use crate::platform::bus::Bus;
use crate::platform::cache::Cache;
use crate::platform::membership::SharedMembership;
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub use self::checker::Checker;

pub struct Permissions {
    pub checker: Arc<Checker>,
    route: PermissionsRoute,
    bus: Bus,
}

impl Permissions {
    /// The access check permissions answers over NATS for services in other processes.
    pub fn answer(&self, answers: &mut crate::platform::rpc::Answers) {
        use crate::platform::remote::calls;
        let checker = Arc::clone(&self.checker);
        answers.add(
            calls::PERMISSIONS,
            calls::MAY_ACCESS,
            move |(user, conversation): (String, String)| {
                let checker = Arc::clone(&checker);
                async move { checker.check(&user, &conversation).await }
            },
        );
    }

    pub fn new(platform: &Platform, source: SharedMembership) -> Self {
        let config = &platform.config.permissions;
        let in_process = CacheConfig {
            url: "memory".into(),
            ..CacheConfig::default()
        };
        let (local, shared) = match Cache::open(&in_process, platform.clock.clone()) {
            Ok(local) if platform.cache.backend() != "memory" => {
                (local, Some(platform.cache.clone()))
            }
            _ => (platform.cache.clone(), None),
        };
        Self {
            checker: Arc::new(Checker::new(
                local,
                shared,
                source,
                Duration::from_secs(config.cache_ttl_secs.max(1)),
                platform.clock.clone(),
            )),
            route: config.route,
            bus: platform.bus.clone(),
        }
    }
}

impl Service for Permissions {
    fn name(&self) -> &'static str {
        "permissions"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::routes(cfg, Arc::clone(&self.checker), self.route);
    }

    fn start(&self, workers: &mut Workers) {
        let checker = Arc::clone(&self.checker);
        let bus = self.bus.clone();
        workers.spawn("permissions-invalidation", move |stop| {
            checker.follow(bus, stop)
        });
    }
}
