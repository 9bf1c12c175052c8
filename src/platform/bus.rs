//! The internal event bus: typed events between services, in-process by default, NATS when
//! `bus.url` is `nats://…` (so split binaries on several machines hear each other).
//!
//! Subjects are `<bus.subject_prefix>.<service>.<event>`; payloads are JSON envelopes with an
//! id and a timestamp. Publishing never waits for subscribers: in-process, a subscriber that
//! falls `bus.capacity` events behind loses the oldest; on NATS, the server and client drop
//! messages for a slow consumer in the same way. A reader that must know about such a gap
//! (a cache the lost events would have cleared) reads with [`Subscription::receive`].

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::fanout::{Fanout, FanoutReceiver};
use super::ids::random_hex128;
use crate::config::BusConfig;

/// An event type: its payload and where it is published.
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// `<service>.<event>` in past tense, e.g. `core.member_added`.
    const SUBJECT: &'static str;
}

/// What travels on the wire: `{"id":"…","ts":<unix ms>,"data":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<E> {
    pub id: String,
    /// Unix time in milliseconds when the event was published.
    pub ts: i64,
    pub data: E,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid bus.url: {0}")]
    Url(String),
    #[error("nats: {0}")]
    Nats(String),
    #[error("nats is not connected ({0})")]
    Disconnected(String),
    #[error("encoding event: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct Bus {
    transport: Transport,
    prefix: Arc<str>,
    durable_max_age: Duration,
    /// Subjects whose JetStream stream this process has made sure of.
    durable_streams: Arc<tokio::sync::Mutex<HashSet<String>>>,
    /// Stamps the envelopes.
    clock: Clock,
    /// Bumped whenever NATS may have dropped messages for this connection's subscribers (a
    /// slow consumer, a disconnection and the reconnection after it).
    gaps: Arc<watch::Sender<u64>>,
}

#[derive(Clone)]
enum Transport {
    Memory(Arc<Fanout>),
    Nats(async_nats::Client),
}

impl Bus {
    /// Opens the bus. A NATS server that is down does not stop the start: the client keeps
    /// reconnecting and readiness reports the bus as down meanwhile.
    pub async fn open(config: &BusConfig, clock: Clock) -> Result<Self, BusError> {
        let gaps = Arc::new(watch::Sender::new(0u64));
        let noticed = Arc::clone(&gaps);
        let transport = if config.url == "memory" {
            Transport::Memory(Fanout::new(config.capacity))
        } else if config.url.starts_with("nats://") || config.url.starts_with("tls://") {
            let client = async_nats::ConnectOptions::new()
                .name("beep")
                .retry_on_initial_connect()
                .connection_timeout(Duration::from_secs(5))
                .subscription_capacity(config.capacity.max(1))
                .event_callback(move |event| {
                    let noticed = Arc::clone(&noticed);
                    async move {
                        if matches!(
                            event,
                            async_nats::Event::SlowConsumer(_)
                                | async_nats::Event::Disconnected
                                | async_nats::Event::Connected
                        ) {
                            noticed.send_modify(|gaps| *gaps += 1);
                        }
                    }
                })
                .connect(config.url.as_str())
                .await
                .map_err(|err| BusError::Nats(err.to_string()))?;
            Transport::Nats(client)
        } else {
            return Err(BusError::Url("expected \"memory\" or nats://…".into()));
        };
        Ok(Self {
            transport,
            prefix: config.subject_prefix.as_str().into(),
            durable_max_age: Duration::from_secs(config.durable_max_age_secs),
            durable_streams: Arc::default(),
            clock,
            gaps,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.transport {
            Transport::Memory(_) => "memory",
            Transport::Nats(_) => "nats",
        }
    }

    /// `bus.subject_prefix`: every subject this deployment uses starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The NATS connection, when the bus is NATS (request/reply between processes).
    pub(crate) fn nats(&self) -> Option<&async_nats::Client> {
        match &self.transport {
            Transport::Nats(client) => Some(client),
            Transport::Memory(_) => None,
        }
    }

    /// The full subject of an event type.
    pub fn subject<E: Event>(&self) -> String {
        format!("{}.{}", self.prefix, E::SUBJECT)
    }

    pub async fn publish<E: Event>(&self, event: E) -> Result<(), BusError> {
        let payload = self.encode(event)?;
        let subject = self.subject::<E>();
        match &self.transport {
            Transport::Memory(fanout) => {
                fanout.publish(&subject, payload);
                Ok(())
            }
            Transport::Nats(client) => client
                .publish(subject, payload)
                .await
                .map_err(|err| BusError::Nats(err.to_string())),
        }
    }

    /// Publishes an event that must not be lost: on NATS through a JetStream stream of its
    /// own (`<prefix>_<service>_<event>`), returning once the server has stored it, so a
    /// consumer that runs apart, or was down, still gets it. In-process it is [`Self::publish`].
    pub async fn publish_durable<E: Event>(&self, event: E) -> Result<(), BusError> {
        let Transport::Nats(client) = &self.transport else {
            return self.publish(event).await;
        };
        let subject = self.subject::<E>();
        let jetstream = async_nats::jetstream::new(client.clone());
        {
            let mut known = self.durable_streams.lock().await;
            if !known.contains(&subject) {
                jetstream
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: durable_stream_name(&subject),
                        subjects: vec![subject.clone()],
                        storage: async_nats::jetstream::stream::StorageType::File,
                        max_age: self.durable_max_age,
                        ..Default::default()
                    })
                    .await
                    .map_err(|err| BusError::Nats(err.to_string()))?;
                known.insert(subject.clone());
            }
        }
        let payload = self.encode(event)?;
        jetstream
            .publish(subject, payload)
            .await
            .map_err(|err| BusError::Nats(err.to_string()))?
            .await
            .map_err(|err| BusError::Nats(err.to_string()))?;
        Ok(())
    }

