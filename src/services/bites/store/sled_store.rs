//! The sled engine of the bite store.
//!
//! Two trees: `audio` (key → the Ogg file) and `index`, which holds the metadata (key → JSON,
//! small, so scans never read audio) and, under `expiry+<start><key>`, the bites in order of
//! age, so retention reads only what it deletes. Keys are laid out in `key`.
//!
//! Transcription keeps its durable queue here too, so a bite and its job are written
//! together: `transcription.jobs` (bite key → the job), `transcription.queue` (due, bite key:
//! the order jobs come due), `transcription.text` (`transcription+<conversation>@<start>…` →
//! the transcript) and `transcription.dead` (bite key → a job given up on).

use std::path::Path;

use bytes::Bytes;
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::key;
use super::{BiteId, BiteMeta, BiteStore, Job, NewBite, Scan, StoreError, TranscriptState};

pub struct SledStore {
    db: sled::Db,
    index: sled::Tree,
    audio: sled::Tree,
    jobs: sled::Tree,
    queue: sled::Tree,
    texts: sled::Tree,
    dead: sled::Tree,
    /// Transcripts stored but not yet in the search index (bite key -> `BiteId` JSON).
    unindexed: sled::Tree,
    /// New bites get a transcription job.
    transcribe: bool,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self {
            index: db.open_tree("bites.index")?,
            audio: db.open_tree("bites.audio")?,
            jobs: db.open_tree("transcription.jobs")?,
            queue: db.open_tree("transcription.queue")?,
            texts: db.open_tree("transcription.text")?,
            dead: db.open_tree("transcription.dead")?,
            unindexed: db.open_tree("transcription.unindexed")?,
            db,
            transcribe: false,
        })
    }

    /// Queues a transcription job with every bite inserted from now on.
    #[must_use]
    pub fn transcribing(mut self, on: bool) -> Self {
        self.transcribe = on;
        self
    }

    /// The key and metadata of the bite starting at `start`: the given speaker's, or else the
    /// first.
    fn find(
        &self,
        conversation: &str,
        start: u64,
        speaker: Option<(&str, &str)>,
    ) -> Result<Option<(Vec<u8>, sled::IVec)>, StoreError> {
        if let Some((user, client)) = speaker {
            let key = key::bite(conversation, start, user, client);
            return Ok(self.index.get(&key)?.map(|meta| (key, meta)));
        }
        let prefix = key::prefix(conversation);
        let upper = match start.checked_add(1) {
            Some(after) => key::at(&prefix, after),
            None => key::end(&prefix),
        };
        Ok(self
            .index
            .range(key::at(&prefix, start)..upper)
            .next()
            .transpose()?
            .map(|(key, meta)| (key.to_vec(), meta)))
    }

    fn bite_key(bite: &BiteId) -> Vec<u8> {
        key::bite(&bite.conversation, bite.start, &bite.user, &bite.client)
    }

    fn decode_job(key: &[u8], value: &[u8]) -> Result<Job, StoreError> {
        serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }

    /// Removes the jobs, transcripts and dead letters of `keys` (bites being deleted).
    fn remove_transcription(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut queue = sled::Batch::default();
        let mut jobs = sled::Batch::default();
        let mut texts = sled::Batch::default();
        let mut dead = sled::Batch::default();
        let mut unindexed = sled::Batch::default();
        for key in keys {
            if let Some(value) = self.jobs.get(key)? {
                queue.remove(key::queued(Self::decode_job(key, &value)?.due, key));
            }
            jobs.remove(key.as_slice());
            dead.remove(key.as_slice());
            unindexed.remove(key.as_slice());
            texts.remove(key::transcript_of(key));
        }
        // Jobs first: a crash in between leaves queue places without a job, which `due_jobs`
        // drops, never a job nobody will take.
        self.jobs.apply_batch(jobs)?;
        self.dead.apply_batch(dead)?;
        self.unindexed.apply_batch(unindexed)?;
        self.texts.apply_batch(texts)?;
        self.queue.apply_batch(queue)?;
        Ok(())
    }

    fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut index = sled::Batch::default();
        let mut audio = sled::Batch::default();
        for key in keys {
            index.remove(key.as_slice());
            audio.remove(key.as_slice());
            if let Some(start) = key::start_of(key) {
                index.remove(key::expiry(start, key));
            }
        }
        // Index first: a crash in between leaves audio nobody can reach, never metadata
        // pointing at nothing.
        self.index.apply_batch(index)?;
        self.audio.apply_batch(audio)?;
        self.remove_transcription(keys)
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<BiteMeta, StoreError> {
        serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }
}

