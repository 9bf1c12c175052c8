//! In-process publish/subscribe by topic name, shared by the embedded cache and bus.
//!
//! Publishers never wait: each topic is a bounded broadcast ring, and a subscriber that falls
//! further behind than the ring loses the oldest messages (it is told how many).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::broadcast;

#[derive(Debug)]
pub struct Fanout {
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    capacity: usize,
}

impl Fanout {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            topics: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    /// Delivers to the current subscribers of `topic`; returns how many there were.
    pub fn publish(&self, topic: &str, payload: Bytes) -> usize {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = topics.get(topic) else {
            return 0;
        };
        match sender.send(payload) {
            Ok(receivers) => receivers,
            Err(_) => {
                // Every subscriber is gone: forget the topic so the map does not grow forever.
                topics.remove(topic);
                0
            }
        }
    }

    pub fn subscribe(&self, topic: &str) -> FanoutReceiver {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        FanoutReceiver {
            receiver,
            topic: topic.to_owned(),
        }
    }
}

pub struct FanoutReceiver {
    receiver: broadcast::Receiver<Bytes>,
    topic: String,
}

impl FanoutReceiver {
    /// The next message, or `None` once the fan-out is dropped. Lost messages are logged and
    /// skipped: a slow reader of presence or events should catch up, not stall.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let Ok(payload) = self.recv_or_lost().await? {
                return Some(payload);
            }
        }
    }

    /// The next message, or `Err(lost)` once when this subscriber fell behind and `lost`
    /// messages were dropped (logged too), for a reader that must act on a gap.
    pub async fn recv_or_lost(&mut self) -> Option<Result<Bytes, u64>> {
        match self.receiver.recv().await {
            Ok(payload) => Some(Ok(payload)),
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::warn!(topic = %self.topic, lost, "slow subscriber lost messages");
                Some(Err(lost))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_subscriber_loses_oldest_and_publisher_never_waits() {
        let fanout = Fanout::new(4);
        let mut slow = fanout.subscribe("t");
        for i in 0..100u8 {
            assert_eq!(fanout.publish("t", Bytes::from(vec![i])), 1);
        }
        assert_eq!(slow.recv().await, Some(Bytes::from(vec![96])));
    }

    #[tokio::test]
    async fn topics_are_separate_and_forgotten_when_unused() {
        let fanout = Fanout::new(4);
        let mut a = fanout.subscribe("a");
        assert_eq!(fanout.publish("b", Bytes::from_static(b"x")), 0);
        assert_eq!(fanout.publish("a", Bytes::from_static(b"y")), 1);
        assert_eq!(a.recv().await, Some(Bytes::from_static(b"y")));
        drop(a);
        assert_eq!(fanout.publish("a", Bytes::from_static(b"z")), 0);
        assert!(fanout.topics.lock().map(|t| t.is_empty()).unwrap_or(false));
    }
}
