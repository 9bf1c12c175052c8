//! What heartbeat does: record a ping and push it, open a subscriber's stream, and end streams
//! whose watcher may no longer see the user.

use std::sync::Arc;
use std::time::Duration;

use actix_web::Responder;
use actix_web_lab::sse;
use metrics::Counter;
use tokio_util::sync::CancellationToken;

use super::error::HeartbeatError;
use super::hub::Hub;
use super::presence::{Presences, Recorded};
use super::relay::{Pinged, Relay};
use super::store::Store;
use crate::platform::Platform;
use crate::platform::bus::{Bus, BusError, Received, keep_listening};
use crate::platform::cache::Cache;
use crate::platform::clock::Clock;
use crate::platform::http::SSE_KEEP_ALIVE;
use crate::platform::ids::is_prefixed_id;
use crate::platform::ids::random_hex128;
use crate::platform::membership::{
    ContactRemoved, ConversationDeleted, Freshness, MemberRemoved, Relation, SharedRelations,
};
use crate::platform::sessions::Lease;

/// Longest status accepted, in characters. The documented ones are one digit; the Flutter
/// client sends "a".
pub const MAX_STATUS_CHARS: usize = 64;
/// How often pings are written behind to the database.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Users not seen for this long are dropped from memory (read again when next needed).
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(600);
const PING_WINDOW: Duration = Duration::from_secs(60);

struct PingCounters {
    stored: Counter,
    unchanged: Counter,
    limited: Counter,
}

pub struct HeartbeatService {
    presences: Arc<Presences>,
    hub: Hub,
    relay: Relay,
    relations: SharedRelations,
    cache: Cache,
    clock: Clock,
    /// This process, so it ignores its own pings coming back through the relay.
    origin: String,
    pings_per_minute: u64,
    counters: PingCounters,
}

impl HeartbeatService {
    pub fn new(platform: &Platform, relations: SharedRelations) -> Self {
        let config = &platform.config.heartbeat;
        let metrics = &platform.metrics;
        let pings = |outcome: &str| {
            metrics.counter(
                "beep_heartbeat_pings_total",
                &[("outcome", outcome.to_owned())],
            )
        };
        Self {
            presences: Arc::new(Presences::new(
                Store::new(platform.db.connection().clone()),
                config.write_interval_secs,
                platform.clock.clone(),
            )),
            hub: Hub::new(metrics.gauge("beep_heartbeat_subscribers", &[])),
            relay: Relay::choose(&platform.bus, &platform.cache),
            relations,
            cache: platform.cache.clone(),
            clock: platform.clock.clone(),
            origin: random_hex128(),
            pings_per_minute: config.pings_per_minute,
            counters: PingCounters {
                stored: pings("stored"),
                unchanged: pings("unchanged"),
                limited: pings("rate_limited"),
            },
        }
    }

    /// Records `user`'s ping and pushes it to their subscribers, unless it changes nothing.
    pub async fn ping(&self, user: &str, status: &str) -> Result<(), HeartbeatError> {
        checked_status(status)?;
        if self.pings_per_minute > 0 {
            let count = self
                .cache
                .increment(&format!("heartbeat:pings:{user}"), PING_WINDOW)
                .await
                .map_err(|err| HeartbeatError::Internal(err.into()))?;
            if count.value > self.pings_per_minute {
                self.counters.limited.increment(1);
                return Err(HeartbeatError::RateLimited {
                    retry_after: count.resets_in,
                });
            }
        }
        let Recorded::Stored { presence, shown } = self.presences.record(user, status).await?
        else {
            self.counters.unchanged.increment(1);
            return Ok(());
        };
        self.counters.stored.increment(1);
        if shown {
            self.hub.deliver(user, &presence.last);
        }
        self.relay
            .publish(Pinged {
                user: user.to_owned(),
                presence,
                origin: self.origin.clone(),
            })
            .await;
        Ok(())
    }

    /// `viewer`'s stream of `target`'s pings: the last visible one at once, then each new one.
    pub async fn subscribe(
        &self,
        lease: Lease,
        target: &str,
    ) -> Result<impl Responder + use<>, HeartbeatError> {
        if !is_prefixed_id(target, "u-") {
            return Err(HeartbeatError::InvalidId);
        }
        let viewer = lease.user().to_owned();
        // Registered before the check: a relation ending in between then reaches this
        // stream and ends it, instead of slipping past an unregistered one.
        let registered = self.hub.register(&viewer, target);
        match self
            .relations
            .relation(&viewer, target, Freshness::Cached)
            .await
            .map_err(|err| HeartbeatError::Unavailable(err.into()))?
        {
            Relation::Related => {}
            Relation::Stranger => return Err(HeartbeatError::NotRelated),
            Relation::NoSuchUser => return Err(HeartbeatError::UserNotFound),
        }
        let first = self.presences.visible(target).await?;
        let events = lease.until_ended(registered.into_stream(first));
        Ok(sse::Sse::from_infallible_stream(events).with_keep_alive(SSE_KEEP_ALIVE))
    }

