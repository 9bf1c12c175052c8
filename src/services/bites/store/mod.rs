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