impl BiteStore for SledStore {
    fn insert(&self, bites: &[NewBite]) -> Result<(), StoreError> {
        let mut index = sled::Batch::default();
        for bite in bites {
            let meta = &bite.meta;
            let key = key::bite(&meta.conversation, meta.start, &meta.user, &meta.client);
            // Serializing a struct of strings and integers cannot fail.
            let value = serde_json::to_vec(meta).unwrap_or_default();
            index.insert(key::expiry(meta.start, &key), &[] as &[u8]);
            // Straight in: a batch would hold a second copy of every file until applied.
            self.audio.insert(key.as_slice(), bite.audio.as_ref())?;
            if self.transcribe {
                // Before the index: a crash in between leaves a job for a missing bite, which
                // the worker drops, never a bite without its job. Due at its start: oldest
                // bites first.
                let job = Job {
                    bite: BiteId::from(meta),
                    due: meta.start,
                    attempts: 0,
                    error: None,
                };
                let value = serde_json::to_vec(&job).unwrap_or_default();
                (&self.jobs, &self.queue)
                    .transaction(|(jobs, queue)| {
                        jobs.insert(key.as_slice(), value.as_slice())?;
                        queue.insert(key::queued(job.due, &key), &[] as &[u8])?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(storage)?;
            }
            index.insert(key, value);
        }
        // The index goes last, in one atomic batch, so a crash in between leaves audio nothing
        // points to, never metadata without audio; `flush` makes it all durable.
        self.index.apply_batch(index)?;
        self.db.flush()?;
        Ok(())
    }

    fn scan(
        &self,
        conversation: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let prefix = key::prefix(conversation);
        let from_key = key::at(&prefix, from);
        let previous = match self
            .index
            .range(prefix.clone()..from_key.clone())
            .next_back()
        {
            Some(entry) => key::start_of(&entry?.0).unwrap_or(0),
            None => 0,
        };
        let mut starts: Vec<u64> = Vec::new();
        let mut next = 0;
        for entry in self.index.range(from_key..key::end(&prefix)) {
            let (key, _) = entry?;
            let Some(start) = key::start_of(&key) else {
                continue;
            };
            if starts.last() == Some(&start) {
                continue;
            }
            if start > to || starts.len() == limit {
                next = start;
                break;
            }
            starts.push(start);
        }
        Ok(Scan {
            previous,
            starts,
            next,
        })
    }

    fn list(
        &self,
        conversation: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<BiteMeta>, StoreError> {
        let prefix = key::prefix(conversation);
        let mut bites: Vec<BiteMeta> = Vec::new();
        for entry in self.index.range(key::at(&prefix, from)..key::end(&prefix)) {
            let (key, value) = entry?;
            let Some(start) = key::start_of(&key) else {
                continue;
            };
            let tie = bites.last().is_some_and(|last| last.start == start);
            if start > to || (bites.len() >= limit && !tie) {
                break;
            }
            bites.push(Self::decode(&key, &value)?);
        }
        Ok(bites)
    }

    fn get(
        &self,
        conversation: &str,
        start: u64,
        speaker: Option<(&str, &str)>,
    ) -> Result<Option<(BiteMeta, Bytes)>, StoreError> {
        let Some((key, meta)) = self.find(conversation, start, speaker)? else {
            return Ok(None);
        };
        let meta = Self::decode(&key, &meta)?;
        // The engine's buffer, shared rather than copied into the response.
        Ok(self
            .audio
            .get(&key)?
            .map(|audio| (meta, Bytes::from_owner(audio))))
    }

    fn delete_conversation(&self, conversation: &str) -> Result<usize, StoreError> {
        const CHUNK: usize = 1024;
        let prefix = key::prefix(conversation);
        let mut deleted = 0;
        loop {
            let keys: Vec<Vec<u8>> = self
                .index
                .scan_prefix(&prefix)
                .keys()
                .take(CHUNK)
                .map(|key| key.map(|key| key.to_vec()))
                .collect::<Result<_, _>>()?;
            self.remove(&keys)?;
            deleted += keys.len();
            if keys.len() < CHUNK {
                return Ok(deleted);
            }
        }
    }

    fn delete_started_before(&self, cutoff: u64, max: usize) -> Result<usize, StoreError> {
        let keys: Vec<Vec<u8>> = self
            .index
            .range(key::EXPIRY.to_vec()..key::expiry(cutoff, b""))
            .keys()
            .take(max)
            .map(|entry| entry.map(|expiry| expiry[key::EXPIRY.len() + 8..].to_vec()))
            .collect::<Result<_, _>>()?;
        self.remove(&keys)?;
        Ok(keys.len())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn due_jobs(&self, now: u64, max: usize) -> Result<Vec<Job>, StoreError> {
        let mut due = Vec::new();
        for entry in self.queue.range(..key::queued(now.saturating_add(1), b"")) {
            if due.len() == max {
                break;
            }
            let (queued, _) = entry?;
            let bite_key = queued.get(8..).unwrap_or_default();
            match self
                .jobs
                .get(bite_key)?
                .map(|value| Self::decode_job(bite_key, &value))
            {
                Some(Ok(job)) => due.push(job),
                // A place left by a job that is gone (a crash while its bite was deleted):
                // dropped, so it neither blocks the queue nor comes due again.
                None => {
                    self.queue.remove(&queued)?;
                }
                // Unreadable: out of the way, where an operator sees it.
                Some(Err(err)) => {
                    tracing::error!(error = %err, "an unreadable transcription job was set aside");
                    self.queue.remove(&queued)?;
                    if let Some(value) = self.jobs.remove(bite_key)? {
                        self.dead.insert(bite_key, value)?;
                    }
                }
            }
        }
        Ok(due)
    }

    fn next_due(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.queue.first()?.and_then(|(queued, _)| {
            queued
                .get(..8)
                .and_then(|due| due.try_into().ok())
                .map(u64::from_be_bytes)
        }))
    }

    fn put_transcript(&self, bite: &BiteId, transcript: &[u8]) -> Result<bool, StoreError> {
        let key = Self::bite_key(bite);
        // Serializing strings and integers cannot fail.
        let id = serde_json::to_vec(bite).unwrap_or_default();
        let kept = (&self.jobs, &self.queue, &self.texts, &self.unindexed)
            .transaction(|(jobs, queue, texts, unindexed)| {
                // Read inside: a bite deleted while its engine worked has no job any more,
                // and gets no transcript.
                let Some(value) = jobs.get(key.as_slice())? else {
                    return Ok(false);
                };
                let due = serde_json::from_slice::<Job>(&value).map_or(0, |job| job.due);
                queue.remove(key::queued(due, &key))?;
                jobs.remove(key.as_slice())?;
                texts.insert(key::transcript_of(&key), transcript)?;
                unindexed.insert(key.as_slice(), id.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(true)
            })
            .map_err(storage)?;
        self.db.flush()?;
        Ok(kept)
    }

    fn unindexed(&self, max: usize) -> Result<Vec<(BiteId, Vec<u8>)>, StoreError> {
        let mut found = Vec::new();
        for entry in self.unindexed.iter() {
            if found.len() >= max {
                break;
            }
            let (key, value) = entry?;
            let text = self.texts.get(key::transcript_of(&key))?;
            match (serde_json::from_slice::<BiteId>(&value), text) {
                (Ok(bite), Some(text)) => found.push((bite, text.to_vec())),
                // Deleted with its bite meanwhile, or unreadable: nothing to index.
                _ => {
                    self.unindexed.remove(&key)?;
                }
            }
        }
        Ok(found)
    }

    fn indexed(&self, bite: &BiteId) -> Result<bool, StoreError> {
        let key = Self::bite_key(bite);
        self.unindexed.remove(&key)?;
        Ok(self.texts.contains_key(key::transcript_of(&key))?)
    }

    fn job_failed(&self, job: &Job, dead: bool) -> Result<(), StoreError> {
        let key = Self::bite_key(&job.bite);
        let value = serde_json::to_vec(job).unwrap_or_default();
        (&self.jobs, &self.queue, &self.dead)
            .transaction(|(jobs, queue, dead_letters)| {
                // Gone with its bite while the engine worked: nothing to keep.
                let Some(previous) = jobs.get(key.as_slice())? else {
                    return Ok(());
                };
                let due = serde_json::from_slice::<Job>(&previous).map_or(0, |job| job.due);
                queue.remove(key::queued(due, &key))?;
                if dead {
                    jobs.remove(key.as_slice())?;
                    dead_letters.insert(key.as_slice(), value.as_slice())?;
                } else {
                    jobs.insert(key.as_slice(), value.as_slice())?;
                    queue.insert(key::queued(job.due, &key), &[] as &[u8])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage)?;
        self.db.flush()?;
        Ok(())
    }

    fn drop_job(&self, bite: &BiteId) -> Result<(), StoreError> {
        self.remove_transcription(&[Self::bite_key(bite)])
    }

    fn transcript(
        &self,
        conversation: &str,
        start: u64,
        speaker: Option<(&str, &str)>,
    ) -> Result<TranscriptState, StoreError> {
        let Some((bite_key, _)) = self.find(conversation, start, speaker)? else {
            return Ok(TranscriptState::Unknown);
        };
        if let Some(text) = self.texts.get(key::transcript_of(&bite_key))? {
            return Ok(TranscriptState::Done(text.to_vec()));
        }
        if self.jobs.contains_key(&bite_key)? {
            return Ok(TranscriptState::Pending);
        }
        if let Some(value) = self.dead.get(&bite_key)? {
            let job = Self::decode_job(&bite_key, &value)?;
            return Ok(TranscriptState::Failed(job.error.unwrap_or_default()));
        }
        Ok(TranscriptState::Unknown)
    }

    fn dead_letters(&self, max: usize) -> Result<Vec<Job>, StoreError> {
        self.dead
            .iter()
            .take(max)
            .map(|entry| {
                let (key, value) = entry?;
                Self::decode_job(&key, &value)
            })
            .collect()
    }

    fn queued(&self) -> Result<usize, StoreError> {
        Ok(self.jobs.len())
    }

    fn requeue_dead(&self, now: u64) -> Result<usize, StoreError> {
        let dead = self.dead_letters(usize::MAX)?;
        for job in &dead {
            let key = Self::bite_key(&job.bite);
            let requeued = Job {
                due: now,
                attempts: 0,
                ..job.clone()
            };
            let value = serde_json::to_vec(&requeued).unwrap_or_default();
            (&self.jobs, &self.queue, &self.dead)
                .transaction(|(jobs, queue, dead_letters)| {
                    dead_letters.remove(key.as_slice())?;
                    jobs.insert(key.as_slice(), value.as_slice())?;
                    queue.insert(key::queued(now, &key), &[] as &[u8])?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(storage)?;
        }
        self.db.flush()?;
        Ok(dead.len())
    }
}

/// A transaction's storage error (nothing here aborts one).
fn storage(err: TransactionError<()>) -> StoreError {
    match err {
        TransactionError::Storage(err) => StoreError::Engine(err),
        TransactionError::Abort(()) => StoreError::Task("transaction aborted".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bite(conversation: &str, start: u64, user: &str) -> NewBite {
        let audio = Bytes::from(format!("ogg of {user} at {start}"));
        NewBite {
            meta: BiteMeta {
                conversation: conversation.into(),
                user: user.into(),
                client: "phone".into(),
                start,
                duration: 100,
                size: audio.len() as u64,
            },
            audio,
        }
    }

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn jobs_come_due_in_order_and_go_with_their_bites() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path())
            .expect("open")
            .transcribing(true);
        store
            .insert(&[
                bite("c-1", 2000, "u-a"),
                bite("c-1", 1000, "u-b"),
                bite("c-2", 1500, "u-a"),
            ])
            .expect("insert");
        assert_eq!(store.queued().expect("queued"), 3);
        assert_eq!(store.next_due().expect("next"), Some(1000));
        let due = store.due_jobs(1500, 10).expect("due");
        let starts: Vec<u64> = due.iter().map(|job| job.bite.start).collect();
        assert_eq!(starts, vec![1000, 1500]);

        // Done, retried later, and given up on.
        store
            .put_transcript(&due[0].bite, b"{\"text\":\"hi\"}")
            .expect("put");
        // Marked for the search index with the transcript, until indexed.
        let unindexed = store.unindexed(10).expect("unindexed");
        assert_eq!(
            unindexed,
            vec![(due[0].bite.clone(), b"{\"text\":\"hi\"}".to_vec())]
        );
        assert!(store.indexed(&due[0].bite).expect("indexed"));
        assert!(store.unindexed(10).expect("unindexed").is_empty());
        let mut retried = due[1].clone();
        retried.attempts = 1;
        retried.due = 9000;
        store.job_failed(&retried, false).expect("retry");
        assert_eq!(store.due_jobs(5000, 10).expect("due").len(), 1);
        assert_eq!(
            store.transcript("c-1", 1000, None).expect("read"),
            TranscriptState::Done(b"{\"text\":\"hi\"}".to_vec())
        );
        assert_eq!(
            store.transcript("c-2", 1500, None).expect("read"),
            TranscriptState::Pending
        );
        retried.error = Some("engine down".into());
        store.job_failed(&retried, true).expect("dead");
        assert_eq!(
            store.transcript("c-2", 1500, None).expect("read"),
            TranscriptState::Failed("engine down".into())
        );
        assert_eq!(store.dead_letters(10).expect("dead").len(), 1);
        assert_eq!(store.requeue_dead(7000).expect("requeue"), 1);
        assert!(store.dead_letters(10).expect("dead").is_empty());
        let again = store.due_jobs(7000, 10).expect("due");
        assert_eq!((again[1].bite.start, again[1].attempts), (1500, 0));
        store.job_failed(&retried, true).expect("dead again");

        // Deleting a conversation takes its transcripts, jobs and dead letters along.
        store.delete_conversation("c-1").expect("delete");
        store.delete_conversation("c-2").expect("delete");
        assert_eq!(
            store.transcript("c-1", 1000, None).expect("read"),
            TranscriptState::Unknown
        );
        assert_eq!(store.queued().expect("queued"), 0);
        assert_eq!(store.next_due().expect("next"), None);
        assert!(store.dead_letters(10).expect("dead").is_empty());
        assert!(store.texts.is_empty());
        // A transcript deleted before it was indexed: its index row must go.
        assert!(!store.indexed(&due[0].bite).expect("indexed"));
    }

    #[test]
    fn scan_answers_like_the_original_and_ties_do_not_overwrite() {
        let (_dir, store) = store();
        let bites = [
            bite("c-1", 1000, "u-a"),
            bite("c-1", 2000, "u-a"),
            bite("c-1", 2000, "u-b"),
            bite("c-1", 3000, "u-a"),
            bite("c-1", 4000, "u-a"),
            bite("c-2", 2500, "u-a"),
        ];
        store.insert(&bites).expect("insert");
        let scan = store.scan("c-1", 2000, 3000, 100).expect("scan");
        assert_eq!(
            scan,
            Scan {
                previous: 1000,
                starts: vec![2000, 3000],
                next: 4000
            }
        );
        let scan = store.scan("c-1", 0, 500, 100).expect("scan");
        assert_eq!(
            scan,
            Scan {
                previous: 0,
                starts: vec![],
                next: 1000
            }
        );
        let scan = store.scan("c-1", 1500, u64::MAX, 2).expect("scan");
        assert_eq!(
            scan,
            Scan {
                previous: 1000,
                starts: vec![2000, 3000],
                next: 4000
            }
        );

        let listed = store.list("c-1", 2000, 2000, 1).expect("list");
        let speakers: Vec<&str> = listed.iter().map(|b| b.user.as_str()).collect();
        assert_eq!(speakers, ["u-a", "u-b"], "a page does not end inside a tie");

        let (meta, audio) = store
            .get("c-1", 2000, Some(("u-b", "phone")))
            .expect("get")
            .expect("found");
        assert_eq!(
            (meta.user.as_str(), &audio[..]),
            ("u-b", &b"ogg of u-b at 2000"[..])
        );
        let (meta, _) = store.get("c-1", 2000, None).expect("get").expect("found");
        assert_eq!(meta.user, "u-a");
        assert!(store.get("c-1", 2001, None).expect("get").is_none());
        assert!(store.get("c-2", 2000, None).expect("get").is_none());
    }

    #[test]
    fn retention_and_conversation_deletion_remove_every_trace() {
        let (_dir, store) = store();
        let bites: Vec<NewBite> = (0..10)
            .map(|i| bite("c-1", i * 1000, "u-a"))
            .chain([bite("c-2", 5500, "u-a")])
            .collect();
        store.insert(&bites).expect("insert");
        assert_eq!(store.delete_started_before(3000, 2).expect("sweep"), 2);
        assert_eq!(store.delete_started_before(3000, 100).expect("sweep"), 1);
        assert_eq!(
            store.scan("c-1", 0, u64::MAX, 100).expect("scan").starts,
            vec![3000, 4000, 5000, 6000, 7000, 8000, 9000]
        );
        assert!(store.get("c-1", 0, None).expect("get").is_none());
        assert_eq!(store.delete_conversation("c-1").expect("delete"), 7);
        assert!(
            store
                .scan("c-1", 0, u64::MAX, 100)
                .expect("scan")
                .starts
                .is_empty()
        );
        assert_eq!(store.audio.len(), 1);
        assert_eq!(store.index.scan_prefix(key::EXPIRY).count(), 1);
        assert_eq!(store.index.len(), 2);
        assert_eq!(
            store.scan("c-2", 0, u64::MAX, 100).expect("scan").starts,
            vec![5500]
        );
    }
}
