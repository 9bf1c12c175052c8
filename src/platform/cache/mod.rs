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
//! deletes it. With the system clock the two expiries coincide. Redis 6.0 or later (`KEEPTTL`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis;
use futures_util::{Stream, StreamExt as _};

mod memory;
mod redis_cache;

pub use self::memory::MemoryCache;
pub use self::redis_cache::RedisCache;
use super::clock::Clock;
use super::fanout::FanoutReceiver;
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
        self.publish_all(channel, &[payload]).await
    }

    /// Sends each payload, in order, to the current subscribers of `channel`; with Redis in
    /// one round trip.
    pub async fn publish_all(&self, channel: &str, payloads: &[&[u8]]) -> Result<(), CacheError> {
        match self {
            Self::Memory(cache) => {
                let channel = cache.key(channel);
                for payload in payloads {
                    cache
                        .channels
                        .publish(&channel, Bytes::copy_from_slice(payload));
                }
                Ok(())
            }
            Self::Redis(cache) => cache.publish(channel, payloads).await,
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
