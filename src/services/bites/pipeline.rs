//! From routed packets to stored bites, off the forwarding path: each speaker's packets go
//! (without waiting) to that speaker's task, which cuts utterances and encodes them as Ogg;
//! one writer task stores them in batches and then announces them.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::events::BiteStored;
use super::ogg;
use super::store::{self, BiteMeta, NewBite, SharedStore};
use super::utterance::{Incoming, Segmenter, SpeechRules, Utterance};
use crate::platform::bus::Bus;
use crate::platform::clock::Clock;

/// Packets a speaker's task may fall behind by before new ones are dropped (from the bite,
/// never from forwarding): over two seconds of 20 ms audio.
const SPEAKER_QUEUE: usize = 128;
/// While a speaker talks, its task takes the packets waiting for it this often, instead of
/// being woken by each one: waking a task on another thread for every 20 ms packet cost more
/// than forwarding it. Far shorter than any silence that ends a bite; arrival times are taken
/// when packets arrive, so bites are cut the same.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Finished bites waiting for the writer; a full queue makes speakers' tasks wait, not the
/// forwarding.
const WRITER_QUEUE: usize = 1024;
/// Bites written in one batch at most.
const MAX_BATCH: usize = 512;

/// Hands out speaker feeds; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    rules: SpeechRules,
    bites: mpsc::Sender<NewBite>,
    dropped: Counter,
    clock: Clock,
}

/// One packet of a speaker, with the conversation it was spoken in.
pub struct Spoken {
    pub conversation: Arc<str>,
    pub packet: Incoming,
}

/// The sending end of one speaker's task. Dropping it ends the speaker's bite in progress.
pub struct SpeakerFeed {
    packets: mpsc::Sender<Spoken>,
    dropped: Counter,
    clock: Clock,
}

impl SpeakerFeed {
    /// A packet's arrival time, on the clock the speaker's task cuts bites by.
    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// Never waits: a packet the speaker's task has no room for is left out of the bite.
    pub fn push(&self, spoken: Spoken) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.packets.try_send(spoken) {
            self.dropped.increment(1);
        }
    }
}

impl Ingest {
    /// `dropped` counts packets the speakers' tasks had no room for.
    pub fn new(
        rules: SpeechRules,
        dropped: Counter,
        clock: Clock,
    ) -> (Self, mpsc::Receiver<NewBite>) {
        let (bites, finished) = mpsc::channel(WRITER_QUEUE);
        let ingest = Self {
            rules,
            bites,
            dropped,
            clock,
        };
        (ingest, finished)
    }

    /// Starts the task that cuts one speaker's (`user` on `client`) packets into bites.
    pub fn speaker(&self, user: &str, client: &str) -> SpeakerFeed {
        let (packets, taken) = mpsc::channel(SPEAKER_QUEUE);
        let task = SpeakerTask {
            user: user.to_owned(),
            client: client.to_owned(),
            segmenter: Segmenter::new(self.rules),
            conversation: None,
            bites: self.bites.clone(),
            clock: self.clock.clone(),
        };
        tokio::spawn(task.run(taken));
        SpeakerFeed {
            packets,
            dropped: self.dropped.clone(),
            clock: self.clock.clone(),
        }
    }
}

struct SpeakerTask {
    user: String,
    client: String,
    segmenter: Segmenter,
    conversation: Option<Arc<str>>,
    bites: mpsc::Sender<NewBite>,
    clock: Clock,
}

