//! What heartbeat does: record a ping and push it, open a subscriber's stream, and end streams
//! whose watcher may no longer see the user.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::Responder;
use actix_web_lab::sse;
use futures_util::{StreamExt as _, stream};
use metrics::Counter;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::HeartbeatError;
use super::hub::Hub;
use super::presence::{Presences, Recorded};
use super::relay::{Pinged, Relay};
use super::store::Store;
use crate::platform::Platform;
use crate::platform::cache::Cache;
use crate::platform::clock::Clock;
use crate::platform::http::SSE_KEEP_ALIVE;
use crate::platform::ids::is_prefixed_id;
use crate::platform::ids::random_hex128;
use crate::platform::membership::{Relation, RelationChange, SharedRelations};
use crate::platform::sessions::Lease;

/// Longest status accepted, in characters. The documented ones are one digit; the Flutter
/// client sends "a".
pub const MAX_STATUS_CHARS: usize = 64;
/// How often pings are written behind to the database.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Users not seen for this long are dropped from memory (read again when next needed).
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(600);
const PING_WINDOW: Duration = Duration::from_secs(60);
/// Relations asked again at once after a change: enough to end a popular user's watchers
/// within a second, few enough to leave the database to the requests.
const RECHECKS_AT_ONCE: usize = 8;
/// Attempts at the last write-behind on shutdown, a short pause apart.
const FINAL_FLUSH_ATTEMPTS: u32 = 3;

struct PingCounters {
    stored: Counter,
    unchanged: Counter,
    limited: Counter,
    /// Stored, but the relay queue was full: other replicas hear of the next one.
    unrelayed: Counter,
}

pub struct HeartbeatService {
    presences: Arc<Presences>,
    hub: Hub,
    relay: Relay,
    /// Pings to tell the other replicas (none for a lone process), and what drains it.
    relay_queue: Option<mpsc::Sender<Pinged>>,
    relay_drain: Mutex<Option<mpsc::Receiver<Pinged>>>,
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
        let relay = Relay::choose(&platform.bus, &platform.cache);
        let (relay_queue, relay_drain) = relay.queue().unzip();
        Self {
            presences: Arc::new(Presences::new(
                Store::new(platform.db.connection().clone()),
                config.write_interval_secs,
                platform.clock.clone(),
            )),
            hub: Hub::new(metrics.gauge("beep_heartbeat_subscribers", &[])),
            relay,
            relay_queue,
            relay_drain: Mutex::new(relay_drain),
            relations,
            cache: platform.cache.clone(),
            clock: platform.clock.clone(),
            origin: random_hex128(),
            pings_per_minute: config.pings_per_minute,
            counters: PingCounters {
                stored: pings("stored"),
                unchanged: pings("unchanged"),
                limited: pings("rate_limited"),
                unrelayed: pings("not_relayed"),
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
                .map_err(|err| HeartbeatError::Unavailable(err.into()))?;
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
        if let Some(queue) = &self.relay_queue {
            let pinged = Pinged {
                user: user.to_owned(),
                presence,
                origin: self.origin.clone(),
            };
            if queue.try_send(pinged).is_err() {
                self.counters.unrelayed.increment(1);
            }
        }
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
            .relation(&viewer, target)
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
    /// conversation left or deleted), as core announces those changes, until `stop`.
    pub async fn watch_relations(self: Arc<Self>, stop: CancellationToken) {
        let mut changes = self.relations.changes();
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            // What else is queued is handled in the same pass.
            let mut batch = vec![first];
            loop {
                match changes.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        batch.push(Ok(RelationChange::All));
                    }
                    Ok(change) => batch.push(Ok(change)),
                }
            }
            let mut changed = Vec::with_capacity(batch.len());
            for received in batch {
                match received {
                    Ok(change) => changed.push(change),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        changed.push(RelationChange::All)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let pairs = self.hub.pairs(|viewer, target| {
                changed.iter().any(|change| match change {
                    RelationChange::All => true,
                    RelationChange::Pair { viewer: v, user } => viewer == v && target == user,
                    RelationChange::Users(users) => {
                        users.iter().any(|user| user == viewer || user == target)
                    }
                })
            });
            self.recheck(pairs).await;
        }
    }

    /// Asks again whether each viewer may see each target; ends the streams of those who may
    /// not (and, failing closed, of those it cannot tell).
    async fn recheck(&self, pairs: Vec<(String, String)>) {
        stream::iter(pairs)
            .for_each_concurrent(RECHECKS_AT_ONCE, |(viewer, target)| async move {
                match self.relations.relation(&viewer, &target).await {
                    Ok(Relation::Related) => {}
                    Ok(_) => {
                        self.hub.end(&viewer, &target);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "a heartbeat stream ended: its relation cannot be checked");
                        self.hub.end(&viewer, &target);
                    }
                }
            })
            .await;
    }

    /// Writes pings behind to the database once a second, and forgets users neither seen
    /// nor watched lately, until `stop`; then writes what is left.
    pub async fn write_behind(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut evict = tokio::time::interval(EVICT_IDLE_AFTER / 10);
        let evict_after_ms = i64::try_from(EVICT_IDLE_AFTER.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(err) = self.presences.flush().await {
                        tracing::warn!(error = %err, "last-seen could not be written; retrying");
                    }
                }
                _ = evict.tick() => {
                    let idle_since = self.clock.now_millis().saturating_sub(evict_after_ms);
                    self.presences.evict_idle(idle_since, &self.hub.watched());
                }
            }
        }
        for attempt in 1..=FINAL_FLUSH_ATTEMPTS {
            match self.presences.flush().await {
                Ok(_) => return,
                Err(err) if attempt == FINAL_FLUSH_ATTEMPTS => {
                    tracing::error!(error = %err, "last-seen of the last second could not be written");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "last-seen could not be written; retrying");
                    tokio::time::sleep(FLUSH_EVERY / 4).await;
                }
            }
        }
    }

    /// Tells the other replicas of this process's pings until `stop`.
    pub async fn tell_replicas(self: Arc<Self>, stop: CancellationToken) {
        let drain = self
            .relay_drain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(queue) = drain {
            self.relay.clone().publish(queue, stop).await;
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
