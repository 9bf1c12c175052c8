//! The one source of "now": the system's time, plus an offset a test can advance so expiry
//! (codes, tokens, cache entries, rate-limit windows) is tested by skipping ahead instead of
//! sleeping. Time keeps flowing either way; only the system clock cannot be moved.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Cheap to clone; clones share the offset, so advancing one advances every holder.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system time; `None` on the system clock.
    offset_ms: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's time, as production runs.
    pub fn system() -> Self {
        Self { offset_ms: None }
    }

    /// The system's time until a test calls [`Clock::advance`].
    pub fn adjustable() -> Self {
        Self {
            offset_ms: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Skips ahead by `by` for every holder of this clock. The system clock does not move
    /// (debug builds panic: a test advancing it would wait for expiry that never comes).
    pub fn advance(&self, by: Duration) {
        debug_assert!(
            self.offset_ms.is_some(),
            "only an adjustable clock can be advanced"
        );
        if let Some(offset) = &self.offset_ms {
            offset.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    /// Unix time in milliseconds.
    pub fn now_millis(&self) -> i64 {
        let offset = self
            .offset_ms
            .as_ref()
            .map_or(0, |offset| offset.load(Ordering::SeqCst));
        system_millis().saturating_add(offset)
    }

    /// Unix time in whole seconds, as JWT claims carry it.
    pub fn now_secs(&self) -> u64 {
        u64::try_from(self.now_millis() / 1000).unwrap_or(0)
    }
}

/// The system's time in Unix milliseconds, without any offset. Everything else asks a
/// [`Clock`].
fn system_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `duration` in whole milliseconds, saturating.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` milliseconds as a duration; zero when negative (a time already past).
pub fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_follows_the_system_and_skips_ahead_for_every_clone() {
        let clock = Clock::adjustable();
        let clone = clock.clone();
        let before = system_millis();
        let now = clock.now_millis();
        assert!(now >= before && now <= system_millis());

        clock.advance(Duration::from_secs(90));
        let skipped = clone.now_millis() - system_millis();
        // 90 s ahead, give or take the time between the two reads.
        assert!((89_000..=90_000).contains(&skipped), "{skipped}");
        assert!(clone.now_secs() >= u64::try_from(before / 1000).unwrap_or(0) + 90);

        // Time still flows after a skip.
        let first = clone.now_millis();
        std::thread::sleep(Duration::from_millis(5));
        assert!(clone.now_millis() >= first + 5);
    }

    #[test]
    fn milliseconds_convert_both_ways_saturating() {
        assert_eq!(millis(Duration::from_secs(3)), 3000);
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(from_millis(1500), Duration::from_millis(1500));
        assert_eq!(from_millis(-5), Duration::ZERO);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "only an adjustable clock can be advanced")]
    fn advancing_the_system_clock_is_a_mistake() {
        Clock::system().advance(Duration::from_secs(1));
    }

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let before = system_millis();
        let now = Clock::default().now_millis();
        assert!(now >= before && now <= system_millis());
    }
}
