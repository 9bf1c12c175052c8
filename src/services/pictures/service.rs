//! What pictures does: take an upload through the pipeline into the store, decide who may read
//! a picture, hand out its bytes (or a presigned URL), and sweep away what nobody shows.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::error::PicturesError;
use super::memory::{ByteCache, MAX_CACHED_OBJECT};
use super::process::{Processing, process};
use super::store::{PictureStore, Size, StoreError, StoredPicture, Swept, blob_key};
use crate::config::PicturesConfig;
use crate::platform::Platform;
use crate::platform::blobs::BlobStream;
use crate::platform::bus::{Bus, Received, keep_listening};
use crate::platform::clock::{Clock, millis};
use crate::platform::membership::SharedAccess;
use crate::platform::pictures::{PictureReleased, PictureUse, SharedUsage, is_picture_name};

/// Beyond this many cached answers a cache starts over: a bound on memory, not a policy.
const MAX_CACHED: usize = 100_000;
/// What a client refused for lack of an upload slot is told to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A picture's bytes, whole (from memory) or streamed from the store.
pub enum Body {
    Whole(Bytes),
    Streamed(BlobStream),
}

struct Cached<T> {
    value: Arc<T>,
    /// Unix ms on the platform clock.
    expires_at: i64,
}

#[derive(Default)]
struct Answers {
    pictures: HashMap<String, Cached<StoredPicture>>,
    uses: HashMap<String, Cached<PictureUse>>,
}

struct UploadCounters {
    stored: Counter,
    refused: Counter,
    busy: Counter,
}

pub struct PicturesService {
    store: Arc<PictureStore>,
    usage: SharedUsage,
    access: SharedAccess,
    bus: Bus,
    clock: Clock,
    pub(super) config: PicturesConfig,
    processing: Processing,
    /// Uploads being decoded or encoded: about one per core.
    processing_slots: Arc<Semaphore>,
    /// Uploads anywhere between their first byte and their answer.
    in_flight: Arc<Semaphore>,
    answers: Mutex<Answers>,
    /// Bumped by every release: a lookup straddling one does not keep its answer.
    invalidations: AtomicU64,
    /// Who-shows-which answers are cached only while releases are heard.
    listening: AtomicBool,
    bytes: ByteCache,
    uploads: UploadCounters,
    orphans_deleted: Counter,
}

impl PicturesService {
    pub fn new(
        platform: &Platform,
        store: Arc<PictureStore>,
        usage: SharedUsage,
        access: SharedAccess,
    ) -> Self {
        let config = platform.config.pictures.clone();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let slots = match config.concurrent_uploads {
            0 => cores,
            n => n,
        };
        let metrics = &platform.metrics;
        let uploads = |outcome: &str| {
            metrics.counter(
                "beep_pictures_uploads_total",
                &[("outcome", outcome.to_owned())],
            )
        };
        Self {
            store,
            usage,
            access,
            bus: platform.bus.clone(),
            clock: platform.clock.clone(),
            processing: Processing::new(&config),
            processing_slots: Arc::new(Semaphore::new(slots)),
            in_flight: Arc::new(Semaphore::new(config.uploads_in_flight)),
            answers: Mutex::default(),
            invalidations: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            bytes: ByteCache::new(config.memory_cache_bytes),
            uploads: UploadCounters {
                stored: uploads("stored"),
                refused: uploads("refused"),
                busy: uploads("busy"),
            },
            orphans_deleted: metrics.counter("beep_pictures_orphans_deleted_total", &[]),
            config,
        }
    }

    fn answers(&self) -> MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- uploads ----

