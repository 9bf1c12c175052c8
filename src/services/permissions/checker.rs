//! The cached answer to "is U a member of C", and how core's events clear it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::platform::bus::Bus;
use crate::platform::cache::Cache;
use crate::platform::clock::Clock;
use crate::platform::ids::is_prefixed_id;
use crate::platform::membership::{
    AccessCheck, AccessError, AccessEvent, AccessEvents, ConversationDeleted, MemberAdded,
    MemberRemoved, SharedMembership,
};

const MEMBER: &[u8] = b"1";
const NOT_MEMBER: &[u8] = b"0";

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
    /// Part of every in-process key: bumped when events may have been lost, which drops every
    /// answer cached so far at once (they expire unread).
    generation: AtomicU64,
    /// Until when (Unix ms on `clock`) shared answers are neither read nor written: set when
    /// events may have been lost, for one `ttl`, after which every shared answer written
    /// before the gap has expired. The other replicas cleared what they heard themselves;
    /// deleting every shared key would mean scanning the whole Redis keyspace.
    distrust_shared_until: AtomicI64,
    clock: Clock,
}

fn cache_key(user: &str, conversation: &str) -> String {
    format!("permissions:{user}+{conversation}")
}

fn local_key(generation: u64, user: &str, conversation: &str) -> String {
    format!("permissions:{generation}:{user}+{conversation}")
}

/// Only well-formed ids are looked up (and cached): junk cannot fill the cache.
fn well_formed(user: &str, conversation: &str) -> bool {
    is_prefixed_id(user, "u-") && is_prefixed_id(conversation, "c-")
}

