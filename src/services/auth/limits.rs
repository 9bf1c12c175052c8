//! Fixed-window abuse limits on the shared cache, so every replica counts together.

use std::time::Duration;

use super::error::AuthError;
use crate::config::Limit;
use crate::platform::cache::Cache;

#[derive(Clone)]
pub struct Limiter {
    cache: Cache,
}

impl Limiter {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }

    /// Counts one event against `key` under the limit named `name`; refuses it once more than
    /// `limit.max` fall in one window.
    pub async fn check(
        &self,
        name: &'static str,
        key: &str,
        limit: Limit,
    ) -> Result<(), AuthError> {
        if limit.max == 0 {
            return Ok(());
        }
        let window = Duration::from_secs(limit.window_secs.max(1));
        let count = self
            .cache
            .increment(&format!("auth:limit:{name}:{key}"), window)
            .await?;
        if count.value > limit.max {
            return Err(AuthError::RateLimited {
                limit: name,
                retry_after: count.resets_in,
            });
        }
        Ok(())
    }
}
