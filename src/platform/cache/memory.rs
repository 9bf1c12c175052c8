//! The in-process cache: one map behind a mutex, expiry on the clock, pub/sub by fan-out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::Count;
use crate::platform::clock::{self, Clock};
use crate::platform::fanout::Fanout;

/// Expired entries are dropped when read, and swept every this many writes so keys that are
/// never read again (one-off rate-limit windows) cannot grow the map without bound.
const SWEEP_EVERY_WRITES: u64 = 1024;

enum Value {
    Bytes(Bytes),
    Counter(u64),
}

struct Entry {
    value: Value,
    /// Unix ms on the cache's clock.
    expires_at: i64,
}

pub struct MemoryCache {
    prefix: String,
    entries: Mutex<HashMap<String, Entry>>,
    writes: AtomicU64,
    pub(super) channels: Arc<Fanout>,
    clock: Clock,
}

/// Pub/sub messages buffered per in-process subscriber.
const MEMORY_CHANNEL_CAPACITY: usize = 256;

impl MemoryCache {
    pub(super) fn new(prefix: &str, clock: Clock) -> Self {
        Self {
            prefix: prefix.to_owned(),
            entries: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            channels: Fanout::new(MEMORY_CHANNEL_CAPACITY),
            clock,
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        let key = self.key(key);
        let now = self.clock.now_millis();
        let mut entries = self.entries();
        match entries.get(&key) {
            Some(entry) if entry.expires_at <= now => {
                entries.remove(&key);
                None
            }
            Some(Entry {
                value: Value::Bytes(bytes),
                ..
            }) => Some(bytes.clone()),
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => Some(Bytes::from(n.to_string())),
            None => None,
        }
    }

    pub(super) fn set(&self, key: &str, value: Bytes, ttl: Duration) {
        let key = self.key(key);
        let expires_at = self.clock.now_millis().saturating_add(clock::millis(ttl));
        let mut entries = self.entries();
        self.sweep_now_and_then(&mut entries);
        entries.insert(
            key,
            Entry {
                value: Value::Bytes(value),
                expires_at,
            },
        );
    }

    pub(super) fn delete(&self, key: &str) -> bool {
        let key = self.key(key);
        let now = self.clock.now_millis();
        self.entries()
            .remove(&key)
            .is_some_and(|entry| entry.expires_at > now)
    }

    pub(super) fn increment(&self, key: &str, window: Duration) -> Count {
        let key = self.key(key);
        let now = self.clock.now_millis();
        let closes_at = now.saturating_add(clock::millis(window));
        let mut entries = self.entries();
        self.sweep_now_and_then(&mut entries);
        let entry = entries.entry(key).or_insert(Entry {
            value: Value::Counter(0),
            expires_at: closes_at,
        });
        if entry.expires_at <= now {
            *entry = Entry {
                value: Value::Counter(0),
                expires_at: closes_at,
            };
        }
        // A counter written over a plain value restarts, as it does in Redis.
        let value = match &mut entry.value {
            Value::Counter(n) => {
                *n += 1;
                *n
            }
            other => {
                *other = Value::Counter(1);
                1
            }
        };
        Count {
            value,
            resets_in: clock::from_millis(entry.expires_at - now),
        }
    }

    fn sweep_now_and_then(&self, entries: &mut HashMap<String, Entry>) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY_WRITES
            == SWEEP_EVERY_WRITES - 1
        {
            let now = self.clock.now_millis();
            entries.retain(|_, entry| entry.expires_at > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn memory_counter_windows_restart() {
        let clock = Clock::adjustable();
        let cache = MemoryCache::new("p:", clock.clone());
        let window = Duration::from_secs(30);
        assert_eq!(cache.increment("k", window).value, 1);
        let second = cache.increment("k", window);
        assert_eq!(second.value, 2);
        assert!(second.resets_in <= window);
        clock.advance(Duration::from_secs(20));
        let third = cache.increment("k", window);
        assert_eq!(third.value, 3);
        assert!(third.resets_in <= Duration::from_secs(10));
        clock.advance(Duration::from_secs(10));
        assert_eq!(cache.increment("k", window).value, 1);
    }

    #[test]
    pub(super) fn memory_values_expire_on_the_clock() {
        let clock = Clock::adjustable();
        let cache = MemoryCache::new("", clock.clone());
        cache.set("k", Bytes::from_static(b"v"), Duration::from_secs(60));
        assert_eq!(cache.get("k").as_deref(), Some(&b"v"[..]));
        clock.advance(Duration::from_secs(60));
        assert_eq!(cache.get("k"), None);
        cache.set("k", Bytes::from_static(b"v"), Duration::from_secs(60));
        clock.advance(Duration::from_secs(61));
        assert!(!cache.delete("k"));
    }

    #[test]
    pub(super) fn memory_sweep_drops_expired_entries() {
        let cache = MemoryCache::new("", Clock::system());
        for i in 0..SWEEP_EVERY_WRITES - 1 {
            cache.set(&i.to_string(), Bytes::new(), Duration::ZERO);
        }
        assert_eq!(cache.entries().len() as u64, SWEEP_EVERY_WRITES - 1);
        cache.set("last", Bytes::new(), Duration::from_secs(60));
        assert_eq!(cache.entries().len(), 1);
    }
}
