//! The sled engine of the bite store.
//!
//! Two trees: `audio` (key → the Ogg file) and `index`, which holds the metadata (key → JSON,
//! small, so scans never read audio) and, under `expiry+<start><key>`, the bites in order of
//! age, so retention reads only what it deletes. Keys are laid out in `key`.

use std::path::Path;

use bytes::Bytes;

use super::key;
use super::{BiteMeta, BiteStore, NewBite, Scan, StoreError};

pub struct SledStore {
    db: sled::Db,
    index: sled::Tree,
    audio: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self {
            index: db.open_tree("bites.index")?,
            audio: db.open_tree("bites.audio")?,
            db,
        })
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
        Ok(())
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
        let prefix = key::prefix(conversation);
        let found = match speaker {
            Some((user, client)) => {
                let key = key::bite(conversation, start, user, client);
                self.index.get(&key)?.map(|meta| (key, meta))
            }
            None => {
                let upper = match start.checked_add(1) {
                    Some(after) => key::at(&prefix, after),
                    None => key::end(&prefix),
                };
                self.index
                    .range(key::at(&prefix, start)..upper)
                    .next()
                    .transpose()?
                    .map(|(key, meta)| (key.to_vec(), meta))
            }
        };
        let Some((key, meta)) = found else {
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
