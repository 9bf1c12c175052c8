//! Retention: bites older than `retention_secs` are deleted, every `retention_sweep_secs`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{self, SharedStore, StoreError};
use super::transcription::TranscriptIndex;
use crate::platform::clock::Clock;

/// Bites deleted per batch, so one sweep never holds the store for long.
const BATCH: usize = 1024;

/// The retention worker.
pub struct Retention {
    pub store: SharedStore,
    pub index: Arc<TranscriptIndex>,
    pub max_age: Duration,
    pub every: Duration,
    pub clock: Clock,
}

impl Retention {
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cutoff = u64::try_from(self.clock.now_millis())
                .unwrap_or(0)
                .saturating_sub(self.max_age.as_millis() as u64);
            if let Err(err) = self.index.delete_started_before(cutoff).await {
                tracing::error!(error = %err, "old transcripts were not unindexed");
            }
            match sweep(&self.store, cutoff).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "old bites deleted"),
                Err(err) => tracing::error!(error = %err, "retention sweep failed"),
            }
        }
    }
}

/// Deletes every bite that started before `cutoff`, a batch at a time; returns how many.
pub async fn sweep(store: &SharedStore, cutoff: u64) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let deleted = store::blocking(store, move |store| {
            store.delete_started_before(cutoff, BATCH)
        })
        .await?;
        total += deleted;
        if deleted < BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::services::bites::store::{BiteMeta, NewBite, SledStore};

    #[tokio::test]
    async fn a_sweep_deletes_what_started_before_the_cutoff_past_one_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = Arc::new(SledStore::open(dir.path()).expect("open"));
        let bites: Vec<NewBite> = (0..BATCH as u64 + 10)
            .map(|start| NewBite {
                meta: BiteMeta {
                    conversation: "c-1".into(),
                    user: "u-a".into(),
                    client: "phone".into(),
                    start,
                    duration: 1,
                    size: 1,
                },
                audio: Bytes::from_static(b"o"),
            })
            .collect();
        store.insert(&bites).expect("insert");
        let cutoff = BATCH as u64 + 5;
        assert_eq!(sweep(&store, cutoff).await.expect("sweep"), BATCH + 5);
        assert_eq!(sweep(&store, cutoff).await.expect("sweep"), 0);
        let left = store.list("c-1", 0, u64::MAX, 100).expect("list");
        assert_eq!(left.first().map(|bite| bite.start), Some(cutoff));
        assert_eq!(left.len(), 5);
    }
}
