//! permissions: "may user U touch conversation C?" (`/permissions`), the original
//! `permissions` service.
//!
//! Answers come from a cache filled on a miss from core's memberships and cleared by core's
//! membership events, so a removed member loses access as soon as the event arrives. Every
//! replica hears every event, so each keeps its answers in-process; with Redis they are also
//! shared, so one replica's read serves the others. Other services ask through
//! [`AccessCheck`]; split deployments can ask the original internal route.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, PermissionsRoute};
use crate::platform::Platform;
use crate::platform::bus::{Bus, BusError, keep_listening};
use crate::platform::cache::Cache;
use crate::platform::http::ApiError;
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::{
    AccessCheck, AccessError, ConversationDeleted, MemberAdded, MemberRemoved, SharedMembership,
};
use crate::platform::service::Service;
use crate::platform::workers::Workers;

const MEMBER: &[u8] = b"1";
const NOT_MEMBER: &[u8] = b"0";

pub struct Permissions {
    pub checker: Arc<Checker>,
    route: PermissionsRoute,
    bus: Bus,
}

impl Permissions {
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
            checker: Arc::new(Checker {
                local,
                shared,
                source,
                ttl: Duration::from_secs(config.cache_ttl_secs.max(1)),
                invalidations: AtomicU64::new(0),
                listening: AtomicBool::new(false),
            }),
            route: config.route,
            bus: platform.bus.clone(),
        }
    }
}

pub struct Checker {
    /// This process's answers.
    local: Cache,
    /// Answers shared with the other replicas (Redis), when the platform cache is not local.
    shared: Option<Cache>,
    source: SharedMembership,
    ttl: Duration,
    /// Counts the membership events this process has heard (twice each, see `forget`). A
    /// lookup that straddles one does not keep its answer, which may predate the change; one
    /// that does not is cleared by the event after it. So no stale answer outlives an event.
    invalidations: AtomicU64,
    /// Whether membership events are being heard. Answers are cached only then: one cached
    /// before the subscription (at start, or while NATS was away) could outlive an event this
    /// process never saw.
    listening: AtomicBool,
}

fn cache_key(user: &str, conversation: &str) -> String {
    format!("permissions:{user}+{conversation}")
}

/// Only well-formed ids are looked up (and cached): junk cannot fill the cache.
fn well_formed(user: &str, conversation: &str) -> bool {
    is_prefixed_id(user, "u-") && is_prefixed_id(conversation, "c-")
}

impl Checker {
    /// Whether membership events are being heard, so answers are cached.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    pub async fn check(&self, user: &str, conversation: &str) -> Result<bool, AccessError> {
        if !well_formed(user, conversation) {
            return Ok(false);
        }
        let key = cache_key(user, conversation);
        if let Some(answer) = self.local.get(&key).await.ok().flatten() {
            return Ok(answer.as_ref() == MEMBER);
        }
        let seen = self.invalidations.load(Ordering::SeqCst);
        if let Some(shared) = &self.shared
            && let Some(answer) = shared
                .get(&key)
                .await
                .map_err(|err| AccessError(err.into()))?
        {
            let member = answer.as_ref() == MEMBER;
            self.remember(&key, member, &[&self.local], seen).await;
            return Ok(member);
        }
        let member = self
            .source
            .is_member(user, conversation)
            .await
            .map_err(AccessError)?;
        match &self.shared {
            Some(shared) => {
                self.remember(&key, member, &[&self.local, shared], seen)
                    .await
            }
            None => self.remember(&key, member, &[&self.local], seen).await,
        }
        Ok(member)
    }

    /// Caches an answer read while the event counter stood at `seen`. If an event came in
    /// since, the answer may predate it: it is not written, or, when the event came during the
    /// write, written and removed again.
    async fn remember(&self, key: &str, member: bool, caches: &[&Cache], seen: u64) {
        let unchanged = || self.invalidations.load(Ordering::SeqCst) == seen;
        if !self.listening.load(Ordering::SeqCst) || !unchanged() {
            return;
        }
        let answer = if member { MEMBER } else { NOT_MEMBER };
        for cache in caches {
            if let Err(err) = cache.set(key, answer, self.ttl).await {
                tracing::warn!(error = %err, "a membership answer was not cached");
            }
        }
        if !unchanged() {
            for cache in caches {
                self.clear(cache, key).await;
            }
        }
    }

    /// An event's clear: count, clear the shared answer, count again, clear the local one. A
    /// lookup that read the shared answer before it was cleared saw neither count or only the
    /// first, so its local write lands before the local clear or sees the second count; one
    /// that read the database before the change (which precedes its event) sees the first.
    async fn forget(&self, user: &str, conversation: &str) {
        let key = cache_key(user, conversation);
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        if let Some(shared) = &self.shared {
            self.clear(shared, &key).await;
        }
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.clear(&self.local, &key).await;
    }

    async fn clear(&self, cache: &Cache, key: &str) {
        if let Err(err) = cache.delete(key).await {
            // Left to its TTL: the only way a stale answer can live on.
            tracing::error!(error = %err, key, "a membership answer could not be cleared");
        }
    }

    /// Clears answers on core's membership events until `stop`.
    async fn follow(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        keep_listening("permissions", &stop, || async {
            let result = self.listen(&bus, &stop).await;
            self.listening.store(false, Ordering::SeqCst);
            result
        })
        .await;
    }

    async fn listen(&self, bus: &Bus, stop: &CancellationToken) -> Result<(), BusError> {
        let mut added = bus.subscribe::<MemberAdded>().await?;
        let mut removed = bus.subscribe::<MemberRemoved>().await?;
        let mut deleted = bus.subscribe::<ConversationDeleted>().await?;
        bus.confirm_subscriptions().await?;
        self.listening.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                Some(event) = added.next() => {
                    self.forget(&event.data.user, &event.data.conversation).await;
                }
                Some(event) = removed.next() => {
                    self.forget(&event.data.user, &event.data.conversation).await;
                }
                Some(event) = deleted.next() => {
                    for member in &event.data.members {
                        self.forget(member, &event.data.conversation).await;
                    }
                }
                else => return Ok(()),
            }
        }
    }
}