    /// A place for one more upload, held until it is answered; refused when
    /// `pictures.uploads_in_flight` are already in progress.
    pub fn upload_slot(&self) -> Result<OwnedSemaphorePermit, PicturesError> {
        Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| {
                self.uploads.busy.increment(1);
                PicturesError::Busy {
                    retry_after: BUSY_RETRY_AFTER,
                }
            })
    }

    /// Validates, re-encodes and stores `upload` for `user`; answers the stored name. `slot`
    /// (from [`Self::upload_slot`]) and a processing permit are held by the decoding itself,
    /// so a client that hangs up does not free them while its picture is still being decoded.
    pub async fn store_upload(
        &self,
        user: &str,
        upload: Bytes,
        slot: OwnedSemaphorePermit,
    ) -> Result<String, PicturesError> {
        let permit = Arc::clone(&self.processing_slots)
            .acquire_owned()
            .await
            .map_err(|err| PicturesError::Unavailable(err.into()))?;
        let processing = self.processing;
        let processed = tokio::task::spawn_blocking(move || {
            let _held = (slot, permit);
            process(&upload, &processing)
        })
        .await
        .map_err(|err| {
            if err.is_panic() {
                // Deterministic for these bytes: retrying would not help.
                tracing::error!(error = %err, "decoding an upload panicked");
                PicturesError::Undecodable("the picture cannot be decoded".into())
            } else {
                PicturesError::Unavailable(err.into())
            }
        })?;
        let processed = match processed {
            Ok(processed) => processed,
            Err(err) => {
                self.uploads.refused.increment(1);
                return Err(err.into());
            }
        };
        let name = processed.name.clone();
        self.store.save(processed, user).await?;
        // Its uploaders changed.
        self.answers().pictures.remove(&name);
        self.uploads.stored.increment(1);
        Ok(name)
    }

    // ---- reads ----

    /// The picture `name` if `user` may see it: its uploaders always, every signed-in user
    /// when it is someone's profile picture, the members of the conversations it is the
    /// picture of. Cached answers may grant; only fresh ones refuse.
    pub async fn authorize(
        &self,
        user: &str,
        name: &str,
    ) -> Result<Arc<StoredPicture>, PicturesError> {
        if !is_picture_name(name) {
            return Err(PicturesError::NotFound);
        }
        if let Some(picture) = self.cached_grant(user, name) {
            return Ok(picture);
        }
        if let Some(picture) = self.cached_picture(name)
            && self.may_see(user, &picture, false).await?
        {
            return Ok(picture);
        }
        let picture = self.load_picture(name).await?;
        if self.may_see(user, &picture, true).await? {
            Ok(picture)
        } else {
            Err(PicturesError::Forbidden)
        }
    }

    async fn may_see(
        &self,
        user: &str,
        picture: &StoredPicture,
        fresh: bool,
    ) -> Result<bool, PicturesError> {
        if picture.uploaders.contains(user) {
            return Ok(true);
        }
        let usage = self.usage(&picture.name, fresh).await?;
        if usage.profile {
            return Ok(true);
        }
        // The picture of many conversations: one question to core, not one per conversation.
        if usage.more {
            return Ok(self.usage.shown_to(&picture.name, user).await?);
        }
        for conversation in &usage.conversations {
            if self.access.may_access(user, conversation).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The common case, answered under one lock: a cached picture that its viewer uploaded,
    /// or that is a profile picture.
    fn cached_grant(&self, user: &str, name: &str) -> Option<Arc<StoredPicture>> {
        let now = self.clock.now_millis();
        let answers = self.answers();
        let picture = answers
            .pictures
            .get(name)
            .filter(|cached| cached.expires_at > now)?;
        let granted = picture.value.uploaders.contains(user)
            || answers
                .uses
                .get(name)
                .is_some_and(|usage| usage.expires_at > now && usage.value.profile);
        granted.then(|| Arc::clone(&picture.value))
    }

    fn cached_picture(&self, name: &str) -> Option<Arc<StoredPicture>> {
        let now = self.clock.now_millis();
        self.answers()
            .pictures
            .get(name)
            .filter(|cached| cached.expires_at > now)
            .map(|cached| Arc::clone(&cached.value))
    }

    async fn load_picture(&self, name: &str) -> Result<Arc<StoredPicture>, PicturesError> {
        let picture = Arc::new(
            self.store
                .find(name)
                .await?
                .ok_or(PicturesError::NotFound)?,
        );
        let expires_at = self.clock.now_millis() + self.ttl_ms();
        let mut answers = self.answers();
        if answers.pictures.len() >= MAX_CACHED {
            answers.pictures.clear();
        }
        answers.pictures.insert(
            name.to_owned(),
            Cached {
                value: Arc::clone(&picture),
                expires_at,
            },
        );
        Ok(picture)
    }

    async fn usage(&self, name: &str, fresh: bool) -> Result<Arc<PictureUse>, PicturesError> {
        let now = self.clock.now_millis();
        if !fresh
            && let Some(cached) = self.answers().uses.get(name)
            && cached.expires_at > now
        {
            return Ok(Arc::clone(&cached.value));
        }
        let seen = self.invalidations.load(Ordering::SeqCst);
        let usage = Arc::new(self.usage.usage(name).await?);
        let mut answers = self.answers();
        // Kept only if no release landed during the lookup and releases are being heard.
        if self.listening.load(Ordering::SeqCst)
            && self.invalidations.load(Ordering::SeqCst) == seen
        {
            if answers.uses.len() >= MAX_CACHED {
                answers.uses.clear();
            }
            answers.uses.insert(
                name.to_owned(),
                Cached {
                    value: Arc::clone(&usage),
                    expires_at: now + self.ttl_ms(),
                },
            );
        }
        Ok(usage)
    }

    fn ttl_ms(&self) -> i64 {
        millis(Duration::from_secs(self.config.access_cache_ttl_secs))
    }

    /// The bytes of `range` (all when `None`) of one of `picture`'s encodings.
    pub async fn read(
        &self,
        picture: &StoredPicture,
        size: Size,
        range: Option<Range<u64>>,
    ) -> Result<Body, PicturesError> {
        let name = &picture.name;
        if picture.length(size) > MAX_CACHED_OBJECT {
            let stream = self
                .store
                .blobs()
                .stream(&blob_key(name, size), range)
                .await?;
            return stream.map(Body::Streamed).ok_or_else(|| self.gone(name));
        }
        let whole = match self.bytes.get(name, size) {
            Some(bytes) => bytes,
            None => {
                let bytes = self
                    .store
                    .blobs()
                    .get(&blob_key(name, size))
                    .await?
                    .ok_or_else(|| self.gone(name))?;
                self.bytes.insert(name, size, bytes.clone());
                bytes
            }
        };
        Ok(Body::Whole(match range {
            Some(range) => {
                let end =
                    usize::try_from(range.end).map_or(whole.len(), |end| end.min(whole.len()));
                let start = usize::try_from(range.start).map_or(end, |start| start.min(end));
                whole.slice(start..end)
            }
            None => whole,
        }))
    }

    /// A picture another replica's sweep deleted: forgotten here too.
    fn gone(&self, name: &str) -> PicturesError {
        self.answers().pictures.remove(name);
        self.bytes.remove(name);
        PicturesError::NotFound
    }

    /// A presigned URL of the encoding, when the store can make one.
    pub async fn presigned(&self, name: &str, size: Size) -> Result<Option<String>, PicturesError> {
        let ttl = Duration::from_secs(self.config.redirect_ttl_secs);
        Ok(self
            .store
            .blobs()
            .presigned_get(&blob_key(name, size), ttl)
            .await?)
    }

    // ---- workers ----

    /// Drops cached who-shows-which answers as core releases pictures.
    pub async fn follow_releases(&self, stop: CancellationToken) {
        keep_listening("pictures", &stop, || self.hear_releases(&stop)).await;
    }

    async fn hear_releases(&self, stop: &CancellationToken) -> Result<(), anyhow::Error> {
        let mut released = self.bus.subscribe::<PictureReleased>().await?;
        self.bus.confirm_subscriptions().await?;
        self.listening.store(true, Ordering::SeqCst);
        let heard = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                received = released.receive() => match received {
                    Some(Received::Event(event)) => self.forget_use(Some(&event.data.name)),
                    Some(Received::Missed) => self.forget_use(None),
                    None => break Err(anyhow::anyhow!("the subscription to picture releases ended")),
                },
            }
        };
        self.listening.store(false, Ordering::SeqCst);
        self.forget_use(None);
        heard
    }

    /// Forgets who shows `name`, or who shows anything.
    fn forget_use(&self, name: Option<&str>) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers();
        match name {
            Some(name) => {
                answers.uses.remove(name);
            }
            None => answers.uses.clear(),
        }
    }

    /// Every `pictures.gc_interval_secs`, one sweep.
    pub async fn sweep_orphans(&self, stop: CancellationToken) {
        let every = Duration::from_secs(self.config.gc_interval_secs);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.sweep_once().await {
                Ok(swept) if swept.deleted > 0 => {
                    tracing::info!(
                        checked = swept.checked,
                        deleted = swept.deleted,
                        "orphan pictures deleted"
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %crate::platform::http::error::ErrorChain(&err), "the orphan picture sweep failed");
                }
            }
        }
    }

    /// Deletes the pictures nobody has shown for `pictures.orphan_grace_secs`.
    pub async fn sweep_once(&self) -> Result<Swept, StoreError> {
        let grace = millis(Duration::from_secs(self.config.orphan_grace_secs));
        let usage = &self.usage;
        self.store
            .sweep(
                grace,
                |names| async move { usage.in_use(&names).await },
                |name| {
                    self.answers().pictures.remove(name);
                    self.bytes.remove(name);
                    self.orphans_deleted.increment(1);
                },
            )
            .await
    }
}
