//! Where bites live: the [`BiteStore`] seam, and its sled engine ([`SledStore`]).

mod key;
mod sled_store;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::sled_store::SledStore;

/// What is known of one stored bite besides its audio. Also the JSON of the list route and
/// of the `bite_stored` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BiteMeta {
    pub conversation: String,
    /// The speaker's user id and the client (device) they spoke from.
    pub user: String,
    pub client: String,
    /// Unix milliseconds of the first packet of speech.
    pub start: u64,
    /// Milliseconds of speech.
    pub duration: u64,
    /// Bytes of the Ogg Opus file.
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct NewBite {
    pub meta: BiteMeta,
    pub audio: Bytes,
}

/// The original scan's answer: starts in `[from, to]`, and hints for the pages either side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Scan {
    /// The last start before `from`, or 0.
    pub previous: u64,
    pub starts: Vec<u64>,
    /// The first start after those answered, or 0.
    pub next: u64,
}

/// Which bite: its conversation, start and speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BiteId {
    pub conversation: String,
    pub start: u64,
    pub user: String,
    pub client: String,
}

impl From<&BiteMeta> for BiteId {
    fn from(meta: &BiteMeta) -> Self {
        Self {
            conversation: meta.conversation.clone(),
            start: meta.start,
            user: meta.user.clone(),
            client: meta.client.clone(),
        }
    }
}

/// A bite waiting for its transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub bite: BiteId,
    /// Unix ms when it is next due.
    pub due: u64,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// Where a bite's transcript stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptState {
    /// The transcript, as the transcription module stored it (JSON).
    Done(Vec<u8>),
    Pending,
    /// Given up on: in the dead letters, with the last error.
    Failed(String),
    /// No such bite, or one stored while transcription was off.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bite store: {0}")]
    Engine(#[from] sled::Error),
    #[error("bite store task: {0}")]
    Task(String),
    #[error("bite store: undecodable metadata under {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

/// The bite store's operations. Synchronous (the engine is); call from a blocking thread.
pub trait BiteStore: Send + Sync {
    /// Writes bites atomically and durably: when this returns, a crash keeps them.
    fn insert(&self, bites: &[NewBite]) -> Result<(), StoreError>;
    fn scan(
        &self,
        conversation: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Scan, StoreError>;
    /// Metadata of the bites starting in `[from, to]`, oldest first. Stops after `limit`, but
    /// not inside a run of equal starts, so paging by start neither repeats nor skips.
    fn list(
        &self,
        conversation: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<BiteMeta>, StoreError>;
    /// The bite starting at `start`: the given speaker's, or else the first.
    fn get(
        &self,
        conversation: &str,
        start: u64,
        speaker: Option<(&str, &str)>,
    ) -> Result<Option<(BiteMeta, Bytes)>, StoreError>;
    /// Deletes every bite of a conversation; returns how many.
    fn delete_conversation(&self, conversation: &str) -> Result<usize, StoreError>;
    /// Deletes up to `max` bites that started before `cutoff`; returns how many.
    fn delete_started_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    // ---- transcription: a durable queue of jobs, beside the bites they are for ----

    /// Jobs due at `now`, oldest due first, at most `max`.
    fn due_jobs(&self, now: u64, max: usize) -> Result<Vec<Job>, StoreError>;
    /// When the next job is due, if any is queued.
    fn next_due(&self) -> Result<Option<u64>, StoreError>;
    /// Stores a bite's transcript (JSON), ends its job and marks it for the search index, in
    /// one transaction; false (and nothing stored) when the job is gone, its bite deleted
    /// meanwhile.
    fn put_transcript(&self, bite: &BiteId, transcript: &[u8]) -> Result<bool, StoreError>;
    /// Transcripts (JSON) stored but not yet indexed for search, at most `max`.
    fn unindexed(&self, max: usize) -> Result<Vec<(BiteId, Vec<u8>)>, StoreError>;
    /// The bite's transcript is in the search index; false when the bite (and its transcript)
    /// was deleted meanwhile, so the index row must go too.
    fn indexed(&self, bite: &BiteId) -> Result<bool, StoreError>;
    /// Puts a failed job back in the queue for `job.due`, or, when `dead`, in the dead letters;
    /// nothing when the job is gone.
    fn job_failed(&self, job: &Job, dead: bool) -> Result<(), StoreError>;
    /// Ends a job without a transcript (its bite is gone).
    fn drop_job(&self, bite: &BiteId) -> Result<(), StoreError>;
    /// The transcript of the bite starting at `start`: the given speaker's, or else the first.
    fn transcript(
        &self,
        conversation: &str,
        start: u64,
        speaker: Option<(&str, &str)>,
    ) -> Result<TranscriptState, StoreError>;
    /// Jobs given up on, oldest first, at most `max`.
    fn dead_letters(&self, max: usize) -> Result<Vec<Job>, StoreError>;
    /// Jobs queued (not dead).
    fn queued(&self) -> Result<usize, StoreError>;
    /// Puts every dead letter back in the queue, due at `now` with no attempts; how many.
    fn requeue_dead(&self, now: u64) -> Result<usize, StoreError>;
}

pub type SharedStore = Arc<dyn BiteStore>;

/// Runs a store call on a blocking thread, as async callers must: the engine is synchronous.
pub async fn blocking<T: Send + 'static>(
    store: &SharedStore,
    work: impl FnOnce(&dyn BiteStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || work(store.as_ref()))
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
}
