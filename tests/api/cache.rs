//! The cache on both columns: TTLs, fixed-window counters, pub/sub and key prefixes.

use std::time::Duration;

use crate::helpers::{Column, TestApp, columns};

#[tokio::test]
async fn values_expire_after_their_ttl() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let cache = &app.platform().cache;
        cache
            .set("otp:1", b"123456", Duration::from_secs(30))
            .await
            .unwrap();
        cache
            .set("long", b"kept", Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            cache.get("otp:1").await.unwrap().as_deref(),
            Some(&b"123456"[..]),
            "{column:?}"
        );
        app.clock().advance(Duration::from_secs(31));
        assert_eq!(cache.get("otp:1").await.unwrap(), None, "{column:?}");
        assert_eq!(
            cache.get("long").await.unwrap().as_deref(),
            Some(&b"kept"[..])
        );
        assert!(cache.delete("long").await.unwrap());
        assert!(!cache.delete("long").await.unwrap());
        assert_eq!(cache.get("long").await.unwrap(), None);
        app.stop().await;
    }
}

#[tokio::test]
async fn counters_count_within_a_window_then_restart() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let cache = &app.platform().cache;
        let window = Duration::from_secs(30);
        for expected in 1..=5 {
            let count = cache.increment("rate:ip:1", window).await.unwrap();
            assert_eq!(count.value, expected, "{column:?}");
            assert!(count.resets_in <= window && count.resets_in > Duration::ZERO);
        }
        // Concurrent increments are atomic.
        let increments = (0..20).map(|_| cache.increment("rate:ip:2", Duration::from_secs(5)));
        let mut values: Vec<u64> = futures_util::future::join_all(increments)
            .await
            .into_iter()
            .map(|c| c.unwrap().value)
            .collect();
        values.sort_unstable();
        assert_eq!(values, (1..=20).collect::<Vec<_>>(), "{column:?}");
        // Still the same window just before it closes.
        app.clock().advance(window - Duration::from_secs(2));
        let count = cache.increment("rate:ip:1", window).await.unwrap();
        assert_eq!(count.value, 6, "{column:?}");
        assert!(count.resets_in <= Duration::from_secs(2), "{column:?}");
        app.clock().advance(Duration::from_secs(2));
        assert_eq!(
            cache.increment("rate:ip:1", window).await.unwrap().value,
            1,
            "{column:?}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn pubsub_delivers_to_subscribers_of_the_channel_only() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let cache = &app.platform().cache;
        let mut presence = cache.subscribe("presence:u-1").await.unwrap();
        let mut other = cache.subscribe("presence:u-2").await.unwrap();
        cache.publish("presence:u-1", b"1700000000").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), presence.next())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"1700000000"[..]), "{column:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), other.next())
                .await
                .is_err()
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn key_prefixes_keep_deployments_apart() {
    for column in columns() {
        let first = TestApp::spawn(column).await;
        let second = TestApp::spawn(column).await;
        first
            .platform()
            .cache
            .set("shared-name", b"first", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            second.platform().cache.get("shared-name").await.unwrap(),
            None,
            "{column:?}"
        );
        if column == Column::Real {
            assert_ne!(
                first.platform().config.cache.prefix,
                second.platform().config.cache.prefix
            );
        }
        first.stop().await;
        second.stop().await;
    }
}
