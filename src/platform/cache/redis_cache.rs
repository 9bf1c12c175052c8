//! The Redis cache: values as `<expires_at>:<bytes>` with a TTL, counters by a script,
//! pub/sub on Redis channels.

use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, AsyncCommands as _};

use super::{CacheError, CacheSubscription, Count};
use crate::config::CacheConfig;
use crate::platform::clock::{self, Clock};

/// GET then DEL of KEYS[1], atomically; answers what was stored.
const GET_AND_DELETE_SCRIPT: &str = "\
local stored = redis.call('GET', KEYS[1]) \
if stored then redis.call('DEL', KEYS[1]) end \
return stored";

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
    pub(super) fn open(config: &CacheConfig, clock: Clock) -> Result<Self, CacheError> {
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

    pub(super) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) async fn connection(&self) -> Result<deadpool_redis::Connection, CacheError> {
        Ok(self.pool.get().await?)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let stored: Option<Vec<u8>> = self.connection().await?.get(self.key(key)).await?;
        Ok(stored.and_then(|stored| self.live(stored)))
    }

    pub(super) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), CacheError> {
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

    /// Reads and deletes in one step, so an entry past its expiry but not yet deleted by Redis
    /// does not count as removed (a script: GETDEL needs Redis 6.2).
    pub(super) async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let stored: Option<Vec<u8>> = redis::cmd("EVAL")
            .arg(GET_AND_DELETE_SCRIPT)
            .arg(1)
            .arg(self.key(key))
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(stored.and_then(|stored| self.live(stored)).is_some())
    }

    pub(super) async fn increment(&self, key: &str, window: Duration) -> Result<Count, CacheError> {
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

    /// The bytes of a stored `<expires_at>:<bytes>` still live on the clock. A value without
    /// the prefix (written by an earlier release sharing this Redis, such as a revocation
    /// marker) is taken whole and left to its Redis TTL, so it is never mistaken for absent.
    pub(super) fn live(&self, stored: Vec<u8>) -> Option<Bytes> {
        let expires_at = stored.iter().position(|&b| b == b':').and_then(|at| {
            Some((
                at,
                std::str::from_utf8(&stored[..at])
                    .ok()?
                    .parse::<i64>()
                    .ok()?,
            ))
        });
        match expires_at {
            Some((_, expires_at)) if expires_at <= self.clock.now_millis() => None,
            Some((at, _)) => Some(Bytes::from(stored).slice(at + 1..)),
            None => Some(Bytes::from(stored)),
        }
    }

    /// Every payload in one round trip (a pipeline), in order.
    pub(super) async fn publish(
        &self,
        channel: &str,
        payloads: &[&[u8]],
    ) -> Result<(), CacheError> {
        let channel = self.key(channel);
        let mut pipe = redis::pipe();
        for payload in payloads {
            pipe.publish(&channel, *payload).ignore();
        }
        let () = pipe.query_async(&mut *self.connection().await?).await?;
        Ok(())
    }

    /// Pub/sub needs a connection of its own; it is closed when the subscription is dropped.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<CacheSubscription, CacheError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key(channel)).await?;
        Ok(CacheSubscription::Redis(Box::pin(pubsub.into_on_message())))
    }

    pub(super) async fn ping(&self) -> Result<(), CacheError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(())
    }
}
