//! Short-lived shared state: values with a TTL, fixed-window counters (rate limits) and
//! publish/subscribe. In-process by default, Redis when `cache.url` is `redis://…`.
//!
//! Every key and channel is prefixed with `cache.prefix`, so deployments (and tests) can share
//! one Redis without seeing each other.
//!
//! Expiry follows the platform's [`Clock`], not the backend's, so a test that advances the
//! clock sees entries expire. Each entry carries its expiry time (Unix ms on that clock) and is
//! absent once it has passed; in Redis the value is stored as `<expires_at>:<bytes>` (a
//! counter's bytes are its count), and the key also gets a TTL of the same length so Redis
//! deletes it. With the system clock the two expiries coincide. Redis 6.2 or later (`GETDEL`,
//! `KEEPTTL`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, AsyncCommands as _};
use futures_util::{Stream, StreamExt as _};

use super::clock::{self, Clock};
use super::fanout::{Fanout, FanoutReceiver};
use crate::config::CacheConfig;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("invalid cache.url: {0}")]
    Url(String),
}

/// A fixed-window counter after one increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Increments in the current window, this one included.
    pub value: u64,
    /// Time until the window closes and the count starts again from zero.
    pub resets_in: Duration,
}

#[derive(Clone)]
pub enum Cache {
    Memory(Arc<MemoryCache>),
    Redis(RedisCache),
}

impl Cache {
    pub fn open(config: &CacheConfig, clock: Clock) -> Result<Self, CacheError> {
        if config.url == "memory" {
            return Ok(Self::Memory(Arc::new(MemoryCache::new(
                &config.prefix,
                clock,
            ))));
        }
        if config.url.starts_with("redis://") || config.url.starts_with("rediss://") {
            return RedisCache::open(config, clock).map(Self::Redis);
        }
        Err(CacheError::Url(
            "expected \"memory\", redis://… or rediss://…".into(),
        ))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// `get` answered on the spot when the cache is in-process; `None` means ask `get`.
    pub fn get_in_process(&self, key: &str) -> Option<Option<Bytes>> {
        match self {
            Self::Memory(cache) => Some(cache.get(key)),
            Self::Redis(_) => None,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        match self {
            Self::Memory(cache) => Ok(cache.get(key)),
            Self::Redis(cache) => cache.get(key).await,
        }
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        match self {
            Self::Memory(cache) => {
                cache.set(key, Bytes::copy_from_slice(value), ttl);
                Ok(())
            }
            Self::Redis(cache) => cache.set(key, value, ttl).await,
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        match self {
            Self::Memory(cache) => Ok(cache.delete(key)),
            Self::Redis(cache) => cache.delete(key).await,
        }
    }

    /// Atomically increments the counter `key`; the first increment opens a window of length
    /// `window`, after which the counter disappears.
    pub async fn increment(&self, key: &str, window: Duration) -> Result<Count, CacheError> {
        match self {
            Self::Memory(cache) => Ok(cache.increment(key, window)),
            Self::Redis(cache) => cache.increment(key, window).await,
        }
    }

    /// Sends `payload` to the current subscribers of `channel` (fire and forget).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), CacheError> {
        match self {
            Self::Memory(cache) => {
                cache
                    .channels
                    .publish(&cache.key(channel), Bytes::copy_from_slice(payload));
                Ok(())
            }
            Self::Redis(cache) => cache.publish(channel, payload).await,
        }
    }

    pub async fn subscribe(&self, channel: &str) -> Result<CacheSubscription, CacheError> {
        match self {
            Self::Memory(cache) => Ok(CacheSubscription::Memory(
                cache.channels.subscribe(&cache.key(channel)),
            )),
            Self::Redis(cache) => cache.subscribe(channel).await,
        }
    }

    /// Readiness: does the backend answer?
    pub async fn ping(&self) -> Result<(), CacheError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(cache) => cache.ping().await,
        }
    }
}

pub enum CacheSubscription {
    Memory(FanoutReceiver),
    Redis(Pin<Box<dyn Stream<Item = redis::Msg> + Send>>),
}

impl CacheSubscription {
    /// The next message, or `None` when the subscription ended (Redis connection lost).
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Self::Memory(receiver) => receiver.recv().await,
            Self::Redis(stream) => stream
                .next()
                .await
                .map(|msg| Bytes::copy_from_slice(msg.get_payload_bytes())),
        }
    }
}

// ---- in-process ----

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
    channels: Arc<Fanout>,
    clock: Clock,
}

/// Pub/sub messages buffered per in-process subscriber.
const MEMORY_CHANNEL_CAPACITY: usize = 256;

