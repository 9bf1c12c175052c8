//! The event bus on both columns: typed envelopes, delivery between two app instances over
//! NATS, and publishers that never wait for a slow subscriber.

use std::time::Duration;

use beep::platform::bus::Event;
use serde::{Deserialize, Serialize};

use crate::helpers::{Column, NATS, TestApp, columns, env};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MemberAdded {
    conversation: String,
    user: String,
}

impl Event for MemberAdded {
    const SUBJECT: &'static str = "test.member_added";
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn published_events_reach_subscribers_in_an_envelope() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let bus = &app.platform().bus;
        assert!(bus.subject::<MemberAdded>().ends_with(".test.member_added"));
        let mut subscription = bus.subscribe::<MemberAdded>().await.unwrap();
        let event = MemberAdded {
            conversation: "c-1".into(),
            user: "u-1".into(),
        };
        // The envelope is stamped with the app's clock.
        app.clock().advance(Duration::from_secs(3600));
        let before = app.clock().now_millis();
        bus.publish(event.clone()).await.unwrap();
        let envelope = tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(envelope.data, event, "{column:?}");
        assert_eq!(envelope.id.len(), 32);
        assert!(envelope.ts >= before);
        app.stop().await;
    }
}

#[tokio::test]
async fn events_cross_between_two_app_instances_over_nats() {
    if env(NATS).is_none() {
        return;
    }
    let first = TestApp::spawn(Column::Real).await;
    let prefix = first.platform().config.bus.subject_prefix.clone();
    let second = TestApp::spawn_with(
        Column::Real,
        |config| config.bus.subject_prefix = prefix,
        Vec::new(),
    )
    .await;
    assert_eq!(second.platform().bus.backend(), "nats");
    let connected = async {
        while first.platform().bus.check().await.is_err()
            || second.platform().bus.check().await.is_err()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, connected)
        .await
        .expect("both apps connect to NATS");
    let mut on_second = second
        .platform()
        .bus
        .subscribe::<MemberAdded>()
        .await
        .unwrap();
    let event = MemberAdded {
        conversation: "c-2".into(),
        user: "u-2".into(),
    };
    // The subscription reaches the server through the second app's connection, the event
    // through the first's: publish until the server has both.
    let received = tokio::time::timeout(WAIT, async {
        loop {
            first.platform().bus.publish(event.clone()).await.unwrap();
            if let Ok(received) =
                tokio::time::timeout(Duration::from_millis(100), on_second.next()).await
            {
                break received;
            }
        }
    })
    .await
    .expect("the event crossed between the apps")
    .unwrap();
    assert_eq!(received.data, event);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_does_not_block_publishers() {
    for column in columns() {
        let app = TestApp::spawn_with(column, |config| config.bus.capacity = 16, Vec::new()).await;
        let bus = app.platform().bus.clone();
        let _never_reads = bus.subscribe::<MemberAdded>().await.unwrap();
        let mut reader = bus.subscribe::<MemberAdded>().await.unwrap();
        let reading = tokio::spawn(async move {
            let mut received = 0;
            while let Ok(Some(envelope)) = tokio::time::timeout(WAIT, reader.next()).await {
                received += 1;
                if envelope.data.user == "last" {
                    return Some(received);
                }
            }
            None
        });
        let burst = async {
            for i in 0..2000 {
                let event = MemberAdded {
                    conversation: "c".into(),
                    user: format!("u-{i}"),
                };
                bus.publish(event).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), burst)
            .await
            .unwrap_or_else(|_| {
                panic!("publishing stalled behind a slow subscriber on {column:?}")
            });
        // Subscribers overrun by the burst may have lost events, but delivery goes on.
        tokio::time::sleep(Duration::from_millis(200)).await;
        bus.publish(MemberAdded {
            conversation: "c".into(),
            user: "last".into(),
        })
        .await
        .unwrap();
        let received = reading.await.unwrap();
        assert!(
            received.is_some_and(|n| n >= 16),
            "{column:?}: {received:?}"
        );
        app.stop().await;
    }
}