impl AccessCheck for Checker {
    fn may_access<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, Result<bool, AccessError>> {
        self.check(user, conversation).boxed()
    }
}

impl Service for Permissions {
    fn name(&self) -> &'static str {
        "permissions"
    }

    fn routes(&self, cfg: &mut web::ServiceConfig) {
        if self.route == PermissionsRoute::Off {
            return;
        }
        cfg.service(
            web::resource("/permissions/user/{user}/conversation/{conversation}")
                .app_data(web::Data::new(RouteState {
                    checker: Arc::clone(&self.checker),
                    route: self.route,
                }))
                .get(may_access),
        );
    }

    fn start(&self, workers: &mut Workers) {
        let checker = Arc::clone(&self.checker);
        let bus = self.bus.clone();
        workers.spawn("permissions-invalidation", move |stop| {
            checker.follow(bus, stop)
        });
    }
}

struct RouteState {
    checker: Arc<Checker>,
    route: PermissionsRoute,
}

/// Loopback, private (RFC 1918, unique local) and link-local peers: an internal network.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
        },
    }
}

/// The original answered 200 or 401 (from a cache that never matched); here 200 or 403.
async fn may_access(
    state: web::Data<RouteState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    // The peer itself, never a forwarded address: this is about which network asks.
    if state.route == PermissionsRoute::Private
        && !req.peer_addr().is_some_and(|peer| is_internal(peer.ip()))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "internal_only",
            "this route answers internal networks only",
        ));
    }
    let (user, conversation) = path.into_inner();
    match state.checker.check(&user, &conversation).await {
        Ok(true) => Ok(HttpResponse::Ok().finish()),
        Ok(false) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_member",
            "not a member of this conversation",
        )),
        Err(err) => {
            tracing::error!(error = %err, "membership check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "permissions_unavailable",
                "membership cannot be checked right now",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_networks_are_loopback_private_and_link_local() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "169.254.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                is_internal(internal.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{internal}"
            );
        }
        for public in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(
                !is_internal(public.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{public}"
            );
        }
    }

    #[test]
    fn only_well_formed_ids_are_looked_up() {
        let user = "u-0123456789abcdef0123456789abcdef";
        let conversation = "c-0123456789abcdef0123456789abcdef";
        assert!(well_formed(user, conversation));
        assert!(!well_formed(conversation, user));
        assert!(!well_formed("u-junk", conversation));
        assert!(!well_formed(user, "c-0123456789ABCDEF0123456789ABCDEF"));
    }
}