impl SpeakerTask {
    async fn run(mut self, mut packets: mpsc::Receiver<Spoken>) {
        let mut batch = Vec::with_capacity(SPEAKER_QUEUE);
        let mut open = true;
        let mut talking = false;
        while open {
            let deadline = self.segmenter.deadline_ms();
            if deadline.is_some_and(|deadline_ms| deadline_ms <= self.clock.now_millis()) {
                let finished = self.segmenter.expire(self.clock.now_millis());
                self.emit(finished).await;
                continue;
            }
            let deadline = deadline.map(|deadline_ms| {
                let wait = u64::try_from(deadline_ms - self.clock.now_millis()).unwrap_or(0);
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            if talking {
                // Look again soon (or at the silence deadline, if sooner) and take what came.
                // `try_recv` leaves no waker behind, so the packets meanwhile wake no one.
                let next = tokio::time::Instant::now() + DRAIN_EVERY;
                tokio::time::sleep_until(deadline.map_or(next, |deadline| deadline.min(next)))
                    .await;
                loop {
                    match packets.try_recv() {
                        Ok(spoken) => batch.push(spoken),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            } else {
                // Quiet: wait for the next packet, the silence deadline, or the feed's end.
                tokio::select! {
                    taken = packets.recv_many(&mut batch, SPEAKER_QUEUE) => open = taken > 0,
                    () = sleep_until(deadline) => {}
                }
            }
            talking = !batch.is_empty();
            for spoken in batch.drain(..) {
                if self.conversation.as_ref() != Some(&spoken.conversation) {
                    // A speaker who moves to another room ends the bite in the old one.
                    let finished = self.segmenter.finish();
                    self.emit(finished).await;
                    self.conversation = Some(spoken.conversation);
                }
                let finished = self.segmenter.push(spoken.packet);
                self.emit(finished).await;
            }
        }
        let finished = self.segmenter.finish();
        self.emit(finished).await;
    }

    async fn emit(&self, utterance: Option<Utterance>) {
        let (Some(utterance), Some(conversation)) = (utterance, &self.conversation) else {
            return;
        };
        let audio = bytes::Bytes::from(ogg::write(
            ogg::Header {
                serial: rand::RngExt::random(&mut rand::rng()),
                channels: utterance.channels,
                pre_skip: utterance.pre_skip,
            },
            &utterance.packets,
        ));
        let bite = NewBite {
            meta: BiteMeta {
                conversation: conversation.to_string(),
                user: self.user.clone(),
                client: self.client.clone(),
                start: u64::try_from(utterance.start_ms).unwrap_or(0),
                duration: utterance.duration_ms,
                size: audio.len() as u64,
            },
            audio,
        };
        if self.bites.send(bite).await.is_err() {
            tracing::warn!(user = %self.user, "a bite finished after the writer stopped");
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Stores finished bites: waits for the first, gathers what else arrives within the flush
/// interval, writes them in one durable batch, then announces each (locally and on the bus).
pub struct Writer {
    pub store: SharedStore,
    pub bus: Bus,
    pub flush_every: Duration,
    pub announce: broadcast::Sender<Arc<BiteMeta>>,
    pub stored: Counter,
    /// Woken once bites (and their transcription jobs) are stored.
    pub transcriber: Arc<tokio::sync::Notify>,
}

impl Writer {
    pub async fn run(self, mut finished: mpsc::Receiver<NewBite>, stop: CancellationToken) {
        let mut batch: Vec<NewBite> = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => break,
                received = finished.recv_many(&mut batch, MAX_BATCH) => received,
            };
            if received == 0 {
                break;
            }
            let deadline = tokio::time::Instant::now() + self.flush_every;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => break,
                    received = finished.recv_many(&mut batch, room) => {
                        if received == 0 { break }
                    }
                }
            }
            self.write(std::mem::take(&mut batch)).await;
        }
        // Shutting down: what is already finished is still written.
        while let Ok(bite) = finished.try_recv() {
            batch.push(bite);
        }
        if !batch.is_empty() {
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<NewBite>) {
        let metas: Vec<BiteMeta> = batch.iter().map(|bite| bite.meta.clone()).collect();
        if let Err(err) = store::blocking(&self.store, move |store| store.insert(&batch)).await {
            tracing::error!(error = %err, bites = metas.len(), "bites could not be stored");
            return;
        }
        self.stored.increment(metas.len() as u64);
        self.transcriber.notify_one();
        for meta in &metas {
            // No subscriber is not an error.
            let _listeners = self.announce.send(Arc::new(meta.clone()));
        }
        let published = metas.into_iter().map(|bite| {
            let bus = self.bus.clone();
            async move {
                let (conversation, start) = (bite.conversation.clone(), bite.start);
                if let Err(err) = bus.publish_durable(BiteStored { bite }).await {
                    tracing::warn!(error = %err, %conversation, start, "bite_stored was not published");
                }
            }
        });
        futures_util::future::join_all(published).await;
    }
}