    pub async fn subscribe<E: Event>(&self) -> Result<Subscription<E>, BusError> {
        let subject = self.subject::<E>();
        let inner = match &self.transport {
            Transport::Memory(fanout) => Inner::Memory(fanout.subscribe(&subject)),
            Transport::Nats(client) => {
                // Takes effect once the server has read it: an event published through
                // another connection a moment later may arrive there first and be missed.
                let subscriber = client
                    .subscribe(subject)
                    .await
                    .map_err(|err| BusError::Nats(err.to_string()))?;
                Inner::Nats(subscriber, self.gaps.subscribe())
            }
        };
        Ok(Subscription {
            inner,
            _event: PhantomData,
        })
    }

    /// Readiness: is the transport connected?
    pub async fn check(&self) -> Result<(), BusError> {
        match &self.transport {
            Transport::Memory(_) => Ok(()),
            Transport::Nats(client) => match client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                state => Err(BusError::Disconnected(state.to_string())),
            },
        }
    }

    /// Returns once the subscriptions made so far have been written to NATS, so an event this
    /// process publishes afterwards reaches them (the server reads one connection in order).
    pub async fn confirm_subscriptions(&self) -> Result<(), BusError> {
        self.written().await
    }

    /// Returns once everything published and subscribed so far has been written to NATS,
    /// waiting for the connection if it is not up yet (a one-shot command publishing before
    /// it exits needs this: until then events only sit in the client's queue).
    pub async fn written(&self) -> Result<(), BusError> {
        match &self.transport {
            Transport::Memory(_) => Ok(()),
            Transport::Nats(client) => client
                .flush()
                .await
                .map_err(|err| BusError::Nats(err.to_string())),
        }
    }

    fn encode<E: Event>(&self, event: E) -> Result<Bytes, BusError> {
        let envelope = Envelope {
            id: random_hex128(),
            ts: self.clock.now_millis(),
            data: event,
        };
        Ok(Bytes::from(serde_json::to_vec(&envelope)?))
    }

    /// Pushes out anything still buffered; called on shutdown.
    pub async fn flush(&self) {
        if let Transport::Nats(client) = &self.transport
            && client.connection_state() == async_nats::connection::State::Connected
            && let Err(err) = client.flush().await
        {
            tracing::warn!(error = %err, "flushing the bus on shutdown failed");
        }
    }
}

/// JetStream stream names may not contain `.`, `*`, `>` or spaces.
pub fn durable_stream_name(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub struct Subscription<E> {
    inner: Inner,
    _event: PhantomData<fn() -> E>,
}

enum Inner {
    Memory(FanoutReceiver),
    Nats(async_nats::Subscriber, watch::Receiver<u64>),
}

/// What a subscription hands a reader that must know about gaps.
#[derive(Debug)]
pub enum Received<E> {
    Event(Envelope<E>),
    /// Events may have been lost since the last one: this subscriber fell behind (in-process),
    /// or NATS reported a slow consumer or a lost connection.
    Missed,
}

impl<E: Event> Subscription<E> {
    /// The next event, or `None` when the bus is gone. Payloads that do not decode as `E` (a
    /// publisher of another version) are logged and skipped, and so are gaps.
    pub async fn next(&mut self) -> Option<Envelope<E>> {
        loop {
            if let Received::Event(envelope) = self.receive().await? {
                return Some(envelope);
            }
        }
    }

    /// Like [`Self::next`], but says when events may have been lost, for a reader that keeps
    /// state the lost events would have changed (a cache they would have cleared).
    pub async fn receive(&mut self) -> Option<Received<E>> {
        loop {
            let payload = match &mut self.inner {
                Inner::Memory(receiver) => match receiver.recv_or_lost().await? {
                    Ok(payload) => payload,
                    Err(_) => return Some(Received::Missed),
                },
                Inner::Nats(subscriber, gaps) => tokio::select! {
                    biased;
                    Ok(()) = gaps.changed() => return Some(Received::Missed),
                    message = subscriber.next() => message?.payload,
                },
            };
            match serde_json::from_slice(&payload) {
                Ok(envelope) => return Some(Received::Event(envelope)),
                Err(err) => {
                    tracing::warn!(subject = E::SUBJECT, error = %err, "undecodable event skipped");
                }
            }
        }
    }
}

/// How long to wait before subscribing again after the bus refused.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Runs `listen` (subscribe, then handle events until `stop`) and, when the bus refuses a
/// subscription (NATS down), tries again every second until it succeeds or `stop`.
pub async fn keep_listening<F, Fut, E>(what: &str, stop: &CancellationToken, mut listen: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        match listen().await {
            Ok(()) => return,
            Err(err) => tracing::warn!(error = %err, "{what} cannot subscribe to the bus"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}
