//! The worker: due jobs to the engine, a transcript stored or the job rescheduled (doubling
//! waits) or, past `transcription.max_attempts` or refused by the engine, dead-lettered.
//! Jobs live in the store, so a restart, a crash or an engine outage loses none.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, EngineError, Transcript};
use super::search::TranscriptIndex;
use crate::config::TranscriptionConfig;
use crate::platform::clock::Clock;
use crate::services::bites::store::{BiteId, Job, SharedStore, StoreError, blocking};

/// How long the worker sleeps when nothing is due and nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub struct Transcriber {
    pub store: SharedStore,
    pub engine: Arc<dyn Engine>,
    pub index: Arc<TranscriptIndex>,
    pub config: TranscriptionConfig,
    pub clock: Clock,
    /// Notified when bites (and their jobs) are stored.
    pub wake: Arc<Notify>,
    /// Transcripts as they are stored, for the bite streams.
    pub announce: broadcast::Sender<(BiteId, Arc<Transcript>)>,
    pub done: metrics::Counter,
    pub retried: metrics::Counter,
    pub dead: metrics::Counter,
}

impl Transcriber {
    pub async fn run(self, stop: CancellationToken) {
        let concurrency = self.config.concurrency.max(1);
        loop {
            let now = self.now();
            let due = blocking(&self.store, move |store| {
                store.due_jobs(now, concurrency * 4)
            })
            .await;
            let due = match due {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err, "transcription jobs cannot be read");
                    if self.pause(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            if due.is_empty() {
                self.reindex().await;
                let wait = self.until_next_due().await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let failed = std::sync::atomic::AtomicBool::new(false);
            let this = &self;
            let attempts =
                futures_util::stream::iter(due).for_each_concurrent(concurrency, |job| {
                    let failed = &failed;
                    async move {
                        if let Err(err) = this.try_attempt(job).await {
                            tracing::warn!(error = %err, "a transcription job cannot be updated");
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            tokio::select! {
                () = stop.cancelled() => return,
                () = attempts => {}
            }
            // A store that fails would have the same jobs come due at once, and again.
            if failed.into_inner() && self.pause(&stop).await {
                return;
            }
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.now_millis()).unwrap_or_default()
    }

    async fn until_next_due(&self) -> Duration {
        match blocking(&self.store, |store| store.next_due()).await {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(self.now())).min(IDLE_POLL),
            _ => IDLE_POLL,
        }
    }

    /// Waits `IDLE_POLL` after a store failure; true when stopped meanwhile.
    async fn pause(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(IDLE_POLL) => false,
        }
    }

    async fn try_attempt(&self, mut job: Job) -> Result<(), StoreError> {
        let bite = job.bite.clone();
        let found = blocking(&self.store, move |store| {
            store.get(
                &bite.conversation,
                bite.start,
                Some((&bite.user, &bite.client)),
            )
        })
        .await?;
        let Some((_, audio)) = found else {
            let bite = job.bite.clone();
            return blocking(&self.store, move |store| store.drop_job(&bite)).await;
        };
        match self.engine.transcribe(audio, &self.config.language).await {
            Ok(transcript) => {
                let bite = job.bite.clone();
                // Serializing strings and integers cannot fail.
                let json = serde_json::to_vec(&transcript).unwrap_or_default();
                let kept =
                    blocking(&self.store, move |store| store.put_transcript(&bite, &json)).await?;
                if !kept {
                    // Its bite was deleted while the engine worked.
                    return Ok(());
                }
                self.index(&job.bite, &transcript).await;
                self.done.increment(1);
                let _ = self.announce.send((job.bite, Arc::new(transcript)));
                Ok(())
            }
            Err(err) => {
                job.attempts += 1;
                job.error = Some(err.to_string());
                let dead = matches!(err, EngineError::Refused(_))
                    || job.attempts >= self.config.max_attempts;
                job.due = self.now() + self.backoff(job.attempts).as_millis() as u64;
                tracing::warn!(
                    conversation = %job.bite.conversation,
                    start = job.bite.start,
                    attempts = job.attempts,
                    dead,
                    error = %err,
                    "a bite was not transcribed"
                );
                if dead {
                    self.dead.increment(1);
                } else {
                    self.retried.increment(1);
                }
                blocking(&self.store, move |store| store.job_failed(&job, dead)).await
            }
        }
    }

    /// Adds a stored transcript to the search index. The store marked it "to index" with the
    /// transcript, so a failure here (or a crash before) is made good by `reindex`, without
    /// asking the engine again.
    async fn index(&self, bite: &BiteId, transcript: &Transcript) -> bool {
        if let Err(err) = self.index.add(bite, transcript).await {
            tracing::warn!(error = %err, conversation = %bite.conversation, start = bite.start, "a transcript is not indexed yet; retried when the worker is idle");
            return false;
        }
        let indexed = bite.clone();
        match blocking(&self.store, move |store| store.indexed(&indexed)).await {
            Ok(true) => {}
            // Deleted with its bite while it was being indexed: so goes its index row.
            Ok(false) => {
                if let Err(err) = self.index.remove(bite).await {
                    tracing::warn!(error = %err, "a deleted bite's transcript stays in the search index");
                }
            }
            Err(err) => tracing::warn!(error = %err, "an indexed transcript stays marked to index"),
        }
        true
    }

    /// Indexes transcripts stored but not indexed (the database was down, or the process
    /// stopped in between), a batch at a time, while nothing else is due.
    async fn reindex(&self) {
        const BATCH: usize = 64;
        let Ok(pending) = blocking(&self.store, |store| store.unindexed(BATCH)).await else {
            return;
        };
        for (bite, json) in pending {
            let Ok(transcript) = serde_json::from_slice::<Transcript>(&json) else {
                continue;
            };
            if !self.index(&bite, &transcript).await {
                // The index is still failing: try again on a later idle turn.
                return;
            }
        }
    }

    /// `retry_base_ms`, doubled for every failed attempt after the first, at most
    /// `retry_max_ms`.
    fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let wait = self
            .config
            .retry_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.config.retry_max_ms);
        Duration::from_millis(wait)
    }
}
