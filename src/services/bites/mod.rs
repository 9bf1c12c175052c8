//! bites: the WebRTC SFU routing audio per conversation (`/webrtc`), the bites cut from it
//! (one utterance of one speaker, stored as Ogg Opus) and the bite store (`/store`).
//!
//! The path of a packet: the SFU forwards it to the room (`sfu`) and hands it, without
//! waiting, to its speaker's task, which cuts utterances (`utterance`) and writes them as
//! Ogg (`ogg`); one writer stores them in batches (`pipeline`) in the store (`store`), then
//! announces them on `/store/…/subscribe` and as `beep.bites.bite_stored` (`events`). Old
//! bites expire (`retention`); removed members and deleted conversations leave the rooms and
//! the store (`membership`).

mod error;
mod events;
mod membership;
pub mod ogg;
mod pipeline;
mod retention;
mod routes;
pub mod sfu;
pub mod store;
pub mod transcription;
mod utterance;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::web;
use tokio::sync::{broadcast, mpsc};

use self::membership::Membership;
use self::pipeline::{Ingest, Writer};
use self::retention::Retention;
use self::routes::StoreState;
use self::sfu::{Sfu, SignalState};
use self::store::{NewBite, SharedStore, SledStore};
use crate::config::BitesConfig;
use crate::platform::Platform;
use crate::platform::bus::Bus;
use crate::platform::clock::Clock;
use crate::platform::membership::SharedAccess;
use crate::platform::service::{Routes, Service};
use crate::platform::workers::Workers;

pub use self::error::BitesError;
pub use self::events::BiteStored;
pub use self::utterance::SpeechRules;

/// Bites announced to `/store/…/subscribe` streams and not yet read by all of them.
const ANNOUNCE_BUFFER: usize = 256;

pub struct Bites {
    config: BitesConfig,
    clock: Clock,
    store: SharedStore,
    sfu: Arc<Sfu>,
    access: SharedAccess,
    bus: Bus,
    stored: metrics::Counter,
    announce: broadcast::Sender<Arc<store::BiteMeta>>,
    /// The writer's end of the finished-bites queue, taken when the writer starts.
    finished: Mutex<Option<mpsc::Receiver<NewBite>>>,
    /// The transcription engine; `None` when transcription is off.
    engine: Option<Arc<dyn transcription::Engine>>,
    transcriber_wake: Arc<tokio::sync::Notify>,
    transcripts: broadcast::Sender<(store::BiteId, Arc<transcription::Transcript>)>,
    metrics: crate::platform::telemetry::Metrics,
    index: Arc<transcription::TranscriptIndex>,
    transcription: crate::config::TranscriptionConfig,
}

impl Bites {
    pub fn new(platform: &Platform, access: SharedAccess) -> Result<Self, BitesError> {
        let config = platform.config.bites.clone();
        let engine = transcription::engine(
            &platform.config.transcription,
            &platform.config.server.data_dir,
        )
        .map_err(BitesError::TranscriptionSetup)?;
        let dir = platform.config.server.data_dir.join("bites");
        let store = SledStore::open(&dir)
            .map_err(|source| BitesError::StoreOpenFailed { path: dir, source })?
            .transcribing(engine.is_some());
        let store: SharedStore = Arc::new(store);
        let dropped = platform
            .metrics
            .counter("beep_bites_packets_dropped_total", &[]);
        let (ingest, finished) =
            Ingest::new(SpeechRules::from(&config), dropped, platform.clock.clone());
        let sfu = Arc::new(Sfu::new(
            &config.sfu,
            config.record.then_some(ingest),
            &platform.metrics,
        )?);
        Ok(Self {
            config,
            clock: platform.clock.clone(),
            store,
            sfu,
            access,
            bus: platform.bus.clone(),
            stored: platform.metrics.counter("beep_bites_stored_total", &[]),
            announce: broadcast::channel(ANNOUNCE_BUFFER).0,
            finished: Mutex::new(Some(finished)),
            engine,
            transcriber_wake: Arc::new(tokio::sync::Notify::new()),
            transcripts: broadcast::channel(ANNOUNCE_BUFFER).0,
            metrics: platform.metrics.clone(),
            index: Arc::new(transcription::TranscriptIndex::new(
                platform.db.connection().clone(),
            )),
            transcription: platform.config.transcription.clone(),
        })
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
                transcripts: self.transcripts.clone(),
                index: Arc::clone(&self.index),
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
                transcriber: Arc::clone(&self.transcriber_wake),
            };
            workers.spawn("bites-writer", move |stop| writer.run(finished, stop));
        }
        if let Some(engine) = &self.engine {
            let jobs = |outcome: &str| {
                self.metrics.counter(
                    "beep_transcription_jobs_total",
                    &[("outcome", outcome.to_owned())],
                )
            };
            let transcriber = transcription::Transcriber {
                store: Arc::clone(&self.store),
                engine: Arc::clone(engine),
                index: Arc::clone(&self.index),
                config: self.transcription.clone(),
                clock: self.clock.clone(),
                wake: Arc::clone(&self.transcriber_wake),
                announce: self.transcripts.clone(),
                done: jobs("done"),
                retried: jobs("retried"),
                dead: jobs("dead"),
            };
            workers.spawn("bites-transcriber", move |stop| transcriber.run(stop));
        }
        if self.config.retention_secs > 0 {
            let retention = Retention {
                store: Arc::clone(&self.store),
                index: Arc::clone(&self.index),
                max_age: Duration::from_secs(self.config.retention_secs),
                every: Duration::from_secs(self.config.retention_sweep_secs.max(1)),
                clock: self.clock.clone(),
            };
            workers.spawn("bites-retention", move |stop| retention.run(stop));
        }
        let membership = Membership {
            sfu: Arc::clone(&self.sfu),
            store: Arc::clone(&self.store),
            index: Arc::clone(&self.index),
            bus: self.bus.clone(),
        };
        workers.spawn("bites-membership", move |stop| membership.follow(stop));
    }
}