impl Checker {
    pub fn new(
        local: Cache,
        shared: Option<Cache>,
        source: SharedMembership,
        ttl: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            local,
            shared,
            source,
            ttl,
            invalidations: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            distrust_shared_until: AtomicI64::new(0),
            clock,
        }
    }

    /// The shared cache, unless a gap in the events makes its answers suspect.
    fn trusted_shared(&self) -> Option<&Cache> {
        let trusted = self.clock.now_millis() >= self.distrust_shared_until.load(Ordering::SeqCst);
        self.shared.as_ref().filter(|_| trusted)
    }

    /// Whether membership events are being heard, so answers are cached.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    pub async fn check(&self, user: &str, conversation: &str) -> Result<bool, AccessError> {
        if !well_formed(user, conversation) {
            return Ok(false);
        }
        let seen = self.invalidations.load(Ordering::SeqCst);
        let local = local_key(self.generation.load(Ordering::SeqCst), user, conversation);
        if let Some(answer) = self.local.get(&local).await.ok().flatten() {
            return Ok(answer.as_ref() == MEMBER);
        }
        let key = cache_key(user, conversation);
        let shared = self.trusted_shared();
        if let Some(shared) = shared
            && let Some(answer) = shared
                .get(&key)
                .await
                .map_err(|err| AccessError(err.into()))?
        {
            let member = answer.as_ref() == MEMBER;
            self.remember(member, &[(&self.local, &local)], seen).await;
            return Ok(member);
        }
        let member = self
            .source
            .is_member(user, conversation)
            .await
            .map_err(AccessError)?;
        match shared {
            Some(shared) => {
                self.remember(member, &[(&self.local, &local), (shared, &key)], seen)
                    .await
            }
            None => self.remember(member, &[(&self.local, &local)], seen).await,
        }
        Ok(member)
    }

    /// Caches an answer read while the event counter stood at `seen`. If an event came in
    /// since, the answer may predate it: it is not written, or, when the event came during the
    /// write, written and removed again.
    async fn remember(&self, member: bool, caches: &[(&Cache, &str)], seen: u64) {
        let unchanged = || self.invalidations.load(Ordering::SeqCst) == seen;
        if !self.listening.load(Ordering::SeqCst) || !unchanged() {
            return;
        }
        let answer = if member { MEMBER } else { NOT_MEMBER };
        for (cache, key) in caches {
            if let Err(err) = cache.set(key, answer, self.ttl).await {
                tracing::warn!(error = %err, "a membership answer was not cached");
            }
        }
        if !unchanged() {
            for (cache, key) in caches {
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
        let local = local_key(self.generation.load(Ordering::SeqCst), user, conversation);
        self.clear(&self.local, &local).await;
    }

    /// Events may have been lost (this listener fell behind, NATS dropped messages or the
    /// connection, the subscription ended): every cached answer may be stale. The in-process
    /// ones are dropped at once (a new generation of keys); the shared ones are not trusted
    /// for one `ttl`, by when all written before the gap have expired.
    fn forget_all(&self, why: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        if self.shared.is_some() {
            let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
            self.distrust_shared_until.store(
                self.clock.now_millis().saturating_add(ttl_ms),
                Ordering::SeqCst,
            );
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(
            why,
            "membership events may have been lost: cached permission answers dropped"
        );
    }

    async fn clear(&self, cache: &Cache, key: &str) {
        if let Err(err) = cache.delete(key).await {
            // Left to its TTL: the only way a stale answer can live on.
            tracing::error!(error = %err, key, "a membership answer could not be cleared");
        }
    }

    /// Clears answers on core's membership events until `stop`.
    pub async fn follow(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        let mut events = AccessEvents::new("permissions", &bus, &self.listening);
        while let Some(event) = events.next(&stop).await {
            match event {
                AccessEvent::MemberAdded(MemberAdded { user, conversation })
                | AccessEvent::MemberRemoved(MemberRemoved { user, conversation }) => {
                    self.forget(&user, &conversation).await;
                }
                AccessEvent::ConversationDeleted(ConversationDeleted {
                    conversation,
                    members,
                }) => {
                    for member in &members {
                        self.forget(member, &conversation).await;
                    }
                }
                AccessEvent::ContactAdded(_) | AccessEvent::ContactRemoved(_) => {}
                AccessEvent::Missed(why) => self.forget_all(why),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BusConfig, CacheConfig};
    use crate::platform::membership::MembershipSource;

    /// Membership as the database answers it, switched by the test.
    struct Source(AtomicBool);

    impl MembershipSource for Source {
        fn is_member<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
            let member = self.0.load(Ordering::SeqCst);
            async move { Ok(member) }.boxed()
        }
    }

    fn id(prefix: &str, n: usize) -> String {
        format!("{prefix}-{n:032x}")
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_drops_its_cached_answers() {
        let clock = Clock::adjustable();
        let capacity = 4;
        let bus_config = BusConfig {
            url: "memory".into(),
            capacity,
            ..BusConfig::default()
        };
        let bus = Bus::open(&bus_config, clock.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let cache =
            Cache::open(&CacheConfig::default(), clock.clone()).unwrap_or_else(|e| panic!("{e}"));
        let source = Arc::new(Source(AtomicBool::new(true)));
        let checker = Arc::new(Checker::new(
            cache,
            None,
            source.clone(),
            Duration::from_secs(300),
            clock,
        ));
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&checker).follow(bus.clone(), stop.clone()));
        while !checker.is_listening() {
            tokio::task::yield_now().await;
        }
        let (user, conversation) = (id("u", 1), id("c", 1));
        assert!(checker.check(&user, &conversation).await.unwrap_or(false));

        // The user is removed, and its event is lost among more than the listener can buffer
        // (nothing yields to the listener while they are published).
        source.0.store(false, Ordering::SeqCst);
        let removed = |user: String| MemberRemoved {
            conversation: conversation.clone(),
            user,
        };
        bus.publish(removed(user.clone()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for n in 2..2 + 2 * capacity {
            bus.publish(removed(id("u", n)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut member = true;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            member = checker.check(&user, &conversation).await.unwrap_or(true);
            if !member {
                break;
            }
        }
        assert!(!member, "a stale answer outlived the lost event");
        stop.cancel();
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
