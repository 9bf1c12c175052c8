//! bites: the WebRTC SFU routing audio per conversation (`/webrtc`), the bites cut from it
//! (one utterance of one speaker, stored as Ogg Opus) and the bite store (`/store`).
//!
//! The path of a packet: the SFU forwards it to the room (`sfu`) and hands it, without
//! waiting, to its speaker's task, which cuts utterances (`utterance`) and writes them as
//! Ogg (`ogg`); one writer stores them in batches (`pipeline`) in the store (`store`), then
//! announces them on `/store/…/subscribe` and as `beep.bites.bite_stored`.

pub mod ogg;
mod pipeline;
mod routes;
mod sfu;
pub mod store;
mod utterance;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::web;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use self::pipeline::{Ingest, Writer};
use self::routes::StoreState;
use self::sfu::{Sfu, SignalState};
use self::store::{NewBite, SharedStore, SledStore};
use crate::config::BitesConfig;
use crate::platform::Platform;
use crate::platform::bus::{Bus, BusError, keep_listening, unix_millis};
use crate::platform::membership::{ConversationDeleted, MemberRemoved, SharedAccess};
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub use self::pipeline::BiteStored;
pub use self::utterance::SpeechRules;

/// Bites announced to `/store/…/subscribe` streams and not yet read by all of them.
const ANNOUNCE_BUFFER: usize = 256;
/// Bites the retention worker deletes per batch.
const RETENTION_BATCH: usize = 1024;

pub struct Bites {
    config: BitesConfig,
    store: SharedStore,
    sfu: Arc<Sfu>,
    access: SharedAccess,
    bus: Bus,
    stored: metrics::Counter,
    announce: broadcast::Sender<Arc<store::BiteMeta>>,
    /// The writer's end of the finished-bites queue, taken when the writer starts.
    finished: Mutex<Option<mpsc::Receiver<NewBite>>>,
}

impl Bites {
    pub fn new(platform: &Platform, access: SharedAccess) -> Result<Self, String> {
        let config = platform.config.bites.clone();
        let dir = platform.config.server.data_dir.join("bites");
        let store: SharedStore = Arc::new(
            SledStore::open(&dir).map_err(|err| format!("opening {}: {err}", dir.display()))?,
        );
        let dropped = platform
            .metrics
            .counter("beep_bites_packets_dropped_total", &[]);
        let (ingest, finished) = Ingest::new(SpeechRules::from(&config), dropped);
        let sfu = Arc::new(Sfu::new(
            &config.sfu,
            config.record.then_some(ingest),
            &platform.metrics,
        )?);
        Ok(Self {
            config,
            store,
            sfu,
            access,
            bus: platform.bus.clone(),
            stored: platform.metrics.counter("beep_bites_stored_total", &[]),
            announce: broadcast::channel(ANNOUNCE_BUFFER).0,
            finished: Mutex::new(Some(finished)),
        })
    }

    /// Deletes bites older than `retention_secs`, every `retention_sweep_secs`.
    async fn retain(
        store: SharedStore,
        max_age: Duration,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cutoff = u64::try_from(unix_millis())
                .unwrap_or(0)
                .saturating_sub(max_age.as_millis() as u64);
            match Self::sweep(&store, cutoff).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "old bites deleted"),
                Err(err) => tracing::error!(error = %err, "retention sweep failed"),
            }
        }
    }

    /// Deletes every bite that started before `cutoff`, a batch at a time.
    async fn sweep(store: &SharedStore, cutoff: u64) -> Result<usize, store::StoreError> {
        let mut total = 0;
        loop {
            let deleted = store::blocking(store, move |store| {
                store.delete_started_before(cutoff, RETENTION_BATCH)
            })
            .await?;
            total += deleted;
            if deleted < RETENTION_BATCH {
                return Ok(total);
            }
        }
    }
}

impl Service for Bites {
    fn name(&self) -> &'static str {
        "bites"
    }

    fn routes(&self, cfg: &mut Routes<'_>) {
        routes::configure(
            cfg,
            web::Data::new(StoreState {
                store: Arc::clone(&self.store),
                access: Arc::clone(&self.access),
                config: self.config.clone(),
                announce: self.announce.clone(),
            }),
        );
        sfu::configure(
            cfg,
            web::Data::new(SignalState {
                sfu: Arc::clone(&self.sfu),
                access: Arc::clone(&self.access),
                ice_servers: self.config.sfu.ice_servers.clone(),
                max_message_bytes: self.config.sfu.max_message_bytes,
            }),
        );
    }

    fn start(&self, workers: &mut Workers) {
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(finished) = finished {
            let writer = Writer {
                store: Arc::clone(&self.store),
                bus: self.bus.clone(),
                flush_every: Duration::from_millis(self.config.flush_interval_ms.max(1)),
                announce: self.announce.clone(),
                stored: self.stored.clone(),
            };
            workers.spawn("bites-writer", move |stop| writer.run(finished, stop));
        }
        if self.config.retention_secs > 0 {
            let store = Arc::clone(&self.store);
            let max_age = Duration::from_secs(self.config.retention_secs);
            let every = Duration::from_secs(self.config.retention_sweep_secs.max(1));
            workers.spawn("bites-retention", move |stop| {
                Self::retain(store, max_age, every, stop)
            });
        }
        let membership = Membership {
            sfu: Arc::clone(&self.sfu),
            store: Arc::clone(&self.store),
            bus: self.bus.clone(),
        };
        workers.spawn("bites-membership", move |stop| membership.follow(stop));
    }
}

/// Follows membership: removed members leave rooms at once; deleted conversations lose their
/// room and their bites.
struct Membership {
    sfu: Arc<Sfu>,
    store: SharedStore,
    bus: Bus,
}

impl Membership {
    async fn follow(self, stop: CancellationToken) {
        keep_listening("bites", &stop, || self.listen(&stop)).await;
    }

    async fn listen(&self, stop: &CancellationToken) -> Result<(), BusError> {
        let mut removed = self.bus.subscribe::<MemberRemoved>().await?;
        let mut deleted = self.bus.subscribe::<ConversationDeleted>().await?;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                Some(event) = removed.next() => {
                    self.sfu.member_removed(&event.data.conversation, &event.data.user);
                }
                Some(event) = deleted.next() => {
                    let conversation = event.data.conversation;
                    self.sfu.conversation_deleted(&conversation);
                    let deleted = store::blocking(&self.store, move |store| {
                        store.delete_conversation(&conversation)
                    })
                    .await;
                    match deleted {
                        Ok(count) => tracing::debug!(count, "bites of a deleted conversation removed"),
                        Err(err) => tracing::error!(error = %err, "bites of a deleted conversation were not removed"),
                    }
                }
                else => return Ok(()),
            }
        }
    }
}
