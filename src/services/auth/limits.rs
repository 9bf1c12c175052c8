//! Fixed-window abuse limits on the shared cache, so every replica counts together.

use std::time::Duration;

use super::error::AuthError;
use crate::platform::cache::Cache;

pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct Limiter {
    cache: Cache,
}

impl Limiter {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }

    /// Counts one event against `key`; refuses it once more than `max` fall in one `window`.
    /// A `max` of 0 turns the limit off.
    pub async fn check(
        &self,
        limit: &'static str,
        key: &str,
        max: u64,
        window: Duration,
    ) -> Result<(), AuthError> {
        if max == 0 {
            return Ok(());
        }
        let count = self
            .cache
            .increment(&format!("auth:limit:{limit}:{key}"), window)
            .await?;
        if count.value > max {
            return Err(AuthError::RateLimited {
                limit,
                retry_after: count.resets_in,
            });
        }
        Ok(())
    }
}