impl MemoryCache {
    fn new(prefix: &str, clock: Clock) -> Self {
        Self {
            prefix: prefix.to_owned(),
            entries: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            channels: Fanout::new(MEMORY_CHANNEL_CAPACITY),
            clock,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<Bytes> {
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

    fn set(&self, key: &str, value: Bytes, ttl: Duration) {
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

    fn delete(&self, key: &str) -> bool {
        let key = self.key(key);
        let now = self.clock.now_millis();
        self.entries()
            .remove(&key)
            .is_some_and(|entry| entry.expires_at > now)
    }

    fn increment(&self, key: &str, window: Duration) -> Count {
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

// ---- Redis ----

/// One increment in one round trip: while the stored window (`<closes_at>:<count>`) is open
/// at `now` (ARGV[1]), count on and keep its TTL; otherwise (absent, closed, or not a counter)
/// open a window closing at ARGV[3] with the count 1 and a TTL of the window, ARGV[2].
/// Returns the count and the milliseconds left. Large times come in as strings, so Lua's
/// number formatting never writes them.
const INCREMENT_SCRIPT: &str = "\
local now = tonumber(ARGV[1]) \
local stored = redis.call('GET', KEYS[1]) \
if stored then \
  local at = string.find(stored, ':', 1, true) \
  local closes_at = at and tonumber(string.sub(stored, 1, at - 1)) \
  local n = at and tonumber(string.sub(stored, at + 1)) \
  if closes_at and n and closes_at > now then \
    n = n + 1 \
    redis.call('SET', KEYS[1], string.sub(stored, 1, at) .. n, 'KEEPTTL') \
    return {n, closes_at - now} \
  end \
end \
redis.call('SET', KEYS[1], ARGV[3] .. ':1', 'PX', ARGV[2]) \
return {1, tonumber(ARGV[2])}";

#[derive(Clone)]
pub struct RedisCache {
    pool: deadpool_redis::Pool,
    client: redis::Client,
    prefix: String,
    clock: Clock,
}

impl RedisCache {
    fn open(config: &CacheConfig, clock: Clock) -> Result<Self, CacheError> {
        let pool = deadpool_redis::Config::from_url(&config.url)
            .builder()
            .map_err(|err| CacheError::Url(err.to_string()))?
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|err| CacheError::Url(err.to_string()))?;
        let client = redis::Client::open(config.url.as_str())?;
        Ok(Self {
            pool,
            client,
            prefix: config.prefix.clone(),
            clock,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, CacheError> {
        Ok(self.pool.get().await?)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let stored: Option<Vec<u8>> = self.connection().await?.get(self.key(key)).await?;
        Ok(stored.and_then(|stored| self.live(stored)))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let ttl_ms = clock::millis(ttl).max(1);
        let expires_at = self.clock.now_millis().saturating_add(ttl_ms);
        let mut stored = format!("{expires_at}:").into_bytes();
        stored.extend_from_slice(value);
        let () = self
            .connection()
            .await?
            .pset_ex(self.key(key), stored, u64::try_from(ttl_ms).unwrap_or(1))
            .await?;
        Ok(())
    }

    /// GETDEL (Redis 6.2), so an entry past its expiry but not yet deleted by Redis does not
    /// count as removed.
    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let stored: Option<Vec<u8>> = redis::cmd("GETDEL")
            .arg(self.key(key))
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(stored.and_then(|stored| self.live(stored)).is_some())
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<Count, CacheError> {
        let window_ms = clock::millis(window).max(1);
        let now = self.clock.now_millis();
        let (value, left_ms): (u64, i64) = redis::cmd("EVAL")
            .arg(INCREMENT_SCRIPT)
            .arg(1)
            .arg(self.key(key))
            .arg(now.to_string())
            .arg(window_ms.to_string())
            .arg(now.saturating_add(window_ms).to_string())
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(Count {
            value,
            // A window opened by a replica whose clock runs ahead closes within `window` here.
            resets_in: clock::from_millis(left_ms.min(window_ms)),
        })
    }

    /// The bytes of a stored `<expires_at>:<bytes>` still live on the clock; anything else
    /// (expired, or not written in this form) is absent.
    fn live(&self, stored: Vec<u8>) -> Option<Bytes> {
        let at = stored.iter().position(|&b| b == b':')?;
        let expires_at: i64 = std::str::from_utf8(&stored[..at]).ok()?.parse().ok()?;
        if expires_at <= self.clock.now_millis() {
            return None;
        }
        Some(Bytes::from(stored).slice(at + 1..))
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), CacheError> {
        let _receivers: u64 = self
            .connection()
            .await?
            .publish(self.key(channel), payload)
            .await?;
        Ok(())
    }

    /// Pub/sub needs a connection of its own; it is closed when the subscription is dropped.
    async fn subscribe(&self, channel: &str) -> Result<CacheSubscription, CacheError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key(channel)).await?;
        Ok(CacheSubscription::Redis(Box::pin(pubsub.into_on_message())))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_counter_windows_restart() {
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
    fn memory_values_expire_on_the_clock() {
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
    fn memory_sweep_drops_expired_entries() {
        let cache = MemoryCache::new("", Clock::system());
        for i in 0..SWEEP_EVERY_WRITES - 1 {
            cache.set(&i.to_string(), Bytes::new(), Duration::ZERO);
        }
        assert_eq!(cache.entries().len() as u64, SWEEP_EVERY_WRITES - 1);
        cache.set("last", Bytes::new(), Duration::from_secs(60));
        assert_eq!(cache.entries().len(), 1);
    }
}