    /// Ends streams whose watcher may no longer see the watched user (a contact removed, a
    /// conversation left or deleted), until `stop`.
    pub async fn watch_relations(self: Arc<Self>, bus: Bus, stop: CancellationToken) {
        keep_listening("heartbeat relations", &stop, || {
            self.follow_relations(&bus, &stop)
        })
        .await;
    }

    async fn follow_relations(&self, bus: &Bus, stop: &CancellationToken) -> Result<(), BusError> {
        let mut uncontacted = bus.subscribe::<ContactRemoved>().await?;
        let mut left = bus.subscribe::<MemberRemoved>().await?;
        let mut deleted = bus.subscribe::<ConversationDeleted>().await?;
        let everyone = |_: &str, _: &str| true;
        loop {
            let pairs = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                Some(received) = uncontacted.receive() => match received {
                    Received::Event(event) => {
                        let ContactRemoved { user, contact } = &event.data;
                        self.hub.pairs(|viewer, target| viewer == user && target == contact)
                    }
                    Received::Missed => self.hub.pairs(everyone),
                },
                Some(received) = left.receive() => match received {
                    Received::Event(event) => {
                        let user = &event.data.user;
                        self.hub.pairs(|viewer, target| viewer == user || target == user)
                    }
                    Received::Missed => self.hub.pairs(everyone),
                },
                Some(received) = deleted.receive() => match received {
                    Received::Event(event) => {
                        let members = &event.data.members;
                        self.hub.pairs(|viewer, target| {
                            members.iter().any(|member| member == viewer || member == target)
                        })
                    }
                    Received::Missed => self.hub.pairs(everyone),
                },
                else => return Ok(()),
            };
            self.recheck(pairs).await;
        }
    }

    /// Asks again, from the tables, whether each viewer may see each target; ends the
    /// streams of those who may not (and, failing closed, of those it cannot tell).
    async fn recheck(&self, pairs: Vec<(String, String)>) {
        for (viewer, target) in pairs {
            match self
                .relations
                .relation(&viewer, &target, Freshness::Fresh)
                .await
            {
                Ok(Relation::Related) => {}
                Ok(_) => {
                    self.hub.end(&viewer, &target);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a heartbeat stream ended: its relation cannot be checked");
                    self.hub.end(&viewer, &target);
                }
            }
        }
    }

    /// Writes pings behind to the database once a second, and forgets idle users, until
    /// `stop`; then writes what is left.
    pub async fn write_behind(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let evict_after_ms = i64::try_from(EVICT_IDLE_AFTER.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    self.flush().await;
                    let idle_since = self.clock.now_millis().saturating_sub(evict_after_ms);
                    self.presences.evict_idle(idle_since);
                }
            }
        }
        self.flush().await;
    }

    async fn flush(&self) {
        if let Err(err) = self.presences.flush().await {
            tracing::warn!(error = %err, "last-seen could not be written; retrying");
        }
    }

    /// Applies the other replicas' pings here until `stop`.
    pub async fn hear_replicas(self: Arc<Self>, stop: CancellationToken) {
        let presences = Arc::clone(&self.presences);
        self.relay
            .clone()
            .follow(self.origin.clone(), presences, self.hub.clone(), stop)
            .await;
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn presences(&self) -> &Presences {
        &self.presences
    }
}

/// 1 to [`MAX_STATUS_CHARS`] characters, none of them control characters.
fn checked_status(status: &str) -> Result<(), HeartbeatError> {
    if status.is_empty() {
        return Err(HeartbeatError::InvalidStatus("status is empty".into()));
    }
    if status.chars().count() > MAX_STATUS_CHARS {
        return Err(HeartbeatError::InvalidStatus(format!(
            "status is longer than {MAX_STATUS_CHARS} characters"
        )));
    }
    if status.chars().any(char::is_control) {
        return Err(HeartbeatError::InvalidStatus(
            "status contains a control character".into(),
        ));
    }
    Ok(())
}
