//! Who is watching whom, in this process: one broadcast channel per watched user (the cheapest
//! fan-out measured at 10,000 streams), and each stream's place, given back when the client
//! goes away or the watcher's relation to the user ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix_web_lab::sse;
use futures_util::{Stream, StreamExt as _, stream};
use metrics::Gauge;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::presence::Ping;

/// Pings buffered per watched user; a stream further behind skips to the latest, which is the
/// only one that matters.
const CHANNEL_CAPACITY: usize = 4;

/// A ping as subscribers receive it, rendered once for all of them.
#[derive(Clone)]
pub struct Shown {
    /// The ping's time in Unix ms: increasing per user, so the event id.
    id: i64,
    event: sse::Event,
}

/// The original's event: `{"time":<Unix seconds>,"status":"…"}`.
#[derive(Serialize)]
struct Wire<'a> {
    time: i64,
    status: &'a str,
}

impl Shown {
    pub fn new(ping: &Ping) -> Self {
        let wire = Wire {
            time: ping.at_ms.div_euclid(1000),
            status: &ping.status,
        };
        // Serialising two plain fields cannot fail; an empty object would be the fallback.
        let data = serde_json::to_string(&wire).unwrap_or_else(|_| "{}".to_owned());
        Self {
            id: ping.at_ms,
            event: sse::Data::new(data).id(ping.at_ms.to_string()).into(),
        }
    }
}

struct Topic {
    sender: broadcast::Sender<Shown>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    id: u64,
    viewer: String,
    ended: CancellationToken,
}

struct Inner {
    topics: Mutex<HashMap<String, Topic>>,
    next_id: AtomicU64,
    open: Gauge,
}

impl Inner {
    fn topics(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
pub struct Hub(Arc<Inner>);

/// A stream's place among the watchers of `target`; dropped with the stream.
struct Place {
    hub: Arc<Inner>,
    target: String,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut topics = self.hub.topics();
        if let Some(topic) = topics.get_mut(&self.target) {
            topic.watchers.retain(|watcher| watcher.id != self.id);
            if topic.watchers.is_empty() {
                topics.remove(&self.target);
            }
        }
        drop(topics);
        self.hub.open.decrement(1.0);
    }
}

/// A stream registered but not yet started: pings from now on reach it.
pub struct Registered {
    receiver: broadcast::Receiver<Shown>,
    ended: CancellationToken,
    place: Place,
}

impl Registered {
    /// The stream: `first` (the state when it opened), then every later ping once, until the
    /// watcher's relation to the user ends.
    pub fn into_stream(self, first: Option<Ping>) -> impl Stream<Item = sse::Event> + 'static {
        let first = first.map(|ping| Shown::new(&ping));
        let last_sent = first.as_ref().map_or(i64::MIN, |shown| shown.id);
        let Self {
            receiver,
            ended,
            place,
        } = self;
        // A ping that landed between registering and reading `first` is in both: sent once.
        let later = stream::unfold(
            (receiver, last_sent, place),
            |(mut receiver, mut last_sent, place)| async move {
                loop {
                    match receiver.recv().await {
                        Ok(shown) if shown.id > last_sent => {
                            last_sent = shown.id;
                            return Some((shown.event, (receiver, last_sent, place)));
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        stream::iter(first.map(|shown| shown.event))
            .chain(later)
            .take_until(ended.cancelled_owned())
    }
}

impl Hub {
    pub fn new(open: Gauge) -> Self {
        Self(Arc::new(Inner {
            topics: Mutex::default(),
            next_id: AtomicU64::new(0),
            open,
        }))
    }

    /// Registers a stream of `viewer` on `target`'s pings.
    pub fn register(&self, viewer: &str, target: &str) -> Registered {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        let mut topics = self.0.topics();
        let topic = topics.entry(target.to_owned()).or_insert_with(|| Topic {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            watchers: Vec::new(),
        });
        topic.watchers.push(Watcher {
            id,
            viewer: viewer.to_owned(),
            ended: ended.clone(),
        });
        let receiver = topic.sender.subscribe();
        drop(topics);
        self.0.open.increment(1.0);
        Registered {
            receiver,
            ended,
            place: Place {
                hub: Arc::clone(&self.0),
                target: target.to_owned(),
                id,
            },
        }
    }

    /// Pushes `ping` of `target` to this process's streams on them; returns how many.
    pub fn deliver(&self, target: &str, ping: &Ping) -> usize {
        let topics = self.0.topics();
        let Some(topic) = topics.get(target) else {
            return 0;
        };
        topic.sender.send(Shown::new(ping)).unwrap_or(0)
    }

    /// The distinct (viewer, target) pairs of the open streams that `affected` selects.
    pub fn pairs(&self, affected: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
        let topics = self.0.topics();
        let mut pairs: Vec<(String, String)> = topics
            .iter()
            .flat_map(|(target, topic)| {
                topic
                    .watchers
                    .iter()
                    .filter(|watcher| affected(&watcher.viewer, target))
                    .map(|watcher| (watcher.viewer.clone(), target.clone()))
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }

    /// Ends every stream of `viewer` on `target`; returns how many.
    pub fn end(&self, viewer: &str, target: &str) -> usize {
        let topics = self.0.topics();
        let Some(topic) = topics.get(target) else {
            return 0;
        };
        let watching = topic.watchers.iter().filter(|w| w.viewer == viewer);
        watching.map(|watcher| watcher.ended.cancel()).count()
    }

    /// The users someone here is watching.
    pub fn watched(&self) -> HashSet<String> {
        self.0.topics().keys().cloned().collect()
    }
}
