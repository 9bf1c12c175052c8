//! Each user's last ping and the last one others may see. Held in memory for the users seen
//! lately, written behind to the database (at most once a second per flush), and kept in step
//! with the other replicas by the relay.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sea_orm::DbErr;
use serde::{Deserialize, Serialize};

use super::store::Store;
use crate::platform::clock::Clock;

/// The documented "invisible" status: stored, never shown to others.
pub const INVISIBLE: &str = "3";

/// One ping: when (Unix ms on the platform clock) and the status the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub at_ms: i64,
    pub status: String,
}

/// What is known of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Their last stored ping, invisible or not.
    pub last: Ping,
    /// The last one others may see; `None` if they have only ever been invisible.
    pub visible: Option<Ping>,
}

/// What a ping did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Same status, within `heartbeat.write_interval_secs` of the last stored ping.
    Unchanged,
    /// Stored; `shown` when it is also what subscribers see now.
    Stored { presence: Presence, shown: bool },
}

struct Entry {
    /// `None`: the user has never pinged.
    presence: Option<Presence>,
    /// Not yet written to the database.
    dirty: bool,
    /// When this entry was last used (Unix ms), for eviction.
    touched_at: i64,
}

impl Entry {
    /// What the database says (or a relay brought), as written.
    fn written(presence: Option<Presence>, now: i64) -> Self {
        Self {
            presence,
            dirty: false,
            touched_at: now,
        }
    }
}

/// `user`'s entry (a blank one if none), marked used at `now`.
fn touched<'a>(entries: &'a mut HashMap<String, Entry>, user: &str, now: i64) -> &'a mut Entry {
    let entry = entries
        .entry(user.to_owned())
        .or_insert_with(|| Entry::written(None, now));
    entry.touched_at = now;
    entry
}

pub struct Presences {
    store: Store,
    entries: Mutex<HashMap<String, Entry>>,
    write_interval_ms: i64,
    clock: Clock,
}

impl Presences {
    pub fn new(store: Store, write_interval_secs: u64, clock: Clock) -> Self {
        Self {
            store,
            entries: Mutex::default(),
            write_interval_ms: i64::try_from(write_interval_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            clock,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `user` from the database unless held already.
    async fn ensure_loaded(&self, user: &str) -> Result<(), DbErr> {
        if self.entries().contains_key(user) {
            return Ok(());
        }
        let presence = self.store.load(user).await?;
        let now = self.clock.now_millis();
        // A ping recorded while the database answered wins over what it said.
        self.entries()
            .entry(user.to_owned())
            .or_insert_with(|| Entry::written(presence, now));
        Ok(())
    }

    /// Records a ping of `user`.
    pub async fn record(&self, user: &str, status: &str) -> Result<Recorded, DbErr> {
        self.ensure_loaded(user).await?;
        let now = self.clock.now_millis();
        let mut entries = self.entries();
        let entry = touched(&mut entries, user, now);
        let previous = entry.presence.as_ref();
        if let Some(previous) = previous
            && previous.last.status == status
            && now.saturating_sub(previous.last.at_ms) < self.write_interval_ms
        {
            return Ok(Recorded::Unchanged);
        }
        // Strictly increasing per user, so event ids order and deduplicate.
        let at_ms = previous.map_or(now, |p| now.max(p.last.at_ms.saturating_add(1)));
        let ping = Ping {
            at_ms,
            status: status.to_owned(),
        };
        let shown = status != INVISIBLE;
        let visible = if shown {
            Some(ping.clone())
        } else {
            previous.and_then(|p| p.visible.clone())
        };
        let presence = Presence {
            last: ping,
            visible,
        };
        entry.presence = Some(presence.clone());
        entry.dirty = true;
        Ok(Recorded::Stored { presence, shown })
    }

    /// What others see of `user`: their last visible ping, if any.
    pub async fn visible(&self, user: &str) -> Result<Option<Ping>, DbErr> {
        self.ensure_loaded(user).await?;
        let now = self.clock.now_millis();
        let mut entries = self.entries();
        Ok(entries.get_mut(user).and_then(|entry| {
            entry.touched_at = now;
            entry.presence.as_ref()?.visible.clone()
        }))
    }

    /// A presence recorded by another replica (which writes it itself). Returns the ping to
    /// show when it changes what subscribers see here.
    pub fn apply_remote(&self, user: &str, presence: Presence) -> Option<Ping> {
        let now = self.clock.now_millis();
        let mut entries = self.entries();
        let entry = touched(&mut entries, user, now);
        let known = entry.presence.as_ref();
        if known.is_some_and(|known| known.last.at_ms >= presence.last.at_ms) {
            return None;
        }
        let shown_before = known.and_then(|known| known.visible.as_ref().map(|p| p.at_ms));
        let newly_shown = presence
            .visible
            .clone()
            .filter(|ping| shown_before.is_none_or(|before| ping.at_ms > before));
        entry.presence = Some(presence);
        newly_shown
    }

    /// Takes the presences not yet written, marking them written.
    fn take_dirty(&self) -> Vec<(String, Presence)> {
        let mut entries = self.entries();
        entries
            .iter_mut()
            .filter(|(_, entry)| entry.dirty)
            .filter_map(|(user, entry)| {
                entry.dirty = false;
                Some((user.clone(), entry.presence.clone()?))
            })
            .collect()
    }

    /// Marks a batch that could not be written as still to write.
    fn return_dirty(&self, batch: &[(String, Presence)]) {
        let mut entries = self.entries();
        for (user, _) in batch {
            if let Some(entry) = entries.get_mut(user) {
                entry.dirty = true;
            }
        }
    }

    /// Writes what is not yet written; on failure it stays to write at the next flush.
    pub async fn flush(&self) -> Result<usize, DbErr> {
        let batch = self.take_dirty();
        match self.store.save(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(err) => {
                self.return_dirty(&batch);
                Err(err)
            }
        }
    }

    /// Forgets written entries unused since `before` (Unix ms) of users nobody here is
    /// `watched`: they are read again when next needed, so memory holds only the users seen
    /// lately.
    pub fn evict_idle(&self, before: i64, watched: &HashSet<String>) {
        self.entries().retain(|user, entry| {
            entry.dirty || entry.touched_at >= before || watched.contains(user)
        });
    }

    /// Forgets every written entry: another replica's pings may have been missed.
    pub fn forget_written(&self) {
        self.entries().retain(|_, entry| entry.dirty);
    }
}
